//! A Fluent record as read from the body: a JSON-like value whose strings borrow the input (a
//! JSON string with escapes, or msgpack text that is not UTF-8, is the only copy), with objects
//! kept as entry lists in input order. It replaces `serde_json::Value` on the conversion path:
//! no `String` per key or value, no hash table per object. Duplicate keys behave as they did in
//! `serde_json::Map` (the last value, at the first key's position), and an entry is removed as
//! `Map::remove` removed it (`swap_remove`), so attributes keep the order they always had.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::msgpack::Mp;

/// One key and its value.
pub type Entry<'a> = (Cow<'a, str>, Node<'a>);

/// Objects this short are checked for duplicate keys pairwise; longer ones by sorting.
const PAIRWISE_MAX: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    /// Integers ≥ 0 (as `serde_json::Number` holds them).
    UInt(u64),
    /// Negative integers only.
    Int(i64),
    /// Always finite (a non-finite float reads as `Null`, as it did in `Value`).
    Float(f64),
    Str(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<Entry<'a>>),
}

impl<'a> Node<'a> {
    pub fn int(i: i64) -> Self {
        if i < 0 {
            Node::Int(i)
        } else {
            Node::UInt(i as u64)
        }
    }

    pub fn float(f: f64) -> Self {
        if f.is_finite() {
            Node::Float(f)
        } else {
            Node::Null
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Compact JSON text, byte for byte what `serde_json::Value::to_string` wrote.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// What an event that is not a record was, for the refusal message.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::UInt(_) | Node::Int(_) | Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Array(_) => "an array",
            Node::Object(_) => "an object",
        }
    }
}

/// The value under `key`.
pub fn get<'r, 'a>(entries: &'r [Entry<'a>], key: &str) -> Option<&'r Node<'a>> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Removes `key` the way `serde_json::Map::remove` did with `preserve_order`: the last entry
/// takes its place.
pub fn remove<'a>(entries: &mut Vec<Entry<'a>>, key: &str) -> Option<Node<'a>> {
    let at = entries.iter().position(|(k, _)| k == key)?;
    Some(entries.swap_remove(at).1)
}

/// Keeps the last value of a repeated key at the first key's position (`Map::insert`).
pub fn dedup(entries: &mut Vec<Entry<'_>>) {
    let n = entries.len();
    if n < 2 {
        return;
    }
    let repeated = if n <= PAIRWISE_MAX {
        (1..n).any(|i| entries[..i].iter().any(|(k, _)| *k == entries[i].0))
    } else {
        let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        keys.sort_unstable();
        keys.windows(2).any(|w| w[0] == w[1])
    };
    if !repeated {
        return;
    }
    let all = std::mem::take(entries);
    let mut at: HashMap<String, usize> = HashMap::with_capacity(n);
    for (k, v) in all {
        match at.get(k.as_ref()) {
            Some(&i) => entries[i].1 = v,
            None => {
                at.insert(k.to_string(), entries.len());
                entries.push((k, v));
            }
        }
    }
}

/// Bytes as text: borrowed when valid UTF-8 (checked the fast way first), else lossily copied.
pub fn text(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// A msgpack value as a node: strings and binaries as (lossy) text, EventTime as float seconds,
/// other keys than strings as their JSON text.
pub fn from_mp<'a>(v: &Mp<'a>) -> Node<'a> {
    match v {
        Mp::Nil => Node::Null,
        Mp::Bool(b) => Node::Bool(*b),
        Mp::Int(i) => Node::int(*i),
        Mp::UInt(u) => Node::UInt(*u),
        Mp::Float(f) => Node::float(*f),
        Mp::Str(s) | Mp::Bin(s) => Node::Str(text(s)),
        Mp::Array(items) => Node::Array(items.iter().map(from_mp).collect()),
        Mp::Map(pairs) => {
            let mut entries: Vec<Entry<'a>> = pairs
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Mp::Str(s) | Mp::Bin(s) => text(s),
                        other => Cow::Owned(from_mp(other).to_json()),
                    };
                    (key, from_mp(v))
                })
                .collect();
            dedup(&mut entries);
            Node::Object(entries)
        }
        Mp::Ext(..) => super::event_time(v).map_or(Node::Null, |t| Node::float(t as f64 / 1e9)),
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(Node::int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::UInt(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node<'de>, E> {
        Ok(Node::float(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        Node::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        // JSON gives no length: room for a typical record's fields in one allocation.
        let mut entries = Vec::with_capacity(8);
        while let Some(Key(k)) = map.next_key()? {
            entries.push((k, map.next_value()?));
        }
        dedup(&mut entries);
        Ok(Node::Object(entries))
    }
}

/// A map key, borrowed when it has no escapes (serde's own `Cow<str>` always copies).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::UInt(u) => s.serialize_u64(*u),
            Node::Int(i) => s.serialize_i64(*i),
            Node::Float(f) => s.serialize_f64(*f),
            Node::Str(v) => s.serialize_str(v),
            Node::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Object(entries) => Fields(entries).serialize(s),
        }
    }
}

/// An entry list written as a JSON object.
pub struct Fields<'r, 'a>(pub &'r [Entry<'a>]);

impl Fields<'_, '_> {
    /// Compact JSON text of the object, as `Node::to_json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for Fields<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k.as_ref(), v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Node<'_> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let Node::Object(entries) = parse(r#"{"a":"plain","b":"esc\"aped","k\u00e9y":1}"#) else {
            panic!("not an object")
        };
        assert!(matches!(
            entries[0],
            (Cow::Borrowed("a"), Node::Str(Cow::Borrowed("plain")))
        ));
        assert!(matches!(&entries[1].1, Node::Str(Cow::Owned(s)) if s == "esc\"aped"));
        assert!(matches!(&entries[2], (Cow::Owned(k), Node::UInt(1)) if k == "kéy"));
    }

    #[test]
    fn duplicates_keep_the_first_position_and_the_last_value() {
        let text = r#"{"a":1,"b":2,"a":3}"#;
        assert_eq!(parse(text).to_json(), r#"{"a":3,"b":2}"#);
        let many: Vec<String> = (0..40).map(|i| format!("\"k{}\":{i}", i % 30)).collect();
        let text = format!("{{{}}}", many.join(","));
        let Node::Object(entries) = parse(&text) else { panic!() };
        assert_eq!(entries.len(), 30);
        assert_eq!(get(&entries, "k3"), Some(&Node::UInt(33)));
        assert_eq!(entries[3].0, "k3");
    }

    #[test]
    fn removal_swaps_in_the_last_entry() {
        let Node::Object(mut entries) = parse(r#"{"a":1,"b":2,"c":3,"d":4}"#) else {
            panic!()
        };
        assert_eq!(remove(&mut entries, "b"), Some(Node::UInt(2)));
        assert_eq!(Node::Object(entries).to_json(), r#"{"a":1,"d":4,"c":3}"#);
    }

    #[test]
    fn numbers_as_serde_json_holds_them() {
        assert_eq!(parse("-1"), Node::Int(-1));
        assert_eq!(parse("18446744073709551615"), Node::UInt(u64::MAX));
        assert_eq!(parse("18446744073709551616"), Node::Float(18446744073709551616.0));
        assert_eq!(parse("1.5e3").to_json(), "1500.0");
        assert_eq!(from_mp(&Mp::Int(5)), Node::UInt(5));
        assert_eq!(from_mp(&Mp::Float(f64::NAN)), Node::Null);
        assert_eq!(
            from_mp(&Mp::Ext(0, &[0, 0, 0, 1, 0, 0, 0, 2])),
            Node::Float(1.000000002)
        );
        assert_eq!(from_mp(&Mp::Ext(5, &[1])), Node::Null);
    }
}
