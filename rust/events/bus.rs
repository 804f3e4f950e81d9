//! A batch of queued events (`to_ndjson`'s lines) packed as stream entries for the Redis
//! exporter's `XADD` script: one script call per batch, one reply, and no Python per event.
//!
//! Layout per entry, read by the script with Lua's `struct`: the stream's index in KEYS (u16,
//! from 1), the number of field/value pairs (u16), then each field and value as a u32 length
//! and its bytes; all big-endian.

use super::raw;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The ids an entry carries when the event has them, in this order (after event_id,
/// event_type and time_unix_nano; `data` last).
const ID_KEYS: [&str; 7] = [
    "service",
    "job_id",
    "worker_id",
    "machine_id",
    "session_id",
    "request_id",
    "trace_id",
];

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// The streams the entries go to (the script's KEYS), in first-use order.
    pub streams: Vec<String>,
    pub blob: Vec<u8>,
    pub entries: usize,
    /// Lines that did not read as an event (never one the receiver queued).
    pub skipped: usize,
}

/// Packs every event line of `ndjson`. `per_type`: one stream per event type,
/// `<prefix>:<event_type>`; else all in `<prefix>`.
pub fn pack(ndjson: &[u8], prefix: &str, per_type: bool) -> Packed {
    let mut out = Packed {
        blob: Vec::with_capacity(ndjson.len() + ndjson.len() / 4),
        ..Packed::default()
    };
    if !per_type {
        out.streams.push(prefix.to_owned());
    }
    for line in ndjson.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match std::str::from_utf8(line).ok().and_then(|t| raw::pairs(t).ok()) {
            Some(pairs) if pack_one(&pairs, prefix, per_type, &mut out) => out.entries += 1,
            _ => out.skipped += 1,
        }
    }
    out
}

fn pack_one(pairs: &raw::Pairs<'_>, prefix: &str, per_type: bool, out: &mut Packed) -> bool {
    let get = |key: &str| -> Option<&RawValue> { pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v) };
    // A string as its text, anything else (a number) as its JSON text.
    let text = |raw: &RawValue| -> Option<String> {
        if raw.get().starts_with('"') {
            raw::string(raw).ok().map(Cow::into_owned)
        } else {
            Some(raw.get().to_owned())
        }
    };
    let (Some(id), Some(kind), Some(time)) = (
        get("event_id").and_then(text),
        get("event_type").and_then(text),
        get("time_unix_nano").and_then(text),
    ) else {
        return false;
    };
    let stream = if per_type {
        format!("{prefix}:{kind}")
    } else {
        prefix.to_owned()
    };
    let key = match out.streams.iter().position(|s| *s == stream) {
        Some(i) => i,
        None => {
            out.streams.push(stream);
            out.streams.len() - 1
        }
    };
    let mut fields: Vec<(&str, Cow<'_, str>)> = vec![
        ("event_id", id.into()),
        ("event_type", kind.into()),
        ("time_unix_nano", time.into()),
    ];
    for name in ID_KEYS {
        if let Some(value) = get(name).and_then(text) {
            fields.push((name, value.into()));
        }
    }
    let data = match get("data").map(RawValue::get) {
        None | Some("null") => "{}",
        Some(d) => d,
    };
    fields.push(("data", data.into()));
    let (Ok(key), Ok(count)) = (u16::try_from(key + 1), u16::try_from(fields.len())) else {
        return false;
    };
    out.blob.extend_from_slice(&key.to_be_bytes());
    out.blob.extend_from_slice(&count.to_be_bytes());
    for (name, value) in &fields {
        for part in [name.as_bytes(), value.as_bytes()] {
            let Ok(len) = u32::try_from(part.len()) else {
                return false;
            };
            out.blob.extend_from_slice(&len.to_be_bytes());
            out.blob.extend_from_slice(part);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries back from the blob, as the script reads it.
    fn unpack(p: &Packed) -> Vec<(String, Vec<(String, String)>)> {
        let mut out = Vec::new();
        let b = &p.blob;
        let mut at = 0;
        let u16_at = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]) as usize;
        while at < b.len() {
            let (key, count) = (u16_at(at), u16_at(at + 2));
            at += 4;
            let mut fields = Vec::new();
            for _ in 0..count {
                let mut pair = Vec::new();
                for _ in 0..2 {
                    let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
                    pair.push(String::from_utf8(b[at + 4..at + 4 + len].to_vec()).unwrap());
                    at += 4 + len;
                }
                fields.push((pair[0].clone(), pair[1].clone()));
            }
            out.push((p.streams[key - 1].clone(), fields));
        }
        out
    }

    const LINES: &[u8] =
        br#"{"event_id":"e1","event_type":"job_started","time_unix_nano":17,"service":"ocr","job_id":"j1","data":{}}
{"event_id":"e2","event_type":"job_failed","time_unix_nano":18,"job_id":"j\"1","trace_id":"ab","data":{"error":"boom"}}

not json
{"event_type":"no_id","time_unix_nano":1,"data":{}}
"#;

    #[test]
    fn entries_carry_the_fields_in_order_and_bad_lines_are_counted() {
        let p = pack(LINES, "bus", false);
        assert_eq!((p.entries, p.skipped), (2, 2));
        assert_eq!(p.streams, ["bus"]);
        let entries = unpack(&p);
        let f = |e: &[(String, String)]| e.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        assert_eq!(entries[0].0, "bus");
        assert_eq!(
            f(&entries[0].1),
            "event_id=e1 event_type=job_started time_unix_nano=17 service=ocr job_id=j1 data={}"
        );
        assert_eq!(
            f(&entries[1].1),
            r#"event_id=e2 event_type=job_failed time_unix_nano=18 job_id=j"1 trace_id=ab data={"error":"boom"}"#
        );
    }

    #[test]
    fn per_type_streams_are_the_keys_in_first_use_order() {
        let p = pack(LINES, "t", true);
        assert_eq!(p.streams, ["t:job_started", "t:job_failed"]);
        let entries = unpack(&p);
        assert_eq!(entries[1].0, "t:job_failed");
    }

    #[test]
    fn nothing_to_pack() {
        let p = pack(b"\n \n", "bus", false);
        assert_eq!((p.entries, p.skipped, p.blob.len()), (0, 0, 0));
    }
}
