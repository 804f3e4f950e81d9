//! Body framings → converted requests.

use super::*;
use crate::signal::Signal;
use crate::wire::Fields;

/// (resource attribute count, records) per ResourceLogs, and each record's body text.
fn shape(payload: &[u8]) -> Vec<(usize, Vec<String>)> {
    crate::validate::validate(Signal::Logs, payload).expect("a valid request");
    let mut out = Vec::new();
    for rl in Fields::new(payload) {
        let rl = rl.unwrap();
        let mut attrs = 0;
        let mut bodies = Vec::new();
        for f in Fields::new(rl.data) {
            let f = f.unwrap();
            if f.number == 1 {
                attrs = Fields::new(f.data).count();
            } else if f.number == 2 {
                for sf in Fields::new(f.data) {
                    let sf = sf.unwrap();
                    if sf.number != 2 {
                        continue;
                    }
                    for lf in Fields::new(sf.data) {
                        let lf = lf.unwrap();
                        if lf.number == 5 {
                            let any = Fields::new(lf.data).next().unwrap().unwrap();
                            bodies.push(String::from_utf8(any.data.to_vec()).unwrap());
                        }
                    }
                }
            }
        }
        out.push((attrs, bodies));
    }
    out
}

fn bodies(c: &Converted) -> Vec<String> {
    shape(&c.payload).into_iter().flat_map(|(_, b)| b).collect()
}

#[test]
fn json_array_stream_and_lines() {
    let array = br#"[{"date":1795936387.068743,"log":"a"},{"date":1795936388.0,"log":"b"}]"#;
    let c = convert_body(array, BodyFormat::Json, "t", 1).unwrap();
    assert_eq!((c.records, c.rejected), (2, 0));
    assert_eq!(bodies(&c), ["a", "b"]);
    let stream = br#"{"log":"a"}{"log":"b"} {"log":"c"}"#;
    assert_eq!(
        bodies(&convert_body(stream, BodyFormat::Json, "t", 1).unwrap()),
        ["a", "b", "c"]
    );
    let lines = b"{\"log\":\"a\"}\r\n\n{\"log\":\"b\"}\nnot json\n[1]\n";
    let c = convert_body(lines, BodyFormat::Lines, "t", 1).unwrap();
    assert_eq!((c.records, c.rejected), (2, 2));
    assert_eq!(bodies(&c), ["a", "b"]);
    assert!(
        c.error_message
            .starts_with("2 Fluent records refused: line 4 is not JSON"),
        "{}",
        c.error_message
    );
    assert!(
        c.error_message.contains("line 5 item 0 is a number"),
        "{}",
        c.error_message
    );
}

#[test]
fn broken_json_is_an_error_and_empty_is_nothing() {
    let err = convert_body(b"[{\"log\":", BodyFormat::Json, "t", 1).unwrap_err();
    assert!(
        matches!(err, CoreError::Decode(ref m) if m.contains("invalid JSON")),
        "{err}"
    );
    let c = convert_body(b"  \n", BodyFormat::Json, "t", 1).unwrap();
    assert_eq!((c.records, c.payload.len()), (0, 0));
    let c = convert_body(b"[1, {\"log\":\"x\"}]", BodyFormat::Json, "t", 1).unwrap();
    assert_eq!((c.records, c.rejected), (1, 1));
}

#[test]
fn text_and_form() {
    let c = convert_body(b"one\ntwo\r\n\n", BodyFormat::Text, "t", 1).unwrap();
    assert_eq!(bodies(&c), ["one", "two"]);
    let c = convert_body(br#"{"test": "message"}"#, BodyFormat::Form, "logs", 1).unwrap();
    assert_eq!(bodies(&c), [r#"{"test":"message"}"#]);
    let c = convert_body(b"log=hello+there%21&job_id=j1", BodyFormat::Form, "logs", 1).unwrap();
    assert_eq!(bodies(&c), ["hello there!"]);
}

fn put_event(out: &mut Vec<u8>, secs: u32, nanos: u32, with_metadata: bool, log: &str) {
    out.push(0x92);
    let mut time = vec![0xd7, 0x00];
    time.extend_from_slice(&secs.to_be_bytes());
    time.extend_from_slice(&nanos.to_be_bytes());
    if with_metadata {
        out.push(0x92);
        out.extend_from_slice(&time);
        out.push(0x80);
    } else {
        out.extend_from_slice(&time);
    }
    out.push(0x81);
    msgpack::put_str(out, b"log");
    msgpack::put_str(out, log.as_bytes());
}

#[test]
fn msgpack_events_both_shapes() {
    let mut body = Vec::new();
    put_event(&mut body, 1_795_936_387, 5, true, "a");
    put_event(&mut body, 1_795_936_388, 0, false, "b");
    body.extend_from_slice(&[0x92, 0x01, 0x02]); // [1, 2]: not a record
    let c = convert_body(&body, BodyFormat::Msgpack, "t", 1).unwrap();
    assert_eq!((c.records, c.rejected), (2, 1));
    assert_eq!(bodies(&c), ["a", "b"]);
    assert!(
        c.error_message.contains("event 2 has a record that is not a map"),
        "{}",
        c.error_message
    );
    let err = convert_body(&body[..body.len() - 4], BodyFormat::Msgpack, "t", 1).unwrap_err();
    assert!(err.to_string().contains("truncated msgpack"), "{err}");
}

#[test]
fn event_time_wins() {
    let mut body = Vec::new();
    put_event(&mut body, 10, 20, true, "a");
    let mut r = Reader::new(&body);
    let e = entry(&r.value().unwrap()).unwrap();
    assert_eq!(e.time, Some(10_000_000_020));
}

#[test]
fn records_grouped_by_resource() {
    let body = br#"[
        {"log":"a","kubernetes":{"pod_name":"p1","namespace_name":"n"}},
        {"log":"b","kubernetes":{"pod_name":"p2","namespace_name":"n"}},
        {"log":"c","kubernetes":{"pod_name":"p1","namespace_name":"n"}},
        {"log":"d"}
    ]"#;
    let c = convert_body(body, BodyFormat::Json, "t", 1).unwrap();
    let s = shape(&c.payload);
    assert_eq!(
        s,
        vec![
            (2, vec!["a".to_string(), "c".to_string()]),
            (2, vec!["b".to_string()]),
            (0, vec!["d".to_string()])
        ]
    );
}

#[test]
fn media_types() {
    assert_eq!(
        BodyFormat::from_media_type("application/json").unwrap(),
        BodyFormat::Json
    );
    assert_eq!(
        BodyFormat::from_media_type("application/x-ndjson").unwrap(),
        BodyFormat::Lines
    );
    assert_eq!(
        BodyFormat::from_media_type("application/msgpack").unwrap(),
        BodyFormat::Msgpack
    );
    assert_eq!(BodyFormat::from_media_type("text/plain").unwrap(), BodyFormat::Text);
    let err = BodyFormat::from_media_type("image/png").unwrap_err();
    assert!(
        matches!(err, CoreError::Unsupported(ref m) if m.contains("\"image/png\"")),
        "{err}"
    );
}
