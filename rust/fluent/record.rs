//! One Fluent record (a JSON-like map, the event time, the tag) → one OTLP `LogRecord` and the
//! resource it belongs to, following the OTel semantic conventions for Kubernetes and containers.

use serde_json::{Map, Value};

// One attribute model and encoder for every record the gateway builds itself.
pub(crate) use crate::sentry::put_kv;
pub use crate::sentry::Attr;
use crate::sentry::{hex_id, parse_rfc3339};
use crate::wire::{self, put_fixed64};

const ANY_STRING: u32 = 1;

/// Keys read for the body, in order.
pub const BODY_KEYS: &[&str] = &["log", "message", "msg"];
/// Keys read for the timestamp when the event carries none (`date` is Fluent Bit's `json_date_key`).
pub const TIME_KEYS: &[&str] = &["date", "@timestamp", "timestamp", "time", "ts"];
/// Keys read for the severity.
pub const SEVERITY_KEYS: &[&str] = &[
    "level",
    "severity",
    "lvl",
    "log.level",
    "loglevel",
    "log_level",
    "levelname",
];
/// Correlation ids: `job_id` / `jobId` / `job.id` → the attribute `job.id`.
pub const CORRELATION: &[&str] = &["job", "worker", "machine", "session", "request"];
/// The field names of each of `CORRELATION` and the attribute it becomes, spelled out so no
/// record pays for building them.
const CORRELATION_KEYS: [(&[&str], &str); 5] = [
    (&["job_id", "jobId", "job.id"], "job.id"),
    (&["worker_id", "workerId", "worker.id"], "worker.id"),
    (&["machine_id", "machineId", "machine.id"], "machine.id"),
    (&["session_id", "sessionId", "session.id"], "session.id"),
    (&["request_id", "requestId", "request.id"], "request.id"),
];
const TRACE_KEYS: &[&str] = &["trace_id", "traceId", "trace.id", "traceid"];
const SPAN_KEYS: &[&str] = &["span_id", "spanId", "span.id", "spanid"];
/// Fluent Bit's kubernetes filter fields → resource attributes.
const KUBERNETES: &[(&str, &str)] = &[
    ("pod_name", "k8s.pod.name"),
    ("namespace_name", "k8s.namespace.name"),
    ("container_name", "k8s.container.name"),
    ("host", "k8s.node.name"),
    ("pod_id", "k8s.pod.uid"),
    ("docker_id", "container.id"),
    ("container_image", "container.image.name"),
    ("container_hash", "container.image.id"),
];
/// Top-level fields (Docker's fluentd log driver, syslog) → resource attributes.
const RESOURCE_FIELDS: &[(&str, &str)] = &[
    ("container_id", "container.id"),
    ("container_name", "container.name"),
    ("service.name", "service.name"),
    ("hostname", "host.name"),
];
/// Deepest object flattened into dotted attribute keys; deeper values become JSON text.
const FLATTEN_DEPTH: usize = 4;

/// Resource attributes, in a stable order, used as the grouping key.
pub type Resource = Vec<(String, String)>;

/// One converted record.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub resource: Resource,
    pub time: Option<u64>,
    pub observed: u64,
    pub severity: u64,
    pub severity_text: String,
    pub body: String,
    pub attributes: Vec<(String, Attr)>,
    pub trace_id: Option<[u8; 16]>,
    pub span_id: Option<[u8; 8]>,
}

impl LogRecord {
    fn attr(&mut self, key: &str, value: Attr) {
        if !self.attributes.iter().any(|(k, _)| k == key) {
            self.attributes.push((key.to_owned(), value));
        }
    }

    fn resource(&mut self, key: &str, value: String) {
        if !value.is_empty() && !self.resource.iter().any(|(k, _)| k == key) {
            self.resource.push((key.to_owned(), value));
        }
    }

    /// LogRecord fields in field-number order.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Some(t) = self.time {
            put_fixed64(out, 1, t);
        }
        if self.severity != 0 {
            wire::put_uint(out, 2, self.severity);
        }
        if !self.severity_text.is_empty() {
            wire::put_bytes(out, 3, self.severity_text.as_bytes());
        }
        wire::put_message(out, 5, |any| wire::put_bytes(any, ANY_STRING, self.body.as_bytes()));
        for (key, value) in &self.attributes {
            put_kv(out, 6, key, value);
        }
        if let Some(id) = &self.trace_id {
            wire::put_bytes(out, 9, id);
        }
        if let Some(id) = &self.span_id {
            wire::put_bytes(out, 10, id);
        }
        put_fixed64(out, 11, self.observed);
    }
}

/// Converts one record. `event_time` (ns) wins over any time field; `observed` (ns) is the
/// receive time and also stands in for a missing timestamp. A time field written without an
/// offset is read at `utc_offset_s` seconds east of UTC (`[receivers.fluent] default_utc_offset`).
pub fn convert(
    mut rec: Map<String, Value>,
    event_time: Option<u64>,
    tag: &str,
    observed: u64,
    utc_offset_s: i32,
) -> LogRecord {
    rec.remove("__internal__");
    let mut out = LogRecord {
        resource: Vec::new(),
        time: event_time,
        observed,
        severity: 0,
        severity_text: String::new(),
        body: String::new(),
        attributes: Vec::new(),
        trace_id: None,
        span_id: None,
    };
    // Body: the first body key; a JSON object inside it (a JSON-logging app under `tail`) is
    // lifted into the record and its own message becomes the body.
    let mut body: Option<String> = None;
    let mut whole_record = false;
    if let Some(value) = take_first(&mut rec, BODY_KEYS).map(|(_, v)| v) {
        let text = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        match parse_object(&text) {
            Some(inner) => {
                for (k, v) in inner {
                    rec.entry(k).or_insert(v);
                }
                body = Some(match take_first(&mut rec, BODY_KEYS).map(|(_, v)| v) {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => text,
                });
            }
            None => body = Some(text),
        }
    }
    if body.is_none() {
        whole_record = true;
        out.body = Value::Object(rec.clone()).to_string();
    }
    if out.time.is_none() {
        out.time = take_parsed(&mut rec, TIME_KEYS, |v| time_nanos_at(v, utc_offset_s));
    }
    if let Some((text, number)) = take_parsed(&mut rec, SEVERITY_KEYS, severity) {
        out.severity = number;
        out.severity_text = text;
    }
    // Correlation ids.
    for (keys, name) in CORRELATION_KEYS {
        if let Some(id) = take_first(&mut rec, keys).and_then(|(_, v)| scalar(&v)) {
            out.attr(name, Attr::Str(id));
        }
    }
    lift_id(&mut rec, TRACE_KEYS, "trace_id", &mut out, |s| {
        hex_id::<16>(s).map(Ids::Trace)
    });
    lift_id(&mut rec, SPAN_KEYS, "span_id", &mut out, |s| {
        hex_id::<8>(s).map(Ids::Span)
    });
    if let Some(name) = rec.remove("event_type").as_ref().and_then(scalar) {
        out.attr("event.name", Attr::Str(name));
    }
    // Resource: the kubernetes filter's object, then container/service/host fields.
    if let Some(Value::Object(k8s)) = rec.remove("kubernetes") {
        for (field, key) in KUBERNETES {
            if let Some(v) = k8s.get(*field).and_then(scalar) {
                out.resource(key, v);
            }
        }
        for (group, prefix) in [("labels", "k8s.pod.label."), ("annotations", "k8s.pod.annotation.")] {
            if let Some(Value::Object(map)) = k8s.get(group) {
                for (k, v) in map {
                    if let Some(v) = scalar(v) {
                        out.resource(&format!("{prefix}{k}"), v);
                    }
                }
            }
        }
    }
    for (field, key) in RESOURCE_FIELDS {
        if let Some(v) = rec.remove(*field).as_ref().and_then(scalar) {
            let v = if *field == "container_name" {
                v.trim_start_matches('/').to_owned()
            } else {
                v
            };
            out.resource(key, v);
        }
    }
    for key in ["stream", "source"] {
        if let Some(v @ ("stdout" | "stderr")) = rec.get(key).and_then(Value::as_str) {
            let v = v.to_owned();
            rec.remove(key);
            out.attr("log.iostream", Attr::Str(v));
        }
    }
    // `key=value` pairs in the text of the line, for what the fields did not carry.
    if let Some(text) = &body {
        lift_from_text(text, &mut out);
    }
    if !tag.is_empty() {
        out.attr("fluent.tag", Attr::Str(tag.to_owned()));
    }
    if !whole_record {
        for (k, v) in rec {
            flatten(&k, v, 0, &mut out);
        }
    }
    if let Some(b) = body {
        out.body = b;
    }
    out
}

enum Ids {
    Trace([u8; 16]),
    Span([u8; 8]),
}

/// A trace/span id in hex becomes the record's id; anything else stays as an attribute.
fn lift_id(
    rec: &mut Map<String, Value>,
    keys: &[&str],
    attr: &str,
    out: &mut LogRecord,
    parse: impl Fn(&str) -> Option<Ids>,
) {
    let Some((_, value)) = take_first(rec, keys) else {
        return;
    };
    let Some(text) = scalar(&value) else {
        return;
    };
    match parse(text.trim()) {
        Some(Ids::Trace(id)) => out.trace_id = Some(id),
        Some(Ids::Span(id)) => out.span_id = Some(id),
        None => out.attr(attr, Attr::Str(text)),
    }
}

fn take_first(rec: &mut Map<String, Value>, keys: &[&str]) -> Option<(String, Value)> {
    for key in keys {
        match rec.get(*key) {
            None | Some(Value::Null) => continue,
            Some(_) => return rec.remove(*key).map(|v| ((*key).to_owned(), v)),
        }
    }
    None
}

/// The first key whose value parses; only that key is removed.
fn take_parsed<T>(rec: &mut Map<String, Value>, keys: &[&str], parse: impl Fn(&Value) -> Option<T>) -> Option<T> {
    for key in keys {
        if let Some(parsed) = rec.get(*key).and_then(&parse) {
            rec.remove(*key);
            return Some(parsed);
        }
    }
    None
}

fn parse_object(text: &str) -> Option<Map<String, Value>> {
    let t = text.trim();
    if !(t.starts_with('{') && t.ends_with('}')) {
        return None;
    }
    match serde_json::from_str(t) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn flatten(key: &str, value: Value, depth: usize, out: &mut LogRecord) {
    match value {
        Value::Null => {}
        Value::String(s) => out.attr(key, Attr::Str(s)),
        Value::Bool(b) => out.attr(key, Attr::Bool(b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => out.attr(key, Attr::Int(i)),
            None => out.attr(key, Attr::Double(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::Object(map) if depth < FLATTEN_DEPTH => {
            for (k, v) in map {
                flatten(&format!("{key}.{k}"), v, depth + 1, out);
            }
        }
        other => out.attr(key, Attr::Str(other.to_string())),
    }
}

/// Correlation ids and the level written as `key=value` in the text (`job_id=j-1 level=warn`).
fn lift_from_text(text: &str, out: &mut LogRecord) {
    if !text.contains('=') {
        return;
    }
    for token in text.split_whitespace().take(256) {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        let value = value.trim_matches(|c| matches!(c, '"' | '\'' | ',' | ';'));
        if value.is_empty() {
            continue;
        }
        let key = key.trim_matches(|c| matches!(c, '"' | '\''));
        if SEVERITY_KEYS.contains(&key) {
            if out.severity == 0 {
                if let Some((text, number)) = severity(&Value::String(value.to_owned())) {
                    out.severity = number;
                    out.severity_text = text;
                }
            }
        } else if TRACE_KEYS.contains(&key) {
            if out.trace_id.is_none() {
                out.trace_id = hex_id::<16>(value);
            }
        } else if SPAN_KEYS.contains(&key) {
            if out.span_id.is_none() {
                out.span_id = hex_id::<8>(value);
            }
        } else if let Some(base) = CORRELATION.iter().find(|base| {
            key.strip_prefix(**base)
                .is_some_and(|rest| matches!(rest, "_id" | "Id" | ".id"))
        }) {
            out.attr(&format!("{base}.id"), Attr::Str(value.to_owned()));
        }
    }
}

/// Severity text and number from a level given as text (any case, syslog names too) or as a
/// number: 0–7 are syslog severities, 10–60 pino/bunyan levels.
pub fn severity(v: &Value) -> Option<(String, u64)> {
    let named = |n: u64| -> Option<(String, u64)> {
        let number = match n {
            0 => 24,
            1 => 23,
            2 => 22,
            3 => 17,
            4 => 13,
            5 => 10,
            6 => 9,
            7 => 5,
            10 => 1,
            20 => 5,
            30 => 9,
            40 => 13,
            50 => 17,
            60 => 21,
            _ => return None,
        };
        Some((severity_name(number).to_owned(), number))
    };
    match v {
        Value::Number(n) => n.as_u64().and_then(named),
        Value::String(s) => {
            let t = s.trim();
            if let Ok(n) = t.parse::<u64>() {
                return named(n);
            }
            let number = match t.to_ascii_lowercase().as_str() {
                "trace" | "finest" | "verbose" => 1,
                "debug" | "dbg" | "fine" | "finer" | "d" => 5,
                "info" | "information" | "informational" | "i" | "log" => 9,
                "notice" => 10,
                "warn" | "warning" | "w" => 13,
                "error" | "err" | "e" | "severe" => 17,
                "fatal" | "f" => 21,
                "crit" | "critical" => 22,
                "alert" => 23,
                "emerg" | "emergency" | "panic" => 24,
                _ => return None,
            };
            Some((t.to_owned(), number))
        }
        _ => None,
    }
}

fn severity_name(number: u64) -> &'static str {
    match number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        _ => "FATAL",
    }
}

/// A timestamp as nanoseconds: numbers (and numeric strings) by magnitude — seconds (with a
/// fraction), milliseconds, microseconds or nanoseconds — or RFC 3339 / ISO 8601 text, also with a
/// space for the `T` (`java_sql_timestamp`); text without an offset is UTC (what Fluent Bit's
/// parsers assume for a time without `%z` unless `Time_Offset` / `Time_System_Timezone` is set).
pub fn time_nanos(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(i) => int_nanos(i),
            None => n.as_f64().and_then(float_nanos),
        },
        Value::String(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<u64>() {
                return int_nanos(i);
            }
            if let Ok(f) = t.parse::<f64>() {
                return float_nanos(f);
            }
            parse_rfc3339(t)
        }
        _ => None,
    }
}

/// `time_nanos`, with date-time text that has no offset read at `utc_offset_s` east of UTC
/// (numbers are epochs: UTC by definition).
pub fn time_nanos_at(v: &Value, utc_offset_s: i32) -> Option<u64> {
    let nanos = time_nanos(v)?;
    match v {
        Value::String(s) if utc_offset_s != 0 && is_zoneless_date_time(s.trim().as_bytes()) => {
            let shifted = i128::from(nanos) - i128::from(utc_offset_s) * 1_000_000_000;
            u64::try_from(shifted).ok().filter(|n| *n > 0)
        }
        _ => Some(nanos),
    }
}

/// `YYYY-MM-DD…` with nothing after the seconds that names a zone (`Z`, `+hh…`, `-hh…`).
fn is_zoneless_date_time(t: &[u8]) -> bool {
    t.len() >= 19 && t[4] == b'-' && !t[19..].iter().any(|c| matches!(c, b'Z' | b'z' | b'+' | b'-'))
}

fn int_nanos(i: u64) -> Option<u64> {
    if i == 0 {
        return None;
    }
    Some(if i < 100_000_000_000 {
        i.checked_mul(1_000_000_000)?
    } else if i < 100_000_000_000_000 {
        i * 1_000_000
    } else if i < 100_000_000_000_000_000 {
        i * 1_000
    } else {
        i
    })
}

fn float_nanos(f: f64) -> Option<u64> {
    if !(f.is_finite() && f > 0.0) {
        return None;
    }
    let scale = if f < 1e11 {
        1e9
    } else if f < 1e14 {
        1e6
    } else if f < 1e17 {
        1e3
    } else {
        1.0
    };
    let whole = f.trunc();
    let nanos = whole * scale + ((f - whole) * scale).round();
    (nanos < 1.8e19).then_some(nanos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn attr<'r>(r: &'r LogRecord, key: &str) -> Option<&'r Attr> {
        r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn res<'r>(r: &'r LogRecord, key: &str) -> Option<&'r str> {
        r.resource.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn severity_table() {
        let cases: &[(Value, Option<u64>)] = &[
            (json!("INFO"), Some(9)),
            (json!("warning"), Some(13)),
            (json!("Warn"), Some(13)),
            (json!("err"), Some(17)),
            (json!("CRIT"), Some(22)),
            (json!("emerg"), Some(24)),
            (json!("notice"), Some(10)),
            (json!("trace"), Some(1)),
            (json!("fatal"), Some(21)),
            (json!(3), Some(17)),
            (json!("6"), Some(9)),
            (json!(50), Some(17)),
            (json!(30), Some(9)),
            (json!(60), Some(21)),
            (json!(99), None),
            (json!("loud"), None),
            (json!(true), None),
        ];
        for (input, want) in cases {
            assert_eq!(severity(input).map(|s| s.1), *want, "{input}");
        }
        assert_eq!(severity(&json!(50)).unwrap().0, "ERROR");
        assert_eq!(severity(&json!("Warn")).unwrap().0, "Warn");
    }

    #[test]
    fn zoneless_text_at_the_default_offset() {
        let s = 1_795_936_387u64 * 1_000_000_000;
        // At +01:00, 08:13:07 written without a zone is 07:13:07 UTC.
        assert_eq!(time_nanos_at(&json!("2026-11-29T08:13:07"), 3600), Some(s));
        assert_eq!(
            time_nanos_at(&json!("2026-11-29 06:13:07.5"), -3600),
            Some(s + 500_000_000)
        );
        // An explicit zone, and epochs, are never shifted.
        assert_eq!(time_nanos_at(&json!("2026-11-29T07:13:07Z"), 3600), Some(s));
        assert_eq!(time_nanos_at(&json!("2026-11-29T08:13:07+01:00"), -7200), Some(s));
        assert_eq!(time_nanos_at(&json!("2026-11-29T06:13:07-0100"), 7200), Some(s));
        assert_eq!(time_nanos_at(&json!(1795936387), 3600), Some(s));
        assert_eq!(time_nanos_at(&json!("1795936387"), 3600), Some(s));
        assert_eq!(time_nanos_at(&json!("2026-11-29T07:13:07"), 0), Some(s));
        assert_eq!(time_nanos_at(&json!("1970-01-01T00:00:01"), 3600), None);
    }

    #[test]
    fn correlation_keys_follow_correlation() {
        let names: Vec<&str> = CORRELATION_KEYS.iter().map(|(_, n)| *n).collect();
        let want: Vec<String> = CORRELATION.iter().map(|b| format!("{b}.id")).collect();
        assert_eq!(names, want);
        for ((keys, _), base) in CORRELATION_KEYS.iter().zip(CORRELATION) {
            assert_eq!(*keys, [format!("{base}_id"), format!("{base}Id"), format!("{base}.id")]);
        }
    }

    #[test]
    fn time_table() {
        let s = 1_795_936_387u64;
        let cases: &[(Value, Option<u64>)] = &[
            (json!(1795936387.068743), Some(s * 1_000_000_000 + 68_743_000)),
            (json!(1795936387), Some(s * 1_000_000_000)),
            (json!(1795936387068u64), Some(s * 1_000_000_000 + 68_000_000)),
            (json!(1795936387068743u64), Some(s * 1_000_000_000 + 68_743_000)),
            (json!(1795936387068743001u64), Some(s * 1_000_000_000 + 68_743_001)),
            (
                json!("2026-11-29T07:13:07.068743Z"),
                Some(s * 1_000_000_000 + 68_743_000),
            ),
            (
                json!("2026-11-29 07:13:07.068743"),
                Some(s * 1_000_000_000 + 68_743_000),
            ),
            (json!("2026-11-29T08:13:07+01:00"), Some(s * 1_000_000_000)),
            (json!("2026-11-29T06:13:07-0100"), Some(s * 1_000_000_000)),
            // No offset: UTC, as Fluent Bit's parsers read a time without %z (no Time_Offset).
            (json!("2026-11-29T07:13:07"), Some(s * 1_000_000_000)),
            (json!("2026-11-29 07:13:07"), Some(s * 1_000_000_000)),
            (json!("2026-11-29t07:13:07.5z"), Some(s * 1_000_000_000 + 500_000_000)),
            (json!("2026-11-29T07:13"), None),
            (json!("29/Nov/2026:07:13:07 +0000"), None),
            (json!("1795936387"), Some(s * 1_000_000_000)),
            (json!("yesterday"), None),
            (json!(0), None),
            (json!(-5), None),
        ];
        for (input, want) in cases {
            let got = time_nanos(input);
            match (got, want) {
                (Some(g), Some(w)) => assert!(g.abs_diff(*w) < 1_000, "{input}: {g} vs {w}"),
                _ => assert_eq!(got, *want, "{input}"),
            }
        }
    }

    #[test]
    fn tail_line_with_json_app_and_kubernetes() {
        let r = convert(
            rec(json!({
                "date": 1795936387.5,
                "log": "{\"level\":\"error\",\"message\":\"boom\",\"job_id\":\"job-1\",\"trace_id\":\"5b8efff798038103d269b633813fc60c\",\"spanId\":\"eee19b7ec3c1b174\",\"rows\":3}",
                "stream": "stderr",
                "kubernetes": {"pod_name": "api-1", "namespace_name": "prod", "container_name": "api",
                               "host": "node-7", "docker_id": "abc123", "labels": {"app": "api"}},
                "__internal__": {"log_metadata": {}},
            })),
            None,
            "kube.var.log",
            7,
            0,
        );
        assert_eq!(r.body, "boom");
        assert_eq!((r.severity, r.severity_text.as_str()), (17, "error"));
        assert_eq!(r.time, Some(1_795_936_387_500_000_000));
        assert_eq!(r.observed, 7);
        assert_eq!(attr(&r, "job.id"), Some(&Attr::Str("job-1".into())));
        assert_eq!(r.trace_id.unwrap()[0], 0x5b);
        assert_eq!(r.span_id.unwrap()[7], 0x74);
        assert_eq!(attr(&r, "rows"), Some(&Attr::Int(3)));
        assert_eq!(attr(&r, "log.iostream"), Some(&Attr::Str("stderr".into())));
        assert_eq!(attr(&r, "fluent.tag"), Some(&Attr::Str("kube.var.log".into())));
        assert!(attr(&r, "__internal__").is_none() && attr(&r, "kubernetes.pod_name").is_none());
        assert_eq!(res(&r, "k8s.pod.name"), Some("api-1"));
        assert_eq!(res(&r, "k8s.namespace.name"), Some("prod"));
        assert_eq!(res(&r, "k8s.container.name"), Some("api"));
        assert_eq!(res(&r, "k8s.node.name"), Some("node-7"));
        assert_eq!(res(&r, "container.id"), Some("abc123"));
        assert_eq!(res(&r, "k8s.pod.label.app"), Some("api"));
    }

    #[test]
    fn correlation_table() {
        let cases: &[(Value, &str, &str)] = &[
            (json!({"msg": "x", "jobId": "j1"}), "job.id", "j1"),
            (json!({"msg": "x", "job.id": "j2"}), "job.id", "j2"),
            (json!({"msg": "x", "worker_id": 4}), "worker.id", "4"),
            (json!({"msg": "x", "machine_id": "m"}), "machine.id", "m"),
            (json!({"msg": "x", "sessionId": "s"}), "session.id", "s"),
            (json!({"msg": "x", "request_id": "r"}), "request.id", "r"),
            (json!({"msg": "started job_id=j9 worker_id=w2, ok"}), "job.id", "j9"),
            (json!({"msg": "started job_id=j9 worker_id=w2, ok"}), "worker.id", "w2"),
            (json!({"msg": "x", "trace_id": "not-hex"}), "trace_id", "not-hex"),
            (
                json!({"msg": "x", "event_type": "job.started"}),
                "event.name",
                "job.started",
            ),
        ];
        for (input, key, want) in cases {
            let r = convert(rec(input.clone()), None, "", 1, 0);
            assert_eq!(attr(&r, key), Some(&Attr::Str((*want).into())), "{input}");
        }
        let r = convert(
            rec(json!({"log": "done level=warn trace_id=5b8efff798038103d269b633813fc60c"})),
            None,
            "",
            1,
            0,
        );
        assert_eq!(r.severity, 13);
        assert!(r.trace_id.is_some());
    }

    #[test]
    fn whole_record_as_body_and_docker_fields() {
        let r = convert(rec(json!({"test": "message", "job_id": "j"})), Some(5), "logs", 9, 0);
        assert_eq!(r.body, r#"{"test":"message","job_id":"j"}"#);
        assert_eq!(r.time, Some(5));
        assert!(attr(&r, "test").is_none());
        assert_eq!(attr(&r, "job.id"), Some(&Attr::Str("j".into())));
        let r = convert(
            rec(
                json!({"log": "hi\n", "container_id": "c1", "container_name": "/web", "source": "stdout",
                       "nested": {"a": {"b": true}}, "list": [1, 2], "none": null}),
            ),
            None,
            "",
            9,
            0,
        );
        assert_eq!(r.body, "hi\n");
        assert_eq!(r.time, None);
        assert_eq!(res(&r, "container.id"), Some("c1"));
        assert_eq!(res(&r, "container.name"), Some("web"));
        assert_eq!(attr(&r, "log.iostream"), Some(&Attr::Str("stdout".into())));
        assert_eq!(attr(&r, "nested.a.b"), Some(&Attr::Bool(true)));
        assert_eq!(attr(&r, "list"), Some(&Attr::Str("[1,2]".into())));
        assert!(attr(&r, "none").is_none());
    }
}
