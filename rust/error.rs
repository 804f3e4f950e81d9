//! One error type for the data plane; the bindings map each variant to one Python exception
//! and each receiver maps that exception to one HTTP status.

use std::borrow::Cow;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// The body is not valid OTLP (protobuf or JSON). HTTP 400.
    #[error("{0}")]
    Decode(String),
    /// The body, after decompression, is over the configured limit. HTTP 413.
    #[error("body exceeds the limit of {limit} bytes after decompression")]
    TooLarge { limit: usize },
    /// One item of a Sentry envelope is over its limit (the envelope is rejected whole, as Relay does). HTTP 413.
    #[error("{item} is {size} bytes, over the limit of {limit} bytes")]
    ItemTooLarge { item: String, size: usize, limit: usize },
    /// A header line (a Sentry envelope's or item's) longer than its cap, found without reading
    /// the line to its end. HTTP 413.
    #[error("{line} is longer than the limit of {limit} bytes")]
    LineTooLong { line: String, limit: usize },
    /// Content-Encoding or content type the gateway does not speak. HTTP 415.
    #[error("{0}")]
    Unsupported(String),
    /// The queue is at its byte limit; the client should retry later. HTTP 429.
    #[error("queue is full ({used} of {limit} bytes in use)")]
    QueueFull { used: usize, limit: usize },
    /// The pipeline was closed. HTTP 503.
    #[error("pipeline is closed")]
    Closed,
    /// A caller passed a wrong argument (a programming error, not bad data).
    #[error("{0}")]
    Usage(String),
    /// The queue directory is owned by another open queue (another process, e.g. another worker).
    #[error("{0}")]
    Locked(String),
    /// Reading or writing the queue directory failed (disk full, permissions, I/O error). HTTP 503.
    #[error("{0}")]
    Storage(String),
}

impl CoreError {
    pub fn decode(msg: impl Into<String>) -> Self {
        CoreError::Decode(msg.into())
    }
}

pub type Result<T> = std::result::Result<T, CoreError>;

/// Most characters of client input an error message repeats: a hostile 5 MB value comes back as
/// a short prefix, never whole.
pub const ECHO_CHARS: usize = 64;

/// `text` for an error message: its first `ECHO_CHARS` characters, with `…` when cut.
pub fn shorten(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(ECHO_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
    }
}

/// `bytes` (lossy UTF-8) for an error message, cut short like `shorten`. Only the prefix is
/// decoded: bounded work for any input.
pub fn shorten_bytes(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(ECHO_CHARS * 4)];
    let mut shown = shorten(&String::from_utf8_lossy(head)).into_owned();
    if head.len() < bytes.len() && !shown.ends_with('…') {
        shown.push('…');
    }
    shown
}

/// `bytes` as a quoted string for an error message, cut short like `shorten`.
pub fn quote(bytes: &[u8]) -> String {
    format!("{:?}", shorten_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_short() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(5_000_000);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), ECHO_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(shorten(&"x".repeat(ECHO_CHARS)), "x".repeat(ECHO_CHARS));
        assert_eq!(quote(b"a\"b"), "\"a\\\"b\"");
        let q = quote(&vec![b'x'; 5_000_000]);
        assert!(q.len() < 80 && q.starts_with("\"xxx") && q.ends_with("…\""), "{q}");
        assert!(quote(b"\xff\xfe").contains('\u{fffd}'));
    }
}
