//! One Fluent record (a `Node` entry list, the event time, the tag) → one OTLP `LogRecord` and
//! the resource it belongs to, following the OTel semantic conventions for Kubernetes and
//! containers. The record borrows the body it was read from, and the `LogRecord` borrows the
//! record: a field's text reaches the protobuf without a copy.

use std::borrow::Cow;

use super::node::{self, Entry, Fields, Node};
use crate::sentry::{hex_id, parse_rfc3339, ANY_BOOL, ANY_DOUBLE, ANY_INT, ANY_STRING};
use crate::wire::{self, put_fixed64};

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

/// A resource attribute key: a fixed name, or a prefix and a label/annotation name, compared as
/// their concatenation (no `String` per label).
#[derive(Debug, Clone, Copy)]
pub struct ResKey<'r> {
    pub prefix: &'static str,
    pub name: &'r str,
}

impl ResKey<'_> {
    fn is(&self, other: &ResKey<'_>) -> bool {
        let (a, b) = if self.prefix.len() <= other.prefix.len() {
            (self, other)
        } else {
            (other, self)
        };
        if a.prefix.len() + a.name.len() != b.prefix.len() + b.name.len() {
            return false;
        }
        // `a.prefix` is the shorter head: it must start `b.prefix`, whose rest starts `a.name`.
        let (head, rest) = b.prefix.as_bytes().split_at(a.prefix.len());
        let (name_head, name_rest) = a.name.as_bytes().split_at(rest.len());
        head == a.prefix.as_bytes() && name_head == rest && name_rest == b.name.as_bytes()
    }
}

/// An attribute value, borrowing its text.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr<'r> {
    Str(Cow<'r, str>),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// One converted record.
#[derive(Debug)]
pub struct LogRecord<'r> {
    pub resource: Vec<(ResKey<'r>, Cow<'r, str>)>,
    pub time: Option<u64>,
    pub observed: u64,
    pub severity: u64,
    pub severity_text: Cow<'r, str>,
    pub body: &'r str,
    pub attributes: Vec<(Cow<'r, str>, Attr<'r>)>,
    pub trace_id: Option<[u8; 16]>,
    pub span_id: Option<[u8; 8]>,
}

impl<'r> LogRecord<'r> {
    fn attr(&mut self, key: Cow<'r, str>, value: Attr<'r>) {
        if !self.attributes.iter().any(|(k, _)| *k == key) {
            self.attributes.push((key, value));
        }
    }

    fn resource(&mut self, key: ResKey<'r>, value: Cow<'r, str>) {
        if !value.is_empty() && !self.resource.iter().any(|(k, _)| k.is(&key)) {
            self.resource.push((key, value));
        }
    }

    /// The resource's attributes as protobuf `KeyValue`s (field 1 of `Resource`): also the
    /// grouping key, since equal lists encode to equal bytes.
    pub fn encode_resource(&self, out: &mut Vec<u8>) {
        for (key, value) in &self.resource {
            wire::put_message(out, 1, |kv| {
                wire::put_tag(kv, 1, wire::LEN);
                wire::put_varint(kv, (key.prefix.len() + key.name.len()) as u64);
                kv.extend_from_slice(key.prefix.as_bytes());
                kv.extend_from_slice(key.name.as_bytes());
                wire::put_message(kv, 2, |any| wire::put_bytes(any, ANY_STRING, value.as_bytes()));
            });
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
            wire::put_message(out, 6, |kv| {
                wire::put_bytes(kv, 1, key.as_bytes());
                wire::put_message(kv, 2, |any| match value {
                    Attr::Str(s) => wire::put_bytes(any, ANY_STRING, s.as_bytes()),
                    Attr::Bool(b) => wire::put_uint(any, ANY_BOOL, u64::from(*b)),
                    Attr::Int(i) => wire::put_uint(any, ANY_INT, *i as u64),
                    Attr::Double(d) => put_fixed64(any, ANY_DOUBLE, d.to_bits()),
                });
            });
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

fn fixed(key: &'static str) -> ResKey<'static> {
    ResKey { prefix: key, name: "" }
}

/// Converts one record and hands the result to `emit`. `event_time` (ns) wins over any time
/// field; `observed` (ns) is the receive time and also stands in for a missing timestamp. A time
/// field written without an offset is read at `utc_offset_s` seconds east of UTC
/// (`[receivers.fluent] default_utc_offset`).
pub fn convert<T>(
    mut rec: Vec<Entry<'_>>,
    event_time: Option<u64>,
    tag: &str,
    observed: u64,
    utc_offset_s: i32,
    emit: impl FnOnce(&LogRecord<'_>) -> T,
) -> T {
    node::remove(&mut rec, "__internal__");
    // Body: the first body key; a JSON object inside it (a JSON-logging app under `tail`) is
    // lifted into the record and its own message becomes the body.
    let text: Option<Cow<'_, str>> = take_first(&mut rec, BODY_KEYS).map(text_of);
    // Rebound: from here the record may also hold entries borrowing `text` (the lifted JSON).
    let mut rec = rec;
    let mut body: Option<Cow<'_, str>> = None;
    if let Some(text) = &text {
        match parse_object(text) {
            Some(inner) => {
                for (k, v) in inner {
                    if node::get(&rec, &k).is_none() {
                        rec.push((k, v));
                    }
                }
                body = Some(match take_first(&mut rec, BODY_KEYS) {
                    Some(v) => text_of(v),
                    None => Cow::Borrowed(text.as_ref()),
                });
            }
            None => body = Some(Cow::Borrowed(text.as_ref())),
        }
    }
    let whole: String = match body {
        None => Fields(&rec).to_json(),
        Some(_) => String::new(),
    };
    let mut out = LogRecord {
        resource: Vec::with_capacity(if k8s_present(&rec) { 16 } else { 0 }),
        time: event_time,
        observed,
        severity: 0,
        severity_text: Cow::Borrowed(""),
        body: body.as_deref().unwrap_or(&whole),
        attributes: Vec::with_capacity(rec.len() + 2),
        trace_id: None,
        span_id: None,
    };
    if out.time.is_none() {
        out.time = take_time(&mut rec, utc_offset_s);
    }
    if let Some((text, number)) = take_severity(&mut rec) {
        out.severity = number;
        out.severity_text = text;
    }
    // Correlation ids.
    for (keys, name) in CORRELATION_KEYS {
        if let Some(id) = take_first(&mut rec, keys).and_then(scalar) {
            out.attr(Cow::Borrowed(name), Attr::Str(id));
        }
    }
    lift_id(&mut rec, TRACE_KEYS, "trace_id", &mut out, |s, out| {
        hex_id::<16>(s).map(|id| out.trace_id = Some(id)).is_some()
    });
    lift_id(&mut rec, SPAN_KEYS, "span_id", &mut out, |s, out| {
        hex_id::<8>(s).map(|id| out.span_id = Some(id)).is_some()
    });
    if let Some(name) = node::remove(&mut rec, "event_type").and_then(scalar) {
        out.attr(Cow::Borrowed("event.name"), Attr::Str(name));
    }
    // Resource: the kubernetes filter's object, then container/service/host fields.
    let k8s = match node::remove(&mut rec, "kubernetes") {
        Some(Node::Object(k8s)) => k8s,
        _ => Vec::new(),
    };
    for (field, key) in KUBERNETES {
        if let Some(v) = node::get(&k8s, field).and_then(scalar_ref) {
            out.resource(fixed(key), v);
        }
    }
    for (group, prefix) in [("labels", "k8s.pod.label."), ("annotations", "k8s.pod.annotation.")] {
        if let Some(Node::Object(map)) = node::get(&k8s, group) {
            for (k, v) in map {
                if let Some(v) = scalar_ref(v) {
                    out.resource(ResKey { prefix, name: k }, v);
                }
            }
        }
    }
    for (field, key) in RESOURCE_FIELDS {
        if let Some(v) = node::remove(&mut rec, field).and_then(scalar) {
            let v = if *field == "container_name" {
                match v {
                    Cow::Borrowed(s) => Cow::Borrowed(s.trim_start_matches('/')),
                    Cow::Owned(s) => Cow::Owned(s.trim_start_matches('/').to_owned()),
                }
            } else {
                v
            };
            out.resource(fixed(key), v);
        }
    }
    for key in ["stream", "source"] {
        if let Some("stdout" | "stderr") = node::get(&rec, key).and_then(Node::as_str) {
            if let Some(Node::Str(v)) = node::remove(&mut rec, key) {
                out.attr(Cow::Borrowed("log.iostream"), Attr::Str(v));
            }
        }
    }
    // `key=value` pairs in the text of the line, for what the fields did not carry.
    if let Some(text) = &body {
        lift_from_text(text, &mut out);
    }
    if !tag.is_empty() {
        out.attr(Cow::Borrowed("fluent.tag"), Attr::Str(Cow::Borrowed(tag)));
    }
    if body.is_some() {
        for (k, v) in rec {
            flatten(k, v, 0, &mut out);
        }
    }
    emit(&out)
}

fn k8s_present(rec: &[Entry<'_>]) -> bool {
    matches!(node::get(rec, "kubernetes"), Some(Node::Object(_)))
}

/// A body value as text: a string as it is, anything else as JSON.
fn text_of(v: Node<'_>) -> Cow<'_, str> {
    match v {
        Node::Str(s) => s,
        other => Cow::Owned(other.to_json()),
    }
}

/// A trace/span id in hex becomes the record's id; anything else stays as an attribute.
fn lift_id<'r>(
    rec: &mut Vec<Entry<'r>>,
    keys: &[&str],
    attr: &'static str,
    out: &mut LogRecord<'r>,
    lift: impl Fn(&str, &mut LogRecord<'r>) -> bool,
) {
    let Some(text) = take_first(rec, keys).and_then(scalar) else {
        return;
    };
    if !lift(text.trim(), out) {
        out.attr(Cow::Borrowed(attr), Attr::Str(text));
    }
}

/// Removes and returns the value of the first of `keys` that is present and not null.
fn take_first<'r>(rec: &mut Vec<Entry<'r>>, keys: &[&str]) -> Option<Node<'r>> {
    for key in keys {
        match node::get(rec, key) {
            None | Some(Node::Null) => continue,
            Some(_) => return node::remove(rec, key),
        }
    }
    None
}

/// The first time key whose value parses; only that key is removed.
fn take_time(rec: &mut Vec<Entry<'_>>, utc_offset_s: i32) -> Option<u64> {
    for key in TIME_KEYS {
        if let Some(t) = node::get(rec, key).and_then(|v| time_nanos_at(v, utc_offset_s)) {
            node::remove(rec, key);
            return Some(t);
        }
    }
    None
}

/// The first severity key whose value reads as a level; only that key is removed.
fn take_severity<'r>(rec: &mut Vec<Entry<'r>>) -> Option<(Cow<'r, str>, u64)> {
    for key in SEVERITY_KEYS {
        if let Some((name, number)) = node::get(rec, key).and_then(severity) {
            let text = match (name, node::remove(rec, key)) {
                (Some(name), _) => Cow::Borrowed(name),
                (None, Some(Node::Str(s))) => trim_cow(s),
                (None, _) => Cow::Borrowed(""),
            };
            return Some((text, number));
        }
    }
    None
}

fn trim_cow(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
        Cow::Owned(s) if s.trim().len() == s.len() => Cow::Owned(s),
        Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
    }
}

/// The text of `{…}`, parsed as a JSON object (its strings borrow `text`).
fn parse_object(text: &str) -> Option<Vec<Entry<'_>>> {
    let t = text.trim();
    if !(t.starts_with('{') && t.ends_with('}')) {
        return None;
    }
    match serde_json::from_str(t) {
        Ok(Node::Object(entries)) => Some(entries),
        _ => None,
    }
}

/// A scalar as text (strings not empty), taking the node.
fn scalar(v: Node<'_>) -> Option<Cow<'_, str>> {
    match v {
        Node::Str(s) if !s.is_empty() => Some(s),
        Node::UInt(_) | Node::Int(_) | Node::Float(_) | Node::Bool(_) => Some(Cow::Owned(v.to_json())),
        _ => None,
    }
}

/// `scalar` of a node that stays in its record.
fn scalar_ref<'r>(v: &'r Node<'_>) -> Option<Cow<'r, str>> {
    match v {
        Node::Str(s) if !s.is_empty() => Some(Cow::Borrowed(s)),
        Node::UInt(_) | Node::Int(_) | Node::Float(_) | Node::Bool(_) => Some(Cow::Owned(v.to_json())),
        _ => None,
    }
}

fn flatten<'r>(key: Cow<'r, str>, value: Node<'r>, depth: usize, out: &mut LogRecord<'r>) {
    match value {
        Node::Null => {}
        Node::Str(s) => out.attr(key, Attr::Str(s)),
        Node::Bool(b) => out.attr(key, Attr::Bool(b)),
        Node::UInt(u) => match i64::try_from(u) {
            Ok(i) => out.attr(key, Attr::Int(i)),
            Err(_) => out.attr(key, Attr::Double(u as f64)),
        },
        Node::Int(i) => out.attr(key, Attr::Int(i)),
        Node::Float(f) => out.attr(key, Attr::Double(f)),
        Node::Object(map) if depth < FLATTEN_DEPTH => {
            for (k, v) in map {
                flatten(Cow::Owned(format!("{key}.{k}")), v, depth + 1, out);
            }
        }
        other => out.attr(key, Attr::Str(Cow::Owned(other.to_json()))),
    }
}

/// Correlation ids and the level written as `key=value` in the text (`job_id=j-1 level=warn`).
fn lift_from_text<'r>(text: &'r str, out: &mut LogRecord<'r>) {
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
                if let Some((name, number)) = severity_of_text(value) {
                    out.severity = number;
                    out.severity_text = Cow::Borrowed(name.unwrap_or(value.trim()));
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
        } else if let Some(at) = CORRELATION.iter().position(|base| {
            key.strip_prefix(*base)
                .is_some_and(|rest| matches!(rest, "_id" | "Id" | ".id"))
        }) {
            out.attr(Cow::Borrowed(CORRELATION_KEYS[at].1), Attr::Str(Cow::Borrowed(value)));
        }
    }
}

/// Severity from a level given as text (any case, syslog names too) or as a number: 0–7 are
/// syslog severities, 10–60 pino/bunyan levels. The text is the level's name for a number
/// (`Some`), else the value itself, trimmed (`None`).
pub fn severity(v: &Node<'_>) -> Option<(Option<&'static str>, u64)> {
    match v {
        Node::UInt(n) => named(*n),
        Node::Str(s) => severity_of_text(s),
        _ => None,
    }
}

fn named(n: u64) -> Option<(Option<&'static str>, u64)> {
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
    Some((Some(severity_name(number)), number))
}

fn severity_of_text(s: &str) -> Option<(Option<&'static str>, u64)> {
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
    Some((None, number))
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
pub fn time_nanos(v: &Node<'_>) -> Option<u64> {
    match v {
        Node::UInt(i) => int_nanos(*i),
        Node::Int(i) => float_nanos(*i as f64),
        Node::Float(f) => float_nanos(*f),
        Node::Str(s) => {
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
pub fn time_nanos_at(v: &Node<'_>, utc_offset_s: i32) -> Option<u64> {
    let nanos = time_nanos(v)?;
    match v {
        Node::Str(s) if utc_offset_s != 0 && is_zoneless_date_time(s.trim().as_bytes()) => {
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
        i.checked_mul(1_000_000)?
    } else if i < 100_000_000_000_000_000 {
        i.checked_mul(1_000)?
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
    use serde_json::{json, Value};

    /// A node parsed from the JSON text of `v` (leaked: tests only).
    fn node(v: Value) -> Node<'static> {
        let text: &'static str = Box::leak(v.to_string().into_boxed_str());
        serde_json::from_str(text).unwrap()
    }

    fn rec(v: Value) -> Vec<Entry<'static>> {
        match node(v) {
            Node::Object(entries) => entries,
            _ => panic!("not an object"),
        }
    }

    /// What `convert` handed out, owned.
    struct Out {
        resource: Vec<(String, String)>,
        time: Option<u64>,
        observed: u64,
        severity: u64,
        severity_text: String,
        body: String,
        attributes: Vec<(String, Attr<'static>)>,
        trace_id: Option<[u8; 16]>,
        span_id: Option<[u8; 8]>,
    }

    fn convert(rec: Vec<Entry<'_>>, event_time: Option<u64>, tag: &str, observed: u64, offset: i32) -> Out {
        super::convert(rec, event_time, tag, observed, offset, |r| Out {
            resource: r
                .resource
                .iter()
                .map(|(k, v)| (format!("{}{}", k.prefix, k.name), v.to_string()))
                .collect(),
            time: r.time,
            observed: r.observed,
            severity: r.severity,
            severity_text: r.severity_text.to_string(),
            body: r.body.to_owned(),
            attributes: r
                .attributes
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Attr::Str(s) => Attr::Str(Cow::Owned(s.to_string())),
                        Attr::Int(i) => Attr::Int(*i),
                        Attr::Double(d) => Attr::Double(*d),
                        Attr::Bool(b) => Attr::Bool(*b),
                    };
                    (k.to_string(), v)
                })
                .collect(),
            trace_id: r.trace_id,
            span_id: r.span_id,
        })
    }

    fn attr<'r>(r: &'r Out, key: &str) -> Option<&'r Attr<'static>> {
        r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn res<'r>(r: &'r Out, key: &str) -> Option<&'r str> {
        r.resource.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Severity number and text as the record carries them.
    fn sev(v: Value) -> Option<(String, u64)> {
        let r = convert(rec(json!({"msg": "x", "level": v})), None, "", 1, 0);
        (r.severity != 0).then_some((r.severity_text, r.severity))
    }

    #[test]
    fn resource_keys_compare_as_their_text() {
        let k = |prefix: &'static str, name: &'static str| ResKey { prefix, name };
        assert!(k("k8s.pod.label.", "app").is(&k("k8s.pod.label.app", "")));
        assert!(k("k8s.pod.label.app", "").is(&k("k8s.pod.", "label.app")));
        assert!(k("a", "").is(&k("", "a")));
        assert!(!k("a.", "b").is(&k("a.", "c")));
        assert!(!k("ab", "").is(&k("a", "c")));
        assert!(!k("a", "bc").is(&k("ab", "")));
        assert!(!k("ba", "c").is(&k("b", "bc")));
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
            assert_eq!(severity(&node(input.clone())).map(|s| s.1), *want, "{input}");
        }
        assert_eq!(sev(json!(50)).unwrap().0, "ERROR");
        assert_eq!(sev(json!(" Warn ")).unwrap().0, "Warn");
    }

    #[test]
    fn zoneless_text_at_the_default_offset() {
        let s = 1_795_936_387u64 * 1_000_000_000;
        // At +01:00, 08:13:07 written without a zone is 07:13:07 UTC.
        assert_eq!(time_nanos_at(&node(json!("2026-11-29T08:13:07")), 3600), Some(s));
        assert_eq!(
            time_nanos_at(&node(json!("2026-11-29 06:13:07.5")), -3600),
            Some(s + 500_000_000)
        );
        // An explicit zone, and epochs, are never shifted.
        assert_eq!(time_nanos_at(&node(json!("2026-11-29T07:13:07Z")), 3600), Some(s));
        assert_eq!(time_nanos_at(&node(json!("2026-11-29T08:13:07+01:00")), -7200), Some(s));
        assert_eq!(time_nanos_at(&node(json!("2026-11-29T06:13:07-0100")), 7200), Some(s));
        assert_eq!(time_nanos_at(&node(json!(1795936387)), 3600), Some(s));
        assert_eq!(time_nanos_at(&node(json!("1795936387")), 3600), Some(s));
        assert_eq!(time_nanos_at(&node(json!("2026-11-29T07:13:07")), 0), Some(s));
        assert_eq!(time_nanos_at(&node(json!("1970-01-01T00:00:01")), 3600), None);
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
            // Milliseconds or microseconds past what u64 nanoseconds hold: no time (was a
            // wrapped multiplication).
            (json!(99_999_999_999_999u64), None),
            (json!(99_999_999_999_999_999u64), None),
        ];
        for (input, want) in cases {
            let got = time_nanos(&node(input.clone()));
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
        assert_eq!(attr(&r, "job.id"), Some(&Attr::Str(Cow::Borrowed("job-1"))));
        assert_eq!(r.trace_id.unwrap()[0], 0x5b);
        assert_eq!(r.span_id.unwrap()[7], 0x74);
        assert_eq!(attr(&r, "rows"), Some(&Attr::Int(3)));
        assert_eq!(attr(&r, "log.iostream"), Some(&Attr::Str(Cow::Borrowed("stderr"))));
        assert_eq!(attr(&r, "fluent.tag"), Some(&Attr::Str(Cow::Borrowed("kube.var.log"))));
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
        assert_eq!(attr(&r, "job.id"), Some(&Attr::Str(Cow::Borrowed("j"))));
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
        assert_eq!(attr(&r, "log.iostream"), Some(&Attr::Str(Cow::Borrowed("stdout"))));
        assert_eq!(attr(&r, "nested.a.b"), Some(&Attr::Bool(true)));
        assert_eq!(attr(&r, "list"), Some(&Attr::Str(Cow::Borrowed("[1,2]"))));
        assert!(attr(&r, "none").is_none());
    }
}
