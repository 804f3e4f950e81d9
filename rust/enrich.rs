//! Adds the gateway's configured resource attributes (e.g. `deployment.environment`) to every resource
//! that does not already carry the key: the client's value wins.
//!
//! Each attribute is encoded once, as the complete `Resource.attributes` field (tag, length, KeyValue);
//! enriching a resource copies its bytes, scans only its attribute keys and appends the missing fields.
//! Appending is valid protobuf: repeated fields may appear anywhere in a message, in any number of runs.

use crate::error::Result;
use crate::wire::{self, Fields, LEN};

/// `Resource.attributes`.
const RESOURCE_ATTRIBUTES: u32 = 1;
/// `KeyValue.key`, `KeyValue.value`, `AnyValue.string_value`.
const KV_KEY: u32 = 1;
const KV_VALUE: u32 = 2;
const ANY_STRING: u32 = 1;

#[derive(Debug, Clone)]
struct Attr {
    key: String,
    /// `Resource.attributes` field: tag + length + KeyValue{key, AnyValue{string_value}}.
    field: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct Enricher {
    attrs: Vec<Attr>,
}

impl Enricher {
    /// Duplicate keys keep their first value, as a later `key=value` in a list usually means a mistake.
    pub fn new(attrs: Vec<(String, String)>) -> Self {
        let mut out: Vec<Attr> = Vec::with_capacity(attrs.len());
        for (key, value) in attrs {
            if out.iter().any(|a| a.key == key) {
                continue;
            }
            let mut field = Vec::with_capacity(key.len() + value.len() + 12);
            wire::put_message(&mut field, RESOURCE_ATTRIBUTES, |kv| {
                wire::put_bytes(kv, KV_KEY, key.as_bytes());
                wire::put_message(kv, KV_VALUE, |any| wire::put_bytes(any, ANY_STRING, value.as_bytes()));
            });
            out.push(Attr { key, field });
        }
        Enricher { attrs: out }
    }

    /// Nothing configured: callers copy resources through untouched.
    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    /// Writes the body of the enriched Resource message (no tag or length: wrap it with
    /// `wire::put_message`). `resource` is the body of the client's Resource, if it sent one.
    ///
    /// Errors only when `resource` is not valid protobuf (callers validate first).
    pub fn write_resource(&self, resource: Option<&[u8]>, out: &mut Vec<u8>) -> Result<()> {
        let resource = resource.unwrap_or_default();
        let mut present = Presence::new(self.attrs.len());
        if !resource.is_empty() {
            for field in Fields::new(resource) {
                let field = field?;
                if field.number != RESOURCE_ATTRIBUTES || field.wire_type != LEN {
                    continue;
                }
                if let Some(key) = kv_key(field.data)? {
                    if let Some(i) = self.attrs.iter().position(|a| a.key.as_bytes() == key) {
                        present.set(i);
                    }
                }
            }
        }
        out.extend_from_slice(resource);
        for (i, attr) in self.attrs.iter().enumerate() {
            if !present.get(i) {
                out.extend_from_slice(&attr.field);
            }
        }
        Ok(())
    }

    /// Convenience: the enriched Resource body as a new buffer.
    pub fn enrich(&self, resource: Option<&[u8]>) -> Result<Vec<u8>> {
        let extra: usize = self.attrs.iter().map(|a| a.field.len()).sum();
        let mut out = Vec::with_capacity(resource.map_or(0, <[u8]>::len) + extra);
        self.write_resource(resource, &mut out)?;
        Ok(out)
    }
}

/// The key of a KeyValue (the last one, as protobuf's last-wins rule for singular fields says).
fn kv_key(kv: &[u8]) -> Result<Option<&[u8]>> {
    let mut key = None;
    for field in Fields::new(kv) {
        let field = field?;
        if field.number == KV_KEY && field.wire_type == LEN {
            key = Some(field.data);
        }
    }
    Ok(key)
}

/// Which configured keys a resource already has; no allocation for up to 64 configured keys.
enum Presence {
    Small(u64),
    Large(Vec<bool>),
}

impl Presence {
    fn new(n: usize) -> Self {
        if n <= 64 {
            Presence::Small(0)
        } else {
            Presence::Large(vec![false; n])
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            Presence::Small(bits) => *bits |= 1u64.checked_shl(i as u32).unwrap_or(0),
            Presence::Large(v) => {
                if let Some(slot) = v.get_mut(i) {
                    *slot = true;
                }
            }
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Presence::Small(bits) => bits & 1u64.checked_shl(i as u32).unwrap_or(0) != 0,
            Presence::Large(v) => v.get(i).copied().unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a Resource body into (key, string value or None for other value kinds) pairs, plus the
    /// other fields' raw bytes.
    fn attrs_of(resource: &[u8]) -> (Vec<(String, Option<String>)>, Vec<u8>) {
        let mut attrs = Vec::new();
        let mut other = Vec::new();
        for f in Fields::new(resource) {
            let f = f.unwrap();
            if f.number != 1 {
                other.extend_from_slice(f.raw);
                continue;
            }
            let mut key = String::new();
            let mut value = None;
            for kf in Fields::new(f.data) {
                let kf = kf.unwrap();
                match kf.number {
                    1 => key = String::from_utf8(kf.data.to_vec()).unwrap(),
                    2 => {
                        for vf in Fields::new(kf.data) {
                            let vf = vf.unwrap();
                            value = (vf.number == 1).then(|| String::from_utf8(vf.data.to_vec()).unwrap());
                        }
                    }
                    _ => {}
                }
            }
            attrs.push((key, value));
        }
        (attrs, other)
    }

    fn kv_field(out: &mut Vec<u8>, key: &str, value: &str) {
        wire::put_message(out, 1, |kv| {
            wire::put_bytes(kv, 1, key.as_bytes());
            wire::put_message(kv, 2, |any| wire::put_bytes(any, 1, value.as_bytes()));
        });
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn adds_missing_keys_and_keeps_existing() {
        let e = Enricher::new(pairs(&[("env", "prod"), ("region", "eu"), ("service.name", "gw")]));
        let mut resource = Vec::new();
        kv_field(&mut resource, "service.name", "checkout");
        wire::put_uint(&mut resource, 2, 3); // dropped_attributes_count
        kv_field(&mut resource, "region", "us");
        let out = e.enrich(Some(&resource)).unwrap();
        assert!(out.starts_with(&resource), "client bytes are copied first, untouched");
        let (attrs, other) = attrs_of(&out);
        let expected = [("service.name", "checkout"), ("region", "us"), ("env", "prod")];
        let expected: Vec<_> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect();
        assert_eq!(attrs, expected);
        assert_eq!(other, [0x10, 3]);
    }

    #[test]
    fn absent_and_empty_resource() {
        let e = Enricher::new(pairs(&[("env", "prod"), ("host", "")]));
        for resource in [None, Some(&b""[..])] {
            let (attrs, other) = attrs_of(&e.enrich(resource).unwrap());
            assert_eq!(
                attrs,
                vec![
                    ("env".into(), Some("prod".into())),
                    ("host".into(), Some(String::new()))
                ]
            );
            assert!(other.is_empty());
        }
    }

    #[test]
    fn non_string_existing_value_still_wins() {
        let e = Enricher::new(pairs(&[("pid", "1")]));
        let mut resource = Vec::new();
        wire::put_message(&mut resource, 1, |kv| {
            wire::put_bytes(kv, 1, b"pid");
            wire::put_message(kv, 2, |any| wire::put_uint(any, 3, 42));
        });
        assert_eq!(e.enrich(Some(&resource)).unwrap(), resource);
    }

    #[test]
    fn empty_enricher_copies_through() {
        let e = Enricher::new(Vec::new());
        assert!(e.is_empty());
        let mut resource = Vec::new();
        kv_field(&mut resource, "a", "b");
        assert_eq!(e.enrich(Some(&resource)).unwrap(), resource);
        assert!(e.enrich(None).unwrap().is_empty());
    }

    #[test]
    fn duplicate_config_keys_keep_the_first() {
        let e = Enricher::new(pairs(&[("env", "prod"), ("env", "dev")]));
        let (attrs, _) = attrs_of(&e.enrich(None).unwrap());
        assert_eq!(attrs, vec![("env".into(), Some("prod".into()))]);
    }

    #[test]
    fn many_configured_keys() {
        let list: Vec<(String, String)> = (0..100).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
        let e = Enricher::new(list);
        let mut resource = Vec::new();
        kv_field(&mut resource, "k3", "client");
        kv_field(&mut resource, "k70", "client");
        let (attrs, _) = attrs_of(&e.enrich(Some(&resource)).unwrap());
        assert_eq!(attrs.len(), 100);
        assert_eq!(attrs.iter().filter(|(_, v)| v.as_deref() == Some("client")).count(), 2);
        assert!(!attrs
            .iter()
            .any(|(k, v)| (k == "k3" || k == "k70") && v.as_deref() != Some("client")));
    }

    #[test]
    fn invalid_resource_is_an_error_not_a_panic() {
        let e = Enricher::new(pairs(&[("env", "prod")]));
        assert!(e.enrich(Some(&[0x0a, 0x05, 0x01])).is_err());
        assert!(e.enrich(Some(&[0x0a, 0x02, 0xff, 0xff])).is_err());
    }
}
