//! PII scrubbing of Sentry event JSON, on by default, modelled on Relay's default rules.
//!
//! Replaced with `[Filtered]`:
//! - every value under a key that contains (case-insensitive) one of `DEFAULT_KEYS` or a
//!   configured extra pattern, anywhere in the event: `extra`, `contexts`, `tags`, stack frame
//!   `vars`, `request.data`, `request.headers` (`Authorization`, `Cookie`, `Set-Cookie`, object or
//!   list-of-pairs form), `request.cookies`, breadcrumb `data`, span `data`. Objects and arrays
//!   under such a key keep their shape; their leaves are filtered.
//! - in every string value: credit-card numbers (13–19 digits, optionally grouped by single
//!   spaces or dashes, first digit 2–6, Luhn-valid), the body of PEM private key blocks, and the
//!   password of URLs (`scheme://user:pass@host` → `scheme://user:[Filtered]@host`).
//! - integers that look like credit-card numbers.
//!
//! Keys are never changed. A payload nothing matched in is left alone by the caller, so it is
//! forwarded byte-for-byte.

use serde_json::{Map, Value};

use crate::error::{CoreError, Result};

pub const FILTERED: &str = "[Filtered]";

/// Substrings of key names whose values are always filtered. Beyond Relay's password rule:
/// `cookie` (the `Cookie`/`Set-Cookie` headers and `request.cookies`) and the usual session and
/// CSRF cookie names, wherever cookies end up.
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Off: events are forwarded and converted as received.
    pub enabled: bool,
    /// Matched like `DEFAULT_KEYS`: case-insensitive substrings of key names.
    pub extra_keys: Vec<String>,
    /// Key names (case-insensitive, whole name) never filtered by the key rules, e.g. `author`
    /// (which contains `auth`). String values under them are still scanned.
    pub safe_keys: Vec<String>,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            enabled: true,
            extra_keys: Vec::new(),
            safe_keys: Vec::new(),
        }
    }
}

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct Scrubber {
    enabled: bool,
    keys: Vec<String>,
    safe: Vec<String>,
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
            .chain(options.extra_keys.iter().map(|k| k.to_lowercase()))
            .filter(|k| !k.is_empty())
            .collect();
        Scrubber {
            enabled: options.enabled,
            keys,
            safe: options.safe_keys.iter().map(|k| k.to_lowercase()).collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether values under `key` are filtered whatever they hold.
    pub fn sensitive_key(&self, key: &str) -> bool {
        let key = key.to_lowercase();
        !self.safe.contains(&key) && self.keys.iter().any(|k| key.contains(k.as_str()))
    }

    /// Scrubs a parsed event (or any JSON) in place; returns whether anything changed.
    pub fn scrub_value(&self, value: &mut Value) -> bool {
        self.enabled && self.walk(value)
    }

    /// Scrubs a Sentry `log` item payload (`{"items": [{"body", "attributes": {k: {"value",
    /// "type"}}}]}`) in place: bodies are scanned as strings; a typed attribute under a
    /// sensitive key gets the string value `[Filtered]`, others have their value scanned.
    pub fn scrub_log_payload(&self, value: &mut Value) -> bool {
        if !self.enabled {
            return false;
        }
        let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) else {
            return false;
        };
        let mut changed = false;
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(body) = item.get_mut("body") {
                changed |= self.walk(body);
            }
            let Some(attributes) = item.get_mut("attributes").and_then(Value::as_object_mut) else {
                continue;
            };
            for (key, attr) in attributes.iter_mut() {
                let sensitive = self.sensitive_key(key);
                match attr.as_object_mut() {
                    Some(typed) if typed.contains_key("value") => {
                        let value = typed.get_mut("value").expect("checked");
                        if !sensitive {
                            changed |= self.walk(value);
                        } else if !is_blank(value) {
                            *value = Value::from(FILTERED);
                            typed.insert("type".to_owned(), Value::from("string"));
                            changed = true;
                        }
                    }
                    _ if sensitive => changed |= filter_all(attr),
                    _ => changed |= self.walk(attr),
                }
            }
        }
        changed
    }

    fn walk(&self, value: &mut Value) -> bool {
        match value {
            Value::String(s) => match scrub_str(s) {
                Some(new) => {
                    *s = new;
                    true
                }
                None => false,
            },
            Value::Number(n) => {
                if n.as_u64().is_some_and(card_number) {
                    *value = Value::from(FILTERED);
                    true
                } else {
                    false
                }
            }
            Value::Array(items) if is_pair_list(items) => {
                let mut changed = false;
                for pair in items.iter_mut() {
                    let Value::Array(pair) = pair else { continue };
                    let sensitive = pair[0].as_str().is_some_and(|k| self.sensitive_key(k));
                    changed |= if sensitive {
                        filter_all(&mut pair[1])
                    } else {
                        self.walk(&mut pair[1])
                    };
                }
                changed
            }
            Value::Array(items) => items.iter_mut().fold(false, |c, v| self.walk(v) | c),
            Value::Object(map) => self.walk_object(map),
            Value::Null | Value::Bool(_) => false,
        }
    }

    fn walk_object(&self, map: &mut Map<String, Value>) -> bool {
        let mut changed = false;
        for (key, value) in map.iter_mut() {
            changed |= if self.sensitive_key(key) {
                filter_all(value)
            } else {
                self.walk(value)
            };
        }
        changed
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

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty() || s == FILTERED,
        _ => false,
    }
}

/// A list of `[key, value]` pairs, the form Sentry uses for headers, cookies, query strings and
/// tags.
fn is_pair_list(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|p| matches!(p, Value::Array(pair) if pair.len() == 2 && pair[0].is_string()))
}

/// Replaces every leaf of `value` with `[Filtered]`, keeping the shape of objects, arrays and
/// the keys of pair lists. Null and empty strings stay as they are.
fn filter_all(value: &mut Value) -> bool {
    match value {
        _ if is_blank(value) => false,
        Value::Object(map) => map.values_mut().fold(false, |c, v| filter_all(v) | c),
        Value::Array(items) if is_pair_list(items) => items.iter_mut().fold(false, |c, pair| {
            let Value::Array(pair) = pair else { return c };
            filter_all(&mut pair[1]) | c
        }),
        Value::Array(items) => items.iter_mut().fold(false, |c, v| filter_all(v) | c),
        _ => {
            *value = Value::from(FILTERED);
            true
        }
    }
}

/// Applies the string rules; `None` when nothing matched.
pub fn scrub_str(s: &str) -> Option<String> {
    // Cheap pre-checks keep the common string allocation-free.
    let mut out: Option<String> = None;
    if s.contains("PRIVATE KEY") {
        out = pem_keys(out.as_deref().unwrap_or(s)).or(out);
    }
    if s.contains("://") {
        out = url_passwords(out.as_deref().unwrap_or(s)).or(out);
    }
    if s.bytes().filter(u8::is_ascii_digit).nth(12).is_some() {
        out = card_numbers(out.as_deref().unwrap_or(s)).or(out);
    }
    out
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

/// The text between `-----BEGIN … PRIVATE KEY-----` and the matching `-----END` (or the end of
/// the string when the block is cut short).
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
        if !label.ends_with("PRIVATE KEY") || !label.bytes().all(|b| b.is_ascii_uppercase() || b == b' ') {
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

/// The password part of `scheme://user:password@host` URLs.
fn url_passwords(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(found) = s[from..].find("://") {
        let sep = from + found;
        let authority_start = sep + 3;
        from = authority_start;
        let scheme_ok = sep > 0 && b[sep - 1].is_ascii_alphanumeric();
        if !scheme_ok {
            continue;
        }
        let authority_end = b[authority_start..]
            .iter()
            .position(|&c| {
                matches!(c, b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'`') || c.is_ascii_whitespace()
            })
            .map_or(b.len(), |n| authority_start + n);
        let authority = &s[authority_start..authority_end];
        let Some(at) = authority.rfind('@') else { continue };
        let userinfo = &authority[..at];
        if let Some(colon) = userinfo.find(':') {
            let password = &userinfo[colon + 1..];
            if !password.is_empty() && password != FILTERED {
                ranges.push((authority_start + colon + 1, authority_start + at));
            }
        }
        from = authority_end;
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
        // A run: digit groups joined by single spaces or dashes.
        let start = i;
        let mut groups = Vec::new();
        loop {
            let group_start = i;
            while i < n && b[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((group_start, i));
            if i + 1 < n && matches!(b[i], b' ' | b'-') && b[i + 1].is_ascii_digit() {
                i += 1;
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

/// Finds runs of whole consecutive groups that form a card number (a run may hold several
/// numbers separated by a space).
fn card_windows(b: &[u8], groups: &[(usize, usize)], ranges: &mut Vec<(usize, usize)>) {
    let mut g = 0;
    while g < groups.len() {
        g = match card_window_from(b, &groups[g..]) {
            Some(last) => {
                ranges.push((groups[g].0, groups[g + last].1));
                g + last + 1
            }
            None => g + 1,
        };
    }
}

/// The index of the last group of a card number starting at `groups[0]`, if there is one.
fn card_window_from(b: &[u8], groups: &[(usize, usize)]) -> Option<usize> {
    let mut digits = Vec::with_capacity(20);
    for (h, &(start, end)) in groups.iter().enumerate() {
        digits.extend(b[start..end].iter().map(|d| d - b'0'));
        if digits.len() > 19 {
            return None;
        }
        if digits.len() >= 13 && card_digits(&digits) {
            return Some(h);
        }
    }
    None
}

/// 13–19 digits, a payment-card major industry identifier (2–6), Luhn-valid.
fn card_digits(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len()) && (2..=6).contains(&digits[0]) && luhn(digits)
}

fn card_number(n: u64) -> bool {
    let digits: Vec<u8> = n.to_string().bytes().map(|d| d - b'0').collect();
    card_digits(&digits)
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
        assert!(Scrubber::default().scrub_log_payload(&mut v));
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
        ];
        for s in samples {
            for n in 0..=s.len() {
                if s.is_char_boundary(n) {
                    let _ = scrub_str(&s[..n]);
                }
            }
        }
    }
}
