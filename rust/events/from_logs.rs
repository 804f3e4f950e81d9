//! Events that arrive inside logs: an OTLP log record whose attributes, or whose JSON body, carry
//! an `event_type` of a configured set is also taken as an event (what a ConnectorLogger writing
//! `{"event_type": "job_completed", "jobId": ...}` lines produces).
//!
//! Fluent records arrive converted, their `event_type` as the attribute `event.name`, which counts
//! the same. The check is cheap: a body without those bytes anywhere is not walked at all. A
//! record's event gets the record's `event_id` attribute, else an id derived from the record's
//! bytes, so the same log line sent twice (a client retry) gives the same `event_id`.

use std::hash::{Hash, Hasher};

use serde_json::{Map, Value};

use super::{event_from_value, normalize_type, Event};
use crate::error::Result;
use crate::wire::{Fields, I64, LEN, VARINT};

/// Whether `bytes` may hold an event: they contain `event_type` (an OTLP attribute key, a JSON
/// body's field) or `event.name` (what the Fluent conversion makes of a record's `event_type`).
/// One memchr-accelerated scan for `event`; bytes without it cost nothing more.
pub fn may_carry_events(bytes: &[u8]) -> bool {
    memchr::memmem::find_iter(bytes, b"event").any(|i| {
        let rest = &bytes[i + 5..];
        rest.starts_with(b"_type") || rest.starts_with(b".name")
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// The scope the `/v1/events` receiver writes its own records under: those are events already.
const EVENTS_SCOPE: &[u8] = b"trackgate.events";

/// An `AnyValue` as JSON (string, bool, int, double; other kinds skipped).
fn any_value(buf: &[u8]) -> Result<Option<Value>> {
    let mut out = None;
    for field in Fields::new(buf) {
        let field = field?;
        let value = match (field.number, field.wire_type) {
            (1, LEN) => Some(Value::String(String::from_utf8_lossy(field.data).into_owned())),
            (2, VARINT) => Some(Value::Bool(field.int != 0)),
            (3, VARINT) => Some(Value::from(field.int as i64)),
            (4, I64) => serde_json::Number::from_f64(f64::from_bits(field.int)).map(Value::Number),
            _ => None,
        };
        if value.is_some() {
            out = value; // a oneof: the last one set wins
        }
    }
    Ok(out)
}

/// A `KeyValue`: (key, value).
fn key_value(buf: &[u8]) -> Result<Option<(String, Value)>> {
    let (mut key, mut value) = (None, None);
    for field in Fields::new(buf) {
        let field = field?;
        match (field.number, field.wire_type) {
            (1, LEN) => key = Some(String::from_utf8_lossy(field.data).into_owned()),
            (2, LEN) => value = any_value(field.data)?,
            _ => {}
        }
    }
    Ok(key.zip(value))
}

/// Attribute keys the other tracks use, back to the event's field names.
fn event_key(key: &str) -> &str {
    match key {
        "job.id" => "job_id",
        "worker.id" => "worker_id",
        "machine.id" => "machine_id",
        "session.id" => "session_id",
        "request.id" => "request_id",
        "event.id" => "event_id",
        other => other,
    }
}

fn derived_id(record: &[u8]) -> String {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    (0u8, record).hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (1u8, record).hash(&mut b);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.finish().to_be_bytes());
    bytes[8..].copy_from_slice(&b.finish().to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // UUIDv8: custom
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    super::id::format_uuid(&bytes)
}

/// The event one LogRecord carries, if its `event_type` (normalized) is in `types`.
fn record_event(record: &[u8], service: Option<&str>, types: &[String], now: u64) -> Result<Option<Event>> {
    let mut obj = Map::new();
    let mut body_obj: Option<Map<String, Value>> = None;
    let mut event_name: Option<Value> = None;
    let (mut time, mut observed, mut trace_id) = (0u64, 0u64, None);
    for field in Fields::new(record) {
        let field = field?;
        match (field.number, field.wire_type) {
            (1, I64) => time = field.int,
            (11, I64) => observed = field.int,
            (9, LEN) if field.data.len() == 16 => {
                trace_id = Some(field.data.iter().map(|b| format!("{b:02x}")).collect::<String>())
            }
            (5, LEN) => {
                if let Some(Value::String(text)) = any_value(field.data)? {
                    if contains(text.as_bytes(), b"event_type") {
                        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text.trim()) {
                            body_obj = Some(m);
                        }
                    }
                }
            }
            (6, LEN) => {
                if let Some((k, v)) = key_value(field.data)? {
                    if k == "event.name" {
                        event_name = Some(v);
                    } else {
                        obj.insert(event_key(&k).to_owned(), v);
                    }
                }
            }
            _ => {}
        }
    }
    // A JSON body's fields win over attributes of the same name.
    if let Some(body) = body_obj {
        for (k, v) in body {
            obj.insert(k, v);
        }
    }
    if let (Some(name), false) = (
        event_name,
        obj.contains_key("event_type") || obj.contains_key("eventType"),
    ) {
        obj.insert("event_type".into(), name);
    }
    let Some(Value::String(raw_type)) = obj.get("event_type").or_else(|| obj.get("eventType")) else {
        return Ok(None);
    };
    match normalize_type(raw_type) {
        Ok(t) if types.contains(&t) => {}
        _ => return Ok(None),
    }
    if !obj.contains_key("timestamp") {
        let t = if time != 0 {
            time
        } else if observed != 0 {
            observed
        } else {
            now
        };
        obj.insert("timestamp".into(), Value::from(t));
    }
    if !obj.contains_key("event_id") && !obj.contains_key("eventId") {
        obj.insert("event_id".into(), Value::String(derived_id(record)));
    }
    if let (Some(t), false) = (trace_id, obj.contains_key("trace_id")) {
        if t.bytes().any(|b| b != b'0') {
            obj.insert("trace_id".into(), Value::String(t));
        }
    }
    if let (Some(s), false) = (service, obj.contains_key("service")) {
        obj.insert("service".into(), Value::String(s.to_owned()));
    }
    // `service.name` and other dotted OTel attributes are not event fields: drop the well-known ones.
    obj.shift_remove("service.name");
    // A record that does not make a valid event (a bad id type…) stays a log only.
    Ok(event_from_value(Value::Object(obj), now).ok())
}

fn resource_service(resource: &[u8]) -> Result<Option<String>> {
    for field in Fields::new(resource) {
        let field = field?;
        if (field.number, field.wire_type) == (1, LEN) {
            if let Some((k, Value::String(v))) = key_value(field.data)? {
                if k == "service.name" {
                    return Ok(Some(v));
                }
            }
        }
    }
    Ok(None)
}

/// A `ScopeLogs`' scope name.
fn scope_name(scope_logs: &[u8]) -> Result<Option<&[u8]>> {
    for field in Fields::new(scope_logs) {
        let field = field?;
        if (field.number, field.wire_type) == (1, LEN) {
            for f in Fields::new(field.data) {
                let f = f?;
                if (f.number, f.wire_type) == (1, LEN) {
                    return Ok(Some(f.data));
                }
            }
        }
    }
    Ok(None)
}

/// The events in an OTLP `ExportLogsServiceRequest` (protobuf, decompressed). `types` are
/// normalized event types (snake_case).
pub fn events_from_logs(body: &[u8], types: &[String], now: u64) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    if !may_carry_events(body) {
        return Ok(out);
    }
    for rl in Fields::new(body) {
        let rl = rl?;
        if (rl.number, rl.wire_type) != (1, LEN) || !may_carry_events(rl.data) {
            continue;
        }
        let mut service = None;
        for f in Fields::new(rl.data) {
            let f = f?;
            if (f.number, f.wire_type) == (1, LEN) {
                service = resource_service(f.data)?;
            }
        }
        for sl in Fields::new(rl.data) {
            let sl = sl?;
            if (sl.number, sl.wire_type) != (2, LEN) || scope_name(sl.data)? == Some(EVENTS_SCOPE) {
                continue;
            }
            for lr in Fields::new(sl.data) {
                let lr = lr?;
                if (lr.number, lr.wire_type) == (2, LEN) && may_carry_events(lr.data) {
                    if let Some(event) = record_event(lr.data, service.as_deref(), types, now)? {
                        out.push(event);
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::LIFECYCLE_TYPES;
    use crate::json_decode::json_to_protobuf;
    use crate::signal::Signal;

    fn types() -> Vec<String> {
        LIFECYCLE_TYPES.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn attributes_and_json_bodies_become_events() {
        let json = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"ocr"}}]},
          "scopeLogs":[{"logRecords":[
            {"timeUnixNano":"1714564800000000000","body":{"stringValue":"plain line"}},
            {"timeUnixNano":"1714564800000000000","attributes":[{"key":"event_type","value":{"stringValue":"jobCompleted"}},
              {"key":"job.id","value":{"stringValue":"j1"}},{"key":"duration_ms","value":{"intValue":"1200"}}]},
            {"body":{"stringValue":"{\"event_type\":\"job_failed\",\"jobId\":\"j2\",\"error\":\"boom\"}"}},
            {"attributes":[{"key":"event_type","value":{"stringValue":"cache_warmed"}}]}
          ]}]}]}"#;
        let pb = json_to_protobuf(Signal::Logs, json).unwrap();
        let now = 1_700_000_000_000_000_000;
        let events = events_from_logs(&pb, &types(), now).unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].event_type, "job_completed");
        assert_eq!(events[0].id("job_id"), Some("j1"));
        assert_eq!(events[0].service.as_deref(), Some("ocr"));
        assert_eq!(events[0].time_unix_nano, 1_714_564_800_000_000_000);
        assert_eq!(events[0].data_value()["duration_ms"], 1200);
        assert_eq!(events[1].event_type, "job_failed");
        assert_eq!(events[1].id("job_id"), Some("j2"));
        assert_eq!(events[1].data_value()["error"], "boom");
        assert_eq!(events[1].time_unix_nano, now);
        // The same record again: the same id.
        let again = events_from_logs(&pb, &types(), now + 1).unwrap();
        assert_eq!(again[1].event_id, events[1].event_id);
        assert!(events_from_logs(b"\x0a\x00", &types(), 0).unwrap().is_empty());
    }

    #[test]
    fn fluent_event_names_count_and_the_events_receivers_own_records_do_not() {
        let json = br#"{"resourceLogs":[{"scopeLogs":[
            {"scope":{"name":"trackgate.fluent"},"logRecords":[{"attributes":[
              {"key":"event.name","value":{"stringValue":"jobStarted"}},{"key":"job.id","value":{"stringValue":"f1"}}]}]},
            {"scope":{"name":"trackgate.events"},"logRecords":[{"attributes":[
              {"key":"event.name","value":{"stringValue":"job_started"}},{"key":"job.id","value":{"stringValue":"e1"}}]}]}
          ]}]}"#;
        let pb = json_to_protobuf(Signal::Logs, json).unwrap();
        let events = events_from_logs(&pb, &types(), 1).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (events[0].event_type.as_str(), events[0].id("job_id")),
            ("job_started", Some("f1"))
        );
        assert!(may_carry_events(b"..event.name..") && may_carry_events(b"event_type"));
        assert!(!may_carry_events(b"an event loop, eventual events"));
    }
}
