//! gRPC over HTTP/2, the unary subset a receiver needs: length-prefixed messages, status codes,
//! and the trailers that carry them (`grpc-status`, `grpc-message`, `grpc-status-details-bin`).
//!
//! Plain functions over bytes and header maps, so the framing has its own tests; the HTTP/2
//! connection itself is h2's.

use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

use crate::wire;

/// The length prefix of every gRPC message: 1 byte compressed flag, 4 bytes big-endian length.
pub const PREFIX: usize = 5;

/// `google.rpc.Code`, the values a receiver answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// The outcome of one call, as it goes into the trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
    /// Sent as `google.rpc.RetryInfo` in `grpc-status-details-bin`: when the client may retry.
    pub retry_after: Option<Duration>,
}

impl Status {
    pub fn ok() -> Self {
        Status::new(Code::Ok, "")
    }

    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// `google.rpc.Status{1 code, 2 message, 3 details: [Any{1 type_url, 2 value: RetryInfo}]}`,
    /// or `None` when there is nothing beyond code and message to say.
    pub fn details(&self) -> Option<Vec<u8>> {
        let delay = self.retry_after?;
        let mut out = crate::encode::status_body(self.code as i32, &self.message, crate::ingest::Format::Protobuf);
        wire::put_message(&mut out, 3, |any| {
            wire::put_bytes(any, 1, b"type.googleapis.com/google.rpc.RetryInfo");
            // RetryInfo{1 retry_delay: google.protobuf.Duration{1 seconds, 2 nanos}}
            wire::put_message(any, 2, |info| {
                wire::put_message(info, 1, |d| {
                    if delay.as_secs() > 0 {
                        wire::put_uint(d, 1, delay.as_secs());
                    }
                    if delay.subsec_nanos() > 0 {
                        wire::put_uint(d, 2, u64::from(delay.subsec_nanos()));
                    }
                });
            });
        });
        Some(out)
    }

    /// The trailers of a response (or the headers of a trailers-only response).
    pub fn to_headers(&self, headers: &mut HeaderMap) {
        headers.insert("grpc-status", HeaderValue::from(self.code as i32));
        if !self.message.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&percent_encode(&self.message)) {
                headers.insert("grpc-message", value);
            }
        }
        if let Some(details) = self.details() {
            let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(details);
            if let Ok(value) = HeaderValue::from_str(&encoded) {
                headers.insert("grpc-status-details-bin", value);
            }
        }
    }
}

/// The `google.rpc.RetryInfo.retry_delay` in a `grpc-status-details-bin` (a serialized
/// `google.rpc.Status`), if it carries one: how long a destination asks us to wait.
pub fn retry_delay(status: &[u8]) -> crate::Result<Option<Duration>> {
    for field in wire::Fields::new(status) {
        let field = field?;
        if field.number != 3 || field.wire_type != wire::LEN {
            continue;
        }
        let (mut type_url, mut value) = (&[][..], &[][..]);
        for any in wire::Fields::new(field.data) {
            let any = any?;
            match (any.number, any.wire_type) {
                (1, wire::LEN) => type_url = any.data,
                (2, wire::LEN) => value = any.data,
                _ => {}
            }
        }
        if !type_url.ends_with(b"/google.rpc.RetryInfo") {
            continue;
        }
        let (mut secs, mut nanos) = (0u64, 0u64);
        for info in wire::Fields::new(value) {
            let info = info?;
            if (info.number, info.wire_type) != (1, wire::LEN) {
                continue;
            }
            for d in wire::Fields::new(info.data) {
                let d = d?;
                match (d.number, d.wire_type) {
                    (1, wire::VARINT) => secs = d.int,
                    (2, wire::VARINT) => nanos = d.int,
                    _ => {}
                }
            }
        }
        // Negative durations (sign-extended varints) and nonsense read as "no delay given".
        if secs > i64::MAX as u64 || nanos >= 1_000_000_000 {
            return Ok(None);
        }
        return Ok(Some(Duration::new(secs, nanos as u32)));
    }
    Ok(None)
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One message with its length prefix, uncompressed.
pub fn encode_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// The one message of a unary request body: (compressed flag, message). `max` bounds the
/// message as it arrived (compressed or not); over it is RESOURCE_EXHAUSTED, as gRPC answers a
/// message larger than the server's maximum.
pub fn decode_unary(body: &[u8], max: usize) -> Result<(bool, &[u8]), Status> {
    let Some(head) = body.get(..PREFIX) else {
        return Err(Status::new(
            Code::InvalidArgument,
            "request holds no complete gRPC message (length prefix missing)",
        ));
    };
    let compressed = match head[0] {
        0 => false,
        1 => true,
        other => {
            return Err(Status::new(
                Code::InvalidArgument,
                format!("invalid gRPC message flag {other}"),
            ))
        }
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > max {
        return Err(Status::new(
            Code::ResourceExhausted,
            format!("message of {len} bytes exceeds the limit of {max} bytes"),
        ));
    }
    let rest = &body[PREFIX..];
    if rest.len() < len {
        return Err(Status::new(
            Code::InvalidArgument,
            format!("truncated gRPC message: {} of {len} bytes", rest.len()),
        ));
    }
    if rest.len() > len {
        return Err(Status::new(
            Code::InvalidArgument,
            "more than one message in a unary request",
        ));
    }
    Ok((compressed, rest))
}

/// Compares `given` with every accepted token in time independent of where they differ.
pub fn token_accepted(given: &[u8], tokens: &[Vec<u8>]) -> bool {
    let mut found = 0u8;
    for token in tokens {
        let mut diff = u8::from(token.len() != given.len());
        for (a, b) in token.iter().zip(given.iter().cycle()) {
            diff |= a ^ b;
        }
        found |= u8::from(diff == 0);
    }
    found == 1
}

/// The bearer token of an `authorization` metadata value, if it is one.
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Fields;

    #[test]
    fn frame_round_trip() {
        let frame = encode_frame(b"hello");
        assert_eq!(&frame[..], b"\x00\x00\x00\x00\x05hello");
        assert_eq!(decode_unary(&frame, 100), Ok((false, &b"hello"[..])));
        assert_eq!(decode_unary(b"\x01\x00\x00\x00\x02ab", 100), Ok((true, &b"ab"[..])));
        assert_eq!(decode_unary(b"\x00\x00\x00\x00\x00", 0), Ok((false, &b""[..])));
    }

    #[test]
    fn frame_errors() {
        let code = |body: &[u8], max| decode_unary(body, max).unwrap_err().code;
        assert_eq!(code(b"", 10), Code::InvalidArgument);
        assert_eq!(code(b"\x00\x00\x00", 10), Code::InvalidArgument);
        assert_eq!(code(b"\x02\x00\x00\x00\x00", 10), Code::InvalidArgument);
        assert_eq!(code(b"\x00\x00\x00\x00\x05abc", 10), Code::InvalidArgument);
        assert_eq!(code(b"\x00\x00\x00\x00\x01ab", 10), Code::InvalidArgument);
        assert_eq!(code(b"\x00\x00\x00\x00\x0babcdefghijk", 10), Code::ResourceExhausted);
        // The declared length alone decides: a huge prefix is refused before any data arrives.
        assert_eq!(code(b"\x00\xff\xff\xff\xff", 10), Code::ResourceExhausted);
    }

    #[test]
    fn status_trailers() {
        let mut h = HeaderMap::new();
        Status::new(Code::InvalidArgument, "bad 100% \u{e9}\n").to_headers(&mut h);
        assert_eq!(h["grpc-status"], "3");
        assert_eq!(h["grpc-message"], "bad 100%25 %C3%A9%0A");
        assert!(!h.contains_key("grpc-status-details-bin"));
        let mut ok = HeaderMap::new();
        Status::ok().to_headers(&mut ok);
        assert_eq!(ok["grpc-status"], "0");
        assert!(!ok.contains_key("grpc-message"));
    }

    #[test]
    fn retry_info_details() {
        let status = Status::new(Code::Unavailable, "queue full").with_retry(Duration::from_millis(1500));
        let details = status.details().unwrap();
        let fields: Vec<_> = Fields::new(&details).map(Result::unwrap).collect();
        assert_eq!((fields[0].number, fields[0].int), (1, 14));
        assert_eq!((fields[1].number, fields[1].data), (2, &b"queue full"[..]));
        assert_eq!(fields[2].number, 3);
        let any: Vec<_> = Fields::new(fields[2].data).map(Result::unwrap).collect();
        assert_eq!(any[0].data, b"type.googleapis.com/google.rpc.RetryInfo");
        let info: Vec<_> = Fields::new(any[1].data).map(Result::unwrap).collect();
        let duration: Vec<_> = Fields::new(info[0].data).map(Result::unwrap).collect();
        assert_eq!((duration[0].number, duration[0].int), (1, 1));
        assert_eq!((duration[1].number, duration[1].int), (2, 500_000_000));
        let mut h = HeaderMap::new();
        status.to_headers(&mut h);
        let bin = h["grpc-status-details-bin"].to_str().unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(bin).unwrap(),
            details
        );
    }

    #[test]
    fn retry_delay_round_trip() {
        let status = Status::new(Code::Unavailable, "busy").with_retry(Duration::from_millis(2500));
        assert_eq!(
            retry_delay(&status.details().unwrap()),
            Ok(Some(Duration::from_millis(2500)))
        );
        let plain = crate::encode::status_body(14, "busy", crate::ingest::Format::Protobuf);
        assert_eq!(retry_delay(&plain), Ok(None));
        assert!(retry_delay(b"\x1a\x05ab").is_err());
    }

    #[test]
    fn tokens() {
        let tokens = vec![b"secret".to_vec(), b"other-token".to_vec()];
        assert!(token_accepted(b"secret", &tokens));
        assert!(token_accepted(b"other-token", &tokens));
        assert!(!token_accepted(b"secreT", &tokens));
        assert!(!token_accepted(b"secret2", &tokens));
        assert!(!token_accepted(b"", &tokens));
        assert!(!token_accepted(b"secret", &[]));
        assert_eq!(bearer(b"Bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"abc"), None);
    }
}
