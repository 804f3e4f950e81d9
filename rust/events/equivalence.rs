//! The fast decoder and writers against the frozen reference (`reference.rs`): the same events
//! accepted and refused with the same reasons, the same bus NDJSON and OTLP bytes, over a corpus
//! of hand-picked events and a few thousand generated ones. Generated ids come from the test seam
//! (`id::set_fixed`), so both sides issue the same ones.

use super::{id, reference};

const NOW: u64 = 1_700_000_000_123_456_789;

/// Decodes `body` both ways and asserts every output is identical.
fn same(body: &[u8]) {
    id::set_fixed(Some(1));
    let old = reference::decode(body, NOW);
    id::set_fixed(Some(1));
    let new = super::decode(body, NOW);
    id::set_fixed(None);
    let shown = String::from_utf8_lossy(body);
    match (old, new) {
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{shown}"),
        (Ok(a), Ok(b)) => {
            assert_eq!(a.rejected, b.rejected, "{shown}");
            assert_eq!(a.rejected_count, b.rejected_count, "{shown}");
            assert_eq!(a.error_message(), b.error_message(), "{shown}");
            assert_eq!(a.events.len(), b.events.len(), "{shown}");
            let (nd_a, nd_b) = (reference::to_ndjson(&a.events), super::to_ndjson(&b.events));
            assert_eq!(
                String::from_utf8_lossy(&nd_a),
                String::from_utf8_lossy(&nd_b),
                "{shown}"
            );
            assert_eq!(nd_a, nd_b, "{shown}");
            assert_eq!(
                reference::to_otlp_logs(&a.events, NOW),
                super::to_otlp_logs(&b.events, NOW),
                "{shown}"
            );
            // Read back from the bus (queued entries, events found in logs) the same way too.
            let back_a = reference::from_ndjson(&nd_a).map(|e| reference::to_ndjson(&e));
            let back_b = super::from_ndjson(&nd_b).map(|e| super::to_ndjson(&e));
            assert_eq!(back_a.ok(), back_b.ok(), "{shown}");
        }
        (a, b) => panic!(
            "{shown}: reference {:?}, fast {:?}",
            a.map(|d| d.events.len()),
            b.map(|d| d.events.len())
        ),
    }
}

/// Events (as JSON object text) that cover every field's accepted and refused forms.
const EVENTS: &[&str] = &[
    r#"{"event_type":"job_started"}"#,
    r#"{"event_type":"jobCompleted","jobId":"j-1","service":"ocr","worker_id":"w-3","timestamp":1714564800123,"data":{"duration_ms":1200,"output_size":5120}}"#,
    r#"{ "event_type" : "JobFailed" , "job_id" : 42 , "data" : { "error" : "boom" , "n" : [ 1 , 2 ] } }"#,
    r#"{"event_type":"job-progress","data":{"progress":0.5},"progress_note":"half"}"#,
    r#"{"event_type":"deploy.done:v2","machine_id":"m1","session_id":"s1","request_id":"r1"}"#,
    r#"{"eventType":"gpu2Ready","event_type":"wins","eventId":"e-camel","event_id":"e-snake"}"#,
    r#"{"eventType":"camel_only","eventId":"e-camel","jobId":"a","jobId":"b"}"#,
    r#"{"event_type":"x","job_id":"first","job_id":"second","jobId":"camel"}"#,
    r#"{"event_type":"  padded  ","job_id":"  j  ","service":"   "}"#,
    r#"{"event_type":"x","job_id":"","worker_id":null,"service":null,"trace_id":null,"data":null,"timestamp":null}"#,
    r#"{"event_type":"uni","job_id":"caf\u00e9 \ud83d\ude00 \"q\" \\ \n \t \u0001","data":{"k\u00e9y":"v\u2028","e":"😀"}}"#,
    r#"{"event_type":"esc","da\u0074a":{"a":1},"ev\u0065nt_id":"escaped-key"}"#,
    r#"{"event_type":"big","data":{"u":18446744073709551615,"over":18446744073709551616,"neg":-9223372036854775808,"negover":-9223372036854775809,"f":1.5e300,"e":1E-7,"z":-0.0,"i":0}}"#,
    r#"{"event_type":"nested","data":{"a":{"b":{"c":[1,{"d":[true,false,null,"s"]}]}},"t":true,"f":false,"nul":null,"arr":[],"obj":{}}}"#,
    r#"{"event_type":"dup","data":{"dup":1,"dup":2},"dup":3,"other":[1, 2]}"#,
    r#"{"event_type":"extra_only","top":"v \" w","n":1,"o":{"x" : 1}}"#,
    r#"{"event_type":"pretty","data":{
        "pretty": true,
        "s": "keep  inner   spaces\r\n",
        "nested": {"k": null}
    }}"#,
    r#"{"event_type":"t","trace_id":"0AF7651916CD43DD8448EB211C80319C"}"#,
    r#"{"event_type":"t","traceId":"0af7651916cd43dd8448eb211c80319c","service":7}"#,
    r#"{"event_type":"t","trace_id":"00000000000000000000000000000000"}"#,
    r#"{"event_type":"t","trace_id":"0af7651916cd43dd8448eb211c80319"}"#,
    r#"{"event_type":"t","trace_id":"0af7651916cd43dd8448eb211c80319g"}"#,
    r#"{"event_type":"t","trace_id":12}"#,
    r#"{"event_type":"ts","timestamp":1714564800}"#,
    r#"{"event_type":"ts","timestamp":1714564800123}"#,
    r#"{"event_type":"ts","timestamp":1714564800123456}"#,
    r#"{"event_type":"ts","timestamp":1714564800123456789}"#,
    r#"{"event_type":"ts","timestamp":18446744073709551615}"#,
    r#"{"event_type":"ts","timestamp":99999999999999999999}"#,
    r#"{"event_type":"ts","timestamp":0}"#,
    r#"{"event_type":"ts","timestamp":1714564800.5}"#,
    r#"{"event_type":"ts","timestamp":1.7145648001234567e12}"#,
    r#"{"event_type":"ts","timestamp":1e30}"#,
    r#"{"event_type":"ts","timestamp":-1}"#,
    r#"{"event_type":"ts","timestamp":-1.5}"#,
    r#"{"event_type":"ts","timestamp":"2024-05-01T12:00:00Z"}"#,
    r#"{"event_type":"ts","timestamp":"2024-05-01T12:00:00.123456789Z"}"#,
    r#"{"event_type":"ts","timestamp":"2024-05-01T12:00:00.1+02:00"}"#,
    r#"{"event_type":"ts","timestamp":"2024-05-01t12:00:00-05:30"}"#,
    r#"{"event_type":"ts","timestamp":"2024-05-01 12:00:00Z"}"#,
    r#"{"event_type":"ts","timestamp":"1714564800"}"#,
    r#"{"event_type":"ts","timestamp":" 1714564800123 "}"#,
    r#"{"event_type":"ts","timestamp":"1714564800.25"}"#,
    r#"{"event_type":"ts","timestamp":"soon"}"#,
    r#"{"event_type":"ts","timestamp":""}"#,
    r#"{"event_type":"ts","timestamp":"\u0032024-05-01T12:00:00Z"}"#,
    r#"{"event_type":"ts","timestamp":true}"#,
    r#"{"event_type":"ts","timestamp":[1]}"#,
    r#"{"event_type":"ts","timestamp":{"s":1}}"#,
    r#"{"job_id":"j"}"#,
    r#"{}"#,
    r#"{"event_type":5}"#,
    r#"{"event_type":null}"#,
    r#"{"event_type":""}"#,
    r#"{"event_type":"   "}"#,
    r#"{"event_type":"a b"}"#,
    r#"{"event_type":"caf\u00e9"}"#,
    r#"{"event_type":"tab\there"}"#,
    r#"{"event_type":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
    r#"{"event_type":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
    r#"{"event_type":"A__B--C..D::E","job_id":1.5}"#,
    r#"{"event_type":"x","job_id":{"a":1}}"#,
    r#"{"event_type":"x","job_id":[1]}"#,
    r#"{"event_type":"x","job_id":true}"#,
    r#"{"event_type":"x","job_id":-7,"worker_id":-0,"machine_id":12345678901234567890}"#,
    r#"{"event_type":"x","job_id":1e3}"#,
    r#"{"event_type":"x","event_id":""}"#,
    r#"{"event_type":"x","event_id":123}"#,
    r#"{"event_type":"x","event_id":{"no":1}}"#,
    r#"{"event_type":"x","data":[1]}"#,
    r#"{"event_type":"x","data":"s"}"#,
    r#"{"event_type":"x","data":1}"#,
    r#"{"event_type":"x","data":{"a":1},"a":2,"b":3}"#,
    r#"{"event_type":"x","data":{},"b":{"c":"d"}}"#,
    r#"{"event_type":"sev_error","service":"s1"}"#,
    r#"{"event_type":"job_failed","service":"s2","data":{"error":"e","error_type":"T"}}"#,
    r#"{"event_type":"job_completed","service":"s1","data":{"duration_ms":12.5}}"#,
];

#[test]
fn every_event_alone_and_in_every_body_shape() {
    let ids = ["j".repeat(256), "j".repeat(257), "é".repeat(256), "é".repeat(257)];
    let mut events: Vec<String> = EVENTS.iter().map(|s| s.to_string()).collect();
    for id in &ids {
        events.push(format!(r#"{{"event_type":"long","job_id":"{id}"}}"#));
    }
    for e in &events {
        same(e.as_bytes());
        same(format!("[{e}]").as_bytes());
        same(format!("  \n{e}\n\n").as_bytes());
    }
    let ndjson_safe: Vec<&String> = events.iter().filter(|e| !e.contains('\n')).collect();
    let array = format!("[{}]", events.join(","));
    same(array.as_bytes());
    let ndjson: String = ndjson_safe.iter().map(|e| format!("{e}\n")).collect();
    same(ndjson.as_bytes());
    same(ndjson.replace('\n', "\r\n").as_bytes());
}

#[test]
fn bodies_that_are_not_events() {
    for body in [
        "",
        "   ",
        "\n\n",
        "{nope",
        "[",
        "]",
        "null",
        "1",
        "\"s\"",
        "true",
        "[]",
        "[1,\"a\",null,[],{}]",
        "[{\"event_type\":\"a\"},]",
        "{\"event_type\":\"a\"}{\"event_type\":\"b\"}",
        "{\"event_type\":\"a\"}\n{bad\n1\n[]\n{\"event_type\":\"c\"}\n",
        "{\"event_type\":\"a\"}\n{\"event_type\":\"b\"} trailing\n",
        "[{\"event_type\":\"a\"}]\n[{\"event_type\":\"b\"}]",
        "\u{feff}{\"event_type\":\"a\"}",
    ] {
        same(body.as_bytes());
    }
    same(b"{\"event_type\":\"\xff\"}");
    same(b"{\"event_type\":\"a\"}\n{\"event_type\":\"\xc3\"}\n");
    // Past the event cap, as NDJSON (the split stops early) and as an array.
    same("{}\n".repeat(super::MAX_EVENTS + 1).as_bytes());
    same(format!("[{}{{}}]", "1,".repeat(super::MAX_EVENTS)).as_bytes());
    // Past the reason cap: 150 refused events, 10 accepted.
    let mut many = String::from("[");
    for i in 0..160 {
        many.push_str(if i % 16 == 0 {
            r#"{"event_type":"ok"},"#
        } else {
            r#"{"nope":1},"#
        });
    }
    many.push_str("{}]");
    same(many.as_bytes());
}

#[test]
fn generated_events() {
    // A small deterministic generator: every field drawn from pools of good and bad values.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut pick = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let types = [
        "\"job_started\"",
        "\"jobCompleted\"",
        "\"Job-Failed.now\"",
        "\"x:y\"",
        "\"bad type\"",
        "7",
    ];
    let times = [
        "1714564800",
        "1714564800123",
        "\"2024-05-01T12:00:00.5Z\"",
        "1.5",
        "null",
        "\"x\"",
        "-3",
    ];
    let idv = [
        "\"j-1\"",
        "12",
        "\"\"",
        "null",
        "\" sp \"",
        "\"\\u00e9\\n\"",
        "{}",
        "-4",
    ];
    let datas = [
        "{}",
        "{\"duration_ms\":1200,\"output_size\":5120}",
        "{ \"error\" : \"boom \\\" \\u0041\" , \"n\" : [1, 2.5e-3, {\"x\": null}] }",
        "null",
        "[1]",
        "{\"progress\":99.9,\"big\":123456789012345678901234567890}",
    ];
    let keys = [
        "job_id",
        "jobId",
        "worker_id",
        "workerId",
        "machine_id",
        "session_id",
        "request_id",
        "service",
        "event_id",
        "trace_id",
        "extra",
        "ex\\u0074ra2",
    ];
    let traces = [
        "\"0af7651916cd43dd8448eb211c80319c\"",
        "\"0AF7651916CD43DD8448EB211C80319C\"",
        "\"nothex\"",
        "null",
    ];
    for round in 0..40 {
        let mut lines = Vec::new();
        for _ in 0..50 {
            let mut members = Vec::new();
            if pick(10) != 0 {
                members.push(format!("\"event_type\":{}", types[pick(types.len())]));
            }
            if pick(2) == 0 {
                members.push(format!("\"timestamp\":{}", times[pick(times.len())]));
            }
            for _ in 0..pick(5) {
                let key = keys[pick(keys.len())];
                let value = if key == "trace_id" {
                    traces[pick(traces.len())]
                } else {
                    idv[pick(idv.len())]
                };
                members.push(format!("\"{key}\":{value}"));
            }
            if pick(3) != 0 {
                members.push(format!("\"data\":{}", datas[pick(datas.len())]));
            }
            // Shuffle a little: move one member to the front.
            if members.len() > 1 {
                let i = pick(members.len());
                let m = members.remove(i);
                members.insert(0, m);
            }
            lines.push(format!("{{{}}}", members.join(",")));
        }
        if round % 2 == 0 {
            same(format!("[{}]", lines.join(",")).as_bytes());
        } else {
            same(lines.join("\n").as_bytes());
        }
    }
}
