//! Fluent Bit's `http` output on the front: `POST /v1/fluent[/{tag}]` and the configured
//! `receivers.fluent.http_paths`, answered as the app answers them (`receivers/fluent.py`): the
//! same tag rules, statuses and JSON bodies, byte for byte. What the front does not take here
//! (a `%` in the path, a tag over 256 characters, an unknown content type) goes to the app.

use crate::fluent::BodyFormat;

/// The route with no tag in the path.
const PREFIX: &[u8] = b"/v1/fluent";
const TAGGED: &str = "/v1/fluent/:tag";
/// The app refuses longer tags (400); that answer is left to it.
const MAX_TAG_CHARS: usize = 256;

/// Which paths are Fluent routes, and the header that names the tag when the path does not.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// `receivers.fluent.http_paths` that no other route takes, as their own metric labels
    /// (leaked once per listener: a handful of configured strings).
    paths: Vec<&'static str>,
    /// `receivers.fluent.tag_header`; empty: none.
    tag_header: String,
}

impl Routes {
    pub fn new(paths: Vec<String>, tag_header: &str) -> Self {
        Routes {
            paths: paths.into_iter().map(|p| &*Box::leak(p.into_boxed_str())).collect(),
            // As given: the app looks it up as is (one with spaces matches no header).
            tag_header: tag_header.to_owned(),
        }
    }

    /// The route's metric label and the tag its path gives ("" for none), when `path` is a Fluent
    /// route the front serves: the app's `route_label` and `path_tag`.
    pub fn route<'p>(&self, path: &'p [u8]) -> Option<(&'static str, &'p str)> {
        if path.contains(&b'%') || !path.is_ascii() {
            return None; // the app percent-decodes the tag
        }
        if let Some(label) = self.paths.iter().find(|p| p.as_bytes() == path) {
            // A configured path under the prefix still takes its tag from the path.
            return Some((label, tag_in(path).unwrap_or("")));
        }
        if path == PREFIX {
            return Some(("/v1/fluent", ""));
        }
        tag_in(path).map(|tag| (TAGGED, tag))
    }

    pub fn tag_header(&self) -> Option<&str> {
        (!self.tag_header.is_empty()).then_some(self.tag_header.as_str())
    }
}

/// The tag after `/v1/fluent/` (ASCII, checked by the caller).
fn tag_in(path: &[u8]) -> Option<&str> {
    let rest = path.strip_prefix(PREFIX)?;
    let tag = if rest.is_empty() {
        rest
    } else {
        rest.strip_prefix(b"/")?
    };
    std::str::from_utf8(tag).ok()
}

/// The request's tag: the path's, else the tag header's (trimmed); `None` when the app must
/// answer (a tag it refuses, or a header value it would decode otherwise).
pub fn tag_of(from_path: &str, header: Option<&[u8]>) -> Option<String> {
    let tag = if from_path.is_empty() {
        let value = header.unwrap_or_default();
        if !value.iter().all(|b| (0x20..0x7f).contains(b)) {
            return None;
        }
        std::str::from_utf8(value).ok()?.trim()
    } else {
        from_path
    };
    (tag.len() <= MAX_TAG_CHARS).then(|| tag.to_owned())
}

/// The format a content type names (its media type, lowercased); `None`: the app answers 415.
pub fn format_of(media: Option<&str>) -> Option<BodyFormat> {
    BodyFormat::from_media_type(media.unwrap_or("")).ok()
}

/// A string as Python's `json.dumps` writes it (`ensure_ascii`: everything outside printable
/// ASCII escaped), so that the front's bodies equal the app's.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// The answer to an ingested body: `{"accepted": n, "rejected": m}`, with `"error"` when records
/// were refused.
pub fn accepted_body(accepted: u64, rejected: u64, error: &str) -> Vec<u8> {
    let mut out = format!("{{\"accepted\": {accepted}, \"rejected\": {rejected}");
    if !error.is_empty() {
        out.push_str(", \"error\": ");
        push_json_string(&mut out, error);
    }
    out.push_str("}\n");
    out.into_bytes()
}

/// Every error answer: `{"error": "..."}`.
pub fn error_body(message: &str) -> Vec<u8> {
    let mut out = String::from("{\"error\": ");
    push_json_string(&mut out, message);
    out.push_str("}\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_tags_follow_the_app() {
        let routes = Routes::new(vec!["/logs/ingest".into(), "/v1/fluent/fixed".into()], "FLUENT-TAG");
        assert_eq!(routes.route(b"/v1/fluent"), Some(("/v1/fluent", "")));
        assert_eq!(routes.route(b"/v1/fluent/"), Some((TAGGED, "")));
        assert_eq!(routes.route(b"/v1/fluent/app.web"), Some((TAGGED, "app.web")));
        assert_eq!(routes.route(b"/v1/fluent//x"), Some((TAGGED, "/x")));
        assert_eq!(routes.route(b"/logs/ingest"), Some(("/logs/ingest", "")));
        assert_eq!(routes.route(b"/v1/fluent/fixed"), Some(("/v1/fluent/fixed", "fixed")));
        for other in [
            &b"/v1/fluentx"[..],
            b"/v1/logs",
            b"/logs/ingest/",
            b"/v1/fluent/a%2Fb",
            b"/v1/fluent/\xc3\xa9",
        ] {
            assert_eq!(routes.route(other), None, "{}", String::from_utf8_lossy(other));
        }
        assert_eq!(routes.tag_header(), Some("FLUENT-TAG"));
        assert_eq!(Routes::new(vec![], "").tag_header(), None);
        assert_eq!(tag_of("a", Some(b"b")).as_deref(), Some("a"));
        assert_eq!(tag_of("", Some(b" b ")).as_deref(), Some("b"));
        assert_eq!(tag_of("", None).as_deref(), Some(""));
        assert_eq!(tag_of("", Some(b"\xc3\xa9")), None);
        assert_eq!(tag_of(&"t".repeat(257), None), None);
        assert_eq!(tag_of(&"t".repeat(256), None).map(|t| t.len()), Some(256));
    }

    #[test]
    fn bodies_are_pythons_json_dumps() {
        assert_eq!(accepted_body(3, 0, ""), b"{\"accepted\": 3, \"rejected\": 0}\n");
        assert_eq!(
            String::from_utf8(accepted_body(1, 2, "record 0: \"x\"\n")).unwrap(),
            "{\"accepted\": 1, \"rejected\": 2, \"error\": \"record 0: \\\"x\\\"\\n\"}\n"
        );
        // json.dumps({"error": "é\x01\x7f😀\\"}) in Python.
        assert_eq!(
            String::from_utf8(error_body("é\u{1}\u{7f}😀\\")).unwrap(),
            "{\"error\": \"\\u00e9\\u0001\\u007f\\ud83d\\ude00\\\\\"}\n"
        );
        assert_eq!(format_of(None), Some(BodyFormat::Json));
        assert_eq!(format_of(Some("application/x-ndjson")), Some(BodyFormat::Lines));
        assert_eq!(format_of(Some("application/pdf")), None);
    }
}
