//! Operational events (track 1): `POST /v1/events` bodies decoded, validated and normalized.
//!
//! A body is one JSON event, a JSON array of events, or NDJSON (one event per line). Each event is
//! checked on its own: an invalid one is refused with its index and reason, the valid ones in the
//! same body go on. Decoding is typed and borrowing: each event object is read once into its
//! (key, raw value) pairs (no `Value` tree, no order-preserving map), the known fields are read
//! from their raw text and `data` is kept as compact JSON text. A valid event comes out
//! normalized (`Event`), written two ways:
//! - `to_ndjson`: one compact JSON object per line, what the event-bus queue holds and the Redis
//!   exporter appends to the stream;
//! - `to_otlp_logs`: an OTLP `ExportLogsServiceRequest` (protobuf), one LogRecord per event with
//!   `event_name` set and the correlation ids as the attributes the other tracks use.

pub mod bus;
#[cfg(test)]
mod equivalence;
pub mod from_logs;
pub mod id;
pub mod metrics;
mod raw;
#[cfg(test)]
mod reference;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use raw::{minify_into, Body, Item, Pairs};

use crate::error::{quote, shorten, CoreError, Result};
use crate::wire::{self, put_fixed64};

/// The job lifecycle types (the default set taken from logs as events).
pub const LIFECYCLE_TYPES: &[&str] = &[
    "job_received",
    "job_started",
    "job_progress",
    "job_completed",
    "job_failed",
];
/// Optional id fields: (event key, OTLP attribute). `event_id` and `trace_id` are handled apart.
pub const ID_FIELDS: &[(&str, &str)] = &[
    ("job_id", "job.id"),
    ("worker_id", "worker.id"),
    ("machine_id", "machine.id"),
    ("session_id", "session.id"),
    ("request_id", "request.id"),
];
/// Longest `event_type` and id value accepted.
pub const MAX_TYPE_CHARS: usize = 128;
pub const MAX_ID_CHARS: usize = 256;
/// Most events one body may hold (each refused one costs a line of the answer).
pub const MAX_EVENTS: usize = 100_000;
/// Reasons listed in the answer at most; the rest are counted.
pub const MAX_REASONS: usize = 100;

const SEVERITY_INFO: u64 = 9;
const SEVERITY_ERROR: u64 = 17;
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;

/// One valid event, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    /// snake_case (`jobCompleted` → `job_completed`).
    pub event_type: String,
    pub time_unix_nano: u64,
    pub service: Option<String>,
    /// Present ids, in `ID_FIELDS` order: (event key, value).
    pub ids: Vec<(&'static str, String)>,
    /// 32 lowercase hex digits.
    pub trace_id: Option<String>,
    /// A JSON object, compact (no whitespace outside strings, so never a newline).
    pub data: String,
}

/// What one body decoded to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decoded {
    pub events: Vec<Event>,
    /// Refused events: (index in the body, reason), the first `MAX_REASONS` of them.
    pub rejected: Vec<(usize, String)>,
    pub rejected_count: usize,
}

impl Decoded {
    /// The partial-success message: every listed reason, then how many more were refused.
    pub fn error_message(&self) -> String {
        let mut parts: Vec<String> = self.rejected.iter().map(|(i, r)| format!("event {i}: {r}")).collect();
        if self.rejected_count > self.rejected.len() {
            parts.push(format!("and {} more", self.rejected_count - self.rejected.len()));
        }
        parts.join("; ")
    }

    fn reject(&mut self, index: usize, reason: String) {
        self.rejected_count += 1;
        if self.rejected.len() < MAX_REASONS {
            self.rejected.push((index, reason));
        }
    }
}

/// `jobCompleted`, `JobCompleted`, `job-completed`, `job.completed` → `job_completed`; a name with
/// anything but ASCII letters, digits, `_`, `-`, `.`, `:` is refused (it names a stream).
pub fn normalize_type(raw: &str) -> std::result::Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("event_type is empty".into());
    }
    if raw.chars().count() > MAX_TYPE_CHARS {
        return Err(format!("event_type is longer than {MAX_TYPE_CHARS} characters"));
    }
    // Already snake_case (the usual case): nothing to rewrite.
    let bytes = raw.as_bytes();
    if bytes.len() <= MAX_TYPE_CHARS
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b':'))
        && !bytes.windows(2).any(|w| w == b"__")
    {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len() + 4);
    let mut prev_lower_or_digit = false;
    for c in raw.chars() {
        match c {
            'A'..='Z' => {
                if prev_lower_or_digit {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
                prev_lower_or_digit = false;
            }
            'a'..='z' | '0'..='9' => {
                out.push(c);
                prev_lower_or_digit = true;
            }
            '_' | '-' | '.' => {
                if !out.ends_with('_') {
                    out.push('_');
                }
                prev_lower_or_digit = false;
            }
            ':' => {
                out.push(':');
                prev_lower_or_digit = false;
            }
            _ => {
                return Err(format!(
                    "event_type {} has a character other than A-Z a-z 0-9 _ - . :",
                    quote(raw.as_bytes())
                ))
            }
        }
    }
    Ok(out)
}

/// Epoch numbers by magnitude: seconds below 1e11, milliseconds below 1e14, microseconds below
/// 1e17, else nanoseconds (any date after 1973 reads right).
pub fn epoch_to_nanos(value: f64) -> Option<u64> {
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let nanos = if value < 1e11 {
        value * 1e9
    } else if value < 1e14 {
        value * 1e6
    } else if value < 1e17 {
        value * 1e3
    } else {
        value
    };
    (nanos < 1.8e19).then_some(nanos.round() as u64)
}

/// `epoch_to_nanos` for integers, exactly.
pub fn epoch_int_to_nanos(value: u64) -> Option<u64> {
    match value {
        0..100_000_000_000 => value.checked_mul(1_000_000_000),
        100_000_000_000..100_000_000_000_000 => value.checked_mul(1_000_000),
        100_000_000_000_000..100_000_000_000_000_000 => value.checked_mul(1_000),
        _ => Some(value),
    }
}

fn timestamp(value: &Value) -> std::result::Result<u64, String> {
    match value {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                // Integers scaled exactly (an f64 would round nanoseconds).
                return epoch_int_to_nanos(u).ok_or_else(|| format!("timestamp {n} is not a valid epoch time"));
            }
            n.as_f64()
                .and_then(epoch_to_nanos)
                .ok_or_else(|| format!("timestamp {n} is not a valid epoch time"))
        }
        Value::String(s) => crate::sentry::parse_rfc3339(s)
            .or_else(|| s.trim().parse::<u64>().ok().and_then(epoch_int_to_nanos))
            .or_else(|| s.trim().parse::<f64>().ok().and_then(epoch_to_nanos))
            .ok_or_else(|| {
                format!(
                    "timestamp {} is neither RFC 3339 nor epoch s/ms/us/ns",
                    quote(s.as_bytes())
                )
            }),
        _ => Err("timestamp must be a string (RFC 3339) or a number (epoch)".into()),
    }
}

/// A raw timestamp: an integer read straight from its digits, anything else through `timestamp`.
fn raw_timestamp(raw: &RawValue) -> std::result::Result<u64, String> {
    let text = raw.get();
    if !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(u) = text.parse::<u64>() {
            return epoch_int_to_nanos(u).ok_or_else(|| format!("timestamp {u} is not a valid epoch time"));
        }
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("timestamp: {e}"))?;
    timestamp(&value)
}

/// An id field's raw value: a string (trimmed) or an integer; null or empty: absent.
fn raw_id(key: &str, raw: &RawValue) -> std::result::Result<Option<String>, String> {
    let text = raw.get();
    let s = match text.as_bytes().first() {
        Some(b'"') => {
            let s: std::borrow::Cow<'_, str> = raw::string(raw).map_err(|_| format!("{key} must be a string"))?;
            s.trim().to_owned()
        }
        Some(b'n') => return Ok(None),
        Some(b'-' | b'0'..=b'9') if text.bytes().skip(1).all(|b| b.is_ascii_digit()) => {
            match serde_json::from_str::<serde_json::Number>(text) {
                Ok(n) if n.is_u64() || n.is_i64() => n.to_string(),
                _ => return Err(format!("{key} must be a string")),
            }
        }
        _ => return Err(format!("{key} must be a string")),
    };
    if s.is_empty() {
        return Ok(None);
    }
    if s.chars().count() > MAX_ID_CHARS {
        return Err(format!("{key} is longer than {MAX_ID_CHARS} characters"));
    }
    Ok(Some(s))
}

/// The known keys: (snake_case, camelCase) → slot in `Known`.
const KNOWN: &[(&str, &str)] = &[
    ("event_type", "eventType"),
    ("timestamp", "timestamp"),
    ("event_id", "eventId"),
    ("service", "service"),
    ("job_id", "jobId"),
    ("worker_id", "workerId"),
    ("machine_id", "machineId"),
    ("session_id", "sessionId"),
    ("request_id", "requestId"),
    ("trace_id", "traceId"),
    ("data", "data"),
];
const K_TYPE: usize = 0;
const K_TIME: usize = 1;
const K_EVENT_ID: usize = 2;
const K_SERVICE: usize = 3;
const K_IDS: usize = 4; // ..K_IDS + ID_FIELDS.len()
const K_TRACE: usize = 9;
const K_DATA: usize = 10;

fn known_slot(key: &str) -> Option<(usize, bool)> {
    KNOWN.iter().enumerate().find_map(|(i, (snake, camel))| {
        if key == *snake {
            Some((i, true))
        } else if key == *camel {
            Some((i, false))
        } else {
            None
        }
    })
}

/// Validates and normalizes one event read as (key, raw value) pairs. `now` (Unix ns) stands in
/// for a missing timestamp.
fn event_from_pairs(pairs: &Pairs<'_>, now: u64, ids: &mut id::IdGen) -> std::result::Result<Event, String> {
    // Per known key: the raw value, snake_case winning over camelCase, the last of each winning.
    let mut known: [Option<(&RawValue, bool)>; 11] = [None; 11];
    let mut extra = false;
    for (key, value) in pairs {
        match known_slot(key) {
            Some((slot, snake)) => {
                if snake || !known[slot].is_some_and(|(_, s)| s) {
                    known[slot] = Some((*value, snake));
                }
            }
            None => extra = true,
        }
    }
    let get = |slot: usize| known[slot].map(|(v, _)| v);
    let event_type = match get(K_TYPE) {
        Some(raw) if raw.get().starts_with('"') => {
            normalize_type(&raw::string(raw).map_err(|_| "event_type must be a string".to_string())?)?
        }
        Some(_) => return Err("event_type must be a string".into()),
        None => return Err("event_type is missing".into()),
    };
    let time_unix_nano = match get(K_TIME) {
        Some(raw) if raw.get() != "null" => raw_timestamp(raw)?,
        _ => now,
    };
    let event_id = match get(K_EVENT_ID) {
        Some(raw) => raw_id("event_id", raw)?,
        None => None,
    }
    .unwrap_or_else(|| ids.issue());
    let service = match get(K_SERVICE) {
        Some(raw) => raw_id("service", raw)?,
        None => None,
    };
    let mut present = Vec::new();
    for (n, (key, _)) in ID_FIELDS.iter().enumerate() {
        if let Some(raw) = get(K_IDS + n) {
            if let Some(s) = raw_id(key, raw)? {
                present.push((*key, s));
            }
        }
    }
    let trace_id = match get(K_TRACE) {
        Some(raw) => match raw_id("trace_id", raw)? {
            Some(s) => {
                let hex = s.to_ascii_lowercase();
                if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || hex.bytes().all(|b| b == b'0') {
                    return Err(format!(
                        "trace_id {} is not 32 hex digits (non-zero)",
                        quote(s.as_bytes())
                    ));
                }
                Some(hex)
            }
            None => None,
        },
        None => None,
    };
    let data_raw = match get(K_DATA) {
        Some(raw) if raw.get().starts_with('{') => Some(raw),
        Some(raw) if raw.get() == "null" => None,
        Some(_) => return Err("data must be a JSON object".into()),
        None => None,
    };
    let mut data = String::with_capacity(data_raw.map_or(2, |r| r.get().len()));
    match data_raw {
        Some(raw) if !extra => minify_into(&mut data, raw.get()),
        _ if !extra => data.push_str("{}"),
        _ => {
            // Other top-level keys (a ConnectorLogger line's `duration`, `error`…) join `data`;
            // a key `data` already has wins.
            let inner: Pairs<'_> = match data_raw {
                Some(raw) => raw::pairs(raw.get()).map_err(|_| "data must be a JSON object".to_string())?,
                None => Pairs::new(),
            };
            data.push('{');
            let mut first = true;
            let mut put = |data: &mut String, key: &str, value: &RawValue| {
                if !first {
                    data.push(',');
                }
                first = false;
                raw::push_json_str(data, key);
                data.push(':');
                minify_into(data, value.get());
            };
            for (key, value) in &inner {
                put(&mut data, key, value);
            }
            for (key, value) in pairs {
                if known_slot(key).is_none() && !inner.iter().any(|(k, _)| k == key) {
                    put(&mut data, key, value);
                }
            }
            data.push('}');
        }
    }
    Ok(Event {
        event_id,
        event_type,
        time_unix_nano,
        service,
        ids: present,
        trace_id,
        data,
    })
}

/// Validates and normalizes one event given as a `Value` (events found in logs, queued events).
pub fn event_from_value(value: Value, now: u64) -> std::result::Result<Event, String> {
    if !value.is_object() {
        return Err("an event must be a JSON object".into());
    }
    let text = value.to_string();
    let pairs = raw::pairs(&text).map_err(|e| format!("not JSON: {e}"))?;
    event_from_pairs(&pairs, now, &mut id::IdGen::new())
}

/// Where `part` (a slice of `whole`) starts in it.
fn offset(whole: &str, part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// Now, in nanoseconds since the Unix epoch (an event's default time, a record's observed time).
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Scrubs each accepted event's `data` with `scrubber`; returns how many it changed.
pub fn scrub_data(decoded: &mut Decoded, scrubber: &crate::scrub::Scrubber) -> usize {
    let mut scrubbed = 0;
    for event in &mut decoded.events {
        let mut data = event.data_value();
        if scrubber.scrub_value(&mut data) {
            scrubbed += 1;
            event.data = data.to_string();
        }
    }
    scrubbed
}

/// Decodes a (decompressed) body: one event, an array of events, or NDJSON.
///
/// Errors (`Decode`, HTTP 400) only when nothing in the body can be read as events at all: not
/// UTF-8 JSON, or more than `MAX_EVENTS`. A body with events that are all invalid decodes to
/// zero events and every reason.
pub fn decode(body: &[u8], now: u64) -> Result<Decoded> {
    let text = body.trim_ascii();
    if text.is_empty() {
        return Err(CoreError::decode(
            "empty body: expected a JSON event, an array of events or NDJSON",
        ));
    }
    let mut out = Decoded::default();
    let mut ids = id::IdGen::new();
    // Valid UTF-8 (the usual case) is parsed as text, so serde_json does not check each string
    // and raw value again; otherwise as bytes, for the same errors as ever.
    let utf8 = std::str::from_utf8(text).ok();
    let mut take = |out: &mut Decoded, item: std::result::Result<Item<'_>, String>| {
        let index = out.events.len() + out.rejected_count;
        match item.and_then(|item| match item {
            Item::Event(pairs) => event_from_pairs(&pairs, now, &mut ids),
            Item::NotObject => Err("an event must be a JSON object".into()),
        }) {
            Ok(event) => out.events.push(event),
            Err(reason) => out.reject(index, reason),
        }
    };
    let whole = match utf8 {
        Some(s) => serde_json::from_str::<Body<'_>>(s),
        None => serde_json::from_slice::<Body<'_>>(text),
    };
    match whole {
        Ok(Body::Many(items)) => {
            if items.len() > MAX_EVENTS {
                return Err(CoreError::decode(format!("more than {MAX_EVENTS} events in one body")));
            }
            out.events.reserve(items.len());
            for item in items {
                take(&mut out, Ok(item));
            }
        }
        Ok(Body::One(item)) => take(&mut out, Ok(item)),
        Err(whole) => {
            // NDJSON: each non-blank line on its own; a line that does not parse is one refused event.
            // Split once (memchr), blank lines dropped.
            let mut lines: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', text).chain(std::iter::once(text.len())) {
                let line = text[start..end].trim_ascii();
                start = end + 1;
                if !line.is_empty() {
                    if lines.len() == MAX_EVENTS {
                        return Err(CoreError::decode(format!("more than {MAX_EVENTS} events in one body")));
                    }
                    lines.push(line);
                }
            }
            if lines.len() <= 1 {
                return Err(CoreError::decode(format!(
                    "body is not JSON ({}): expected a JSON event, an array of events or NDJSON",
                    shorten(&whole.to_string())
                )));
            }
            out.events.reserve(lines.len());
            for line in lines {
                let item = match utf8 {
                    // A line of valid UTF-8 split at an ASCII byte is valid UTF-8.
                    Some(s) => serde_json::from_str::<Item<'_>>(&s[offset(s, line)..][..line.len()]),
                    None => serde_json::from_slice::<Item<'_>>(line),
                }
                .map_err(|e| format!("not JSON: {e}"));
                take(&mut out, item);
            }
        }
    }
    Ok(out)
}

impl Event {
    /// The normalized event as one JSON object (field order fixed).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("event_id".into(), Value::String(self.event_id.clone()));
        m.insert("event_type".into(), Value::String(self.event_type.clone()));
        m.insert("time_unix_nano".into(), Value::from(self.time_unix_nano));
        if let Some(s) = &self.service {
            m.insert("service".into(), Value::String(s.clone()));
        }
        for (k, v) in &self.ids {
            m.insert((*k).into(), Value::String(v.clone()));
        }
        if let Some(t) = &self.trace_id {
            m.insert("trace_id".into(), Value::String(t.clone()));
        }
        m.insert("data".into(), self.data_value());
        Value::Object(m)
    }

    /// `data` parsed.
    pub fn data_value(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| Value::Object(Map::new()))
    }

    pub fn id(&self, key: &str) -> Option<&str> {
        self.ids.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }
}

/// One compact JSON object per line, each line ending in `\n` (so queued entries concatenate).
/// Written field by field (the same object as `Event::to_json`, without building it); `data` is
/// compact JSON already and goes in as it is.
pub fn to_ndjson(events: &[Event]) -> Vec<u8> {
    fn field(out: &mut String, key: &str, value: &str) {
        out.push(',');
        raw::push_json_str(out, key);
        out.push(':');
        raw::push_json_str(out, value);
    }
    let mut out = String::with_capacity(events.iter().map(|e| e.data.len() + 256).sum());
    for e in events {
        out.push_str("{\"event_id\":");
        raw::push_json_str(&mut out, &e.event_id);
        field(&mut out, "event_type", &e.event_type);
        out.push_str(",\"time_unix_nano\":");
        out.push_str(itoa_u64(e.time_unix_nano, &mut [0u8; 20]));
        if let Some(s) = &e.service {
            field(&mut out, "service", s);
        }
        for (k, v) in &e.ids {
            field(&mut out, k, v);
        }
        if let Some(t) = &e.trace_id {
            field(&mut out, "trace_id", t);
        }
        out.push_str(",\"data\":");
        out.push_str(&e.data);
        out.push_str("}\n");
    }
    out.into_bytes()
}

/// `n` in decimal, written into `buf`.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

/// Parses what `to_ndjson` wrote (the queue's entries) back into events.
pub fn from_ndjson(body: &[u8]) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        if line.trim_ascii().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_slice(line).map_err(|e| CoreError::decode(format!("queued event: {e}")))?;
        let mut v = v;
        // `time_unix_nano` is ours; read it back as the timestamp.
        if let Value::Object(m) = &mut v {
            if let Some(t) = m.shift_remove("time_unix_nano") {
                m.insert("timestamp".into(), t);
            }
        }
        events.push(event_from_value(v, 0).map_err(CoreError::decode)?);
    }
    Ok(events)
}

/// A `data` member's raw value as an `AnyValue`: strings, booleans, integers (i64), doubles; null,
/// objects and arrays as their JSON text.
fn put_raw_any(any: &mut Vec<u8>, text: &str) {
    match text.as_bytes().first() {
        Some(b'"') => match raw::str_text(text) {
            Ok(s) => wire::put_bytes(any, ANY_STRING, s.as_bytes()),
            Err(_) => wire::put_bytes(any, ANY_STRING, text.as_bytes()),
        },
        Some(b't') => wire::put_uint(any, ANY_BOOL, 1),
        Some(b'f') => wire::put_uint(any, ANY_BOOL, 0),
        Some(b'-' | b'0'..=b'9') => match text.parse::<i64>() {
            Ok(i) => wire::put_uint(any, ANY_INT, i as u64),
            Err(_) => put_fixed64(any, ANY_DOUBLE, text.parse::<f64>().unwrap_or(0.0).to_bits()),
        },
        _ => wire::put_bytes(any, ANY_STRING, text.as_bytes()),
    }
}

fn put_str_kv(out: &mut Vec<u8>, number: u32, key: &str, value: &str) {
    wire::put_message(out, number, |kv| {
        wire::put_bytes(kv, 1, key.as_bytes());
        wire::put_message(kv, 2, |any| wire::put_bytes(any, ANY_STRING, value.as_bytes()));
    });
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn put_record(lr: &mut Vec<u8>, e: &Event, observed: u64, name: &mut String) {
    put_fixed64(lr, 1, e.time_unix_nano);
    let failed = e.event_type.ends_with("failed") || e.event_type.ends_with("error");
    wire::put_uint(lr, 2, if failed { SEVERITY_ERROR } else { SEVERITY_INFO });
    wire::put_bytes(lr, 3, if failed { b"ERROR" } else { b"INFO" });
    wire::put_message(lr, 5, |any| wire::put_bytes(any, ANY_STRING, e.event_type.as_bytes()));
    put_str_kv(lr, 6, "event.name", &e.event_type);
    put_str_kv(lr, 6, "event.id", &e.event_id);
    for (key, value) in &e.ids {
        let attr = ID_FIELDS.iter().find(|(k, _)| k == key).map_or(*key, |(_, a)| a);
        put_str_kv(lr, 6, attr, value);
    }
    if e.data.len() > 2 {
        // `data` is a valid compact object (the decoder wrote it); its members are read in place.
        fn put(lr: &mut Vec<u8>, name: &mut String, key: &str, value: &str) {
            name.truncate("event.data.".len());
            name.push_str(key);
            wire::put_message(lr, 6, |kv| {
                wire::put_bytes(kv, 1, name.as_bytes());
                wire::put_message(kv, 2, |any| put_raw_any(any, value));
            });
        }
        let mark = lr.len();
        if !raw::compact_members(&e.data, |key, value| put(lr, name, key, value)) {
            // Not compact after all: undone, then the general reader.
            lr.truncate(mark);
            for (key, value) in raw::pairs(&e.data).unwrap_or_default() {
                put(lr, name, &key, value.get());
            }
        }
    }
    if let Some(id) = e.trace_id.as_deref().and_then(hex16) {
        wire::put_bytes(lr, 9, &id);
    }
    put_fixed64(lr, 11, observed);
    wire::put_bytes(lr, 12, e.event_type.as_bytes());
}

/// An `ExportLogsServiceRequest`: one ResourceLogs per `service` (as `service.name`), scope
/// `trackgate.events`, one LogRecord per event with `event_name` (field 12) set.
pub fn to_otlp_logs(events: &[Event], observed: u64) -> Vec<u8> {
    let mut services: Vec<Option<&str>> = Vec::new();
    for e in events {
        if !services.contains(&e.service.as_deref()) {
            services.push(e.service.as_deref());
        }
    }
    let mut out = Vec::with_capacity(events.iter().map(|e| e.data.len() + 200).sum());
    let mut name = String::from("event.data.");
    for service in services {
        wire::put_message(&mut out, 1, |rl| {
            wire::put_message(rl, 1, |res| {
                put_str_kv(res, 1, "service.name", service.unwrap_or("unknown_service"));
            });
            wire::put_message(rl, 2, |sl| {
                wire::put_message(sl, 1, |scope| wire::put_bytes(scope, 1, b"trackgate.events"));
                for e in events.iter().filter(|e| e.service.as_deref() == service) {
                    wire::put_message(sl, 2, |lr| put_record(lr, e, observed, &mut name));
                }
            });
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn one(json: &str) -> std::result::Result<Event, String> {
        event_from_pairs(&raw::pairs(json).unwrap(), NOW, &mut id::IdGen::new())
    }

    #[test]
    fn types_normalized() {
        for (raw, want) in [
            ("jobCompleted", "job_completed"),
            ("JobFailed", "job_failed"),
            ("job_started", "job_started"),
            ("job-progress", "job_progress"),
            ("deploy.done", "deploy_done"),
            ("gpu2Ready", "gpu2_ready"),
        ] {
            assert_eq!(normalize_type(raw).unwrap(), want, "{raw}");
        }
        assert!(normalize_type("").is_err());
        assert!(normalize_type("job completed").is_err());
        assert!(normalize_type(&"a".repeat(200)).is_err());
    }

    #[test]
    fn timestamps_by_magnitude() {
        let secs = 1_714_564_800u64;
        let want = secs * 1_000_000_000;
        for v in [
            Value::from(secs),
            Value::from(secs * 1000),
            Value::from(secs * 1_000_000),
            Value::from(want),
            Value::from("2024-05-01T12:00:00Z"),
            Value::from("1714564800"),
        ] {
            assert_eq!(timestamp(&v).unwrap(), want, "{v}");
        }
        assert_eq!(timestamp(&Value::from(1.5)).unwrap(), 1_500_000_000);
        assert_eq!(
            timestamp(&Value::from(1_714_564_800_123u64)).unwrap(),
            1_714_564_800_123_000_000
        );
        assert!(timestamp(&Value::from("yesterday")).is_err());
        assert!(timestamp(&Value::from(-1)).is_err());
        assert!(timestamp(&Value::Bool(true)).is_err());
    }

    #[test]
    fn event_normalized_with_aliases_and_assigned_id() {
        let e = one(
            r#"{"event_type":"jobCompleted","jobId":"j1","worker_id":7,"service":"ocr",
            "trace_id":"0AF7651916CD43DD8448EB211C80319C","data":{"duration_ms":1200},"outputSize":5}"#,
        )
        .unwrap();
        assert_eq!(e.event_type, "job_completed");
        assert_eq!(e.id("job_id"), Some("j1"));
        assert_eq!(e.id("worker_id"), Some("7"));
        assert_eq!(e.trace_id.as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(e.time_unix_nano, NOW);
        assert_eq!(e.data_value()["duration_ms"], 1200);
        assert_eq!(e.data_value()["outputSize"], 5);
        assert_eq!(e.event_id.len(), 36);
        let again = one(r#"{"event_type":"x","event_id":"abc"}"#).unwrap();
        assert_eq!(again.event_id, "abc");
    }

    #[test]
    fn invalid_events_have_reasons() {
        for (json, reason) in [
            ("[1]", "an event must be a JSON object"),
            (r#"{"job_id":"j"}"#, "event_type is missing"),
            (r#"{"event_type":5}"#, "event_type must be a string"),
            (r#"{"event_type":"a b"}"#, "character other than"),
            (r#"{"event_type":"x","timestamp":"soon"}"#, "neither RFC 3339"),
            (r#"{"event_type":"x","job_id":{"a":1}}"#, "job_id must be a string"),
            (r#"{"event_type":"x","trace_id":"xyz"}"#, "not 32 hex digits"),
            (r#"{"event_type":"x","data":[1]}"#, "data must be a JSON object"),
        ] {
            let d = decode(json.as_bytes(), NOW).unwrap();
            let err = &d.rejected[0].1;
            assert!(err.contains(reason), "{json}: {err}");
        }
    }

    #[test]
    fn bodies_single_array_ndjson_mixed() {
        let d = decode(br#"{"event_type":"a"}"#, NOW).unwrap();
        assert_eq!((d.events.len(), d.rejected_count), (1, 0));
        let d = decode(br#"[{"event_type":"a"},{"nope":1},{"event_type":"b"}]"#, NOW).unwrap();
        assert_eq!((d.events.len(), d.rejected_count), (2, 1));
        assert_eq!(d.rejected[0], (1, "event_type is missing".to_string()));
        assert!(d.error_message().starts_with("event 1: event_type is missing"));
        let d = decode(b"{\"event_type\":\"a\"}\n\n{bad\n{\"event_type\":\"c\"}\n", NOW).unwrap();
        assert_eq!(d.events.len(), 2);
        assert_eq!(d.rejected[0].0, 1);
        assert!(d.rejected[0].1.starts_with("not JSON"));
        assert!(decode(b"", NOW).is_err());
        assert!(decode(b"{nope", NOW).is_err());
    }

    #[test]
    fn data_survives_both_writers_whatever_its_text() {
        let datas = [
            r#"{}"#,
            r#"{ "a" : 1 , "b" : [ 1 , { "c" : "x y" } ] }"#,
            r#"{"q":"quote \" backslash \\ tab \t nl \n u \u0001 é 😀","n":-1.5e3,"big":18446744073709551615}"#,
            "{\n  \"pretty\": true,\n  \"nested\": {\"k\": null}\n}",
            r#"{"dup":1,"dup":2}"#,
        ];
        for data in datas {
            let body = format!(r#"{{"event_type":"job_progress","data":{data},"extra key":"v \" w","jobId":"j"}}"#);
            let d = decode(body.as_bytes(), NOW).unwrap();
            assert_eq!(d.events.len(), 1, "{body}: {:?}", d.rejected);
            let nd = to_ndjson(&d.events);
            assert_eq!(nd.iter().filter(|&&b| b == b'\n').count(), 1, "one line: {body}");
            let line: Value = serde_json::from_slice(&nd).unwrap();
            let mut want: Value = serde_json::from_str(data).unwrap();
            want.as_object_mut()
                .unwrap()
                .insert("extra key".into(), Value::from("v \" w"));
            assert_eq!(line["data"], want, "{body}");
            assert_eq!(line["job_id"], "j");
            let otlp = to_otlp_logs(&d.events, NOW);
            crate::json_encode::protobuf_to_json(crate::signal::Signal::Logs, &otlp).unwrap();
        }
        // Every cut of a valid body decodes or fails cleanly.
        let body =
            br#"[{"event_type":"a","data":{"x":"y\u00e9","z":[1,{"w":null}]},"timestamp":"2024-05-01T12:00:00Z"}]"#;
        for cut in 0..body.len() {
            let _ = decode(&body[..cut], NOW);
        }
    }

    #[test]
    fn ids_unique_and_ordered() {
        let d = decode(&b"{\"event_type\":\"a\"}\n".repeat(1000), NOW).unwrap();
        let ids: Vec<_> = d.events.iter().map(|e| e.event_id.clone()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids, "assigned ids are unique and increasing");
    }

    #[test]
    fn ndjson_round_trip_and_otlp() {
        let d = decode(
            br#"[{"event_type":"job_failed","job_id":"j1","service":"s","data":{"error":"boom"},"trace_id":"0af7651916cd43dd8448eb211c80319c"},{"event_type":"job_started","job_id":"j2"}]"#,
            NOW,
        )
        .unwrap();
        let nd = to_ndjson(&d.events);
        assert_eq!(nd.iter().filter(|&&b| b == b'\n').count(), 2);
        for (line, e) in nd.split(|&b| b == b'\n').zip(&d.events) {
            assert_eq!(serde_json::from_slice::<Value>(line).unwrap(), e.to_json());
        }
        assert_eq!(from_ndjson(&nd).unwrap(), d.events);
        let otlp = to_otlp_logs(&d.events, NOW);
        let json = crate::json_encode::protobuf_to_json(crate::signal::Signal::Logs, &otlp).unwrap();
        let v: Value = serde_json::from_slice(&json).unwrap();
        let rl = v["resourceLogs"].as_array().unwrap();
        assert_eq!(rl.len(), 2, "one resource per service");
        let rec = &rl[0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(rec["severityNumber"], 17);
        let attrs = rec["attributes"].as_array().unwrap();
        let get = |k: &str| {
            attrs
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"]["stringValue"].clone())
        };
        assert_eq!(get("event.name").unwrap(), "job_failed");
        assert_eq!(get("job.id").unwrap(), "j1");
        assert_eq!(get("event.data.error").unwrap(), "boom");
        assert_eq!(rec["traceId"], "0af7651916cd43dd8448eb211c80319c");
    }
}
