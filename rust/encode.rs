//! Response bodies the receivers send back, and gzip for the exporters.
//!
//! Both protobuf and JSON omit default values, as protobuf's own encoders do: a full success is an
//! empty `Export*ServiceResponse` (zero bytes, or `{}` in JSON).

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{CoreError, Result};
use crate::ingest::Format;
use crate::signal::Signal;
use crate::wire;

/// JSON name of `Export*PartialSuccess.rejected_<unit>` (field 1).
fn rejected_key(signal: Signal) -> &'static str {
    match signal {
        Signal::Logs => "rejectedLogRecords",
        Signal::Traces => "rejectedSpans",
        Signal::Metrics => "rejectedDataPoints",
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `Export{Trace,Logs,Metrics}ServiceResponse` with `partial_success` (field 1) set when anything
/// was rejected or there is a message.
pub fn export_response(signal: Signal, rejected: u64, message: &str, format: Format) -> Vec<u8> {
    let partial = rejected != 0 || !message.is_empty();
    match format {
        Format::Protobuf => {
            let mut out = Vec::new();
            if partial {
                wire::put_message(&mut out, 1, |o| {
                    if rejected != 0 {
                        wire::put_uint(o, 1, rejected);
                    }
                    if !message.is_empty() {
                        wire::put_bytes(o, 2, message.as_bytes());
                    }
                });
            }
            out
        }
        Format::Json => {
            if !partial {
                return b"{}".to_vec();
            }
            let mut fields = Vec::with_capacity(2);
            if rejected != 0 {
                // int64 is a string in proto3 JSON.
                fields.push(format!("\"{}\":\"{rejected}\"", rejected_key(signal)));
            }
            if !message.is_empty() {
                fields.push(format!("\"errorMessage\":{}", json_string(message)));
            }
            format!("{{\"partialSuccess\":{{{}}}}}", fields.join(",")).into_bytes()
        }
    }
}

/// `google.rpc.Status{1 code, 2 message}`, the body of OTLP/HTTP error responses.
pub fn status_body(code: i32, message: &str, format: Format) -> Vec<u8> {
    match format {
        Format::Protobuf => {
            let mut out = Vec::new();
            if code != 0 {
                // int32: negative values are sign-extended to 64 bits on the wire.
                wire::put_uint(&mut out, 1, i64::from(code) as u64);
            }
            if !message.is_empty() {
                wire::put_bytes(&mut out, 2, message.as_bytes());
            }
            out
        }
        Format::Json => {
            let mut fields = Vec::with_capacity(2);
            if code != 0 {
                fields.push(format!("\"code\":{code}"));
            }
            if !message.is_empty() {
                fields.push(format!("\"message\":{}", json_string(message)));
            }
            format!("{{{}}}", fields.join(",")).into_bytes()
        }
    }
}

/// Reads `partial_success` out of an `Export*ServiceResponse` a destination answered with:
/// (rejected records, error message); a full success reads as (0, "").
pub fn parse_partial_success(body: &[u8], format: Format) -> Result<(u64, String)> {
    match format {
        Format::Protobuf => {
            let mut rejected = 0u64;
            let mut message = String::new();
            for field in wire::Fields::new(body) {
                let field = field?;
                if field.number != 1 || field.wire_type != wire::LEN {
                    continue;
                }
                for inner in wire::Fields::new(field.data) {
                    let inner = inner?;
                    match (inner.number, inner.wire_type) {
                        // int64 on the wire; a negative count is nonsense and reads as 0.
                        (1, wire::VARINT) => rejected = u64::try_from(inner.int as i64).unwrap_or(0),
                        (2, wire::LEN) => message = String::from_utf8_lossy(inner.data).into_owned(),
                        _ => {}
                    }
                }
            }
            Ok((rejected, message))
        }
        Format::Json => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok((0, String::new()));
            }
            let doc: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| CoreError::decode(format!("invalid JSON export response: {e}")))?;
            let Some(partial) = doc.get("partialSuccess").or_else(|| doc.get("partial_success")) else {
                return Ok((0, String::new()));
            };
            let rejected = ["rejectedSpans", "rejectedLogRecords", "rejectedDataPoints"]
                .iter()
                .find_map(|k| partial.get(*k))
                .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
                .unwrap_or(0);
            let message = partial
                .get("errorMessage")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            Ok((rejected, message))
        }
    }
}

/// Compresses `data` as one gzip member at `level` (0 = store, 9 = smallest).
pub fn gzip(data: &[u8], level: u32) -> Result<Vec<u8>> {
    if level > 9 {
        return Err(CoreError::Usage(format!("gzip level must be 0 to 9 (got {level})")));
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::new(level));
    // Writing into a Vec cannot fail; keep the error path anyway rather than unwrap.
    let io = |e: std::io::Error| CoreError::Usage(format!("gzip failed: {e}"));
    encoder.write_all(data).map_err(io)?;
    encoder.finish().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Fields;
    use std::io::Read;

    fn fields(buf: &[u8]) -> Vec<crate::wire::Field<'_>> {
        Fields::new(buf).collect::<Result<_>>().unwrap()
    }

    #[test]
    fn full_success_is_empty() {
        for signal in Signal::ALL {
            assert!(export_response(signal, 0, "", Format::Protobuf).is_empty());
            assert_eq!(export_response(signal, 0, "", Format::Json), b"{}");
        }
    }

    #[test]
    fn partial_success_protobuf() {
        let body = export_response(
            Signal::Traces,
            2,
            "2 spans rejected: trace_id must be 16 bytes",
            Format::Protobuf,
        );
        let top = fields(&body);
        assert_eq!(top.len(), 1);
        assert_eq!((top[0].number, top[0].wire_type), (1, wire::LEN));
        let inner = fields(top[0].data);
        assert_eq!(
            (inner[0].number, inner[0].wire_type, inner[0].int),
            (1, wire::VARINT, 2)
        );
        assert_eq!(
            (inner[1].number, inner[1].data),
            (2, &b"2 spans rejected: trace_id must be 16 bytes"[..])
        );

        // Only a message: rejected stays at its default and is omitted.
        let body = export_response(Signal::Logs, 0, "note", Format::Protobuf);
        let inner = fields(fields(&body)[0].data);
        assert_eq!(inner.len(), 1);
        assert_eq!((inner[0].number, inner[0].data), (2, &b"note"[..]));

        // Only a count.
        let body = export_response(Signal::Metrics, 300, "", Format::Protobuf);
        let inner = fields(fields(&body)[0].data);
        assert_eq!(inner.len(), 1);
        assert_eq!((inner[0].number, inner[0].int), (1, 300));
    }

    #[test]
    fn partial_success_json() {
        assert_eq!(
            export_response(Signal::Traces, 2, "bad \"id\"\n", Format::Json),
            br#"{"partialSuccess":{"rejectedSpans":"2","errorMessage":"bad \"id\"\n"}}"#
        );
        assert_eq!(
            export_response(Signal::Logs, 1, "", Format::Json),
            br#"{"partialSuccess":{"rejectedLogRecords":"1"}}"#
        );
        assert_eq!(
            export_response(Signal::Metrics, 7, "x", Format::Json),
            br#"{"partialSuccess":{"rejectedDataPoints":"7","errorMessage":"x"}}"#
        );
        assert_eq!(
            export_response(Signal::Metrics, 0, "é", Format::Json),
            r#"{"partialSuccess":{"errorMessage":"é"}}"#.as_bytes()
        );
        let parsed: serde_json::Value =
            serde_json::from_slice(&export_response(Signal::Logs, u64::MAX, "\u{1}", Format::Json)).unwrap();
        assert_eq!(parsed["partialSuccess"]["rejectedLogRecords"], u64::MAX.to_string());
        assert_eq!(parsed["partialSuccess"]["errorMessage"], "\u{1}");
    }

    #[test]
    fn status_protobuf() {
        let body = status_body(8, "queue is full", Format::Protobuf);
        let f = fields(&body);
        assert_eq!((f[0].number, f[0].wire_type, f[0].int), (1, wire::VARINT, 8));
        assert_eq!((f[1].number, f[1].data), (2, &b"queue is full"[..]));
        assert!(status_body(0, "", Format::Protobuf).is_empty());
        let body = status_body(-1, "", Format::Protobuf);
        let f = fields(&body).remove(0);
        assert_eq!(f.int as i64 as i32, -1);
        assert_eq!(f.raw.len(), 11, "negative int32 takes a 10-byte varint");
    }

    #[test]
    fn status_json() {
        assert_eq!(
            status_body(3, "invalid protobuf: Span.name", Format::Json),
            br#"{"code":3,"message":"invalid protobuf: Span.name"}"#
        );
        assert_eq!(status_body(0, "", Format::Json), b"{}");
        assert_eq!(status_body(14, "", Format::Json), br#"{"code":14}"#);
        assert_eq!(status_body(0, "a\\b", Format::Json), br#"{"message":"a\\b"}"#);
    }

    #[test]
    fn gzip_round_trip() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for level in [0, 1, 6, 9] {
            let packed = gzip(&data, level).unwrap();
            assert_eq!(&packed[..2], &[0x1f, 0x8b]);
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
        assert!(gzip(b"", 6).is_ok());
        assert!(matches!(gzip(b"x", 10), Err(CoreError::Usage(_))));
    }

    #[test]
    fn partial_success_round_trips() {
        for format in [Format::Protobuf, Format::Json] {
            for (rejected, message) in [(0u64, ""), (3, ""), (0, "slow down"), (12, "span too old")] {
                let body = export_response(Signal::Traces, rejected, message, format);
                assert_eq!(
                    parse_partial_success(&body, format).unwrap(),
                    (rejected, message.to_owned())
                );
            }
        }
        assert_eq!(parse_partial_success(b"", Format::Json).unwrap(), (0, String::new()));
        assert!(parse_partial_success(b"\x0a\x05", Format::Protobuf).is_err());
        assert!(parse_partial_success(b"{", Format::Json).is_err());
    }
}
