//! The first Fluent conversion, kept for tests only: records as `serde_json::Value` trees, mapped
//! by `record::convert`. The streaming conversion (`super::node`, `super::record`) must write the
//! same bytes for every input (`super::equivalence_tests`), so this is the oracle that pins the
//! mapping.
#![allow(dead_code)]

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

use super::msgpack::{Mp, Reader};
use super::BodyFormat;
use crate::envelope::json_type;
use crate::error::{quote, CoreError, Result};
use crate::wire;
use record::{put_kv, Attr, Resource};

use super::SCOPE_NAME;
/// Distinct rejection reasons kept for the message; the rest are only counted.
const MAX_REASONS: usize = 3;

/// One event before conversion: the event time (ns) when the framing carried one, and the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: Option<u64>,
    pub record: Map<String, Value>,
}

/// Records converted from one body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    /// A valid `ExportLogsServiceRequest`; empty when no record converted.
    pub payload: Vec<u8>,
    pub records: u64,
    /// Events that could not be read as a record (not a map, a bad line), refused alone.
    pub rejected: u64,
    pub error_message: String,
}

/// Collects events and refusals, groups the records by resource and writes the request.
#[derive(Debug)]
pub struct LogsBuilder {
    tag: String,
    observed: u64,
    utc_offset_s: i32,
    groups: Vec<(Resource, Vec<u8>)>,
    index: HashMap<Resource, usize>,
    records: u64,
    rejected: u64,
    reasons: Vec<String>,
}

impl LogsBuilder {
    pub fn new(tag: &str, observed: u64) -> Self {
        LogsBuilder {
            tag: tag.to_owned(),
            observed,
            utc_offset_s: 0,
            groups: Vec::new(),
            index: HashMap::new(),
            records: 0,
            rejected: 0,
            reasons: Vec::new(),
        }
    }

    /// Reads time fields written without an offset at `utc_offset_s` east of UTC (default UTC).
    pub fn with_utc_offset(mut self, utc_offset_s: i32) -> Self {
        self.utc_offset_s = utc_offset_s;
        self
    }

    pub fn set_tag(&mut self, tag: &str) {
        tag.clone_into(&mut self.tag);
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn add(&mut self, event: Event) {
        let record = record::convert(event.record, event.time, &self.tag, self.observed, self.utc_offset_s);
        let at = match self.index.get(&record.resource) {
            Some(&i) => i,
            None => {
                self.index.insert(record.resource.clone(), self.groups.len());
                self.groups.push((record.resource.clone(), Vec::new()));
                self.groups.len() - 1
            }
        };
        wire::put_message(&mut self.groups[at].1, 2, |lr| record.encode(lr));
        self.records += 1;
    }

    pub fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(reason);
        }
    }

    pub fn finish(self) -> Converted {
        let mut payload = Vec::new();
        for (resource, records) in &self.groups {
            wire::put_message(&mut payload, 1, |rl| {
                wire::put_message(rl, 1, |res| {
                    for (key, value) in resource {
                        put_kv(res, 1, key, &Attr::Str(value.clone()));
                    }
                });
                wire::put_message(rl, 2, |sl| {
                    wire::put_message(sl, 1, |scope| wire::put_bytes(scope, 1, SCOPE_NAME.as_bytes()));
                    sl.extend_from_slice(records);
                });
            });
        }
        let error_message = if self.rejected == 0 {
            String::new()
        } else {
            let more = self.rejected - self.reasons.len() as u64;
            let mut m = format!(
                "{} Fluent record{} refused: {}",
                self.rejected,
                if self.rejected == 1 { "" } else { "s" },
                self.reasons.join("; ")
            );
            if more > 0 {
                m.push_str(&format!("; and {more} more"));
            }
            m
        };
        Converted {
            payload,
            records: self.records,
            rejected: self.rejected,
            error_message,
        }
    }
}

/// Converts one (decompressed) body. Errors (`Decode`) only when the framing itself is broken;
/// a single event that is not a record is refused and counted.
pub fn convert_body(body: &[u8], format: BodyFormat, tag: &str, observed: u64) -> Result<Converted> {
    convert_body_at(body, format, tag, observed, 0)
}

/// `convert_body`, with time fields that carry no offset read at `utc_offset_s` east of UTC.
pub fn convert_body_at(
    body: &[u8],
    format: BodyFormat,
    tag: &str,
    observed: u64,
    utc_offset_s: i32,
) -> Result<Converted> {
    let mut b = LogsBuilder::new(tag, observed).with_utc_offset(utc_offset_s);
    match format {
        BodyFormat::Json => json_values(body, &mut b)?,
        BodyFormat::Lines => json_lines(body, &mut b),
        BodyFormat::Msgpack => msgpack_events(body, &mut b)?,
        BodyFormat::Text => {
            for line in lines(body) {
                let mut record = Map::new();
                record.insert("log".into(), Value::String(String::from_utf8_lossy(line).into_owned()));
                b.add(Event { time: None, record });
            }
        }
        BodyFormat::Form => {
            let t = body.trim_ascii_start();
            if t.starts_with(b"{") || t.starts_with(b"[") {
                json_values(body, &mut b)?;
            } else if !t.is_empty() {
                b.add(Event {
                    time: None,
                    record: form_record(body),
                });
            }
        }
    }
    Ok(b.finish())
}

fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|c| *c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.trim_ascii().is_empty())
}

/// One JSON value: an object is a record, an array holds records.
fn add_json(value: Value, where_: &dyn Fn() -> String, b: &mut LogsBuilder) {
    match value {
        Value::Object(record) => b.add(Event { time: None, record }),
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(record) => b.add(Event { time: None, record }),
                    other => b.reject(format!("{} item {i} is {}, not an object", where_(), json_type(&other))),
                }
            }
        }
        other => b.reject(format!("{} is {}, not an object", where_(), json_type(&other))),
    }
}

fn json_values(body: &[u8], b: &mut LogsBuilder) -> Result<()> {
    for (n, value) in serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .enumerate()
    {
        let value = value.map_err(|e| CoreError::decode(format!("invalid JSON in Fluent body: {e}")))?;
        add_json(value, &|| format!("value {n}"), b);
    }
    Ok(())
}

fn json_lines(body: &[u8], b: &mut LogsBuilder) {
    for (n, line) in body.split(|c| *c == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(value) => add_json(value, &|| format!("line {}", n + 1), b),
            Err(e) => b.reject(format!("line {} is not JSON ({e}): {}", n + 1, quote(line))),
        }
    }
}

fn msgpack_events(body: &[u8], b: &mut LogsBuilder) -> Result<()> {
    let mut reader = Reader::new(body);
    let mut n = 0usize;
    while !reader.at_end() {
        let value = reader.value().map_err(|e| {
            let e: CoreError = e.into();
            CoreError::decode(format!("{e} (event {n} at byte {})", reader.position()))
        })?;
        match entry(&value) {
            Ok(event) => b.add(event),
            Err(why) => b.reject(format!("event {n} {why}")),
        }
        n += 1;
    }
    Ok(())
}

/// A Fluent entry: `[time, record]`, `[[time, metadata], record]`, or a bare record map.
pub fn entry(value: &Mp<'_>) -> std::result::Result<Event, String> {
    match value {
        Mp::Map(_) => Ok(Event {
            time: None,
            record: to_map(value),
        }),
        Mp::Array(items) if items.len() == 2 => {
            let time = match &items[0] {
                Mp::Array(head) if !head.is_empty() => event_time(&head[0]),
                other => event_time(other),
            };
            match &items[1] {
                record @ Mp::Map(_) => Ok(Event {
                    time,
                    record: to_map(record),
                }),
                _ => Err("has a record that is not a map".into()),
            }
        }
        _ => Err("is not [time, record]".into()),
    }
}

/// EventTime (ext 0: u32 seconds, u32 nanoseconds, big-endian), integer or float seconds.
pub fn event_time(v: &Mp<'_>) -> Option<u64> {
    match v {
        Mp::Ext(0, data) if data.len() == 8 => {
            let secs = u64::from(u32::from_be_bytes(data[..4].try_into().ok()?));
            let nanos = u64::from(u32::from_be_bytes(data[4..].try_into().ok()?));
            let t = secs * 1_000_000_000 + nanos;
            (t > 0).then_some(t)
        }
        Mp::UInt(s) if *s > 0 => s.checked_mul(1_000_000_000),
        Mp::Int(s) if *s > 0 => (*s as u64).checked_mul(1_000_000_000),
        Mp::Float(f) if f.is_finite() && *f > 0.0 && *f < 1.8e10 => Some((f * 1e9).round() as u64),
        _ => None,
    }
}

fn to_map(v: &Mp<'_>) -> Map<String, Value> {
    match to_json(v) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A msgpack value as JSON: strings and binaries as (lossy) text, EventTime as float seconds.
pub fn to_json(v: &Mp<'_>) -> Value {
    match v {
        Mp::Nil => Value::Null,
        Mp::Bool(b) => Value::Bool(*b),
        Mp::Int(i) => Value::Number((*i).into()),
        Mp::UInt(u) => Value::Number((*u).into()),
        Mp::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Mp::Str(s) | Mp::Bin(s) => Value::String(String::from_utf8_lossy(s).into_owned()),
        Mp::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Mp::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Mp::Str(s) | Mp::Bin(s) => String::from_utf8_lossy(s).into_owned(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Mp::Ext(_, _) => event_time(v)
            .and_then(|t| Number::from_f64(t as f64 / 1e9))
            .map_or(Value::Null, Value::Number),
    }
}

/// `a=1&b=x%20y` as one record.
fn form_record(body: &[u8]) -> Map<String, Value> {
    let mut map = Map::new();
    for pair in body.trim_ascii().split(|c| *c == b'&').filter(|p| !p.is_empty()) {
        let mut parts = pair.splitn(2, |c| *c == b'=');
        let key = percent_decode(parts.next().unwrap_or_default());
        let value = percent_decode(parts.next().unwrap_or_default());
        map.insert(key, Value::String(value));
    }
    map
}

fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let hex = std::str::from_utf8(&s[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub mod record {
    // One Fluent record (a JSON-like map, the event time, the tag) → one OTLP `LogRecord` and the
    // resource it belongs to, following the OTel semantic conventions for Kubernetes and containers.

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
}
