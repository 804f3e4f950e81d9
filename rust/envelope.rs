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

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{quote, shorten, CoreError, Result};

/// Most items one envelope may hold. SDKs send a handful (logs and sessions are batched into one
/// item each); the cap bounds the memory a body of tiny items can cost.
pub const MAX_ITEMS: usize = 10_000;

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
    /// The item header, parsed (every key, known or not).
    pub header: Map<String, Value>,
    /// The item header line as received, without its newline.
    pub header_raw: &'a [u8],
    pub payload: &'a [u8],
    /// The whole item as received: header line, newline, payload and its terminating newline
    /// (absent when the item ended the body without one).
    pub raw: &'a [u8],
}

impl Item<'_> {
    pub fn content_type(&self) -> Option<&str> {
        self.header.get("content_type").and_then(Value::as_str)
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
/// newline; more than `MAX_ITEMS` items. Whitespace-only lines where an item header is expected
/// are skipped.
pub fn parse(body: &[u8]) -> Result<Envelope<'_>> {
    if body.is_empty() {
        return Err(invalid("the body is empty; expected an envelope header"));
    }
    let (header_raw, mut pos) = line_at(body, 0);
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
        let (line, after_header) = line_at(body, pos);
        if line.iter().all(u8::is_ascii_whitespace) {
            pos = after_header;
            continue;
        }
        let index = items.len();
        if index == MAX_ITEMS {
            return Err(invalid(format!("more than {MAX_ITEMS} items")));
        }
        let header = parse_object(line, &["type", "length"])
            .map_err(|fault| invalid(format!("item {index}: the item header {fault}")))?;
        let ty = match header.get("type") {
            Some(Value::String(s)) => s.clone(),
            None => return Err(invalid(format!("item {index}: the item header has no type"))),
            Some(other) => {
                return Err(invalid(format!(
                    "item {index}: the item header's type is {}, not a string",
                    json_type(other)
                )))
            }
        };
        let length = match header.get("length") {
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
            header,
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
    let mut header = item.header.clone();
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
    })
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
        assert_eq!(env.items[0].header["weird"]["a"], 1);
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
        let huge = "z".repeat(5 * 1024 * 1024);
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
                format!("{{}}\n{{\"type\":\"a\",\"length\":1{}}}\nab\n", "0".repeat(5_000_000)),
                "number out of range",
            ),
            (
                format!(
                    "{{}}\n{{\"type\":\"a\",\"length\":-0.{}1}}\nab\n",
                    "0".repeat(5_000_000)
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
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
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
