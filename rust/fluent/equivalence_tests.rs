//! The streaming conversion writes the bytes the `serde_json::Value` conversion (`reference`)
//! wrote: same payload, counts and refusal message, or the same error, for a hand-written corpus
//! (unicode escapes, nested values, big ints, floats, null, bools, duplicate keys, binaries, ext
//! types, EventTime, every time form) and for generated records in JSON and msgpack.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::msgpack::put_str;
use super::{convert_body_at, reference, BodyFormat};

const FORMATS: [BodyFormat; 5] = [
    BodyFormat::Json,
    BodyFormat::Lines,
    BodyFormat::Msgpack,
    BodyFormat::Text,
    BodyFormat::Form,
];

fn same(body: &[u8], format: BodyFormat, offset: i32) -> Result<(), String> {
    let new = convert_body_at(body, format, "kube.tag", 77, offset)
        .map(|c| (c.payload, c.records, c.rejected, c.error_message))
        .map_err(|e| e.to_string());
    let old = reference::convert_body_at(body, format, "kube.tag", 77, offset)
        .map(|c| (c.payload, c.records, c.rejected, c.error_message))
        .map_err(|e| e.to_string());
    if new == old {
        Ok(())
    } else {
        Err(format!(
            "{format:?} at {offset}: {:?}\nnew {new:?}\nold {old:?}",
            String::from_utf8_lossy(body)
        ))
    }
}

fn same_everywhere(body: &[u8]) {
    for format in FORMATS {
        for offset in [0, 3600] {
            same(body, format, offset).unwrap();
        }
    }
}

#[test]
fn json_corpus() {
    let corpus: &[&str] = &[
        r#"{"date":1795936387.068743,"log":"{\"level\":\"error\",\"message\":\"boom\",\"job_id\":\"job-1\",\"trace_id\":\"5b8efff798038103d269b633813fc60c\",\"spanId\":\"eee19b7ec3c1b174\",\"rows\":3}","stream":"stderr","kubernetes":{"pod_name":"api-1","namespace_name":"prod","container_name":"api","host":"node-7","docker_id":"abc123","labels":{"app":"api","tier":"b"},"annotations":{"x/y":"1","n":2,"e":""}},"__internal__":{"log_metadata":{}}}"#,
        r#"{"test":"message","job_id":"j","__internal__":1,"z":[1,2,{"a":null}]}"#,
        r#"{"log":"hi\n","container_id":"c1","container_name":"/web","source":"stdout","nested":{"a":{"b":{"c":{"d":{"e":1}}}}},"list":[1,2],"none":null}"#,
        r#"{"msg":"caf\u00e9 \ud83d\ude00 \"q\" \\ \/","level":"  Warn ","ts":"2026-11-29 07:13:07.5","k\u00e9y":"v\u0000"}"#,
        r#"{"message":{"inner":true},"severity":3,"time":"1795936387","big":18446744073709551615,"bigger":18446744073709551616,"neg":-9223372036854775808,"f":1.5e300,"tiny":-0.0,"e":1E2}"#,
        r#"{"log":"{\"msg\":{\"deep\":[1]},\"level\":50,\"a\":1}","a":2,"log":"dup wins"}"#,
        r#"{"log":"{\"msg\":null,\"level\":\"x\"}","msg":null,"message":7}"#,
        r#"{"log":"  {\"message\":\"trim\"}  ","@timestamp":"2026-11-29T08:13:07+01:00"}"#,
        r#"{"log":"{not json}","timestamp":1795936387068,"time":"later"}"#,
        r#"{"log":"started job_id=j9 worker_id=w2, level=warn trace_id=5b8efff798038103d269b633813fc60c span_id=eee19b7ec3c1b174 jobId='j10'","job_id":"first"}"#,
        r#"{"log":"x","trace_id":" 5B8EFFF798038103D269B633813FC60C ","span_id":"short","traceId":"ignored","event_type":"job.started","request.id":12,"session_id":true,"machineId":1.25}"#,
        r#"{"log":"x","kubernetes":"not an object","hostname":"h1","service.name":"svc","container_name":"//c","stream":"other","source":"stderr"}"#,
        r#"{"log":"x","kubernetes":{"labels":{"a":"1","a":"2"},"pod_name":""},"time":-5,"date":0,"ts":1795936387068743001}"#,
        r#"{"log":"x","date":"2026-11-29T07:13:07","level":"6","lvl":"info"}"#,
        r#"{"log":"x","date":"2026-11-29 06:13:07.5","level":99,"severity":"EMERG"}"#,
        r#"{"log":"x","a.b":1,"a":{"b":2},"level":{"x":1}}"#,
        r#"{"log":""}"#,
        r#"{"log":null}"#,
        r#"{"log":5.0}"#,
        r#"{"log":[1,"a"]}"#,
        r#"{}"#,
        r#"[{"log":"a"},1,"s",null,true,[],{"log":"b"}]"#,
        r#"{"log":"a"}{"log":"b"} {"log":"c"}"#,
        r#"{"log":"a"} 5 "x""#,
        "{\"log\":\"a\"}\r\n\n{\"log\":\"b\"}\nnot json\n[1]\n{\"log\":\"c\"}\n{\"log\":\"d\"} x\n",
        r#"[{"log":"#,
        "  \n",
        "log=hello+there%21&job_id=j1&job_id=j2&%zz=%4",
    ];
    for body in corpus {
        same_everywhere(body.as_bytes());
    }
}

fn event_time(out: &mut Vec<u8>, secs: u32, nanos: u32) {
    out.extend_from_slice(&[0xd7, 0x00]);
    out.extend_from_slice(&secs.to_be_bytes());
    out.extend_from_slice(&nanos.to_be_bytes());
}

#[test]
fn msgpack_corpus() {
    let mut body = Vec::new();
    // [[EventTime, {}], {"log": <json>, "bin": <bin>, 5: nil, [1]: true, "f32": 2.5f32, "ext": ext 7}]
    body.extend_from_slice(&[0x92, 0x92]);
    event_time(&mut body, 1_795_936_387, 5);
    body.push(0x80);
    body.push(0x88);
    put_str(&mut body, b"log");
    put_str(&mut body, br#"{"level":"info","msg":"m","n":-3}"#);
    put_str(&mut body, b"bin");
    body.extend_from_slice(&[0xc4, 0x03, 0xff, b'a', 0x00]);
    body.extend_from_slice(&[0x05, 0xc0]);
    body.extend_from_slice(&[0x91, 0x01, 0xc3]);
    put_str(&mut body, b"f32");
    body.push(0xca);
    body.extend_from_slice(&2.5f32.to_bits().to_be_bytes());
    put_str(&mut body, b"ext");
    body.extend_from_slice(&[0xd4, 0x07, 0x01]);
    put_str(&mut body, b"when");
    event_time(&mut body, 10, 20);
    put_str(&mut body, b"bad\xffutf8");
    body.extend_from_slice(&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    // [1795936388, {"message": "b", "message": "c", "nan": NaN}]
    body.extend_from_slice(&[0x92, 0xce]);
    body.extend_from_slice(&1_795_936_388u32.to_be_bytes());
    body.push(0x83);
    put_str(&mut body, b"message");
    put_str(&mut body, b"b");
    put_str(&mut body, b"message");
    put_str(&mut body, b"c");
    put_str(&mut body, b"nan");
    body.push(0xcb);
    body.extend_from_slice(&f64::NAN.to_bits().to_be_bytes());
    // [1.5, {"a": -1}] (float time), a bare map, [1, 2], "x", [[], {"log": 1}]
    body.extend_from_slice(&[0x92, 0xcb]);
    body.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
    body.extend_from_slice(&[0x81, 0xa1, b'a', 0xff]);
    body.extend_from_slice(&[0x81, 0xa3, b'l', b'o', b'g', 0xa1, b'z']);
    body.extend_from_slice(&[0x92, 0x01, 0x02]);
    body.extend_from_slice(&[0xa1, b'x']);
    body.extend_from_slice(&[0x92, 0x90, 0x81, 0xa3, b'l', b'o', b'g', 0x01]);
    same_everywhere(&body);
    for cut in 0..body.len() {
        same(&body[..cut], BodyFormat::Msgpack, 0).unwrap();
    }
}

/// A generated value: written as JSON or msgpack by the test itself, so duplicate keys, escapes
/// and every msgpack type can occur.
#[derive(Debug, Clone)]
enum Gen {
    Null,
    Bool(bool),
    UInt(u64),
    Int(i64),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Time(u32, u32),
    Ext(i8, Vec<u8>),
    Arr(Vec<Gen>),
    Obj(Vec<(Gen, Gen)>),
}

const KEYS: &[&str] = &[
    "log",
    "message",
    "msg",
    "date",
    "@timestamp",
    "timestamp",
    "time",
    "ts",
    "level",
    "severity",
    "lvl",
    "job_id",
    "jobId",
    "worker.id",
    "request_id",
    "trace_id",
    "spanId",
    "event_type",
    "kubernetes",
    "labels",
    "annotations",
    "pod_name",
    "namespace_name",
    "host",
    "container_name",
    "container_id",
    "hostname",
    "service.name",
    "stream",
    "source",
    "__internal__",
    "a",
    "a.b",
    "é\"\\\n",
];

const TEXTS: &[&str] = &[
    "",
    "stdout",
    "stderr",
    "warn",
    " ERROR ",
    "50",
    "1795936387",
    "1795936387.5",
    "2026-11-29T07:13:07.068743Z",
    "2026-11-29 07:13:07",
    "5b8efff798038103d269b633813fc60c",
    "eee19b7ec3c1b174",
    "job_id=j1 level=info span_id=eee19b7ec3c1b174",
    "{\"msg\":\"inner\",\"level\":\"debug\",\"job_id\":\"j\",\"x\":{\"y\":[1]}}",
    "{\"a\":1,\"a\":2}",
    "{broken",
    "/c",
    "caf\u{e9} \u{1F600} \"q\" \\ \u{0}",
];

fn leaf() -> impl Strategy<Value = Gen> {
    prop_oneof![
        Just(Gen::Null),
        any::<bool>().prop_map(Gen::Bool),
        prop_oneof![0u64..100, any::<u64>(), 1_795_936_387u64..1_795_936_388_000_000_000].prop_map(Gen::UInt),
        prop_oneof![any::<i64>(), -100i64..0].prop_map(Gen::Int),
        prop_oneof![any::<f64>(), 0.0f64..2e18, -1e3f64..1e3].prop_map(Gen::Float),
        prop::sample::select(TEXTS).prop_map(|s| Gen::Str(s.to_owned())),
        prop::sample::select(KEYS).prop_map(|s| Gen::Str(s.to_owned())),
        "[a-z=_ .{}\"]{0,12}".prop_map(Gen::Str),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(Gen::Bin),
        (any::<u32>(), any::<u32>()).prop_map(|(s, n)| Gen::Time(s, n)),
        (any::<i8>(), prop::collection::vec(any::<u8>(), 0..9)).prop_map(|(t, d)| Gen::Ext(t, d)),
    ]
}

fn key() -> impl Strategy<Value = Gen> {
    prop_oneof![
        8 => prop::sample::select(KEYS).prop_map(|s| Gen::Str(s.to_owned())),
        1 => leaf(),
    ]
}

fn value() -> impl Strategy<Value = Gen> {
    leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Gen::Arr),
            prop::collection::vec((key(), inner), 0..8).prop_map(Gen::Obj),
        ]
    })
}

fn record() -> impl Strategy<Value = Gen> {
    prop::collection::vec((key(), value()), 0..12).prop_map(Gen::Obj)
}

/// JSON text; `escape` writes some characters as `\u` escapes. Msgpack-only types become JSON
/// values of their own kind.
fn json(g: &Gen, escape: bool, out: &mut String) {
    match g {
        Gen::Null | Gen::Ext(..) => out.push_str("null"),
        Gen::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Gen::UInt(u) => out.push_str(&u.to_string()),
        Gen::Int(i) => out.push_str(&i.to_string()),
        Gen::Float(f) if f.is_finite() => out.push_str(&format!("{f:e}")),
        Gen::Float(_) => out.push_str("1e999"),
        Gen::Time(s, n) => out.push_str(&format!("{s}.{n:09}")),
        Gen::Str(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 || (escape && !c.is_ascii_alphanumeric()) => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        Gen::Bin(b) => json(&Gen::Str(String::from_utf8_lossy(b).into_owned()), escape, out),
        Gen::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json(item, escape, out);
            }
            out.push(']');
        }
        Gen::Obj(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                match k {
                    Gen::Str(_) => json(k, escape, out),
                    other => {
                        let mut text = String::new();
                        json(other, false, &mut text);
                        json(&Gen::Str(text), escape, out);
                    }
                }
                out.push(':');
                json(v, escape, out);
            }
            out.push('}');
        }
    }
}

fn msgpack(g: &Gen, out: &mut Vec<u8>) {
    match g {
        Gen::Null => out.push(0xc0),
        Gen::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Gen::UInt(u) => {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
        Gen::Int(i) => {
            out.push(0xd3);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Gen::Float(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Gen::Str(s) => put_str(out, s.as_bytes()),
        Gen::Bin(b) => {
            out.extend_from_slice(&[0xc4, b.len() as u8]);
            out.extend_from_slice(b);
        }
        Gen::Time(s, n) => event_time(out, *s, *n),
        Gen::Ext(t, d) => {
            out.extend_from_slice(&[0xc7, d.len() as u8, *t as u8]);
            out.extend_from_slice(d);
        }
        Gen::Arr(items) => {
            out.push(0xdc);
            out.extend_from_slice(&(items.len() as u16).to_be_bytes());
            for item in items {
                msgpack(item, out);
            }
        }
        Gen::Obj(entries) => {
            out.push(0xde);
            out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
            for (k, v) in entries {
                msgpack(k, out);
                msgpack(v, out);
            }
        }
    }
}

fn config() -> ProptestConfig {
    let long_run = std::env::var_os("PROPTEST_CASES").is_some();
    ProptestConfig {
        cases: if long_run { ProptestConfig::default().cases } else { 400 },
        rng_seed: if long_run {
            RngSeed::Random
        } else {
            RngSeed::Fixed(0x6571_7569)
        },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_json_records_convert_alike(
        records in prop::collection::vec(record(), 1..4),
        escape in any::<bool>(),
        offset in prop::sample::select(vec![0, 3600, -7200]),
    ) {
        let mut lines = String::new();
        let mut array = String::from("[");
        for (i, r) in records.iter().enumerate() {
            let mut one = String::new();
            json(r, escape, &mut one);
            lines.push_str(&one);
            lines.push('\n');
            if i > 0 {
                array.push(',');
            }
            array.push_str(&one);
        }
        array.push(']');
        for (body, format) in [(&lines, BodyFormat::Lines), (&lines, BodyFormat::Json), (&array, BodyFormat::Json)] {
            if let Err(e) = same(body.as_bytes(), format, offset) {
                prop_assert!(false, "{}", e);
            }
        }
    }

    #[test]
    fn generated_msgpack_events_convert_alike(
        events in prop::collection::vec((record(), leaf(), 0usize..3), 1..4),
        offset in prop::sample::select(vec![0, 3600]),
    ) {
        let mut body = Vec::new();
        for (r, time, shape) in &events {
            match shape {
                0 => msgpack(r, &mut body),
                1 => {
                    body.push(0x92);
                    msgpack(time, &mut body);
                    msgpack(r, &mut body);
                }
                _ => {
                    body.extend_from_slice(&[0x92, 0x92]);
                    msgpack(time, &mut body);
                    body.push(0x80);
                    msgpack(r, &mut body);
                }
            }
        }
        if let Err(e) = same(&body, BodyFormat::Msgpack, offset) {
            prop_assert!(false, "{}", e);
        }
    }
}
