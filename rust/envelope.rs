//! Sentry envelopes: parse into zero-copy item slices, and write back out.
//!
//! An envelope is a header line (a JSON object, possibly `{}`), then items. Each item is a header
//! line (a JSON object with `type` and optionally `length`), a newline, and a payload: with
//! `length`, exactly that many bytes followed by a newline or the end of the body; without it,
//! everything up to the next newline or the end. The final newline is optional.
//!
//! Headers are parsed to check them and to read the few keys the gateway acts on; they are
//! forwarded as the bytes they arrived as, so unknown keys and unknown item types pass through
//! untouched. Only an item whose payload is replaced gets a rewritten header (its `length`).
//!
//! Header lines are capped at `MAX_HEADER_LINE` bytes, checked before they are parsed. Item
//! headers are checked as JSON but only `type`, `length` and `content_type` are kept: the rest is
//! skipped without building values, so the memory an envelope costs does not grow with what its
//! item headers hold. `header_dsn` reads the envelope header's `dsn` the same way, to
//! authenticate a request from its first line before the rest is read.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{quote, shorten, CoreError, Result};

/// Most items one envelope may hold. SDKs send a handful (logs and sessions are batched into one
/// item each); the cap bounds the memory a body of tiny items can cost.
pub const MAX_ITEMS: usize = 10_000;

/// Longest envelope or item header line, in bytes (without its newline). SDKs write a few hundred
/// bytes; the cap bounds what a header costs to parse before the request is authenticated.
pub const MAX_HEADER_LINE: usize = 64 * 1024;

/// A parsed envelope. Every slice borrows the body it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<'a> {
    /// The envelope header line as received, without its newline.
    pub header_raw: &'a [u8],
    /// The envelope header, parsed.
    pub header: Map<String, Value>,
    /// `event_id` from the header, normalized to 32 lowercase hex digits.
    pub event_id: Option<String>,
    pub items: Vec<Item<'a>>,
}

/// One item of an envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    /// Position among the envelope's items, from 0 (for messages).
    pub index: usize,
    /// The `type` header (`event`, `attachment`, ... or anything else).
    pub ty: String,
    /// The `length` header, when present.
    pub length: Option<usize>,
    /// The `content_type` header, when it is a string. Other keys are only in `header_raw`.
    pub content_type: Option<String>,
    /// The item header line as received, without its newline.
    pub header_raw: &'a [u8],
    pub payload: &'a [u8],
    /// The whole item as received: header line, newline, payload and its terminating newline
    /// (absent when the item ended the body without one).
    pub raw: &'a [u8],
}

impl Item<'_> {
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// A short name for messages: `item 2 (attachment)` (a long type cut short).
    pub fn describe(&self) -> String {
        describe(self.index, &self.ty)
    }
}

/// Parses an envelope (already decompressed).
///
/// Errors (`CoreError::Decode`, naming the item by index): an empty body; a header that is not
/// a JSON object; more than one `sent_at`; an `event_id` that is not a UUID; an item header that
/// is not a JSON object, lacks a string `type`, or has a `length` that is not a non-negative
/// integer; a sized payload that runs past the end or is followed by something other than a
/// newline; more than `MAX_ITEMS` items. `CoreError::LineTooLong`: a header line over
/// `MAX_HEADER_LINE`. Whitespace-only lines where an item header is expected are skipped.
pub fn parse(body: &[u8]) -> Result<Envelope<'_>> {
    if body.is_empty() {
        return Err(empty_body());
    }
    let (header_raw, mut pos) = header_line_at(body, 0).ok_or_else(|| header_too_long("the envelope header line"))?;
    let header =
        parse_object(header_raw, &["sent_at"]).map_err(|fault| invalid(format!("the envelope header {fault}")))?;
    let event_id = match header.get("event_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(normalize_event_id(s).ok_or_else(|| {
            invalid(format!(
                "the envelope header's event_id {} is not a UUID",
                quote(s.as_bytes())
            ))
        })?),
        Some(other) => {
            return Err(invalid(format!(
                "the envelope header's event_id is {}, not a string",
                json_type(other)
            )))
        }
    };
    let mut items = Vec::new();
    while pos < body.len() {
        let start = pos;
        let index = items.len();
        let (line, after_header) = header_line_at(body, pos)
            .ok_or_else(|| header_too_long(&format!("envelope item {index}: the item header line")))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            pos = after_header;
            continue;
        }
        if index == MAX_ITEMS {
            return Err(invalid(format!("more than {MAX_ITEMS} items")));
        }
        let header =
            parse_item_header(line).map_err(|fault| invalid(format!("item {index}: the item header {fault}")))?;
        let ty = match &header.ty {
            Some(Value::String(s)) => s.clone(),
            None => return Err(invalid(format!("item {index}: the item header has no type"))),
            Some(other) => {
                return Err(invalid(format!(
                    "item {index}: the item header's type is {}, not a string",
                    json_type(other)
                )))
            }
        };
        let length = match &header.length {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                invalid(format!(
                    "{}: length {} is not a non-negative integer",
                    describe(index, &ty),
                    shorten(&v.to_string())
                ))
            })?),
        };
        let (payload, end) = match length {
            Some(n) => {
                let left = body.len() - after_header;
                if n > left {
                    return Err(invalid(format!(
                        "{}: length {n} runs past the end of the envelope ({left} bytes left)",
                        describe(index, &ty)
                    )));
                }
                let payload_end = after_header + n;
                match body.get(payload_end) {
                    None => (&body[after_header..payload_end], payload_end),
                    Some(b'\n') => (&body[after_header..payload_end], payload_end + 1),
                    Some(&b) => {
                        return Err(invalid(format!(
                            "{}: the payload of length {n} is followed by {:?} instead of a newline",
                            describe(index, &ty),
                            char::from(b)
                        )))
                    }
                }
            }
            None => line_at(body, after_header),
        };
        items.push(Item {
            index,
            ty,
            length,
            content_type: header.content_type,
            header_raw: line,
            payload,
            raw: &body[start..end],
        });
        pos = end;
    }
    Ok(Envelope {
        header_raw,
        header,
        event_id,
        items,
    })
}

/// What to write for one item.
#[derive(Debug, Clone, Copy)]
pub enum Out<'e, 'a> {
    /// Copied byte-for-byte as received.
    Keep(&'e Item<'a>),
    /// Same header (with `length` set when the original had one or the new payload holds a
    /// newline), new payload.
    Replace(&'e Item<'a>, &'e [u8]),
}

/// Writes an envelope: `header_line` (a JSON object on one line, e.g. `Envelope::header_raw`),
/// then the items. Kept items are copied as received; each item but possibly the last ends with
/// a newline.
pub fn serialize(header_line: &[u8], items: &[Out<'_, '_>]) -> Vec<u8> {
    let size = header_line.len()
        + 1
        + items
            .iter()
            .map(|o| match o {
                Out::Keep(item) => item.raw.len() + 1,
                Out::Replace(item, payload) => item.header_raw.len() + payload.len() + 24,
            })
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(header_line);
    out.push(b'\n');
    for (i, o) in items.iter().enumerate() {
        let last = i + 1 == items.len();
        match *o {
            Out::Keep(item) => {
                out.extend_from_slice(item.raw);
                if !last && item.raw.last() != Some(&b'\n') {
                    out.push(b'\n');
                }
            }
            Out::Replace(item, payload) => {
                write_item_header(&mut out, item, payload);
                out.push(b'\n');
                out.extend_from_slice(payload);
                out.push(b'\n');
            }
        }
    }
    out
}

fn write_item_header(out: &mut Vec<u8>, item: &Item<'_>, payload: &[u8]) {
    let needs_length = item.length.is_some() || payload.contains(&b'\n');
    if !needs_length {
        out.extend_from_slice(item.header_raw);
        return;
    }
    // The line parsed as a JSON object when the envelope was read (and is at most
    // MAX_HEADER_LINE bytes): only now is it built into a tree, to set `length` in it.
    let mut header: Map<String, Value> = serde_json::from_slice(item.header_raw).unwrap_or_default();
    header.insert("length".to_owned(), Value::from(payload.len()));
    // A map of JSON values always serializes.
    serde_json::to_writer(&mut *out, &header).expect("JSON object serializes");
}

/// `event_id` as 32 lowercase hex digits; accepts that form and the hyphenated UUID form.
pub fn normalize_event_id(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let hex: String = match b.len() {
        32 => s.to_owned(),
        36 if [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') => s.chars().filter(|&c| c != '-').collect(),
        _ => return None,
    };
    (hex.len() == 32 && hex.bytes().all(|c| c.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
}

/// `item 2 (attachment)`, with a long type cut short.
fn describe(index: usize, ty: &str) -> String {
    format!("item {index} ({})", shorten(ty))
}

fn invalid(fault: impl fmt::Display) -> CoreError {
    CoreError::decode(format!("invalid envelope: {fault}"))
}

/// The envelope header's `dsn` (None when absent or not a string; a repeated key: the last),
/// from the header line alone. The other keys are checked as JSON and skipped, never built.
///
/// Errors: `Decode` when the line is not a JSON object; `LineTooLong` over `MAX_HEADER_LINE`.
pub fn header_dsn(line: &[u8]) -> Result<Option<String>> {
    if line.len() > MAX_HEADER_LINE {
        return Err(header_too_long("the envelope header line"));
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    let result = de::Deserializer::deserialize_map(&mut de, DsnVisitor).and_then(|dsn| de.end().map(|()| dsn));
    result.map_err(|e| invalid(format!("the envelope header {}", json_fault(line, &e))))
}

pub(crate) fn empty_body() -> CoreError {
    invalid("the body is empty; expected an envelope header")
}

pub(crate) fn header_too_long(line: &str) -> CoreError {
    CoreError::LineTooLong {
        line: line.to_owned(),
        limit: MAX_HEADER_LINE,
    }
}

/// Like `line_at`, for a header line: None when it is longer than `MAX_HEADER_LINE` (found
/// without searching past the cap).
fn header_line_at(body: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = &body[pos..];
    let window = &rest[..rest.len().min(MAX_HEADER_LINE + 1)];
    match window.iter().position(|&b| b == b'\n') {
        Some(n) => Some((&rest[..n], pos + n + 1)),
        None if window.len() > MAX_HEADER_LINE => None,
        None => Some((rest, body.len())),
    }
}

/// The line starting at `pos` (without its newline) and the position after the newline.
fn line_at(body: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = &body[pos..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(n) => (&rest[..n], pos + n + 1),
        None => (rest, body.len()),
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one header line as a JSON object, rejecting a repeat of any key in `unique` (other
/// repeated keys: the last value wins, as in any JSON object). The error completes a sentence
/// that starts with the header's name.
fn parse_object(line: &[u8], unique: &'static [&'static str]) -> std::result::Result<Map<String, Value>, String> {
    let repeated = Cell::new(None);
    let seed = ObjectSeed {
        unique,
        repeated: &repeated,
    };
    let mut de = serde_json::Deserializer::from_slice(line);
    let result = seed.deserialize(&mut de).and_then(|map| de.end().map(|()| map));
    result.map_err(|e| {
        if let Some(key) = repeated.get() {
            return format!("has more than one {key:?} key");
        }
        json_fault(line, &e)
    })
}

/// Completes "the ... header" for a line that did not parse as a JSON object.
fn json_fault(line: &[u8], e: &serde_json::Error) -> String {
    // serde_json's message for a value of the wrong type holds the value (`invalid type:
    // string "…"`): name its type instead.
    let found = match line.trim_ascii_start().first() {
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "",
    };
    match e.classify() {
        serde_json::error::Category::Data if !found.is_empty() => format!("is not a JSON object (it is {found})"),
        serde_json::error::Category::Data => format!("is not a JSON object ({})", shorten(&e.to_string())),
        _ => format!("is not valid JSON ({e})"),
    }
}

/// The keys of an item header the parser acts on; `type` and `length` as values (checked by
/// the caller, which names what is wrong with them).
struct ItemHeader {
    ty: Option<Value>,
    length: Option<Value>,
    content_type: Option<String>,
}

fn parse_item_header(line: &[u8]) -> std::result::Result<ItemHeader, String> {
    let repeated = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(line);
    let result = de::Deserializer::deserialize_map(&mut de, ItemHeaderVisitor { repeated: &repeated })
        .and_then(|header| de.end().map(|()| header));
    result.map_err(|e| match repeated.get() {
        Some(key) => format!("has more than one {key:?} key"),
        None => json_fault(line, &e),
    })
}

struct ItemHeaderVisitor<'c> {
    repeated: &'c Cell<Option<&'static str>>,
}

impl<'de> Visitor<'de> for ItemHeaderVisitor<'_> {
    type Value = ItemHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> std::result::Result<Self::Value, A::Error> {
        let mut header = ItemHeader {
            ty: None,
            length: None,
            content_type: None,
        };
        while let Some(key) = access.next_key::<KeyName>()? {
            let (slot, name) = match key {
                KeyName::Type => (&mut header.ty, "type"),
                KeyName::Length => (&mut header.length, "length"),
                KeyName::ContentType => {
                    header.content_type = access.next_value::<MaybeString>()?.0;
                    continue;
                }
                KeyName::Other => {
                    access.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                self.repeated.set(Some(name));
                return Err(de::Error::custom(format!("more than one {name:?} key")));
            }
            *slot = Some(access.next_value()?);
        }
        Ok(header)
    }
}

/// An item-header key, read without keeping names the parser does not act on.
enum KeyName {
    Type,
    Length,
    ContentType,
    Other,
}

impl<'de> de::Deserialize<'de> for KeyName {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> std::result::Result<KeyName, E> {
                Ok(match key {
                    "type" => KeyName::Type,
                    "length" => KeyName::Length,
                    "content_type" => KeyName::ContentType,
                    _ => KeyName::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The envelope header's `dsn`, every other key skipped.
struct DsnVisitor;

impl<'de> Visitor<'de> for DsnVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> std::result::Result<Self::Value, A::Error> {
        let mut dsn = None;
        while let Some(IsDsn(is_dsn)) = access.next_key()? {
            if is_dsn {
                dsn = access.next_value::<MaybeString>()?.0;
            } else {
                access.next_value::<IgnoredAny>()?;
            }
        }
        Ok(dsn)
    }
}

/// Whether a key is `dsn`, read without keeping it.
struct IsDsn(bool);

impl<'de> de::Deserialize<'de> for IsDsn {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsDsn;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> std::result::Result<IsDsn, E> {
                Ok(IsDsn(key == "dsn"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A JSON string, or None for any other value (skipped without building it).
struct MaybeString(Option<String>);

impl<'de> de::Deserialize<'de> for MaybeString {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(MaybeStringVisitor).map(MaybeString)
    }
}

struct MaybeStringVisitor;

impl<'de> Visitor<'de> for MaybeStringVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

struct ObjectSeed<'c> {
    unique: &'static [&'static str],
    repeated: &'c Cell<Option<&'static str>>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> std::result::Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> std::result::Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if map.contains_key(&key) {
                if let Some(&name) = self.unique.iter().find(|&&u| u == key) {
                    self.repeated.set(Some(name));
                    return Err(de::Error::custom(format!("more than one {name:?} key")));
                }
            }
            map.insert(key, value);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &[u8]) -> String {
        match parse(body) {
            Err(CoreError::Decode(m)) => m,
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    /// The spec's first example: one event item with length, one attachment with length.
    const TWO_ITEMS: &[u8] = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\",\"dsn\":\"https://e12d836b15bb49d7bbf99e64295d995b:@sentry.io/42\"}\n\
{\"type\":\"attachment\",\"length\":10,\"content_type\":\"text/plain\",\"filename\":\"hello.txt\"}\n\
\xef\xbb\xbfHello\r\n\n\
{\"type\":\"event\",\"length\":41,\"content_type\":\"application/json\",\"filename\":\"application.log\"}\n\
{\"message\":\"hello world\",\"level\":\"error\"}\n";

    #[test]
    fn spec_example_with_lengths() {
        let env = parse(TWO_ITEMS).unwrap();
        assert_eq!(env.event_id.as_deref(), Some("9ec79c33ec9942ab8353589fcb2e04dc"));
        assert_eq!(env.items.len(), 2);
        assert_eq!(env.items[0].ty, "attachment");
        assert_eq!(env.items[0].payload, b"\xef\xbb\xbfHello\r\n");
        assert_eq!(env.items[0].content_type(), Some("text/plain"));
        assert_eq!(env.items[1].ty, "event");
        assert_eq!(
            env.items[1].payload,
            b"{\"message\":\"hello world\",\"level\":\"error\"}"
        );
        assert_eq!(env.items[1].length, Some(41));
        // Zero-copy: the payloads point into the body.
        let range = TWO_ITEMS.as_ptr_range();
        for item in &env.items {
            assert!(range.contains(&item.payload.as_ptr()));
        }
        let keep: Vec<_> = env.items.iter().map(Out::Keep).collect();
        assert_eq!(serialize(env.header_raw, &keep), TWO_ITEMS);
    }

    #[test]
    fn spec_example_without_lengths_and_final_newline() {
        let with = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n{\"type\":\"attachment\"}\nhelloworld\n";
        let without = &with[..with.len() - 1];
        for body in [&with[..], without] {
            let env = parse(body).unwrap();
            assert_eq!(env.items.len(), 1);
            assert_eq!(env.items[0].payload, b"helloworld");
            assert_eq!(env.items[0].length, None);
            let keep: Vec<_> = env.items.iter().map(Out::Keep).collect();
            assert_eq!(serialize(env.header_raw, &keep), body);
        }
    }

    #[test]
    fn empty_header_and_empty_payloads() {
        // Empty envelope header; an item at the end with no payload and no newline.
        let env =
            parse(b"{}\n{\"type\":\"session\"}\n{\"started\":\"2020-02-07T14:16:00Z\"}\n{\"type\":\"x\",\"length\":0}")
                .unwrap();
        assert!(env.header.is_empty() && env.event_id.is_none());
        assert_eq!(env.items.len(), 2);
        assert_eq!(env.items[1].payload, b"");
        // Header only, with or without a newline.
        assert!(parse(b"{}").unwrap().items.is_empty());
        assert!(parse(b"{}\n").unwrap().items.is_empty());
        // Two items without length, the first with an empty payload.
        let env = parse(b"{}\n{\"type\":\"a\"}\n\n{\"type\":\"b\"}\nxyz").unwrap();
        assert_eq!(env.items[0].payload, b"");
        assert_eq!(env.items[1].payload, b"xyz");
        // Header line at the very end, no newline: empty payload.
        let env = parse(b"{}\n{\"type\":\"a\"}").unwrap();
        assert_eq!(env.items[0].payload, b"");
    }

    #[test]
    fn binary_attachment_with_newlines_and_nul() {
        let data: &[u8] = b"\x00\n\xff\n\n\x00bin\n";
        let mut body = b"{\"event_id\":\"9EC79C33-EC99-42AB-8353-589FCB2E04DC\"}\n".to_vec();
        body.extend_from_slice(format!("{{\"type\":\"attachment\",\"length\":{}}}\n", data.len()).as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\n{\"type\":\"event\"}\n{}");
        let env = parse(&body).unwrap();
        assert_eq!(env.event_id.as_deref(), Some("9ec79c33ec9942ab8353589fcb2e04dc"));
        assert_eq!(env.items[0].payload, data);
        assert_eq!(env.items[1].payload, b"{}");
        let keep: Vec<_> = env.items.iter().map(Out::Keep).collect();
        assert_eq!(serialize(env.header_raw, &keep), body);
    }

    #[test]
    fn unknown_types_and_keys_round_trip() {
        let body = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\", \"future_key\" : [1, {\"x\":null}], \"sent_at\":\"2024-01-01T00:00:00Z\"}\n\
{\"type\":\"brand_new_type\",\"weird\":{\"a\":1},\"length\":3}\nabc\n\
{\"type\":\"event\",\"x-unknown\":true}\n{\"a\":1}\n";
        let env = parse(body).unwrap();
        assert_eq!(env.header["future_key"][1]["x"], Value::Null);
        assert_eq!(env.items[0].ty, "brand_new_type");
        // Unknown item-header keys are kept as received, not parsed into values.
        assert_eq!(
            env.items[0].header_raw,
            b"{\"type\":\"brand_new_type\",\"weird\":{\"a\":1},\"length\":3}"
        );
        let keep: Vec<_> = env.items.iter().map(Out::Keep).collect();
        assert_eq!(serialize(env.header_raw, &keep), &body[..]);
        // Dropping an item keeps the others byte-for-byte.
        let out = serialize(env.header_raw, &[Out::Keep(&env.items[1])]);
        assert_eq!(
            out,
            b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\", \"future_key\" : [1, {\"x\":null}], \"sent_at\":\"2024-01-01T00:00:00Z\"}\n\
{\"type\":\"event\",\"x-unknown\":true}\n{\"a\":1}\n"
        );
    }

    #[test]
    fn replaced_payload_updates_length() {
        let body = b"{}\n{\"type\":\"event\",\"length\":7,\"z\":1}\n{\"a\":1}\n{\"type\":\"event\",\"q\":2}\n{\"b\":2}";
        let env = parse(body).unwrap();
        // Sized item: length rewritten in place, other keys kept in order.
        let out = serialize(
            env.header_raw,
            &[Out::Replace(&env.items[0], b"{\"a\":12}"), Out::Keep(&env.items[1])],
        );
        assert_eq!(
            out,
            b"{}\n{\"type\":\"event\",\"length\":8,\"z\":1}\n{\"a\":12}\n{\"type\":\"event\",\"q\":2}\n{\"b\":2}"
        );
        // Unsized item: header kept as is unless the payload now holds a newline.
        let out = serialize(env.header_raw, &[Out::Replace(&env.items[1], b"{}")]);
        assert_eq!(out, b"{}\n{\"type\":\"event\",\"q\":2}\n{}\n");
        let out = serialize(env.header_raw, &[Out::Replace(&env.items[1], b"{\n}")]);
        assert_eq!(out, b"{}\n{\"type\":\"event\",\"q\":2,\"length\":3}\n{\n}\n");
        let env2 = parse(&out).unwrap();
        assert_eq!(env2.items[0].payload, b"{\n}");
        // A kept last item without a newline gets one when something follows it.
        let env = parse(b"{}\n{\"type\":\"a\"}\nx").unwrap();
        let out = serialize(env.header_raw, &[Out::Keep(&env.items[0]), Out::Keep(&env.items[0])]);
        assert_eq!(out, b"{}\n{\"type\":\"a\"}\nx\n{\"type\":\"a\"}\nx");
    }

    #[test]
    fn blank_lines_between_items_are_skipped() {
        let env = parse(b"{}\n\n{\"type\":\"a\"}\nx\n\r\n{\"type\":\"b\",\"length\":1}\ny\n\n").unwrap();
        assert_eq!(env.items.len(), 2);
        assert_eq!(env.items[1].index, 1);
        assert_eq!(env.items[1].payload, b"y");
    }

    #[test]
    fn malformed_envelopes_name_the_fault() {
        assert_eq!(
            err(b""),
            "invalid envelope: the body is empty; expected an envelope header"
        );
        let e = err(b"{\"event_id\":\n{}");
        assert!(
            e.starts_with("invalid envelope: the envelope header is not valid JSON ("),
            "{e}"
        );
        let e = err(b"[1,2]\n");
        assert!(
            e.starts_with("invalid envelope: the envelope header is not a JSON object ("),
            "{e}"
        );
        let e = err(b"{} x\n");
        assert!(
            e.starts_with("invalid envelope: the envelope header is not valid JSON ("),
            "{e}"
        );
        assert_eq!(
            err(b"{\"sent_at\":\"2024-01-01T00:00:00Z\",\"sent_at\":\"2024-01-01T00:00:01Z\"}\n"),
            "invalid envelope: the envelope header has more than one \"sent_at\" key"
        );
        assert_eq!(
            err(b"{\"event_id\":\"not-a-uuid\"}\n"),
            "invalid envelope: the envelope header's event_id \"not-a-uuid\" is not a UUID"
        );
        assert_eq!(
            err(b"{\"event_id\":12}\n"),
            "invalid envelope: the envelope header's event_id is a number, not a string"
        );
        let e = err(b"{}\n{\"type\":\"event\"}\n{}\n{\"type\":\n");
        assert!(
            e.starts_with("invalid envelope: item 1: the item header is not valid JSON ("),
            "{e}"
        );
        let e = err(b"{}\n\"event\"\n{}\n");
        assert!(
            e.starts_with("invalid envelope: item 0: the item header is not a JSON object ("),
            "{e}"
        );
        assert_eq!(
            err(b"{}\n{\"length\":2}\nab\n"),
            "invalid envelope: item 0: the item header has no type"
        );
        assert_eq!(
            err(b"{}\n{\"type\":5}\n"),
            "invalid envelope: item 0: the item header's type is a number, not a string"
        );
        assert_eq!(
            err(b"{}\n{\"type\":\"a\",\"type\":\"b\"}\n"),
            "invalid envelope: item 0: the item header has more than one \"type\" key"
        );
        assert_eq!(
            err(b"{}\n{\"type\":\"a\",\"length\":-1}\n"),
            "invalid envelope: item 0 (a): length -1 is not a non-negative integer"
        );
        assert_eq!(
            err(b"{}\n{\"type\":\"a\",\"length\":\"3\"}\nabc\n"),
            "invalid envelope: item 0 (a): length \"3\" is not a non-negative integer"
        );
        assert_eq!(
            err(b"{}\n{\"type\":\"a\"}\nx\n{\"type\":\"attachment\",\"length\":10}\nabc\n"),
            "invalid envelope: item 1 (attachment): length 10 runs past the end of the envelope (4 bytes left)"
        );
        assert_eq!(
            err(b"{}\n{\"type\":\"attachment\",\"length\":2}\nabc\n"),
            "invalid envelope: item 0 (attachment): the payload of length 2 is followed by 'c' instead of a newline"
        );
    }

    #[test]
    fn long_input_is_echoed_as_a_short_prefix() {
        // Just under the header-line cap (a longer line is refused as too long before parsing).
        let huge = "z".repeat(MAX_HEADER_LINE - 100);
        let cases = [
            (format!("{{\"event_id\":\"{huge}\"}}\n"), "event_id \"zzz"),
            (
                format!("{{}}\n{{\"type\":\"{huge}\",\"length\":99}}\nab\n"),
                "runs past the end",
            ),
            (
                format!("{{}}\n{{\"type\":\"a\",\"length\":\"{huge}\"}}\nab\n"),
                "is not a non-negative integer",
            ),
            (
                format!(
                    "{{}}\n{{\"type\":\"a\",\"length\":1{}}}\nab\n",
                    "0".repeat(MAX_HEADER_LINE - 100)
                ),
                "number out of range",
            ),
            (
                format!(
                    "{{}}\n{{\"type\":\"a\",\"length\":-0.{}1}}\nab\n",
                    "0".repeat(MAX_HEADER_LINE - 100)
                ),
                "length -0.0 is not",
            ),
            (format!("{{}}\n\"{huge}\"\n"), "is not a JSON object (it is a string)"),
            (format!("[\"{huge}\"]\n"), "is not a JSON object (it is an array)"),
        ];
        for (body, words) in cases {
            let e = err(body.as_bytes());
            assert!(e.len() < 300, "{}…", &e[..300]);
            assert!(e.contains(words), "{e}");
        }
        let e = err(format!("{{}}\n{{\"type\":\"{huge}\",\"length\":99}}\nab\n").as_bytes());
        assert!(
            e.starts_with("invalid envelope: item 0 (zzzz") && e.contains("…)"),
            "{e}"
        );
    }

    #[test]
    fn item_count_is_capped() {
        let mut body = b"{}\n".to_vec();
        for _ in 0..MAX_ITEMS {
            body.extend_from_slice(b"{\"type\":\"a\"}\n\n");
        }
        assert_eq!(parse(&body).unwrap().items.len(), MAX_ITEMS);
        body.extend_from_slice(b"{\"type\":\"a\"}\n");
        assert_eq!(err(&body), "invalid envelope: more than 10000 items");
    }

    #[test]
    fn header_lines_are_capped() {
        let too_long = |line: &str| CoreError::LineTooLong {
            line: line.to_owned(),
            limit: MAX_HEADER_LINE,
        };
        // A header line of exactly the cap is read; one byte more is refused, without a newline
        // anywhere after it being searched for.
        let pad = |n: usize| format!("{{\"p\":\"{}\"}}", "x".repeat(n - 8));
        let at_cap = pad(MAX_HEADER_LINE);
        assert_eq!(at_cap.len(), MAX_HEADER_LINE);
        assert!(parse(format!("{at_cap}\n").as_bytes()).is_ok());
        assert!(parse(at_cap.as_bytes()).is_ok());
        let over = pad(MAX_HEADER_LINE + 1);
        assert_eq!(parse(over.as_bytes()), Err(too_long("the envelope header line")));
        let mut body = format!("{over}\n").into_bytes();
        body.extend(std::iter::repeat_n(b'x', 1 << 20));
        assert_eq!(parse(&body), Err(too_long("the envelope header line")));
        // Item headers likewise, named by index; their payload lines are not capped.
        let item = format!("{{\"type\":\"a\",{}", &pad(MAX_HEADER_LINE)[1..]);
        assert_eq!(item.len(), MAX_HEADER_LINE + 11);
        let big_payload = "y".repeat(MAX_HEADER_LINE * 2);
        let env = format!("{{}}\n{{\"type\":\"a\"}}\n{big_payload}\n{item}\n");
        assert_eq!(
            parse(env.as_bytes()),
            Err(too_long("envelope item 1: the item header line"))
        );
        assert_eq!(
            too_long("the envelope header line").to_string(),
            "the envelope header line is longer than the limit of 65536 bytes"
        );
    }

    #[test]
    fn item_headers_keep_only_what_the_parser_acts_on() {
        let env = parse(
            b"{}\n{\"type\":\"attachment\",\"content_type\":\"text/plain\",\"big\":[[1,2],{\"a\":[3]}],\"length\":1}\nx\n\
{\"type\":\"event\",\"content_type\":[\"not\",\"a\",\"string\"]}\n{}\n",
        )
        .unwrap();
        assert_eq!(env.items[0].content_type(), Some("text/plain"));
        assert_eq!(env.items[0].length, Some(1));
        assert_eq!(env.items[1].content_type(), None);
        // A skipped value is still checked as JSON.
        let e = err(b"{}\n{\"type\":\"a\",\"x\":[1,}\n");
        assert!(
            e.starts_with("invalid envelope: item 0: the item header is not valid JSON ("),
            "{e}"
        );
        // Escaped key names are the keys they spell.
        assert_eq!(
            err(b"{}\n{\"type\":\"a\",\"typ\\u0065\":\"b\"}\n"),
            "invalid envelope: item 0: the item header has more than one \"type\" key"
        );
        let env = parse(b"{}\n{\"typ\\u0065\":\"a\",\"length\":0}\n").unwrap();
        assert_eq!(env.items[0].ty, "a");
    }

    #[test]
    fn dsn_from_the_header_line_alone() {
        let dsn = |line: &[u8]| header_dsn(line);
        assert_eq!(
            dsn(b"{\"event_id\":\"x\",\"dsn\":\"http://k@h/1\",\"a\":[0,0,{\"dsn\":\"no\"}]}"),
            Ok(Some("http://k@h/1".to_owned()))
        );
        assert_eq!(dsn(b"{}"), Ok(None));
        assert_eq!(dsn(b" { \"dsn\" : 5 } "), Ok(None));
        assert_eq!(dsn(b"{\"dsn\":{\"a\":\"b\"}}"), Ok(None));
        // A repeated key: the last wins, as for the other header keys.
        assert_eq!(dsn(b"{\"dsn\":\"a\",\"dsn\":\"b\"}"), Ok(Some("b".to_owned())));
        assert_eq!(dsn(b"{\"ds\\u006e\":\"esc\"}"), Ok(Some("esc".to_owned())));
        for bad in [&b""[..], b"[1]", b"{\"dsn\":\"a\"} x", b"{\"a\":[1,}", b"\"dsn\""] {
            match dsn(bad) {
                Err(CoreError::Decode(m)) => {
                    assert!(m.starts_with("invalid envelope: the envelope header is not "), "{m}")
                }
                other => panic!("{other:?} for {bad:?}"),
            }
        }
        let over = format!("{{\"dsn\":\"{}\"}}", "k".repeat(MAX_HEADER_LINE));
        assert!(matches!(dsn(over.as_bytes()), Err(CoreError::LineTooLong { .. })));
    }

    #[test]
    fn event_id_forms() {
        assert_eq!(
            normalize_event_id("9EC79C33EC9942AB8353589FCB2E04DC").as_deref(),
            Some("9ec79c33ec9942ab8353589fcb2e04dc")
        );
        assert!(normalize_event_id("9ec79c33-ec99-42ab-8353-589fcb2e04d").is_none());
        assert!(normalize_event_id("9ec79c33ec9942ab8353589fcb2e04dg").is_none());
        assert!(normalize_event_id("9ec79c33ec99-42ab-8353-589fcb2e04dcc").is_none());
        assert!(normalize_event_id("é".repeat(16).as_str()).is_none());
        assert!(parse(b"{\"event_id\":null}\n").unwrap().event_id.is_none());
    }

    #[test]
    fn mutated_and_truncated_envelopes_never_panic() {
        for n in 0..=TWO_ITEMS.len() {
            let _ = parse(&TWO_ITEMS[..n]);
        }
        let mut next = crate::test_support::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let alphabet = b"{}[]\":,\n0123456789 length type\x00\xff";
        for _ in 0..20_000 {
            let mut body = TWO_ITEMS.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % body.len() as u64) as usize;
                match next() % 3 {
                    0 => body[i] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        body.remove(i);
                    }
                    _ => body.insert(i, alphabet[(next() % alphabet.len() as u64) as usize]),
                }
            }
            if let Ok(env) = parse(&body) {
                let keep: Vec<_> = env.items.iter().map(Out::Keep).collect();
                let _ = serialize(env.header_raw, &keep);
            }
        }
    }
}
