//! PII scrubbing of Sentry item payloads (events, transactions, logs, spans, feedback, user
//! reports, security reports, check-ins, replay events, unknown JSON items), on by default,
//! modelled on Relay's default rules. One pass over the parsed JSON; strings that nothing can
//! match in are not copied.
//!
//! Replaced with `[Filtered]`:
//! - every value under a key that contains one of `DEFAULT_KEYS` or a configured extra pattern,
//!   anywhere in the payload: `extra`, `contexts`, `tags`, stack frame `vars`, `request.data`,
//!   `request.headers`, `request.cookies`, breadcrumb `data`, span `data`, log attributes. Keys
//!   match case-insensitively with `-` and `_` the same (`X-Api-Key` contains `api_key`).
//!   Objects and arrays under such a key keep their shape; their leaves are filtered. A typed
//!   attribute (`{"value": …, "type": …}`, Sentry logs and spans) keeps its shape: the value
//!   becomes the string `[Filtered]` and the type `string`.
//! - `[key, value]` pairs (headers, cookies, query strings, tags in list form) are judged one by
//!   one by their key, wherever they are: a list that also holds something else is no escape.
//! - in every string value:
//!   - a string holding a JSON object or array is parsed, scrubbed like the payload, and written
//!     back (compact) when something in it was filtered;
//!   - query strings, in URLs (`…?a=1&token=x#access_token=y`) and whole strings shaped like a
//!     form body or query string (`a=1&password=x`, `sessionid=1; theme=dark`): each key is
//!     (percent-)decoded and judged by the key rules; a sensitive key's value is filtered;
//!   - the password of URLs (`scheme://user:pass@host` → `scheme://user:[Filtered]@host`, a
//!     password may hold `/` or `@`);
//!   - `Bearer <token>` (case-insensitive), when the token looks like one: it holds a digit, one
//!     of `-._~+/=`, or both upper- and lower-case letters (`bearer of bad news` stays);
//!   - the body of PEM private key blocks (`-----BEGIN … PRIVATE KEY-----`, `… PRIVATE KEY
//!     BLOCK-----` for PGP);
//!   - credit-card numbers: 13–19 digits, first digit 2–6, Luhn-valid, written whole or in groups
//!     of 4–6 digits (the last 1–6) separated by up to three spaces, `-`, `.` or `/`.
//! - numbers (integers, and integral floats) that are credit-card numbers.
//!
//! Keys are never changed. A payload nothing matched in is left alone by the caller, so it is
//! forwarded byte-for-byte. `safe_keys` are exempt from the key rules (also as query keys).

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};
use std::borrow::Cow;

use crate::error::{CoreError, Result};

pub const FILTERED: &str = "[Filtered]";

/// Substrings of key names whose values are always filtered. Beyond Relay's password rule:
/// `cookie` (the `Cookie`/`Set-Cookie` headers and `request.cookies`) and the usual session and
/// CSRF cookie names, wherever cookies end up. Written normalized: lower case, `_` for `-`.
pub const DEFAULT_KEYS: &[&str] = &[
    "password",
    "secret",
    "passwd",
    "api_key",
    "apikey",
    "auth",
    "credentials",
    "mysql_pwd",
    "privatekey",
    "private_key",
    "token",
    "cookie",
    "sessionid",
    "sessid",
    "session_key",
    "csrf",
    "xsrf",
    "connect.sid",
];

/// How deep JSON held in strings is parsed (a JSON string in a JSON string in the payload).
const MAX_EMBEDDED: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Off: events are forwarded and converted as received.
    pub enabled: bool,
    /// Matched like `DEFAULT_KEYS`: case-insensitive substrings of key names.
    pub extra_keys: Vec<String>,
    /// Key names (case-insensitive, whole name, `-` and `_` the same) never filtered by the key
    /// rules, e.g. `author` (which contains `auth`). String values under them are still scanned.
    pub safe_keys: Vec<String>,
    /// Regular expressions (Rust `regex` syntax) whose matches in any string become `[Filtered]`.
    /// Checked with `check_pattern` first: one that does not compile is left out here.
    pub patterns: Vec<String>,
}

/// Why `pattern` cannot be used in `ScrubOptions::patterns` (None: it can).
pub fn check_pattern(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("an empty pattern would match everywhere".to_owned());
    }
    match compile(pattern) {
        Ok(re) if re.is_match("") => Some("the pattern matches the empty string".to_owned()),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

fn compile(pattern: &str) -> std::result::Result<Regex, regex::Error> {
    // Bounded compiled size: a config cannot make the scrubber huge.
    RegexBuilder::new(pattern).size_limit(1 << 20).build()
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            enabled: true,
            extra_keys: Vec::new(),
            safe_keys: Vec::new(),
            patterns: Vec::new(),
        }
    }
}

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct Scrubber {
    enabled: bool,
    /// Normalized (`normalize_key`).
    keys: Vec<String>,
    safe: Vec<String>,
    patterns: Vec<Regex>,
}

impl Default for Scrubber {
    fn default() -> Self {
        Scrubber::new(&ScrubOptions::default())
    }
}

impl Scrubber {
    pub fn new(options: &ScrubOptions) -> Self {
        let keys = DEFAULT_KEYS
            .iter()
            .map(|k| (*k).to_owned())
            .chain(options.extra_keys.iter().map(|k| normalize_key(k)))
            .filter(|k| !k.is_empty())
            .collect();
        Scrubber {
            enabled: options.enabled,
            keys,
            safe: options.safe_keys.iter().map(|k| normalize_key(k)).collect(),
            patterns: options
                .patterns
                .iter()
                .filter(|p| check_pattern(p).is_none())
                .filter_map(|p| compile(p).ok())
                .collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether values under `key` are filtered whatever they hold. Allocates nothing for ASCII
    /// keys.
    pub fn sensitive_key(&self, key: &str) -> bool {
        if key.is_ascii() && key.len() <= 128 {
            // Normalized once on the stack, then plain byte comparisons per pattern.
            let mut buf = [0u8; 128];
            let norm = &mut buf[..key.len()];
            for (n, &b) in norm.iter_mut().zip(key.as_bytes()) {
                *n = normalized(b);
            }
            let norm = &*norm;
            !self.safe.iter().any(|s| norm == s.as_bytes())
                && self
                    .keys
                    .iter()
                    .any(|k| k.is_empty() || norm.windows(k.len()).any(|w| w == k.as_bytes()))
        } else if key.is_ascii() {
            let key = key.as_bytes();
            !self.safe.iter().any(|s| eq_normalized(key, s.as_bytes()))
                && self.keys.iter().any(|k| contains_normalized(key, k.as_bytes()))
        } else {
            let key = normalize_key(key);
            !self.safe.contains(&key) && self.keys.iter().any(|k| key.contains(k.as_str()))
        }
    }

    /// Scrubs a parsed payload (or any JSON) in place; returns whether anything changed.
    pub fn scrub_value(&self, value: &mut Value) -> bool {
        self.enabled && self.walk(value, 0)
    }

    /// Applies the string rules to `s`; `None` when nothing matched (the common case, which
    /// allocates nothing).
    pub fn scrub_str(&self, s: &str) -> Option<String> {
        self.string(s, 0)
    }

    fn walk(&self, value: &mut Value, embedded: u8) -> bool {
        match value {
            Value::String(s) => match self.string(s, embedded) {
                Some(new) => {
                    *s = new;
                    true
                }
                None => false,
            },
            Value::Number(n) => {
                if card_json_number(n) {
                    *value = Value::from(FILTERED);
                    true
                } else {
                    false
                }
            }
            Value::Array(items) => items.iter_mut().fold(false, |c, item| self.element(item, embedded) | c),
            Value::Object(map) => self.walk_object(map, embedded),
            Value::Null | Value::Bool(_) => false,
        }
    }

    /// One element of an array: a `[key, value]` pair is judged by its key, anything else is
    /// walked.
    fn element(&self, item: &mut Value, embedded: u8) -> bool {
        let Some([key, value]) = pair_mut(item) else {
            return self.walk(item, embedded);
        };
        let sensitive = key.as_str().is_some_and(|k| self.sensitive_key(k));
        // The key itself is scanned too: a list of two-string lists may be plain data.
        let key_changed = self.walk(key, embedded);
        key_changed
            | if sensitive {
                filter_all(value)
            } else {
                self.walk(value, embedded)
            }
    }

    fn walk_object(&self, map: &mut Map<String, Value>, embedded: u8) -> bool {
        let typed_non_string = is_typed(map) && !map["value"].is_string();
        let mut changed = false;
        for (key, value) in map.iter_mut() {
            changed |= if self.sensitive_key(key) {
                filter_all(value)
            } else {
                self.walk(value, embedded)
            };
        }
        // A typed attribute whose value became a string says so.
        if changed && typed_non_string && map["value"].is_string() {
            map.insert("type".to_owned(), Value::from("string"));
        }
        changed
    }

    fn string(&self, s: &str, embedded: u8) -> Option<String> {
        if embedded < MAX_EMBEDDED && looks_like_json(s) {
            if let Ok(mut inner) = serde_json::from_str::<Value>(s) {
                if inner.is_object() || inner.is_array() {
                    return self
                        .walk(&mut inner, embedded + 1)
                        .then(|| serde_json::to_string(&inner).expect("JSON value serializes"));
                }
            }
        }
        // Cheap pre-checks keep the common string allocation-free.
        let mut out: Option<String> = None;
        if s.contains("PRIVATE KEY") {
            out = pem_keys(out.as_deref().unwrap_or(s)).or(out);
        }
        if s.contains("://") {
            out = url_passwords(out.as_deref().unwrap_or(s)).or(out);
        }
        if s.contains('=') {
            out = self.query_values(out.as_deref().unwrap_or(s)).or(out);
        }
        if contains_ignore_case(s.as_bytes(), b"bearer") {
            out = bearer_tokens(out.as_deref().unwrap_or(s)).or(out);
        }
        if s.bytes().filter(u8::is_ascii_digit).nth(12).is_some() {
            out = card_numbers(out.as_deref().unwrap_or(s)).or(out);
        }
        for re in &self.patterns {
            if let Cow::Owned(new) = re.replace_all(out.as_deref().unwrap_or(s), FILTERED) {
                out = Some(new);
            }
        }
        out
    }

    /// Values of sensitive keys in query strings: in the whole string when it is shaped like a
    /// form body, and after each `?` or `#` (URLs, also inside a form value).
    fn query_values(&self, s: &str) -> Option<String> {
        let mut ranges = Vec::new();
        if is_form(s) {
            self.pairs(s, 0, s.len(), &mut ranges);
        }
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if !matches!(b[i], b'?' | b'#') {
                i += 1;
                continue;
            }
            let start = i + 1;
            let end = b[start..]
                .iter()
                .position(|&c| c == b'#' || c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'<' | b'>' | b'`'))
                .map_or(b.len(), |n| start + n);
            self.pairs(s, start, end, &mut ranges);
            i = end;
        }
        // A query inside a form value gives a range inside another: keep the outer one.
        ranges.sort_unstable();
        ranges.dedup_by(|next, kept| {
            let inside = next.0 < kept.1;
            if inside {
                kept.1 = kept.1.max(next.1);
            }
            inside
        });
        replace_ranges(s, &ranges)
    }

    /// `key=value` pairs of `s[start..end]`, separated by `&` or `;`: the value ranges of
    /// sensitive keys.
    fn pairs(&self, s: &str, start: usize, end: usize, ranges: &mut Vec<(usize, usize)>) {
        let mut pos = start;
        for part in s[start..end].split(['&', ';']) {
            let part_start = pos;
            pos += part.len() + 1;
            let Some(eq) = part.find('=') else { continue };
            let value = &part[eq + 1..];
            if value.is_empty() || value == FILTERED {
                continue;
            }
            let key = part[..eq].trim_start();
            let sensitive = if key.contains(['%', '+']) {
                self.sensitive_key(&percent_decode(key))
            } else {
                self.sensitive_key(key)
            };
            if sensitive {
                ranges.push((part_start + eq + 1, part_start + part.len()));
            }
        }
    }
}

/// Parses `payload` as a JSON object, scrubs it, and returns the new bytes, or `None` when
/// nothing changed (forward the original) or scrubbing is off.
pub fn scrub_event(payload: &[u8], scrubber: &Scrubber) -> Result<Option<Vec<u8>>> {
    if !scrubber.enabled() {
        return Ok(None);
    }
    let mut value: Value =
        serde_json::from_slice(payload).map_err(|e| CoreError::decode(format!("event is not valid JSON ({e})")))?;
    if !value.is_object() {
        return Err(CoreError::decode("event is not a JSON object"));
    }
    Ok(scrubber.scrub_value(&mut value).then(|| to_json(&value)))
}

pub(crate) fn to_json(value: &Value) -> Vec<u8> {
    // Serializing a Value cannot fail (its map keys are strings).
    serde_json::to_vec(value).expect("JSON value serializes")
}

/// Lower case, `_` for `-`: `X-Api-Key` → `x_api_key`.
fn normalize_key(key: &str) -> String {
    key.replace('-', "_").to_lowercase()
}

fn normalized(b: u8) -> u8 {
    if b == b'-' {
        b'_'
    } else {
        b.to_ascii_lowercase()
    }
}

/// `key == pattern` after normalizing `key` (`pattern` is normalized already).
fn eq_normalized(key: &[u8], pattern: &[u8]) -> bool {
    key.len() == pattern.len() && key.iter().zip(pattern).all(|(&k, &p)| normalized(k) == p)
}

/// Whether normalized `key` contains `pattern` (normalized already).
fn contains_normalized(key: &[u8], pattern: &[u8]) -> bool {
    pattern.is_empty()
        || key
            .windows(pattern.len())
            .any(|w| w.iter().zip(pattern).all(|(&k, &p)| normalized(k) == p))
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty() || s == FILTERED,
        _ => false,
    }
}

/// The two elements of a `[key, value]` pair (a two-element array whose first is a string).
fn pair_mut(item: &mut Value) -> Option<&mut [Value; 2]> {
    match item {
        Value::Array(pair) if pair.len() == 2 && pair[0].is_string() => <&mut [Value; 2]>::try_from(&mut pair[..]).ok(),
        _ => None,
    }
}

/// A typed attribute of Sentry logs and spans: `{"value": …, "type": "…"}` (and maybe `unit`).
fn is_typed(map: &Map<String, Value>) -> bool {
    map.get("type").is_some_and(Value::is_string)
        && map.contains_key("value")
        && map.keys().all(|k| matches!(k.as_str(), "value" | "type" | "unit"))
}

/// Replaces every leaf of `value` with `[Filtered]`, keeping the shape of objects, arrays, the
/// keys of pairs and typed attributes (value `[Filtered]`, type `string`). Null and empty
/// strings stay as they are.
fn filter_all(value: &mut Value) -> bool {
    match value {
        _ if is_blank(value) => false,
        Value::Object(map) if is_typed(map) => {
            if is_blank(&map["value"]) {
                return false;
            }
            map.insert("value".to_owned(), Value::from(FILTERED));
            map.insert("type".to_owned(), Value::from("string"));
            true
        }
        Value::Object(map) => map.values_mut().fold(false, |c, v| filter_all(v) | c),
        Value::Array(items) => items.iter_mut().fold(false, |c, item| {
            let changed = match pair_mut(item) {
                Some([_, value]) => filter_all(value),
                None => filter_all(item),
            };
            changed | c
        }),
        _ => {
            *value = Value::from(FILTERED);
            true
        }
    }
}

/// A string that may hold a JSON object or array (checked before parsing).
fn looks_like_json(s: &str) -> bool {
    let t = s.trim_ascii();
    t.len() >= 2
        && matches!(
            (t.as_bytes()[0], t.as_bytes()[t.len() - 1]),
            (b'{', b'}') | (b'[', b']')
        )
}

/// A whole string shaped like a form body or query string: `key=value` parts separated by `&`
/// or `;`, each key non-empty and without whitespace or `?#/:` (not a URL), no line breaks.
fn is_form(s: &str) -> bool {
    !s.contains(['\n', '\r'])
        && s.split(['&', ';']).all(|part| match part.find('=') {
            Some(eq) => {
                let key = part[..eq].trim_start();
                !key.is_empty() && !key.contains(|c: char| c.is_whitespace() || matches!(c, '?' | '#' | '/' | ':'))
            }
            None => part.trim().is_empty(),
        })
}

/// `%XX` escapes and `+` (space) decoded, for judging a query key.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: Option<&u8>| c.and_then(|&c| char::from(c).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Rebuilds `s` with each byte range replaced by `[Filtered]`. Ranges are sorted, disjoint and
/// on ASCII boundaries.
fn replace_ranges(s: &str, ranges: &[(usize, usize)]) -> Option<String> {
    if ranges.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for &(start, end) in ranges {
        out.push_str(&s[last..start]);
        out.push_str(FILTERED);
        last = end;
    }
    out.push_str(&s[last..]);
    Some(out)
}

/// The text between `-----BEGIN … PRIVATE KEY-----` (or `… PRIVATE KEY BLOCK-----`, PGP) and
/// the matching `-----END` (or the end of the string when the block is cut short).
fn pem_keys(s: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN ";
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(found) = s[from..].find(BEGIN) {
        let label_start = from + found + BEGIN.len();
        let Some(label_len) = s[label_start..].find("-----") else {
            break;
        };
        let label = &s[label_start..label_start + label_len];
        let body_start = label_start + label_len + 5;
        let private = label.ends_with("PRIVATE KEY") || label.ends_with("PRIVATE KEY BLOCK");
        if !private || !label.bytes().all(|b| b.is_ascii_uppercase() || b == b' ') {
            from = body_start;
            continue;
        }
        let body_end = s[body_start..].find("-----END").map_or(s.len(), |n| body_start + n);
        let body = s[body_start..body_end].trim();
        if !body.is_empty() && body != FILTERED {
            ranges.push((body_start, body_end));
        }
        from = body_end;
    }
    replace_ranges(s, &ranges)
}

/// The password part of `scheme://user:password@host` URLs. The user name holds none of
/// `:/?#@`; the password runs to the last `@` before the host (it may hold `/` and `@`), unless
/// what looks like one is a port and a path (`host:8080/users/@ann`).
fn url_passwords(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(found) = s[from..].find("://") {
        let sep = from + found;
        let start = sep + 3;
        from = start;
        if sep == 0 || !b[sep - 1].is_ascii_alphanumeric() {
            continue;
        }
        let run_end = b[start..]
            .iter()
            .position(|&c| c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'<' | b'>' | b'`'))
            .map_or(b.len(), |n| start + n);
        let run = &b[start..run_end];
        let Some(colon) = run.iter().position(|c| matches!(c, b':' | b'/' | b'?' | b'#' | b'@')) else {
            continue;
        };
        if run[colon] != b':' {
            continue;
        }
        let rest = &run[colon + 1..];
        let mut at = None;
        for (i, &c) in rest.iter().enumerate() {
            match c {
                b'@' => at = Some(i),
                b'/' | b'?' | b'#' if at.is_some() => break,
                _ => {}
            }
        }
        let Some(at) = at else { continue };
        let password = &rest[..at];
        if let Some(slash) = password.iter().position(|c| matches!(c, b'/' | b'?' | b'#')) {
            if password[..slash].iter().all(u8::is_ascii_digit) {
                continue; // host:port/path
            }
        }
        if !password.is_empty() && password != FILTERED.as_bytes() {
            ranges.push((start + colon + 1, start + colon + 1 + at));
        }
        from = start + colon + 1 + at;
    }
    replace_ranges(s, &ranges)
}

/// The token after `Bearer ` (any case, as a word), when it looks like a credential: it holds
/// a digit, one of `-._~+/=`, or upper- and lower-case letters.
fn bearer_tokens(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let token_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
    let mut ranges = Vec::new();
    let mut i = 0;
    while i + 6 < b.len() {
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if !(word_start && b[i..i + 6].eq_ignore_ascii_case(b"bearer")) {
            i += 1;
            continue;
        }
        let mut start = i + 6;
        while start < b.len() && matches!(b[start], b' ' | b'\t') {
            start += 1;
        }
        let end = b[start..]
            .iter()
            .position(|&c| !token_char(c))
            .map_or(b.len(), |n| start + n);
        let token = &b[start..end];
        let credential = token.iter().any(|c| !c.is_ascii_alphabetic())
            || (token.iter().any(u8::is_ascii_uppercase) && token.iter().any(u8::is_ascii_lowercase));
        if start > i + 6 && !token.is_empty() && credential {
            ranges.push((start, end));
        }
        i = end.max(i + 6);
    }
    replace_ranges(s, &ranges)
}

fn card_numbers(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let n = b.len();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < n {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A run: digit groups joined by up to three spaces, dashes, dots or slashes.
        let start = i;
        let mut groups = Vec::new();
        loop {
            let group_start = i;
            while i < n && b[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((group_start, i));
            let mut j = i;
            while j < n && j - i < 3 && matches!(b[j], b' ' | b'-' | b'.' | b'/') {
                j += 1;
            }
            if j > i && j < n && b[j].is_ascii_digit() {
                i = j;
            } else {
                break;
            }
        }
        let end = i;
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let before_ok = start == 0 || !(word(b[start - 1]) || b[start - 1] == b'.');
        let after_ok =
            end == n || !(word(b[end]) || (b[end] == b'.' && b.get(end + 1).is_some_and(u8::is_ascii_digit)));
        if before_ok && after_ok {
            card_windows(b, &groups, &mut ranges);
        }
    }
    replace_ranges(s, &ranges)
}

/// Finds runs of whole consecutive groups that form a card number. A run may hold several
/// numbers, split where only spaces or dashes separate groups (a `.` or `/` there belongs to
/// something else: a decimal, a date).
fn card_windows(b: &[u8], groups: &[(usize, usize)], ranges: &mut Vec<(usize, usize)>) {
    let splittable = |g: usize| {
        b[groups[g - 1].1..groups[g].0]
            .iter()
            .all(|&c| matches!(c, b' ' | b'-'))
    };
    let mut g = 0;
    while g < groups.len() {
        if g > 0 && !splittable(g) {
            g += 1;
            continue;
        }
        let found =
            card_window_from(b, &groups[g..]).filter(|&last| g + last + 1 == groups.len() || splittable(g + last + 1));
        g = match found {
            Some(last) => {
                ranges.push((groups[g].0, groups[g + last].1));
                g + last + 1
            }
            None => g + 1,
        };
    }
}

/// The index of the last group of a card number starting at `groups[0]`, if there is one:
/// one group of 13–19 digits, or groups of 4–6 digits and a last one of 1–6.
fn card_window_from(b: &[u8], groups: &[(usize, usize)]) -> Option<usize> {
    let mut digits = Vec::with_capacity(20);
    for (h, &(start, end)) in groups.iter().enumerate() {
        if h > 0 && !(4..=6).contains(&(groups[h - 1].1 - groups[h - 1].0)) {
            return None;
        }
        digits.extend(b[start..end].iter().map(|d| d - b'0'));
        if digits.len() > 19 {
            return None;
        }
        if digits.len() >= 13 && (h == 0 || end - start <= 6) && card_digits(&digits) {
            return Some(h);
        }
    }
    None
}

/// 13–19 digits, a payment-card major industry identifier (2–6), Luhn-valid.
fn card_digits(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len()) && (2..=6).contains(&digits[0]) && luhn(digits)
}

/// Whether an integer is a credit-card number (13–19 digits, Luhn-valid); cheap for small ones.
pub fn card_int(n: u64) -> bool {
    n >= 1_000_000_000_000 && card_number(n)
}

/// Whether a double is an integral credit-card number.
pub fn card_double(f: f64) -> bool {
    f.fract() == 0.0 && (1e12..9_007_199_254_740_992.0).contains(&f) && card_number(f as u64)
}

fn card_number(n: u64) -> bool {
    let digits: Vec<u8> = n.to_string().bytes().map(|d| d - b'0').collect();
    card_digits(&digits)
}

/// An integer, or a float holding an integer exactly (below 2^53), that is a card number.
fn card_json_number(n: &serde_json::Number) -> bool {
    match (n.as_u64(), n.as_f64()) {
        (Some(u), _) => card_number(u),
        (None, Some(f)) if f.fract() == 0.0 && (1e12..9_007_199_254_740_992.0).contains(&f) => card_number(f as u64),
        _ => false,
    }
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scrub(mut v: Value) -> Value {
        Scrubber::default().scrub_value(&mut v);
        v
    }

    fn scrub_str(s: &str) -> Option<String> {
        Scrubber::default().scrub_str(s)
    }

    #[test]
    fn password_local_variables_and_nested_extra() {
        let event = json!({
            "exception": {"values": [{"type": "ValueError", "value": "bad", "stacktrace": {"frames": [
                {"function": "login", "vars": {"password": "hunter2", "user": "bob", "db_Token": 12, "n": null}}
            ]}}]},
            "extra": {"config": {"nested": {"API_KEY": "abc", "ok": "fine"}, "secrets": ["a", {"b": "c"}]}},
            "contexts": {"app": {"client_secret": "s3", "name": "x"}},
            "request": {"data": {"user": {"passwd": "p", "email": "e"}}},
            "breadcrumbs": {"values": [{"category": "auth", "data": {"access_token": "t", "path": "/"}}]},
        });
        let out = scrub(event);
        let vars = &out["exception"]["values"][0]["stacktrace"]["frames"][0]["vars"];
        assert_eq!(
            vars,
            &json!({"password": FILTERED, "user": "bob", "db_Token": FILTERED, "n": null})
        );
        assert_eq!(
            out["extra"]["config"],
            json!({"nested": {"API_KEY": FILTERED, "ok": "fine"}, "secrets": [FILTERED, {"b": FILTERED}]})
        );
        assert_eq!(out["contexts"]["app"], json!({"client_secret": FILTERED, "name": "x"}));
        assert_eq!(
            out["request"]["data"]["user"],
            json!({"passwd": FILTERED, "email": "e"})
        );
        assert_eq!(
            out["breadcrumbs"]["values"][0],
            json!({"category": "auth", "data": {"access_token": FILTERED, "path": "/"}})
        );
    }

    #[test]
    fn http_headers_in_both_forms_and_cookies() {
        let pairs = json!({"request": {
            "headers": [["Authorization", "Bearer abc"], ["Cookie", "sessionid=1"], ["Accept", "*/*"],
                        ["set-cookie", "csrftoken=2"]],
            "cookies": [["sessionid", "1"], ["theme", "dark"]],
        }});
        let out = scrub(pairs);
        assert_eq!(
            out["request"]["headers"],
            json!([
                ["Authorization", FILTERED],
                ["Cookie", FILTERED],
                ["Accept", "*/*"],
                ["set-cookie", FILTERED]
            ])
        );
        assert_eq!(
            out["request"]["cookies"],
            json!([["sessionid", FILTERED], ["theme", FILTERED]])
        );
        let object = json!({"request": {
            "headers": {"authorization": "Basic eA==", "X-Request-Id": "r1", "Proxy-Authorization": "x"},
            "cookies": "sessionid=1; theme=dark",
        }});
        let out = scrub(object);
        assert_eq!(
            out["request"]["headers"],
            json!({"authorization": FILTERED, "X-Request-Id": "r1", "Proxy-Authorization": FILTERED})
        );
        assert_eq!(out["request"]["cookies"], FILTERED);
        // Session and CSRF cookies elsewhere.
        let out =
            scrub(json!({"extra": {"PHPSESSID": "a", "csrf_token": "b", "XSRF-TOKEN": "c", "session.id": "keep"}}));
        assert_eq!(
            out["extra"],
            json!({"PHPSESSID": FILTERED, "csrf_token": FILTERED, "XSRF-TOKEN": FILTERED, "session.id": "keep"})
        );
    }

    #[test]
    fn credit_cards() {
        // 4111 1111 1111 1111 is Luhn-valid; 4111 1111 1111 1112 is not.
        assert_eq!(
            scrub_str("card 4111111111111111 ok").as_deref(),
            Some("card [Filtered] ok")
        );
        assert_eq!(scrub_str("4111 1111 1111 1111").as_deref(), Some(FILTERED));
        assert_eq!(scrub_str("(4111-1111-1111-1111).").as_deref(), Some("([Filtered])."));
        assert_eq!(scrub_str("amex 378282246310005").as_deref(), Some("amex [Filtered]"));
        assert_eq!(
            scrub_str("4111111111111111 5555555555554444").as_deref(),
            Some("[Filtered] [Filtered]")
        );
        assert_eq!(scrub_str("card 4111111111111112 ok"), None);
        assert_eq!(scrub_str("4111 1111 1111 1112"), None);
        // Not cards: inside words or decimals, too long, millisecond timestamps (first digit 1).
        assert_eq!(scrub_str("id4111111111111111"), None);
        assert_eq!(scrub_str("0.4111111111111111"), None);
        assert_eq!(scrub_str("41111111111111110000000"), None);
        assert_eq!(scrub_str("1700000000004"), None);
        assert!(luhn(&[1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]));
        let out = scrub(json!({"extra": {"n": 4111111111111111u64, "m": 4111111111111112u64, "t": 1.5}}));
        assert_eq!(out["extra"], json!({"n": FILTERED, "m": 4111111111111112u64, "t": 1.5}));
    }

    #[test]
    fn url_passwords_and_pem_keys() {
        assert_eq!(
            scrub_str("connect postgres://app:s3cret@db:5432/x failed").as_deref(),
            Some("connect postgres://app:[Filtered]@db:5432/x failed")
        );
        assert_eq!(
            scrub_str("redis://:pw@cache and https://u:p@h?q").as_deref(),
            Some("redis://:[Filtered]@cache and https://u:[Filtered]@h?q")
        );
        assert_eq!(scrub_str("https://user@host/path"), None);
        assert_eq!(scrub_str("https://host/a:b@c"), None);
        assert_eq!(scrub_str("https://u:[Filtered]@h"), None);
        let pem = "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAAAA==\n-----END RSA PRIVATE KEY----- end";
        assert_eq!(
            scrub_str(pem).as_deref(),
            Some("key: -----BEGIN RSA PRIVATE KEY-----[Filtered]-----END RSA PRIVATE KEY----- end")
        );
        assert_eq!(
            scrub_str("-----BEGIN PRIVATE KEY-----\nMIIE").as_deref(),
            Some("-----BEGIN PRIVATE KEY-----[Filtered]")
        );
        assert_eq!(
            scrub_str("-----BEGIN CERTIFICATE-----\nMIIE\n-----END CERTIFICATE-----"),
            None
        );
        // Idempotent.
        let once = scrub_str(pem).unwrap();
        assert_eq!(scrub_str(&once), None);
    }

    #[test]
    fn options() {
        let off = Scrubber::new(&ScrubOptions {
            enabled: false,
            ..ScrubOptions::default()
        });
        let mut v = json!({"password": "x", "s": "4111111111111111"});
        assert!(!off.scrub_value(&mut v));
        assert_eq!(v["password"], "x");
        assert_eq!(scrub_event(br#"{"password":"x"}"#, &off).unwrap(), None);
        let custom = Scrubber::new(&ScrubOptions {
            enabled: true,
            extra_keys: vec!["SSN".into()],
            safe_keys: vec!["Author".into()],
            patterns: Vec::new(),
        });
        let mut v = json!({"user_ssn": "1", "author": "ann", "auth": "x"});
        assert!(custom.scrub_value(&mut v));
        assert_eq!(v, json!({"user_ssn": FILTERED, "author": "ann", "auth": FILTERED}));
    }

    #[test]
    fn unchanged_events_are_not_rewritten() {
        let s = Scrubber::default();
        assert_eq!(
            scrub_event(br#"{ "message" : "hi",  "extra": {"n": 1.50}}"#, &s).unwrap(),
            None
        );
        let out = scrub_event(br#"{"z":1,"password":"x","a":[1.5,"ok"]}"#, &s)
            .unwrap()
            .unwrap();
        // Key order is kept (serde_json `preserve_order`).
        assert_eq!(out, br#"{"z":1,"password":"[Filtered]","a":[1.5,"ok"]}"#);
        assert!(scrub_event(b"[1]", &s).is_err());
        assert!(scrub_event(b"{", &s).is_err());
    }

    #[test]
    fn log_payload_attributes() {
        let mut v = json!({"items": [{"body": "login with postgres://a:b@h", "attributes": {
            "db.password": {"value": "x", "type": "string"},
            "user.token": {"value": 5, "type": "integer"},
            "card": {"value": "4111111111111111", "type": "string"},
            "count": {"value": 3, "type": "integer"},
        }}]});
        assert!(Scrubber::default().scrub_value(&mut v));
        assert_eq!(
            v,
            json!({"items": [{"body": "login with postgres://a:[Filtered]@h", "attributes": {
                "db.password": {"value": FILTERED, "type": "string"},
                "user.token": {"value": FILTERED, "type": "string"},
                "card": {"value": FILTERED, "type": "string"},
                "count": {"value": 3, "type": "integer"},
            }}]})
        );
    }

    #[test]
    fn query_strings_in_both_forms_and_urls() {
        let out = scrub(json!({"request": {
            "query_string": "page=2&password=hunter2&q=shoes",
            "url": "https://shop.example/cart?token=abc123&item=7#frag",
        }}));
        assert_eq!(out["request"]["query_string"], "page=2&password=[Filtered]&q=shoes");
        assert_eq!(
            out["request"]["url"],
            "https://shop.example/cart?token=[Filtered]&item=7#frag"
        );
        // The list-of-pairs form sentry-sdk may send.
        let out = scrub(json!({"request": {"query_string": [["page", "2"], ["password", "hunter2"]]}}));
        assert_eq!(
            out["request"]["query_string"],
            json!([["page", "2"], ["password", FILTERED]])
        );
        // In free text, fragments, percent-encoded and `;`-separated keys.
        assert_eq!(
            scrub_str("GET /login?user=ann&api%5Fkey=k1 failed").as_deref(),
            Some("GET /login?user=ann&api%5Fkey=[Filtered] failed")
        );
        assert_eq!(
            scrub_str("https://app.example/cb#access_token=t0k&state=s").as_deref(),
            Some("https://app.example/cb#access_token=[Filtered]&state=s")
        );
        assert_eq!(
            scrub_str("a=1;Auth_Token=z").as_deref(),
            Some("a=1;Auth_Token=[Filtered]")
        );
        // Nothing sensitive: untouched (and not copied).
        assert_eq!(scrub_str("https://shop.example/cart?page=2&q=shoes"), None);
        assert_eq!(scrub_str("https://shop.example/tokens/list?page=2"), None);
        assert_eq!(scrub_str("page=2&sort=desc"), None);
        assert_eq!(scrub_str("password="), None);
    }

    #[test]
    fn form_encoded_request_data() {
        let out = scrub(json!({"request": {"data": "username=ann&password=hunter2&remember=1"}}));
        assert_eq!(out["request"]["data"], "username=ann&password=[Filtered]&remember=1");
        assert_eq!(
            scrub_str("user=a+b&new+password=x%20y").as_deref(),
            Some("user=a+b&new+password=[Filtered]")
        );
        assert_eq!(
            scrub_str("sessionid=1; theme=dark").as_deref(),
            Some("sessionid=[Filtered]; theme=dark")
        );
        // A value holding a URL with its own query: both levels are judged.
        assert_eq!(
            scrub_str("password=x&next=/a?b=1&token=t").as_deref(),
            Some("password=[Filtered]&next=/a?b=1&token=[Filtered]")
        );
        assert_eq!(
            scrub_str("next=/a?token=t&password=p?q").as_deref(),
            Some("next=/a?token=[Filtered]&password=[Filtered]")
        );
        // Not form bodies: prose, SQL, base64 padding.
        assert_eq!(scrub_str("the password = unchanged"), None);
        assert_eq!(scrub_str("WHERE password = 'x'"), None);
        assert_eq!(scrub_str("dG9rZW4="), None);
        assert_eq!(scrub_str("a=1\npassword=x"), None);
    }

    #[test]
    fn json_inside_strings() {
        let out = scrub(json!({"extra": {
            "body": "{\"user\": \"ann\", \"password\": \"x\", \"n\": [1.50, \"ok\"]}",
            "list": "[{\"token\":\"t\"}]",
            "nested": "{\"inner\": \"{\\\"secret\\\": \\\"s\\\"}\"}",
            "plain": "{\"user\": \"ann\",  \"n\": 1.50}",
            "not_json": "{password: x}",
        }}));
        assert_eq!(
            out["extra"]["body"],
            r#"{"user":"ann","password":"[Filtered]","n":[1.5,"ok"]}"#
        );
        assert_eq!(out["extra"]["list"], r#"[{"token":"[Filtered]"}]"#);
        assert_eq!(out["extra"]["nested"], r#"{"inner":"{\"secret\":\"[Filtered]\"}"}"#);
        // Nothing to filter: the string is kept as written.
        assert_eq!(out["extra"]["plain"], "{\"user\": \"ann\",  \"n\": 1.50}");
        assert_eq!(out["extra"]["not_json"], "{password: x}");
        // The string rules still apply inside.
        assert_eq!(
            scrub_str(r#"{"url": "postgres://a:b@db/x"}"#).as_deref(),
            Some(r#"{"url":"postgres://a:[Filtered]@db/x"}"#)
        );
    }

    #[test]
    fn hyphenated_header_names() {
        let out = scrub(json!({"request": {"headers": {
            "X-Api-Key": "k1", "Api-Key": "k2", "X-Auth-Token": "k3", "X-Request-Id": "r1", "Content-Type": "json",
        }}}));
        assert_eq!(
            out["request"]["headers"],
            json!({"X-Api-Key": FILTERED, "Api-Key": FILTERED, "X-Auth-Token": FILTERED, "X-Request-Id": "r1",
                   "Content-Type": "json"})
        );
        let out = scrub(json!({"request": {"headers": [["x-api-key", "k1"], ["Accept", "*/*"]]}}));
        assert_eq!(
            out["request"]["headers"],
            json!([["x-api-key", FILTERED], ["Accept", "*/*"]])
        );
        let s = Scrubber::default();
        assert!(s.sensitive_key("PRIVATE-KEY") && s.sensitive_key("Session-Key") && s.sensitive_key("x_csrf"));
        assert!(!s.sensitive_key("X-Request-Id") && !s.sensitive_key("key") && !s.sensitive_key("apiversion"));
        // Non-ASCII keys take the allocating path and agree.
        assert!(s.sensitive_key("Größe-Api-Key") && !s.sensitive_key("Größe"));
    }

    #[test]
    fn bearer_tokens_in_free_text() {
        let out = scrub(json!({
            "message": "call failed with Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl",
            "breadcrumbs": {"values": [{"message": "curl -H 'authorization: bearer AbCdEfGh' https://x"}]},
        }));
        assert_eq!(out["message"], "call failed with Authorization: Bearer [Filtered]");
        assert_eq!(
            out["breadcrumbs"]["values"][0]["message"],
            "curl -H 'authorization: bearer [Filtered]' https://x"
        );
        assert_eq!(
            scrub_str("token: BEARER\tabc123").as_deref(),
            Some("token: BEARER\t[Filtered]")
        );
        // Prose is not a token; neither is an already filtered one.
        assert_eq!(scrub_str("the bearer of bad news uses bearer tokens"), None);
        assert_eq!(scrub_str("Bearer [Filtered]"), None);
        assert_eq!(scrub_str("Bearer"), None);
        assert_eq!(scrub_str("Bearer <token>"), None);
        assert_eq!(scrub_str("xbearer abc123"), None);
    }

    #[test]
    fn url_passwords_with_slashes_and_at_signs() {
        assert_eq!(
            scrub_str("https://user:pa/ss@host.example/path").as_deref(),
            Some("https://user:[Filtered]@host.example/path")
        );
        assert_eq!(
            scrub_str("redis://:p@ss@cache:6379/0 ok").as_deref(),
            Some("redis://:[Filtered]@cache:6379/0 ok")
        );
        assert_eq!(
            scrub_str("https://u:p@host/a/b@c").as_deref(),
            Some("https://u:[Filtered]@host/a/b@c")
        );
        // A port and a path with an `@` in it are not credentials.
        assert_eq!(scrub_str("http://localhost:8080/users/@ann"), None);
        assert_eq!(scrub_str("https://social.example/@ann"), None);
        assert_eq!(scrub_str("https://host:443/x?y=@z"), None);
    }

    #[test]
    fn header_pairs_are_judged_one_by_one() {
        let out = scrub(json!({"request": {"headers": [
            ["Authorization", "Basic dXNlcjpwYXNz"], ["X-Broken"], "stray", null,
            ["Cookie", "sessionid=abc"], ["Accept", "*/*"], ["X-Api-Key", "k", "extra"],
        ]}}));
        assert_eq!(
            out["request"]["headers"],
            json!([
                ["Authorization", FILTERED],
                ["X-Broken"],
                "stray",
                null,
                ["Cookie", FILTERED],
                ["Accept", "*/*"],
                ["X-Api-Key", "k", "extra"]
            ])
        );
        // Under a sensitive key, pairs keep their keys.
        let out = scrub(json!({"cookies": [["sessionid", "1"], 5, ["theme", "dark"]]}));
        assert_eq!(
            out["cookies"],
            json!([["sessionid", FILTERED], FILTERED, ["theme", FILTERED]])
        );
    }

    #[test]
    fn card_numbers_with_other_separators_and_as_numbers() {
        for (text, want) in [
            ("card 4111.1111.1111.1111 ok", "card [Filtered] ok"),
            ("card 4111  1111  1111  1111 ok", "card [Filtered] ok"),
            ("card 4111/1111/1111/1111 ok", "card [Filtered] ok"),
            ("card 4111 - 1111 - 1111 - 1111", "card [Filtered]"),
            ("amex 3782 822463 10005", "amex [Filtered]"),
        ] {
            assert_eq!(scrub_str(text).as_deref(), Some(want), "{text}");
        }
        let out = scrub(json!({"extra": {"i": 4111111111111111u64, "f": 4111111111111111.0, "ok": 1234567890123u64}}));
        assert_eq!(
            out["extra"],
            json!({"i": FILTERED, "f": FILTERED, "ok": 1234567890123u64})
        );
        // A typed attribute whose number was a card becomes a string attribute.
        let mut v = json!({"items": [{"attributes": {"n": {"value": 4111111111111111u64, "type": "integer"}}}]});
        assert!(Scrubber::default().scrub_value(&mut v));
        assert_eq!(
            v["items"][0]["attributes"]["n"],
            json!({"value": FILTERED, "type": "string"})
        );
    }

    #[test]
    fn legitimate_numbers_ids_and_dates_pass() {
        for text in [
            "1234567890123",      // not Luhn-valid, first digit 1
            "4111111111111112",   // not Luhn-valid
            "0.4111111111111111", // a decimal
            "1.4111111111111111",
            "4111111111111111.5",
            "1714564800.123456", // a timestamp
            "2024-05-01T12:00:00.123456Z",
            "2024/05/01 2024/05/02 12.30.45.123",   // dates and times
            "4bf92f3577b34da6a3ce929d0e0e4736",     // a trace id
            "12345678-1234-1234-1234-123456789012", // a digits-only UUID
            "41111111-1111-1111-1111-111111111111",
            "+49 30 12345678 90", // a phone number
            "10.0.0.1:8080 192.168.100.200",
            "v4111.1111.1111.1111",
        ] {
            assert_eq!(scrub_str(text), None, "{text}");
        }
        let event = json!({
            "event_id": "9ec79c33ec9942ab8353589fcb2e04dc",
            "timestamp": 1714564800.123,
            "contexts": {"trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}},
            "extra": {"n": 1234567890123u64, "ratio": 0.5, "id": "550e8400-e29b-41d4-a716-446655440000"},
            "tags": [["author", "ann"]],
        });
        let custom = Scrubber::new(&ScrubOptions {
            safe_keys: vec!["Author".into(), "X-Auth-Mode".into()],
            ..ScrubOptions::default()
        });
        let mut v = event.clone();
        assert!(!custom.scrub_value(&mut v));
        assert_eq!(v, event);
        let mut v = json!({"x_auth_mode": "on", "q": "x-auth-mode=on&auth=1"});
        assert!(custom.scrub_value(&mut v));
        assert_eq!(v, json!({"x_auth_mode": "on", "q": "x-auth-mode=on&auth=[Filtered]"}));
    }

    #[test]
    fn pgp_private_key_blocks() {
        let pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: x\n\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----";
        assert_eq!(
            scrub_str(pgp).as_deref(),
            Some("-----BEGIN PGP PRIVATE KEY BLOCK-----[Filtered]-----END PGP PRIVATE KEY BLOCK-----")
        );
        assert_eq!(
            scrub_str("-----BEGIN PGP PUBLIC KEY BLOCK-----\nmQEN\n-----END PGP PUBLIC KEY BLOCK-----"),
            None
        );
    }

    #[test]
    fn every_rule_is_idempotent() {
        let s = Scrubber::default();
        for text in [
            "https://u:pa/ss@h/p?token=x&a=1#access_token=y",
            "a=1&password=x",
            "Authorization: Bearer abc.def",
            "card 4111.1111.1111.1111",
            "{\"password\": \"x\", \"u\": \"https://a:b@c\"}",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\nx",
        ] {
            let once = s.scrub_str(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(s.scrub_str(&once), None, "{once}");
        }
    }

    #[test]
    fn arbitrary_strings_do_not_panic() {
        let samples = [
            "",
            "://",
            "a://",
            "a://@",
            "a://:@",
            "-----BEGIN ",
            "-----BEGIN -----",
            "-----BEGIN PRIVATE KEY-----",
            "é://ü:ö@ß",
            "4",
            "4 ",
            "4-",
            " 4111111111111111",
            "ü4111111111111111ü",
            "1 2 3 4 5 6 7 8 9 0 1 2 3 4",
            "é?é=é&pässword=é#tökén=ü",
            "p%ZZ=1&%70assword=2&%=3&+=4",
            "x://a:b/c@",
            "Bearer é",
            "bearer\t",
            "{\"a\": \"{\\\"b\\\": 1}\"}",
            "[\"4111.1111.1111.1111\"]",
        ];
        for s in samples {
            for n in 0..=s.len() {
                if s.is_char_boundary(n) {
                    let _ = scrub_str(&s[..n]);
                }
            }
        }
    }

    #[test]
    fn combined_pieces_are_scrubbed_once() {
        // Strings glued from pieces every rule looks at: scrubbing never panics, and a second
        // pass changes nothing.
        const PIECES: &[&str] = &[
            "https://",
            "u:p/w@h",
            "?",
            "#",
            "&",
            ";",
            "=",
            "token",
            "password",
            "page",
            "Bearer ",
            "abc123",
            "4111",
            " ",
            "  ",
            ".",
            "/",
            "-",
            "1111",
            "{\"password\":\"x\"}",
            "[",
            "]",
            "{",
            "}",
            "\"",
            "%61",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----",
            "é",
            "\n",
            "@",
            ":",
            "5555",
            "4444",
        ];
        let s = Scrubber::default();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut scrubbed = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(state % 12 + 1) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
            }
            if let Some(once) = s.scrub_str(&text) {
                assert_eq!(s.scrub_str(&once), None, "{text:?} -> {once:?}");
                scrubbed += 1;
            }
        }
        assert!(scrubbed > 1_000, "{scrubbed}");
    }

    #[test]
    fn extra_patterns_filter_their_matches_everywhere() {
        let s = Scrubber::new(&ScrubOptions {
            patterns: vec![r"JOB-SECRET-\d+".into(), "(?i)internal-[a-z]+".into()],
            ..ScrubOptions::default()
        });
        let mut v = json!({"msg": "ref JOB-SECRET-4711 and Internal-abc", "n": ["JOB-SECRET-1"], "ok": "job-1"});
        assert!(s.scrub_value(&mut v));
        assert_eq!(
            v,
            json!({"msg": "ref [Filtered] and [Filtered]", "n": ["[Filtered]"], "ok": "job-1"})
        );
        assert_eq!(s.scrub_str("nothing here"), None);
    }

    #[test]
    fn unusable_patterns_are_named() {
        assert!(check_pattern("(").is_some());
        assert!(check_pattern("").unwrap().contains("empty"));
        assert!(check_pattern("x*").unwrap().contains("empty string"));
        assert!(check_pattern("(?=x)").is_some(), "look-around is not supported");
        assert_eq!(check_pattern(r"tok_[A-Za-z0-9]{20}"), None);
    }
}
