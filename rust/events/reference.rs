//! The events decoder and writers as they were before the fast path (issue 11), frozen as a
//! test oracle: the fast path must accept and refuse the same events with the same reasons and
//! write the same bus NDJSON and OTLP bytes (`equivalence` below and in `mod.rs`).
#![allow(dead_code, clippy::all)]

mod raw {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::value::RawValue;

    /// An object's members in body order (duplicates kept: the reader decides which wins).
    pub type Pairs<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

    /// One element of a body: an object, or anything else (refused as an event).
    pub enum Item<'a> {
        Event(Pairs<'a>),
        NotObject,
    }

    /// A whole body: one value, or an array of them.
    pub enum Body<'a> {
        One(Item<'a>),
        Many(Vec<Item<'a>>),
    }

    struct Key<'a>(Cow<'a, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Owned(v.to_owned())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Owned(v)))
                }
            }
            d.deserialize_str(V)
        }
    }

    fn read_pairs<'de, A: MapAccess<'de>>(mut map: A) -> Result<Pairs<'de>, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(12));
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Reads any value: an object as pairs, the rest skipped.
    struct ItemVisitor;

    macro_rules! not_object {
        ($($name:ident: $t:ty),*) => {
            $(fn $name<E: de::Error>(self, _: $t) -> Result<Self::Value, E> {
                Ok(Item::NotObject)
            })*
        };
    }

    impl<'de> Visitor<'de> for ItemVisitor {
        type Value = Item<'de>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Ok(Item::Event(read_pairs(map)?))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Item::NotObject)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Item::NotObject)
        }
        not_object!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    }

    impl<'de> Deserialize<'de> for Item<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(ItemVisitor)
        }
    }

    impl<'de> Deserialize<'de> for Body<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Body<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON event or an array of events")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(16));
                    while let Some(item) = seq.next_element::<Item<'de>>()? {
                        items.push(item);
                    }
                    Ok(Body::Many(items))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                    Ok(Body::One(Item::Event(read_pairs(map)?)))
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(Body::One(Item::NotObject))
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(Body::One(Item::NotObject))
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(Body::One(Item::NotObject))
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(Body::One(Item::NotObject))
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(Body::One(Item::NotObject))
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                    Ok(Body::One(Item::NotObject))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// An object's members (an error when `json` is not an object).
    pub fn pairs(json: &str) -> serde_json::Result<Pairs<'_>> {
        match serde_json::from_str::<Item<'_>>(json)? {
            Item::Event(pairs) => Ok(pairs),
            Item::NotObject => Err(de::Error::custom("not a JSON object")),
        }
    }

    /// A raw JSON string's text, borrowed when it holds no escape.
    pub fn string(raw: &RawValue) -> serde_json::Result<Cow<'_, str>> {
        serde_json::from_str::<Key<'_>>(raw.get()).map(|k| k.0)
    }

    /// Appends `s` as a JSON string.
    pub fn push_json_str(out: &mut String, s: &str) {
        out.push('"');
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            out.push_str(&s[start..i]);
            if escape.is_empty() {
                out.push_str(&format!("\\u{b:04x}"));
            } else {
                out.push_str(escape);
            }
            start = i + 1;
        }
        out.push_str(&s[start..]);
        out.push('"');
    }

    /// Appends valid JSON text without the whitespace outside its strings (so it fits on one line).
    pub fn minify_into(out: &mut String, json: &str) {
        let (mut in_string, mut escaped, mut start) = (false, false, 0);
        for (i, b) in json.bytes().enumerate() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
            } else if b == b'"' {
                in_string = true;
            } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                out.push_str(&json[start..i]);
                start = i + 1;
            }
        }
        out.push_str(&json[start..]);
    }
}

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use raw::{minify_into, Body, Item, Pairs};

use super::id;
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
fn event_from_pairs(pairs: &Pairs<'_>, now: u64) -> std::result::Result<Event, String> {
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
    .map_or_else(|| id::uuid_v7(time_unix_nano), Ok)?;
    let service = match get(K_SERVICE) {
        Some(raw) => raw_id("service", raw)?,
        None => None,
    };
    let mut ids = Vec::new();
    for (n, (key, _)) in ID_FIELDS.iter().enumerate() {
        if let Some(raw) = get(K_IDS + n) {
            if let Some(s) = raw_id(key, raw)? {
                ids.push((*key, s));
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
        ids,
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
    event_from_pairs(&pairs, now)
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
    let take = |out: &mut Decoded, item: std::result::Result<Item<'_>, String>| {
        let index = out.events.len() + out.rejected_count;
        match item.and_then(|item| match item {
            Item::Event(pairs) => event_from_pairs(&pairs, now),
            Item::NotObject => Err("an event must be a JSON object".into()),
        }) {
            Ok(event) => out.events.push(event),
            Err(reason) => out.reject(index, reason),
        }
    };
    match serde_json::from_slice::<Body<'_>>(text) {
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
            let lines = text
                .split(|&b| b == b'\n')
                .filter(|line| !line.trim_ascii().is_empty())
                .count();
            if lines <= 1 {
                return Err(CoreError::decode(format!(
                    "body is not JSON ({}): expected a JSON event, an array of events or NDJSON",
                    shorten(&whole.to_string())
                )));
            }
            if lines > MAX_EVENTS {
                return Err(CoreError::decode(format!("more than {MAX_EVENTS} events in one body")));
            }
            out.events.reserve(lines);
            for line in text.split(|&b| b == b'\n') {
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                let item = serde_json::from_slice::<Item<'_>>(line).map_err(|e| format!("not JSON: {e}"));
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
fn put_raw_any(any: &mut Vec<u8>, value: &RawValue) {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'"') => match raw::string(value) {
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
        // `data` is a valid object (the decoder wrote it); its members are read in place.
        for (key, value) in raw::pairs(&e.data).unwrap_or_default() {
            name.truncate("event.data.".len());
            name.push_str(&key);
            wire::put_message(lr, 6, |kv| {
                wire::put_bytes(kv, 1, name.as_bytes());
                wire::put_message(kv, 2, |any| put_raw_any(any, value));
            });
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
