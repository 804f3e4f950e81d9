//! Sentry's `POST /api/{project_id}/envelope/` and `/store/` on the front: processed (scrubbed,
//! sampled, converted), checked against the upstream's rate limits, queued for the upstream
//! Sentry (or the file sink) and as OTLP logs and spans, and answered with the statuses and JSON
//! bodies `receivers/sentry.py` gives, byte for byte. Only requests whose key (X-Sentry-Auth,
//! `Authorization: Sentry ...` or the query's `sentry_key`) is plain and accepted are answered
//! here: a missing key (the envelope header's `dsn` authenticates it, read under the app's
//! pre-auth bounds), an unknown one (401) and anything the app would decode differently go to the app.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{json_message, push_json_string, queue_error_status};
use crate::decompress;
use crate::error::{CoreError, Result};
use crate::net::grpc::token_accepted;
use crate::pipeline::Pipeline;
use crate::queue::SyncPoint;
use crate::sentry::{self, Processed, SentryOptions};
use crate::sentry_limits::RateLimits;
use crate::signal::Signal;

/// The two routes' metric labels (the app's `route_label`).
pub const ENVELOPE: &str = "/api/:project/envelope/";
pub const STORE: &str = "/api/:project/store/";

/// `(label, project id, store)` when `path` is `/api/{digits}/envelope/` or `/store/` (the
/// trailing slash optional), as the app's route pattern reads it.
pub fn route_of(path: &[u8]) -> Option<(&'static str, &str, bool)> {
    let rest = path.strip_prefix(b"/api/")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let (project, kind) = rest.split_at(digits);
    let kind = kind.strip_suffix(b"/").unwrap_or(kind);
    let (label, store) = match kind {
        b"/envelope" => (ENVELOPE, false),
        b"/store" => (STORE, true),
        _ => return None,
    };
    Some((label, std::str::from_utf8(project).ok()?, store))
}

/// The key a request authenticates with, as the app finds it.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Found(&'a str),
    /// No key in the headers or query: the app reads the envelope header's `dsn` (or answers 401).
    Missing,
    /// A form the app decodes further (percent-escapes, `+`, `;`, non-ASCII): the app's to read.
    Unclear,
}

/// The first key in X-Sentry-Auth, then `Authorization` (values starting `Sentry `, any case),
/// then the query's first non-empty `sentry_key`: `client_key` in `receivers/sentry.py`.
pub fn client_key<'a>(auth_headers: [Option<&'a [u8]>; 2], query: &'a [u8]) -> Key<'a> {
    for value in auth_headers.into_iter().flatten() {
        // Python's `\s` also takes \x1c-\x1f, and its `lower()` more than ASCII: the app's to read.
        if value
            .iter()
            .any(|b| !b.is_ascii() || (b.is_ascii_control() && *b != b'\t'))
        {
            return Key::Unclear;
        }
        if value.len() >= 7 && value[..7].eq_ignore_ascii_case(b"sentry ") {
            if let Some(key) = key_in(value) {
                return std::str::from_utf8(key).map_or(Key::Unclear, Key::Found);
            }
        }
    }
    if query.iter().any(|b| matches!(b, b'%' | b'+' | b';')) {
        return Key::Unclear;
    }
    for pair in query.split(|b| *b == b'&') {
        let mut parts = pair.splitn(2, |b| *b == b'=');
        if let (Some(b"sentry_key"), Some(value)) = (parts.next(), parts.next()) {
            if !value.is_empty() {
                return std::str::from_utf8(value).map_or(Key::Unclear, Key::Found);
            }
        }
    }
    Key::Missing
}

/// The regex `sentry_key\s*=\s*([^,\s]+)` searched in an ASCII header value: its group.
fn key_in(value: &[u8]) -> Option<&[u8]> {
    const NAME: &[u8] = b"sentry_key";
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c');
    let mut from = 0;
    while let Some(at) = value[from..].windows(NAME.len()).position(|w| w == NAME) {
        let start = from + at;
        let mut rest = &value[start + NAME.len()..];
        while rest.first().is_some_and(space) {
            rest = &rest[1..];
        }
        if let Some(after) = rest.strip_prefix(b"=") {
            let after = &after[after.iter().take_while(|b| space(b)).count()..];
            let len = after.iter().take_while(|b| **b != b',' && !space(b)).count();
            if len > 0 {
                return Some(&after[..len]);
            }
        }
        from = start + 1;
    }
    None
}

/// Sentry's `Content-Encoding` as the app reads it: trimmed; none for "", "identity" or "UTF-8"
/// (which sentry-sdk may send: not an encoding).
pub fn encoding_of(value: Option<&str>) -> Option<String> {
    let value = value?.trim();
    let plain = ["", "utf-8", "identity"].iter().any(|p| value.eq_ignore_ascii_case(p));
    (!plain).then(|| value.to_owned())
}

/// Envelopes and items, by outcome, for /metrics (`trackgate_sentry_envelopes_total`,
/// `trackgate_sentry_items_total`, `trackgate_sentry_scrubbed_items`).
#[derive(Debug, Default)]
pub struct Counts {
    pub accepted: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rejected: AtomicU64,
    pub items_received: AtomicU64,
    pub items_forwarded: AtomicU64,
    pub items_scrubbed: AtomicU64,
    pub items_sampled_out: AtomicU64,
    /// Items left out of accepted envelopes for the upstream's rate limits.
    pub items_rate_limited: AtomicU64,
}

/// What the routes need besides the main pipeline.
pub struct SentryRoute {
    pub options: SentryOptions,
    /// The largest envelope, inflated (`server.max_body_bytes`).
    pub max_bytes: usize,
    /// `[receivers.sentry] public_keys`; empty with `any_key` (a loopback listener): any key.
    pub keys: Vec<Vec<u8>>,
    pub any_key: bool,
    /// Envelopes on their way upstream (or to the file sink); None: not forwarded.
    pub forward: Option<Arc<Pipeline>>,
    pub limits: Arc<RateLimits>,
    pub counts: Counts,
}

/// An envelope processed and queued (its buffers let go of: the answer and the counts are what
/// is left), durable once its points are.
pub struct Queued {
    pub processed: Processed,
    /// The envelope upstream, its log records, its spans.
    pub points: [Option<SyncPoint>; 3],
}

/// Why a request was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The body does not decode, or is too large (the client's to fix).
    Body(CoreError),
    /// Categories the upstream limits now, with the seconds left.
    Limited(Vec<(String, f64)>),
    /// Queueing (or its fsync) failed.
    Queue(CoreError),
}

impl SentryRoute {
    /// Whether the key is one of `public_keys` (compared in constant time).
    pub fn key_ok(&self, key: &str) -> bool {
        self.any_key || token_accepted(key.as_bytes(), &self.keys)
    }

    /// Processes one body and queues what it gives: the envelope for the upstream first, then
    /// its log records and spans (converted from scrubbed items: the OTLP scrubbing does not run
    /// on them again), as the app does.
    pub fn queue(
        &self,
        main: &Pipeline,
        body: &[u8],
        encoding: Option<&str>,
        project: &str,
        store: bool,
    ) -> std::result::Result<Queued, Refused> {
        let held = |category: &'static str| !self.limits.limited(&[category]).is_empty();
        let mut processed = decompress::decompress(body, encoding, self.max_bytes)
            .and_then(|body| {
                if store {
                    sentry::process_store_held(&body, project, &self.options, &held)
                } else {
                    sentry::process_held(&body, project, &self.options, &held)
                }
            })
            .map_err(|err| {
                // What the app counts: the refusals it answers 400, 413 or 415 (not its 500s).
                let refused = Refused::Body(err);
                if error_status(&refused, store).is_some() {
                    self.counts.rejected.fetch_add(1, Ordering::Relaxed);
                }
                refused
            })?;
        // Held items are left out; only an envelope of which nothing is left is refused.
        if processed.items_rate_limited > 0 && nothing_left(&processed) {
            // A limit that ran out since the items were held still answers 429 (for a second):
            // nothing of the envelope was queued.
            let mut limited = self.limits.limited(&processed.held);
            if limited.is_empty() {
                limited = processed.held.iter().map(|c| ((*c).to_owned(), 1.0)).collect();
            }
            self.counts.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Limited(limited));
        }
        let points = self.queue_processed(main, &mut processed).map_err(Refused::Queue)?;
        Ok(Queued { processed, points })
    }

    /// Queues the envelope and its OTLP copies, and lets go of them: what waits for the fsync
    /// holds no more than the answer and the counts need.
    fn queue_processed(&self, main: &Pipeline, processed: &mut Processed) -> Result<[Option<SyncPoint>; 3]> {
        let mut points = [None, None, None];
        let envelope = std::mem::take(&mut processed.envelope);
        if let Some(forward) = self.forward.as_ref().filter(|_| processed.items_forwarded > 0) {
            let records = processed.items_forwarded as u64;
            points[0] = forward.enqueue_deferred(Signal::Logs, records, envelope)?;
            self.counts.items_forwarded.fetch_add(records, Ordering::Relaxed);
        }
        let logs = std::mem::take(&mut processed.otlp_logs);
        if !logs.is_empty() {
            points[1] = main.ingest_built_deferred(Signal::Logs, &logs, false)?.1;
        }
        let spans = std::mem::take(&mut processed.otlp_traces);
        if !spans.is_empty() {
            points[2] = main.ingest_built_deferred(Signal::Traces, &spans, false)?.1;
        }
        Ok(points)
    }

    /// Counts an envelope once it is durable.
    pub fn accepted(&self, processed: &Processed) {
        let c = &self.counts;
        c.accepted.fetch_add(1, Ordering::Relaxed);
        c.items_received.fetch_add(processed.items as u64, Ordering::Relaxed);
        c.items_scrubbed
            .fetch_add(processed.items_scrubbed as u64, Ordering::Relaxed);
        c.items_sampled_out
            .fetch_add(processed.transactions_sampled_out as u64, Ordering::Relaxed);
        c.items_rate_limited
            .fetch_add(processed.items_rate_limited as u64, Ordering::Relaxed);
    }

    /// The `X-Sentry-Rate-Limits` value of an accepted envelope some of whose items were held
    /// (the client learns the limits, as from Relay's 200s); None when none were.
    pub fn held_header(&self, processed: &Processed) -> Option<String> {
        let limited = self.limits.limited(&processed.held);
        (!limited.is_empty()).then(|| crate::sentry_limits::client_headers(&limited).0)
    }
}

/// Whether nothing of a processed envelope is to be queued anywhere: not upstream, not as OTLP.
pub fn nothing_left(processed: &Processed) -> bool {
    processed.items_forwarded == 0 && processed.otlp_logs.is_empty() && processed.otlp_traces.is_empty()
}

/// `{"detail": message}`: Sentry's error body, as the app writes it.
pub fn error_body(message: &str) -> Vec<u8> {
    json_message("detail", message)
}

/// `{"id": event_id}`, or `{}` for an envelope without one.
pub fn answer(event_id: &Option<String>) -> Vec<u8> {
    match event_id {
        Some(id) => {
            let mut out = b"{\"id\":".to_vec();
            push_json_string(&mut out, id);
            out.push(b'}');
            out
        }
        None => b"{}".to_vec(),
    }
}

/// The status and message the app answers with; `None`: its 500 (an error it does not expect).
pub fn error_status(refused: &Refused, store: bool) -> Option<(u16, String)> {
    Some(match refused {
        Refused::Body(err @ CoreError::Decode(_)) => {
            let detail = err.to_string();
            if detail.starts_with("invalid ") {
                (400, detail)
            } else {
                let what = if store { "event" } else { "envelope" };
                (400, format!("invalid {what}: {detail}"))
            }
        }
        Refused::Body(
            err @ (CoreError::TooLarge { .. } | CoreError::ItemTooLarge { .. } | CoreError::LineTooLong { .. }),
        ) => (413, err.to_string()),
        Refused::Body(err @ CoreError::Unsupported(_)) => (415, err.to_string()),
        Refused::Limited(limited) => {
            let mut names: Vec<&str> = limited.iter().map(|(c, _)| c.as_str()).collect();
            names.sort_unstable();
            (429, format!("rate limited upstream: {}", names.join(", ")))
        }
        Refused::Queue(err) => return queue_error_status(err),
        Refused::Body(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_the_apps() {
        assert_eq!(route_of(b"/api/42/envelope/"), Some((ENVELOPE, "42", false)));
        assert_eq!(route_of(b"/api/7/envelope"), Some((ENVELOPE, "7", false)));
        assert_eq!(route_of(b"/api/0012/store/"), Some((STORE, "0012", true)));
        for path in [
            &b"/api//envelope/"[..],
            b"/api/x1/envelope/",
            b"/api/1/envelope//",
            b"/api/1/envelopes/",
            b"/api/1/store/x",
            b"/api/1",
            b"/v1/logs",
        ] {
            assert_eq!(route_of(path), None, "{}", String::from_utf8_lossy(path));
        }
    }

    #[test]
    fn keys_are_found_where_the_app_finds_them() {
        let h = |s: &'static str| Some(s.as_bytes());
        let auth = "Sentry sentry_version=7, sentry_key=abc, sentry_client=x";
        assert_eq!(client_key([h(auth), None], b""), Key::Found("abc"));
        assert_eq!(
            client_key([None, h("sentry sentry_key = k1 ,x")], b""),
            Key::Found("k1")
        );
        // X-Sentry-Auth first; a header without a key falls through to the next form.
        assert_eq!(
            client_key([h("Sentry sentry_key=a"), h("Sentry sentry_key=b")], b""),
            Key::Found("a")
        );
        assert_eq!(
            client_key([h("Sentry sentry_version=7"), h("Sentry sentry_key=b")], b""),
            Key::Found("b")
        );
        assert_eq!(
            client_key([h("Bearer sentry_key=a"), None], b"sentry_key=q"),
            Key::Found("q")
        );
        // The name is matched as written, and a later occurrence still counts.
        assert_eq!(client_key([h("Sentry Sentry_Key=a"), None], b""), Key::Missing);
        assert_eq!(
            client_key([h("Sentry sentry_key_x, sentry_key=z"), None], b""),
            Key::Found("z")
        );
        assert_eq!(client_key([h("Sentry sentry_key=,"), None], b""), Key::Missing);
        assert_eq!(
            client_key([None, None], b"a=1&sentry_key=&sentry_key=k&x"),
            Key::Found("k")
        );
        assert_eq!(client_key([None, None], b"sentry_version=7"), Key::Missing);
        assert_eq!(client_key([None, None], b"sentry_key=a%62"), Key::Unclear);
        assert_eq!(client_key([None, None], b"sentry_key=a+b"), Key::Unclear);
        assert_eq!(
            client_key([Some("Sentry sentry_key=é".as_bytes()), None], b""),
            Key::Unclear
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(11),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Whatever the header value and query: no panic, and a key found is what the app's
        /// `sentry_key\s*=\s*([^,\s]+)` or `parse_qs` would give (non-empty; from a header, no
        /// comma or space; from the query, no `&`).
        #[test]
        fn keys_are_found_or_left_to_the_app_whatever_the_bytes(
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60),
            prefixed in proptest::prelude::any::<bool>(),
            query in "[a-z_=&%+;0-9 ]{0,40}",
        ) {
            let mut header = if prefixed { b"Sentry sentry_key".to_vec() } else { Vec::new() };
            header.extend_from_slice(&value);
            match client_key([Some(&header), None], b"") {
                Key::Found(key) => proptest::prop_assert!(
                    !key.is_empty() && !key.bytes().any(|b| b == b',' || b.is_ascii_whitespace()),
                    "{key:?}"
                ),
                Key::Missing | Key::Unclear => {}
            }
            if let Key::Found(key) = client_key([None, None], query.as_bytes()) {
                proptest::prop_assert!(!key.is_empty() && !key.contains('&'), "{key:?}");
            }
        }
    }

    #[test]
    fn plain_encodings_are_none() {
        assert_eq!(encoding_of(Some(" UTF-8 ")), None);
        assert_eq!(encoding_of(Some("identity")), None);
        assert_eq!(encoding_of(None), None);
        assert_eq!(encoding_of(Some(" gzip")), Some("gzip".to_owned()));
    }

    #[test]
    fn errors_get_the_apps_statuses_and_words() {
        let status = |r: &Refused, store| error_status(r, store);
        assert_eq!(
            status(&Refused::Body(CoreError::decode("bad line")), false),
            Some((400, "invalid envelope: bad line".into()))
        );
        assert_eq!(
            status(&Refused::Body(CoreError::decode("invalid store request: x")), true),
            Some((400, "invalid store request: x".into()))
        );
        assert_eq!(
            status(
                &Refused::Limited(vec![("transaction".into(), 3.0), ("error".into(), 9.0)]),
                false
            ),
            Some((429, "rate limited upstream: error, transaction".into()))
        );
        assert_eq!(
            status(&Refused::Queue(CoreError::Storage("disk".into())), false),
            Some((503, "queue storage unavailable; retry later".into()))
        );
        assert_eq!(
            status(&Refused::Body(CoreError::TooLarge { limit: 5 }), false)
                .unwrap()
                .0,
            413
        );
        assert_eq!(status(&Refused::Queue(CoreError::decode("x")), false), None);
        assert_eq!(error_body("a\"b"), br#"{"detail":"a\"b"}"#.to_vec());
        assert_eq!(answer(&Some("ab".into())), br#"{"id":"ab"}"#.to_vec());
        assert_eq!(answer(&None), b"{}".to_vec());
    }
}
