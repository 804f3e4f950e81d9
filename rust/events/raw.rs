//! Borrowing JSON readers for the event decoder: an object read once as (key, raw value) pairs,
//! keys borrowed from the body unless escaped, values as `RawValue` slices of it. No `Value`
//! tree and no order-preserving map is built for an event.

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

/// A raw JSON string's text (`"..."`, valid JSON) unescaped, borrowed when it holds no escape.
pub fn str_text(text: &str) -> serde_json::Result<Cow<'_, str>> {
    let b = text.as_bytes();
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' && !needs_escape(&b[1..b.len() - 1]) {
        return Ok(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<Key<'_>>(text).map(|k| k.0)
}

/// Whether any byte must be escaped in a JSON string (`"`, `\`, a control character). Written
/// without an early exit so that it compiles to a vector loop.
fn needs_escape(b: &[u8]) -> bool {
    b.iter()
        .fold(false, |any, &c| any | (c < 0x20) | (c == b'"') | (c == b'\\'))
}

/// Calls `member(key, value text)` for each member of a compact JSON object (no whitespace
/// outside strings, as `data` is written), in order, duplicates kept. False when `json` is not
/// such an object (the caller then reads it the general way and undoes what `member` did).
pub fn compact_members(json: &str, mut member: impl FnMut(&str, &str)) -> bool {
    let b = json.as_bytes();
    if b.first() != Some(&b'{') {
        return false;
    }
    if b == b"{}" {
        return true;
    }
    let mut i = 1;
    loop {
        let Some(key_end) = string_end(b, i) else { return false };
        let Ok(key) = str_text(&json[i..key_end]) else {
            return false;
        };
        if b.get(key_end) != Some(&b':') {
            return false;
        }
        let start = key_end + 1;
        let Some(end) = value_end(b, start) else { return false };
        member(&key, &json[start..end]);
        match b.get(end) {
            Some(b',') => i = end + 1,
            Some(b'}') if end + 1 == b.len() => return true,
            _ => return false,
        }
    }
}

/// The end (past the closing quote) of the JSON string starting at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// The end of the compact JSON value starting at `start` (strings, nesting and scalars).
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match b.get(start)? {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let len = b[start..].iter().position(|c| matches!(c, b',' | b'}' | b']'))?;
            let scalar = &b[start..start + len];
            (len > 0
                && !scalar
                    .iter()
                    .any(|c| matches!(c, b' ' | b'\n' | b'\r' | b'\t' | b'"' | b'{' | b'[')))
            .then_some(start + len)
        }
    }
}

/// Appends `s` as a JSON string.
pub fn push_json_str(out: &mut String, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
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
    // No whitespace byte at all (compact already, the usual case): copied whole.
    if !json
        .bytes()
        .fold(false, |any, b| any | matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        out.push_str(json);
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_borrow_and_unescape() {
        let p = pairs(r#"{"a": 1, "b\n": {"x": [1, 2]}, "a": "s"}"#).unwrap();
        assert_eq!(p.len(), 3);
        assert!(matches!(p[0].0, Cow::Borrowed("a")));
        assert_eq!(p[1].0, "b\n");
        assert_eq!(p[1].1.get(), r#"{"x": [1, 2]}"#);
        assert!(pairs("[1]").is_err());
        let raw: Box<RawValue> = serde_json::from_str(r#""a\"b""#).unwrap();
        assert_eq!(string(&raw).unwrap(), "a\"b");
    }

    #[test]
    fn minify_and_escape() {
        let mut out = String::new();
        minify_into(&mut out, "{ \"a b\" :\n [1, \"x \\\" y\"] }");
        assert_eq!(out, r#"{"a b":[1,"x \" y"]}"#);
        let mut s = String::new();
        push_json_str(&mut s, "q\"\\\n\u{1}é");
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), "q\"\\\n\u{1}é");
    }
}
