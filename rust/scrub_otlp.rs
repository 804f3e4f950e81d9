//! The scrubber's rules on OTLP records, on the wire: log record bodies and attributes, span
//! attributes, span event attributes and span link attributes. Called from the ingest walk for
//! each record kept, so scrubbing is part of the same pass (no second walk).
//!
//! A record nothing matched in is not copied (`None`): the walk copies its bytes through as they
//! arrived. A record something matched in is rewritten field by field; fields that did not change
//! are copied as they came. Resource and scope attributes are not scrubbed (they name the
//! service, host and SDK; see the README).
//!
//! Rules (those of `scrub`, on `AnyValue`s):
//! - a `KeyValue` whose key is sensitive (`Scrubber::sensitive_key`): its value, whatever it
//!   is (string, number, list, map, bytes), becomes the string `[Filtered]`; an empty or absent
//!   value stays;
//! - a string value: `Scrubber::scrub_str` (URL passwords, query/form values, bearer tokens, PEM
//!   private keys, card numbers, JSON held in the string);
//! - an int or integral double that is a card number: the string `[Filtered]`;
//! - arrays and maps: the same rules on each element (map entries by their keys).

use crate::error::Result;
use crate::scrub::{self, Scrubber, FILTERED};
use crate::signal::Signal;
use crate::wire::{self, Field, Fields, I64, LEN, VARINT};

/// A log record (`Signal::Logs`) or span (`Signal::Traces`) with the rules applied, or `None`
/// when nothing in it matched. Metrics are never scrubbed.
pub fn scrub_record(scrubber: &Scrubber, signal: Signal, record: &[u8]) -> Result<Option<Vec<u8>>> {
    if !scrubber.enabled() {
        return Ok(None);
    }
    match signal {
        // body (AnyValue), attributes (KeyValue)
        Signal::Logs => rewrite(record, |f| match (f.number, f.wire_type) {
            (5, LEN) => any(scrubber, f.data).map(|new| new.map(|v| field_bytes(5, &v))),
            (6, LEN) => key_value(scrubber, f.data).map(|new| new.map(|v| field_bytes(6, &v))),
            _ => Ok(None),
        }),
        // attributes (KeyValue), events (Event.attributes = 3), links (Link.attributes = 5)
        Signal::Traces => rewrite(record, |f| match (f.number, f.wire_type) {
            (9, LEN) => key_value(scrubber, f.data).map(|new| new.map(|v| field_bytes(9, &v))),
            (11 | 13, LEN) => {
                let attrs = if f.number == 11 { 3 } else { 5 };
                let new = rewrite(f.data, |g| match (g.number, g.wire_type) {
                    (n, LEN) if n == attrs => key_value(scrubber, g.data).map(|new| new.map(|v| field_bytes(n, &v))),
                    _ => Ok(None),
                })?;
                Ok(new.map(|v| field_bytes(f.number, &v)))
            }
            _ => Ok(None),
        }),
        Signal::Metrics => Ok(None),
    }
}

/// Rewrites `msg` when `change` replaces any field (returning the whole new field, tag
/// included); `None` when no field changed.
fn rewrite(msg: &[u8], mut change: impl FnMut(&Field<'_>) -> Result<Option<Vec<u8>>>) -> Result<Option<Vec<u8>>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied_up_to = 0usize;
    let mut pos = 0usize;
    for field in Fields::new(msg) {
        let field = field?;
        let end = pos + field.raw.len();
        if let Some(new) = change(&field)? {
            let buf = out.get_or_insert_with(|| Vec::with_capacity(msg.len() + 16));
            buf.extend_from_slice(&msg[copied_up_to..pos]);
            buf.extend_from_slice(&new);
            copied_up_to = end;
        }
        pos = end;
    }
    Ok(out.map(|mut buf| {
        buf.extend_from_slice(&msg[copied_up_to..]);
        buf
    }))
}

fn field_bytes(number: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    wire::put_bytes(&mut out, number, body);
    out
}

/// `AnyValue{string_value: "[Filtered]"}` as a field.
fn filtered_string(number: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    wire::put_bytes(&mut out, number, FILTERED.as_bytes());
    out
}

/// An `AnyValue` body with the rules applied.
fn any(scrubber: &Scrubber, value: &[u8]) -> Result<Option<Vec<u8>>> {
    rewrite(value, |f| {
        Ok(match (f.number, f.wire_type) {
            (1, LEN) => std::str::from_utf8(f.data)
                .ok()
                .and_then(|s| scrubber.scrub_str(s))
                .map(|new| field_bytes(1, new.as_bytes())),
            (3, VARINT) if scrub::card_int(f.int) => Some(filtered_string(1)),
            (4, I64) if scrub::card_double(f64::from_bits(f.int)) => Some(filtered_string(1)),
            // ArrayValue.values / KeyValueList.values
            (5, LEN) => rewrite(f.data, |g| match (g.number, g.wire_type) {
                (1, LEN) => any(scrubber, g.data).map(|new| new.map(|v| field_bytes(1, &v))),
                _ => Ok(None),
            })?
            .map(|v| field_bytes(5, &v)),
            (6, LEN) => rewrite(f.data, |g| match (g.number, g.wire_type) {
                (1, LEN) => key_value(scrubber, g.data).map(|new| new.map(|v| field_bytes(1, &v))),
                _ => Ok(None),
            })?
            .map(|v| field_bytes(6, &v)),
            _ => None,
        })
    })
}

/// A `KeyValue` body: the key rules, else the value rules.
fn key_value(scrubber: &Scrubber, kv: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut key: &[u8] = &[];
    for field in Fields::new(kv) {
        let field = field?;
        if field.number == 1 && field.wire_type == LEN {
            key = field.data;
        }
    }
    let sensitive = std::str::from_utf8(key).is_ok_and(|k| scrubber.sensitive_key(k));
    rewrite(kv, |f| match (f.number, f.wire_type) {
        (2, LEN) if sensitive => Ok((!is_blank(f.data)?).then(|| field_bytes(2, &filtered_string(1)))),
        (2, LEN) => any(scrubber, f.data).map(|new| new.map(|v| field_bytes(2, &v))),
        _ => Ok(None),
    })
}

/// An empty `AnyValue`, an empty string, or `[Filtered]` already.
fn is_blank(value: &[u8]) -> Result<bool> {
    let mut blank = true;
    for field in Fields::new(value) {
        let field = field?;
        blank =
            field.number == 1 && field.wire_type == LEN && (field.data.is_empty() || field.data == FILTERED.as_bytes());
    }
    Ok(blank)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrub::ScrubOptions;

    fn kv_str(key: &str, value: &str) -> Vec<u8> {
        let mut kv = Vec::new();
        wire::put_bytes(&mut kv, 1, key.as_bytes());
        wire::put_message(&mut kv, 2, |v| wire::put_bytes(v, 1, value.as_bytes()));
        kv
    }

    fn kv_int(key: &str, value: u64) -> Vec<u8> {
        let mut kv = Vec::new();
        wire::put_bytes(&mut kv, 1, key.as_bytes());
        wire::put_message(&mut kv, 2, |v| wire::put_uint(v, 3, value));
        kv
    }

    fn log(body: &str, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut r = Vec::new();
        wire::put_uint(&mut r, 2, 9);
        wire::put_message(&mut r, 5, |v| wire::put_bytes(v, 1, body.as_bytes()));
        for a in attrs {
            wire::put_bytes(&mut r, 6, a);
        }
        r
    }

    fn json(signal: Signal, record: &[u8]) -> serde_json::Value {
        // Wrap in a request to reuse the JSON encoder.
        let mut req = Vec::new();
        wire::put_message(&mut req, 1, |rs| {
            wire::put_message(rs, 2, |ss| wire::put_bytes(ss, 2, record));
        });
        let doc: serde_json::Value =
            serde_json::from_slice(&crate::json_encode::protobuf_to_json(signal, &req).unwrap()).unwrap();
        let key = if signal == Signal::Logs {
            "resourceLogs"
        } else {
            "resourceSpans"
        };
        let (scope, list) = if signal == Signal::Logs {
            ("scopeLogs", "logRecords")
        } else {
            ("scopeSpans", "spans")
        };
        doc[key][0][scope][0][list][0].clone()
    }

    #[test]
    fn log_body_and_attributes() {
        let s = Scrubber::default();
        let record = log(
            "login https://u:pw@h/x?token=t1",
            &[
                kv_str("db.password", "x"),
                kv_str("user", "ann"),
                kv_int("n", 4111111111111111),
                kv_int("m", 7),
            ],
        );
        let out = scrub_record(&s, Signal::Logs, &record).unwrap().unwrap();
        let doc = json(Signal::Logs, &out);
        assert_eq!(
            doc["body"]["stringValue"],
            "login https://u:[Filtered]@h/x?token=[Filtered]"
        );
        let attrs = doc["attributes"].as_array().unwrap();
        assert_eq!(attrs[0]["value"]["stringValue"], FILTERED);
        assert_eq!(attrs[1]["value"]["stringValue"], "ann");
        assert_eq!(attrs[2]["value"]["stringValue"], FILTERED);
        assert_eq!(attrs[3]["value"]["intValue"], "7");
        // Idempotent; nothing to filter: no copy.
        assert_eq!(scrub_record(&s, Signal::Logs, &out).unwrap(), None);
        let clean = log("all fine", &[kv_str("user", "ann")]);
        assert_eq!(scrub_record(&s, Signal::Logs, &clean).unwrap(), None);
        // Off: nothing.
        let off = Scrubber::new(&ScrubOptions {
            enabled: false,
            ..ScrubOptions::default()
        });
        assert_eq!(scrub_record(&off, Signal::Logs, &record).unwrap(), None);
    }

    #[test]
    fn mutated_records_never_panic() {
        let s = Scrubber::default();
        let record = log(
            "https://u:pw@h/?token=t 4111 1111 1111 1111",
            &[kv_str("password", "x"), kv_int("n", 4111111111111111)],
        );
        let mut next = crate::test_support::xorshift(0x2545_f491_4f6c_dd1du64);
        for _ in 0..5_000 {
            let mut m = record.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % m.len() as u64) as usize;
                m[i] = next() as u8;
            }
            for signal in [Signal::Logs, Signal::Traces, Signal::Metrics] {
                let _ = scrub_record(&s, signal, &m);
            }
        }
    }

    #[test]
    fn nested_maps_lists_and_span_events() {
        let s = Scrubber::new(&ScrubOptions {
            extra_keys: vec!["ssn".into()],
            safe_keys: vec!["author".into()],
            ..ScrubOptions::default()
        });
        let mut span = Vec::new();
        wire::put_bytes(&mut span, 1, &[1; 16]);
        wire::put_bytes(&mut span, 2, &[2; 8]);
        wire::put_bytes(&mut span, 5, b"GET");
        // A map holding a sensitive key and a list holding a bearer token.
        wire::put_message(&mut span, 9, |kv| {
            wire::put_bytes(kv, 1, b"http.request");
            wire::put_message(kv, 2, |v| {
                wire::put_message(v, 6, |list| {
                    wire::put_bytes(list, 1, &kv_str("x-api-key", "k"));
                    wire::put_bytes(list, 1, &kv_str("accept", "*/*"));
                });
            });
        });
        wire::put_message(&mut span, 9, |kv| {
            wire::put_bytes(kv, 1, b"args");
            wire::put_message(kv, 2, |v| {
                wire::put_message(v, 5, |arr| {
                    wire::put_message(arr, 1, |a| wire::put_bytes(a, 1, b"Bearer abc123"));
                    wire::put_message(arr, 1, |a| wire::put_bytes(a, 1, b"plain"));
                });
            });
        });
        wire::put_bytes(&mut span, 9, &kv_str("user.ssn", "123"));
        wire::put_bytes(&mut span, 9, &kv_str("author", "ann"));
        wire::put_message(&mut span, 11, |ev| {
            wire::put_bytes(ev, 2, b"exception");
            wire::put_bytes(ev, 3, &kv_str("exception.message", "see https://h/p?secret=s3"));
        });
        let out = scrub_record(&s, Signal::Traces, &span).unwrap().unwrap();
        let doc = json(Signal::Traces, &out);
        let attrs = doc["attributes"].as_array().unwrap();
        let map = &attrs[0]["value"]["kvlistValue"]["values"];
        assert_eq!(map[0]["value"]["stringValue"], FILTERED);
        assert_eq!(map[1]["value"]["stringValue"], "*/*");
        let arr = &attrs[1]["value"]["arrayValue"]["values"];
        assert_eq!(arr[0]["stringValue"], "Bearer [Filtered]");
        assert_eq!(arr[1]["stringValue"], "plain");
        assert_eq!(attrs[2]["value"]["stringValue"], FILTERED);
        assert_eq!(attrs[3]["value"]["stringValue"], "ann");
        assert_eq!(
            doc["events"][0]["attributes"][0]["value"]["stringValue"],
            "see https://h/p?secret=[Filtered]"
        );
        assert_eq!(doc["name"], "GET");
    }
}
