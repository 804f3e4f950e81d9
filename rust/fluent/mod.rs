//! Fluent Bit and Fluentd logs → OTLP `ExportLogsServiceRequest`: the bodies of Fluent Bit's `http`
//! output (json, json_lines, json_stream, msgpack), of its `http` input (JSON object, array, NDJSON,
//! form), plain text, and the entries of the forward protocol. The result enters the pipeline as an
//! OTLP logs request does (sampling, enrichment, queue and exporters unchanged).

pub mod forward;
pub mod handshake;
pub mod msgpack;
pub mod node;
pub mod record;

use std::borrow::Cow;
use std::collections::HashMap;

use crate::error::{quote, CoreError, Result};
use crate::wire;
use msgpack::{Mp, Reader};
use node::{Entry, Node};

/// Scope name of the converted records.
pub const SCOPE_NAME: &str = "trackgate.fluent";
/// Distinct rejection reasons kept for the message; the rest are only counted.
const MAX_REASONS: usize = 3;

/// How a body is framed, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// JSON values back to back: an array of records (`json`), objects (`json_stream`), or one object.
    Json,
    /// One JSON value per line (`json_lines`, NDJSON): a bad line is refused alone.
    Lines,
    /// Fluent Bit events back to back: `[[time, {metadata}], {record}]` or `[time, {record}]`.
    Msgpack,
    /// A log line per line, as `{"log": line}`.
    Text,
    /// `application/x-www-form-urlencoded` (curl's default): JSON when it looks like JSON, else
    /// `key=value&…` as one record.
    Form,
}

impl BodyFormat {
    pub const SUPPORTED: &'static str = "application/json, application/x-ndjson, application/msgpack, text/plain, \
                                         application/x-www-form-urlencoded";

    /// From a media type (lower case, without parameters); `Unsupported` for others.
    pub fn from_media_type(media: &str) -> Result<Self> {
        Ok(match media {
            "application/json" | "" | "application/stream+json" | "application/x-json-stream" => BodyFormat::Json,
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonlines"
            | "application/x-jsonlines"
            | "application/json-lines"
            | "application/jsonl" => BodyFormat::Lines,
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => BodyFormat::Msgpack,
            "text/plain" => BodyFormat::Text,
            "application/x-www-form-urlencoded" => BodyFormat::Form,
            other => {
                return Err(CoreError::Unsupported(format!(
                    "unsupported content type {} for Fluent logs (supported: {})",
                    quote(other.as_bytes()),
                    Self::SUPPORTED
                )))
            }
        })
    }
}

/// One event before conversion: the event time (ns) when the framing carried one, and the record
/// (borrowing the body it was read from).
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub time: Option<u64>,
    pub record: Vec<Entry<'a>>,
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
    /// Per resource: its attributes as encoded `KeyValue`s (also the key of `index`), and the
    /// encoded `LogRecord`s.
    groups: Vec<(Vec<u8>, Vec<u8>)>,
    index: HashMap<Vec<u8>, usize>,
    /// The resource of the record being added, encoded.
    scratch: Vec<u8>,
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
            scratch: Vec::new(),
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

    pub fn add(&mut self, event: Event<'_>) {
        let (groups, index, scratch) = (&mut self.groups, &mut self.index, &mut self.scratch);
        let emit = |record: &record::LogRecord<'_>| {
            scratch.clear();
            record.encode_resource(scratch);
            let at = match index.get(scratch.as_slice()) {
                Some(&i) => i,
                None => {
                    index.insert(scratch.clone(), groups.len());
                    groups.push((scratch.clone(), Vec::new()));
                    groups.len() - 1
                }
            };
            wire::put_message(&mut groups[at].1, 2, |lr| record.encode(lr));
        };
        record::convert(
            event.record,
            event.time,
            &self.tag,
            self.observed,
            self.utc_offset_s,
            emit,
        );
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
                wire::put_message(rl, 1, |res| res.extend_from_slice(resource));
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
                let record = vec![(Cow::Borrowed("log"), Node::Str(String::from_utf8_lossy(line)))];
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
fn add_json(value: Node<'_>, where_: &dyn Fn() -> String, b: &mut LogsBuilder) {
    match value {
        Node::Object(record) => b.add(Event { time: None, record }),
        Node::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Node::Object(record) => b.add(Event { time: None, record }),
                    other => b.reject(format!("{} item {i} is {}, not an object", where_(), other.kind())),
                }
            }
        }
        other => b.reject(format!("{} is {}, not an object", where_(), other.kind())),
    }
}

fn json_values(body: &[u8], b: &mut LogsBuilder) -> Result<()> {
    for (n, value) in serde_json::Deserializer::from_slice(body)
        .into_iter::<Node<'_>>()
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
        match serde_json::from_slice::<Node<'_>>(line) {
            Ok(value) => add_json(value, &|| format!("line {}", n + 1), b),
            Err(e) => b.reject(format!("line {} is not JSON ({e}): {}", n + 1, quote(line))),
        }
    }
}

fn msgpack_events(body: &[u8], b: &mut LogsBuilder) -> Result<()> {
    let mut reader = Reader::new(body);
    let mut n = 0usize;
    while !reader.at_end() {
        let event = read_entry(&mut reader).map_err(|e| {
            let e: CoreError = e.into();
            CoreError::decode(format!("{e} (event {n} at byte {})", reader.position()))
        })?;
        match event {
            Ok(event) => b.add(event),
            Err(why) => b.reject(format!("event {n} {why}")),
        }
        n += 1;
    }
    Ok(())
}

/// A Fluent entry: `[time, record]`, `[[time, metadata], record]`, or a bare record map.
pub fn entry<'a>(value: &Mp<'a>) -> std::result::Result<Event<'a>, String> {
    match value {
        Mp::Map(_) => Ok(Event {
            time: None,
            record: to_record(value),
        }),
        Mp::Array(items) if items.len() == 2 => {
            let time = match &items[0] {
                Mp::Array(head) if !head.is_empty() => event_time(&head[0]),
                other => event_time(other),
            };
            match &items[1] {
                record @ Mp::Map(_) => Ok(Event {
                    time,
                    record: to_record(record),
                }),
                _ => Err("has a record that is not a map".into()),
            }
        }
        _ => Err("is not [time, record]".into()),
    }
}

/// The next entry, read straight into a record: `entry(&reader.value()?)` without the `Mp`
/// tree of the record (same errors, same refusals).
pub fn read_entry<'a>(
    reader: &mut Reader<'a>,
) -> std::result::Result<std::result::Result<Event<'a>, String>, msgpack::ReadError> {
    match reader.peek() {
        Some(0x80..=0x8f | 0xde | 0xdf) => {
            let Node::Object(record) = reader.node()? else {
                unreachable!("a map marker reads as an object")
            };
            return Ok(Ok(Event { time: None, record }));
        }
        Some(0x90..=0x9f | 0xdc | 0xdd) => {}
        _ => {
            reader.value()?;
            return Ok(Err("is not [time, record]".into()));
        }
    }
    let at = reader.position();
    if reader.array_header()? != Some(2) {
        reader.seek(at);
        reader.value()?;
        return Ok(Err("is not [time, record]".into()));
    }
    let time = match reader.value_in()? {
        Mp::Array(head) if !head.is_empty() => event_time(&head[0]),
        other => event_time(&other),
    };
    Ok(match reader.node_in()? {
        Node::Object(record) => Ok(Event { time, record }),
        _ => Err("has a record that is not a map".into()),
    })
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

fn to_record<'a>(v: &Mp<'a>) -> Vec<Entry<'a>> {
    match node::from_mp(v) {
        Node::Object(entries) => entries,
        _ => Vec::new(),
    }
}

/// `a=1&b=x%20y` as one record.
fn form_record(body: &[u8]) -> Vec<Entry<'static>> {
    let mut record = Vec::new();
    for pair in body.trim_ascii().split(|c| *c == b'&').filter(|p| !p.is_empty()) {
        let mut parts = pair.splitn(2, |c| *c == b'=');
        let key = percent_decode(parts.next().unwrap_or_default());
        let value = percent_decode(parts.next().unwrap_or_default());
        record.push((Cow::Owned(key), Node::Str(Cow::Owned(value))));
    }
    node::dedup(&mut record);
    record
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

#[cfg(test)]
mod equivalence_tests;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
