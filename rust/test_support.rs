//! Inputs shared by the unit tests of several modules.

use crate::wire::{put_bytes, put_message};

/// An `ExportLogsServiceRequest` whose one log body is `levels` nested AnyValue arrays:
/// request(0) → ResourceLogs(1) → ScopeLogs(2) → LogRecord(3) → AnyValue(4), then 2 per level.
pub(crate) fn nested_log_body(levels: usize) -> Vec<u8> {
    let mut value = Vec::new();
    put_bytes(&mut value, 1, b"leaf");
    for _ in 0..levels {
        let mut array = Vec::new();
        put_bytes(&mut array, 1, &value);
        value.clear();
        put_bytes(&mut value, 5, &array);
    }
    let mut body = Vec::new();
    put_message(&mut body, 1, |rl| {
        put_message(rl, 2, |sl| put_message(sl, 2, |lr| put_bytes(lr, 5, &value)))
    });
    body
}

/// Pieces of generated strings: escapes, controls, astral and separator characters, JSON syntax.
pub(crate) const STRING_PIECES: &[&str] = &[
    "a",
    "service.name",
    " ",
    "\"",
    "\\",
    "/",
    "\n",
    "\r\t",
    "\u{0}",
    "\u{8}\u{c}",
    "\u{1f}",
    "\u{7f}",
    "é",
    "中文",
    "😀",
    "\u{2028}\u{2029}",
    "\u{feff}",
    "\u{fffd}",
    "\u{10ffff}",
    "{}",
    "[",
    ",",
    ":",
    "null",
    "0",
];

/// How deep objects and arrays nest in a JSON text.
pub(crate) fn nesting(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in json {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, _, b'"') => in_string = !in_string,
            (false, _, b'{' | b'[') => {
                depth += 1;
                max = max.max(depth);
            }
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A xorshift64 stream of pseudo-random numbers: the same `seed` gives the same inputs on every
/// run, so a failing fuzz round can be replayed.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// A fuzz input: `good` in even rounds, else up to `max_len` random bytes; then fewer than
/// `max_flips` of its bytes overwritten at random.
pub(crate) fn mangled(
    next: &mut impl FnMut() -> u64,
    round: usize,
    good: &[u8],
    max_len: u64,
    max_flips: u64,
) -> Vec<u8> {
    let mut buf = if round.is_multiple_of(2) {
        good.to_vec()
    } else {
        (0..next() % max_len).map(|_| next() as u8).collect()
    };
    for _ in 0..next() % max_flips {
        if !buf.is_empty() {
            let i = (next() as usize) % buf.len();
            buf[i] = next() as u8;
        }
    }
    buf
}
