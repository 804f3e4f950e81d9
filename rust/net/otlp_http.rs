//! The OTLP/HTTP front: the gateway's main port (`server.listen`) served by the core.
//!
//! `POST /v1/logs`, `/v1/traces` and `/v1/metrics`, Fluent Bit's `http` output on
//! `/v1/fluent[/{tag}]` and `receivers.fluent.http_paths` (`fluent_route`), `/v1/events`
//! (`events_route`) and Sentry's envelope and store endpoints with an accepted key in the
//! headers or query (`sentry_route`), over HTTP/1.x with a declared length, a known content type
//! and (when tokens are set, Sentry aside) a valid bearer token are answered here, with no Python
//! per request (but the job metrics' Redis round trip). Everything else goes, with the rest of its
//! connection, to the Python app on granian behind it (`Backend`), which answers it as it does
//! without the front: `/metrics`, health, bad tokens and Sentry keys (401), Sentry requests
//! authenticated by their envelope's `dsn`, unknown types (415), declared excess (413),
//! chunked or `Expect: 100-continue` bodies, HTTP/2 (`relay`: each head then names the client in
//! `x-trackgate-peer`, which the app would otherwise not see).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::events_route::{self, EventsRoute, Refused};
use super::fluent_route::{self, Routes};
use super::grpc::Code;
use super::grpc::{bearer, token_accepted};
pub use super::relay::Backend;
use super::relay::{self, read_head, read_some, trim, Head, Read, PEER_HEADER};
use super::sentry_route::{self, Key, SentryRoute};
use super::{accept_loop, Shutdown};
use crate::encode;
use crate::error::CoreError;
use crate::fluent::BodyFormat;
use crate::ingest::{Format, Ingested};
use crate::pipeline::Pipeline;
use crate::signal::Signal;

/// Bodies above this, and encoded bodies, are ingested on a blocking thread (as the app does).
const INLINE_LIMIT: usize = 256 * 1024;
/// A body refused for the spent budget is read and dropped up to this size, keeping the
/// connection (the app's `BUDGET_DRAIN_LIMIT`); a larger one closes it.
const BUDGET_DRAIN_LIMIT: usize = 64 * 1024;
/// Connections refused for the connection cap that may linger (read and drop) at once.
const LINGERING_REFUSALS: usize = 64;

#[derive(Clone)]
pub struct Config {
    pub tokens: Vec<Vec<u8>>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request (None: for ever). Each
    /// open connection holds one of `max_connections`: clients that vanish must not keep them.
    pub idle_timeout: Option<Duration>,
    /// Bytes of bodies buffered at once by this listener (503 + Retry-After beyond), when the
    /// service is not given the worker's budget.
    pub max_inflight_bytes: usize,
    /// Connections open at once (503 + Retry-After beyond).
    pub max_connections: usize,
    /// Whether an ingest may wait for the disk (`fsync = "interval"`): then off the network threads.
    pub blocking: bool,
    pub backend: Backend,
    /// Upper bounds (seconds) of the latency histogram's buckets.
    pub latency_buckets: Vec<f64>,
    /// Where the front's log lines go (the app's logger): what the app logs on the same path.
    pub log: Option<Log>,
    /// The Fluent routes it answers too.
    pub fluent: Routes,
    /// `/v1/events`, when the front answers it (None: relayed to the app).
    pub events: Option<Arc<EventsRoute>>,
    /// Sentry's routes, when the front answers them (None: relayed to the app).
    pub sentry: Option<Arc<SentryRoute>>,
}

/// Writes one log line: (level, message, fields). Called on the rare paths only (a partial
/// success, a storage failure), never per accepted request.
pub type Log = Arc<dyn Fn(&'static str, &'static str, Vec<(&'static str, LogValue)>) + Send + Sync>;

/// A log field's value: a count stays a number in the JSON line, as the app writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogValue {
    Text(String),
    Count(u64),
}

impl From<String> for LogValue {
    fn from(text: String) -> Self {
        LogValue::Text(text)
    }
}

impl From<&str> for LogValue {
    fn from(text: &str) -> Self {
        LogValue::Text(text.to_owned())
    }
}

impl From<u64> for LogValue {
    fn from(n: u64) -> Self {
        LogValue::Count(n)
    }
}

/// Counts for /metrics, merged there with the app's own `trackgate_http_*` series.
pub struct Stats {
    /// (route, status) → requests answered.
    answered: Mutex<Vec<(&'static str, u16, u64)>>,
    /// route → (count per bucket, the last one +Inf; sum of seconds).
    latency: Mutex<Vec<(&'static str, Vec<u64>, f64)>>,
    buckets: Vec<f64>,
    relayed: AtomicU64,
    /// Requests refused because the body budget was spent.
    refused: AtomicU64,
}

impl Stats {
    fn new(buckets: Vec<f64>) -> Self {
        Stats {
            answered: Mutex::default(),
            latency: Mutex::default(),
            buckets,
            relayed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn count(&self, route: &'static str, status: u16, elapsed: Duration) {
        {
            let mut answered = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
            match answered.iter_mut().find(|(r, s, _)| (*r, *s) == (route, status)) {
                Some(entry) => entry.2 += 1,
                None => answered.push((route, status, 1)),
            }
        }
        let seconds = elapsed.as_secs_f64();
        // The first bucket whose bound is at least the value (Prometheus's `le`).
        let bucket = self.buckets.partition_point(|b| *b < seconds);
        let mut latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let index = match latency.iter().position(|(r, _, _)| *r == route) {
            Some(i) => i,
            None => {
                latency.push((route, vec![0; self.buckets.len() + 1], 0.0));
                latency.len() - 1
            }
        };
        let entry = &mut latency[index];
        entry.1[bucket] += 1;
        entry.2 += seconds;
    }

    pub fn answered(&self) -> Vec<(&'static str, u16, u64)> {
        self.answered.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn latency(&self) -> Vec<(&'static str, Vec<u64>, f64)> {
        self.latency.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Bytes of request bodies buffered at once in one worker (`server.max_inflight_bytes`), shared
/// by the front and the app behind it, so that the worker's bound holds whoever reads the body.
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` of the budget if they fit.
    pub fn reserve(&self, bytes: usize) -> bool {
        let mut now = self.used.load(Ordering::Acquire);
        loop {
            if now.saturating_add(bytes) > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(now, now + bytes, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

pub struct Service {
    pub pipeline: Arc<Pipeline>,
    pub config: Config,
    pub stats: Arc<Stats>,
    budget: Arc<Budget>,
}

impl Service {
    /// A front with a budget of its own (`config.max_inflight_bytes`).
    pub fn new(pipeline: Arc<Pipeline>, config: Config) -> Self {
        let budget = Arc::new(Budget::new(config.max_inflight_bytes));
        Self::with_budget(pipeline, config, budget)
    }

    /// A front sharing `budget` (the worker's, which the app uses too).
    pub fn with_budget(pipeline: Arc<Pipeline>, config: Config, budget: Arc<Budget>) -> Self {
        let stats = Arc::new(Stats::new(config.latency_buckets.clone()));
        Service {
            pipeline,
            config,
            stats,
            budget,
        }
    }
}

pub async fn serve(listener: TcpListener, service: Arc<Service>, shutdown: Shutdown) {
    let open = Arc::new(Semaphore::new(service.config.max_connections));
    // Refused connections read what their client sends for a moment before closing (`linger`:
    // else the close resets the connection, and the client may never read the 503), a few at a
    // time: a flood of connections must not turn into as many lingering tasks.
    let lingering = Arc::new(Semaphore::new(LINGERING_REFUSALS));
    accept_loop(listener, shutdown, move |mut stream, shutdown| {
        let service = service.clone();
        let permit = open.clone().try_acquire_owned();
        let linger_permit = permit
            .is_err()
            .then(|| lingering.clone().try_acquire_owned().ok())
            .flatten();
        async move {
            let Ok(_permit) = permit else {
                // Every connection costs a task and a buffer: past the cap, a clear answer.
                let message = "too many connections to this worker (server.backpressure); retry later\n";
                let answer = Answer::text(503, message).with(&[("Retry-After", "1")], true);
                if stream.write_all(&answer.write(false, false)).await.is_ok() && linger_permit.is_some() {
                    linger(stream).await;
                }
                return;
            };
            connection(stream, &service, &shutdown).await
        }
    })
    .await;
}

/// A request the front answers itself.
#[derive(Debug, PartialEq, Eq)]
struct Export {
    route: &'static str,
    kind: Kind,
    length: usize,
    encoding: Option<String>,
    keep_alive: bool,
    /// HTTP/1.0: a kept connection must be said to be kept.
    http10: bool,
}

/// What a request carries, which says how it is ingested and how its answers are written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Otlp {
        signal: Signal,
        format: Format,
    },
    Fluent {
        format: BodyFormat,
        tag: String,
    },
    /// `/v1/events` (`events_route`).
    Events,
    /// Sentry's envelope (or, with `store`, legacy store) endpoint of a project (`sentry_route`).
    Sentry {
        project: String,
        store: bool,
    },
}

impl Kind {
    /// The signal its records are queued as.
    fn signal(&self) -> Signal {
        match self {
            Kind::Otlp { signal, .. } => *signal,
            Kind::Fluent { .. } | Kind::Events | Kind::Sentry { .. } => Signal::Logs,
        }
    }

    /// An answer that is not an ingest's outcome (a refused or unreadable body), in this route's
    /// protocol: the OTLP status message, or Fluent's `{"error": ...}`.
    fn refusal(&self, status: u16, code: Code, message: &str) -> Answer {
        match self {
            Kind::Otlp { format, .. } => Answer::status(status, code, message, *format),
            Kind::Fluent { .. } => Answer::json(status, fluent_route::error_body(message)),
            Kind::Events => Answer::json(status, events_route::error_body(message)),
            Kind::Sentry { .. } => Answer::json(status, sentry_route::error_body(message)),
        }
    }

    /// The answer to an ingest that ran to its end, accepted or not: the app's for this route.
    fn answer(&self, ingested: Result<Ingested, CoreError>) -> Answer {
        match (ingested, self) {
            (Ok(out), Kind::Otlp { signal, format }) => Answer {
                status: 200,
                body: encode::export_response(*signal, out.rejected, &out.error_message, *format),
                media: media_of(*format),
                headers: &[],
                built_headers: Vec::new(),
                close: false,
            },
            (Ok(out), Kind::Fluent { .. }) => Answer::json(
                200,
                fluent_route::accepted_body(out.accepted, out.rejected, &out.error_message),
            ),
            (Err(err), Kind::Otlp { signal, format }) => error_answer(*signal, *format, &err),
            (Err(err), Kind::Fluent { .. }) => fluent_error_answer(&err),
            // Answered by `events_answer` and `sentry_answer`: never an `Ingested`.
            (_, Kind::Events | Kind::Sentry { .. }) => Answer::text(500, "internal error\n"),
        }
    }

    /// The logger the app answers this route with (`front_log` picks it by this field).
    fn receiver(&self) -> &'static str {
        match self {
            Kind::Otlp { .. } => "otlp",
            Kind::Fluent { .. } => "fluent",
            Kind::Events => "events",
            Kind::Sentry { .. } => "sentry",
        }
    }

    /// The answer when the ingest itself panicked.
    fn internal_error(&self) -> Answer {
        match self {
            Kind::Otlp { format, .. } => Answer::status(500, Code::Internal, "internal error while ingesting", *format),
            Kind::Fluent { .. } | Kind::Events | Kind::Sentry { .. } => Answer::text(500, "internal error\n"),
        }
        .with(&[], true)
    }
}

fn route_of(path: &[u8]) -> Option<(&'static str, Signal)> {
    match path {
        b"/v1/logs" => Some(("/v1/logs", Signal::Logs)),
        b"/v1/traces" => Some(("/v1/traces", Signal::Traces)),
        b"/v1/metrics" => Some(("/v1/metrics", Signal::Metrics)),
        _ => None,
    }
}

/// `Some(())` while a header has not been seen yet: a repeated one is the app's to judge.
fn once<T>(slot: &Option<T>) -> Option<()> {
    slot.is_none().then_some(())
}

/// Longest request target the front reads itself; longer ones are the app's (its parser answers
/// 414 past 65,534 bytes).
const MAX_TARGET: usize = 8 * 1024;

/// Whether the front may read a request target as it is: only RFC 3986's unreserved and
/// sub-delims characters, ':', '@', '/', '?' and '%', which the app's HTTP parser takes as they
/// come. Any other byte ('#', '<', '"', a control, non-ASCII) is left to that parser, which may
/// cut the target there or refuse it.
fn plain_target(target: &[u8]) -> bool {
    target.len() <= MAX_TARGET
        && target
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(b))
}

/// The request the head (without its blank line) asks for, when the front answers it; `None`:
/// the app answers it (relay). Every header the app would weigh differently is a reason to relay.
fn export_of(head: &[u8], config: &Config) -> Option<Export> {
    let mut lines = head.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut parts = lines.next()?.split(|b| *b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if method != b"POST" || parts.next().is_some() || !plain_target(target) {
        return None;
    }
    let (path, query) = match target.iter().position(|b| *b == b'?') {
        Some(at) => (&target[..at], &target[at + 1..]),
        None => (target, &b""[..]),
    };
    let events = path == events_route::ROUTE.as_bytes();
    if events && config.events.is_none() {
        return None;
    }
    // (route label, OTLP signal; or the tag a Fluent path gives; or Sentry's project and kind).
    let (mut route, mut signal, mut path_tag, mut sentry) = (events_route::ROUTE, None, "", None);
    if let Some((label, otlp)) = route_of(path) {
        (route, signal) = (label, Some(otlp));
    } else if !events {
        if let Some((label, tag)) = config.fluent.route(path) {
            (route, path_tag) = (label, tag);
        } else {
            let (label, project, store) = sentry_route::route_of(path).filter(|_| config.sentry.is_some())?;
            (route, sentry) = (label, Some((project, store)));
        }
    }
    let tag_header = config
        .fluent
        .tag_header()
        .filter(|_| signal.is_none() && !events && sentry.is_none());
    let mut sentry_auth = None;
    let mut keep_alive = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return None,
    };
    let (mut length, mut media, mut encoding, mut authorization, mut tag) = (None, None, None, None, None);
    for line in lines {
        let colon = line.iter().position(|b| *b == b':')?;
        let (name, raw) = (&line[..colon], &line[colon + 1..]);
        // obs-fold, whitespace before the colon, or no name: the app's parser decides; so does a
        // control character in a value (`trim` would take a form feed at either end for space).
        if name.is_empty()
            || name.iter().any(|b| !(b.is_ascii_graphic()))
            || raw.iter().any(|b| b.is_ascii_control() && *b != b'\t')
        {
            return None;
        }
        let value = trim(raw);
        // Whatever header it names (even one read below): the app reads the tag from it.
        if tag_header.is_some_and(|h| name.eq_ignore_ascii_case(h.as_bytes())) {
            once(&tag)?;
            tag = Some(value);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            once(&length)?;
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            length = Some(std::str::from_utf8(value).ok()?.parse::<usize>().ok()?);
        } else if name.eq_ignore_ascii_case(b"content-type") {
            once(&media)?;
            // Not ASCII: the app reads it as Latin-1 and trims other characters than `trim` does.
            if !value.is_ascii() {
                return None;
            }
            let value = std::str::from_utf8(value).ok()?;
            media = Some(value.split(';').next()?.trim().to_ascii_lowercase());
        } else if name.eq_ignore_ascii_case(b"content-encoding") {
            once(&encoding)?;
            encoding = Some(std::str::from_utf8(value).ok()?.to_owned());
        } else if name.eq_ignore_ascii_case(b"authorization") {
            once(&authorization)?;
            authorization = Some(value);
        } else if sentry.is_some() && name.eq_ignore_ascii_case(b"x-sentry-auth") {
            once(&sentry_auth)?;
            sentry_auth = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|b| *b == b',').map(trim) {
                if option.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if option.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(PEER_HEADER.as_bytes())
        {
            return None;
        }
    }
    let length = length?;
    if length > config.max_body_bytes {
        return None; // the app answers 413 without reading the body
    }
    if let (Some((project, store)), Some(sentry_route)) = (sentry, &config.sentry) {
        // Not held to `server.tokens`: Sentry clients authenticate by their key.
        let Key::Found(key) = sentry_route::client_key([sentry_auth, authorization], query) else {
            return None; // the app reads the envelope header's dsn, or answers 401
        };
        if !sentry_route.key_ok(key) {
            return None; // the app answers 401
        }
        let encoding = match encoding {
            // The app strips it with Python's rules, which take more than ASCII whitespace (control
            // characters never get here).
            Some(e) if !e.is_ascii() => return None,
            e => sentry_route::encoding_of(e.as_deref()),
        };
        return Some(Export {
            route,
            kind: Kind::Sentry {
                project: project.to_owned(),
                store,
            },
            length,
            encoding,
            keep_alive,
            http10: version == b"HTTP/1.0",
        });
    }
    if !config.tokens.is_empty()
        && !authorization
            .and_then(|a: &[u8]| bearer(a))
            .is_some_and(|t| token_accepted(t, &config.tokens))
    {
        return None; // the app answers 401
    }
    let kind = match signal {
        Some(signal) => Kind::Otlp {
            signal,
            format: match media?.as_str() {
                "application/x-protobuf" | "application/protobuf" => Format::Protobuf,
                "application/json" => Format::Json,
                _ => return None,
            },
        },
        None if events => {
            if !events_route::takes(media.as_deref()) {
                return None; // the app answers 415
            }
            Kind::Events
        }
        None => Kind::Fluent {
            format: fluent_route::format_of(media.as_deref())?,
            tag: fluent_route::tag_of(path_tag, tag)?,
        },
    };
    Some(Export {
        route,
        kind,
        length,
        encoding: encoding.filter(|e| !e.is_empty()),
        keep_alive,
        http10: version == b"HTTP/1.0",
    })
}

/// Seconds as Python's `{:g}` writes them in the app's messages: six significant digits,
/// trailing zeros dropped, in exponent form below 1e-4 or from 1e6 (30 → "30", 0.5 → "0.5",
/// 1/3 → "0.333333", 1e6 → "1e+06").
fn seconds_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s == 0.0 {
        return "0".to_owned();
    }
    let trim = |text: String| {
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            text
        }
    };
    // The exponent after rounding to six digits decides the form, as in Python.
    let scientific = format!("{s:.5e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa.to_owned()), exponent.abs())
    } else {
        trim(format!("{s:.*}", (5 - exponent) as usize))
    }
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    media: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// Headers built for this answer (Sentry's rate limits), after `headers`.
    built_headers: Vec<(&'static str, String)>,
    close: bool,
}

fn media_of(format: Format) -> &'static str {
    match format {
        Format::Protobuf => "application/x-protobuf",
        Format::Json => "application/json",
    }
}

/// The app's answer to a body that could not be read (a client gone, cut short).
const UNREADABLE: &str = "request body could not be read (malformed framing or client gone)\n";

impl Answer {
    fn status(status: u16, code: Code, message: &str, format: Format) -> Self {
        Answer {
            status,
            body: encode::status_body(code as i32, message, format),
            media: media_of(format),
            headers: &[],
            built_headers: Vec::new(),
            close: false,
        }
    }

    fn json(status: u16, body: Vec<u8>) -> Self {
        Answer {
            status,
            body,
            media: "application/json",
            headers: &[],
            built_headers: Vec::new(),
            close: false,
        }
    }

    fn text(status: u16, body: &str) -> Self {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
            media: "text/plain; charset=utf-8",
            headers: &[],
            built_headers: Vec::new(),
            close: true,
        }
    }

    fn with(mut self, headers: &'static [(&'static str, &'static str)], close: bool) -> Self {
        self.headers = headers;
        self.close = close;
        self
    }

    fn write(&self, keep_alive: bool, http10: bool) -> Vec<u8> {
        let media = self.media;
        let mut out = Vec::with_capacity(self.body.len() + 160);
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\ncontent-type: {media}\r\ncontent-length: {}\r\n",
                self.status,
                reason(self.status),
                self.body.len()
            )
            .as_bytes(),
        );
        let built = self.built_headers.iter().map(|(name, value)| (*name, value.as_str()));
        for (name, value) in self.headers.iter().copied().chain(built) {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if !keep_alive || self.close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

async fn connection(mut stream: TcpStream, service: &Service, shutdown: &Shutdown) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // An idle connection keeps a small buffer, whatever size its last body was.
        buf.shrink_to(16 * 1024);
        let timeout = service.config.body_timeout;
        let end = match read_head(&mut stream, &mut buf, timeout, service.config.idle_timeout, shutdown).await {
            Head::At(end) => end,
            Head::H2 => return relay(stream, buf, service, shutdown).await,
            Head::Refuse(status, text) => return refuse(stream, status, text).await,
            Head::Done => return,
        };
        let Some(export) = export_of(&buf[..end], &service.config) else {
            return relay(stream, buf, service, shutdown).await;
        };
        let started = Instant::now();
        buf.drain(..end + 4);
        let answer = answer(&export, &mut stream, &mut buf, service, shutdown).await;
        let keep = export.keep_alive && !answer.close && !shutdown.is_set();
        let written = stream.write_all(&answer.write(keep, export.http10)).await.is_ok();
        service.stats.count(export.route, answer.status, started.elapsed());
        if !written {
            return;
        }
        if !keep {
            return linger(stream).await;
        }
    }
}

/// Answers a request head the front will not pass on, and closes.
async fn refuse(mut stream: TcpStream, status: u16, body: &str) {
    let answer = Answer::text(status, body);
    if stream.write_all(&answer.write(false, false)).await.is_ok() {
        linger(stream).await;
    }
}

/// Closes after an answer the client may still be sending a body to: ends the sending side, then
/// reads and drops what arrives for a moment, so the close does not reset the connection before
/// the client has read the answer.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Holds bytes of the worker's body budget until dropped.
struct Reservation<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

fn reserve(budget: &Budget, bytes: usize) -> Option<Reservation<'_>> {
    // `then`, not `then_some`: a guard built for a failed reservation would give back what it never took.
    budget.reserve(bytes).then(|| Reservation { budget, bytes })
}

/// Reads the body and ingests it.
async fn answer(
    export: &Export,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    service: &Service,
    shutdown: &Shutdown,
) -> Answer {
    let config = &service.config;
    let kind = &export.kind;
    // An envelope refused before it was read (budget, timeout) counts as rejected, as in the app;
    // a client gone or a shutdown does not.
    let rejected = || {
        if let (Kind::Sentry { .. }, Some(route)) = (kind, &config.sentry) {
            route.counts.rejected.fetch_add(1, Ordering::Relaxed);
        }
    };
    // One deadline for the whole body, as the app keeps it.
    let deadline = tokio::time::Instant::now() + config.body_timeout;
    let Some(_reserved) = reserve(&service.budget, export.length) else {
        rejected();
        service.stats.refused.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "request bodies in flight use this worker's budget of {} bytes (server.max_inflight_bytes); retry later",
            service.budget.limit()
        );
        // A small body is read and dropped, as the app does, so that the client keeps its
        // connection for the retry rather than reconnecting while the gateway is busiest.
        let drained =
            export.length <= BUDGET_DRAIN_LIMIT && discard(stream, buf, export.length, deadline, shutdown).await;
        return kind
            .refusal(503, Code::Unavailable, &message)
            .with(&[("Retry-After", "1")], !drained);
    };
    buf.reserve(export.length.saturating_sub(buf.len()));
    while buf.len() < export.length {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match read_some(stream, buf, Some(left), shutdown).await {
            Read::Data => {}
            // The client half-closed or left: if it still reads, it learns why (as from the app).
            Read::Gone => return Answer::text(400, UNREADABLE),
            Read::Closing => {
                return kind
                    .refusal(503, Code::Unavailable, "gateway is shutting down")
                    .with(&[("Retry-After", "5")], true);
            }
            Read::TimedOut => {
                rejected();
                let message = format!(
                    "request body not received within {}s",
                    seconds_text(config.body_timeout)
                );
                return kind.refusal(408, Code::DeadlineExceeded, &message).with(&[], true);
            }
        }
    }
    let rest = buf.split_off(export.length);
    let body = std::mem::replace(buf, rest);
    ingest(export, body, service).await
}

/// Reads and drops the next `length` bytes of a body (`buf`'s first), keeping whatever follows
/// them; false when they did not all arrive by `deadline`.
async fn discard(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    length: usize,
    deadline: tokio::time::Instant,
    shutdown: &Shutdown,
) -> bool {
    let mut left = length;
    loop {
        let take = left.min(buf.len());
        buf.drain(..take);
        left -= take;
        if left == 0 {
            return true;
        }
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !matches!(read_some(stream, buf, Some(wait), shutdown).await, Read::Data) {
            return false;
        }
    }
}

/// Whether a body is ingested on this thread: small plain ones take a few µs. Larger or encoded
/// ones (whatever they inflate to), or any that may wait for the disk, go to a blocking thread.
fn inline(export: &Export, service: &Service) -> bool {
    let encoded = export
        .encoding
        .as_deref()
        .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
    !service.config.blocking && !encoded && export.length <= INLINE_LIMIT
}

async fn ingest(export: &Export, body: Vec<u8>, service: &Service) -> Answer {
    match (&export.kind, &service.config.events, &service.config.sentry) {
        (Kind::Events, Some(route), _) => return events_answer(export, body, service, route).await,
        (Kind::Sentry { project, store }, _, Some(route)) => {
            return sentry_answer(export, body, service, route, project, *store).await
        }
        _ => {}
    }
    let work = {
        let pipeline = service.pipeline.clone();
        let encoding = export.encoding.clone();
        let kind = export.kind.clone();
        move || match &kind {
            Kind::Otlp { signal, format } => {
                pipeline.ingest_deferred(*signal, &body, *format, encoding.as_deref(), true)
            }
            Kind::Fluent { format, tag } => pipeline.ingest_fluent_deferred(&body, *format, encoding.as_deref(), tag),
            Kind::Events | Kind::Sentry { .. } => Err(CoreError::Usage(
                "events and envelopes are queued by their own answers".into(),
            )),
        }
    };
    let ingested = match run_ingest(export, service, work).await {
        // The fsync is awaited (group commit), not waited for on a thread.
        Ok(Ok((out, point))) => super::durable(&service.pipeline, point).await.map(|()| out),
        Ok(Err(err)) => Err(err),
        Err(answer) => return answer,
    };
    let signal = export.kind.signal();
    let log = |level, message, mut fields: Vec<(&'static str, LogValue)>| {
        if let Some(log) = &service.config.log {
            if matches!(export.kind, Kind::Fluent { .. }) {
                fields.push(("receiver", "fluent".into())); // the app's Fluent receiver's logger
            }
            log(level, message, fields);
        }
    };
    match &ingested {
        Ok(out) if out.rejected > 0 => log(
            "info",
            "partial success",
            vec![
                ("signal", signal.as_str().into()),
                ("rejected", out.rejected.into()),
                ("reason", out.error_message.clone().into()),
            ],
        ),
        Err(CoreError::Storage(e)) => log(
            "error",
            "queue storage failed",
            vec![("signal", signal.as_str().into()), ("error", e.clone().into())],
        ),
        _ => {}
    }
    export.kind.answer(ingested)
}

/// `/v1/events`: decoded and queued on both pipelines, answered once both copies are durable
/// and the job metrics have counted them (`receivers/events.py`).
async fn events_answer(export: &Export, body: Vec<u8>, service: &Service, route: &Arc<EventsRoute>) -> Answer {
    let work = {
        let (pipeline, route) = (service.pipeline.clone(), route.clone());
        let (encoding, limit) = (export.encoding.clone(), service.config.max_body_bytes);
        move || route.queue(&pipeline, &body, encoding.as_deref(), limit)
    };
    let queued = match run_ingest(export, service, work).await {
        Ok(queued) => queued,
        Err(answer) => return answer,
    };
    let durable = match queued {
        Ok(queued) => {
            let [main, bus] = queued.points;
            let bus_pipeline = route.bus.as_deref().unwrap_or(&service.pipeline);
            let synced = match super::durable(&service.pipeline, main).await {
                Ok(()) => super::durable(bus_pipeline, bus).await,
                err => err,
            };
            synced.map(|()| queued.decoded).map_err(Refused::Queue)
        }
        Err(refused) => Err(refused),
    };
    let log = |level, message, fields| {
        if let Some(log) = &service.config.log {
            log(level, message, fields);
        }
    };
    let decoded = match durable {
        Ok(decoded) => decoded,
        Err(refused) => {
            if let Refused::Queue(CoreError::Storage(e)) = &refused {
                log(
                    "error",
                    "queue storage failed",
                    vec![("receiver", "events".into()), ("error", e.clone().into())],
                );
            }
            let Some((status, message)) = events_route::error_status(&refused) else {
                return unhandled(export, service, format!("{refused:?}"));
            };
            let answer = Answer::json(status, events_route::error_body(&message));
            return match refused {
                Refused::Queue(CoreError::QueueFull { .. }) => answer.with(&[("Retry-After", "1")], false),
                Refused::Queue(CoreError::Closed) => answer.with(&[("Retry-After", "5")], true),
                Refused::Queue(_) => answer.with(&[("Retry-After", "5")], false),
                Refused::Body(_) => answer,
            };
        }
    };
    if decoded.rejected_count > 0 {
        log(
            "info",
            "events refused",
            vec![
                ("receiver", "events".into()),
                ("rejected", (decoded.rejected_count as u64).into()),
                ("reason", decoded.error_message().into()),
            ],
        );
    }
    let (status, body) = events_route::answer(&decoded);
    // Counted once durable (a request answered 503 is sent again and counted then); the answer
    // stands whatever the count does.
    if decoded.events.is_empty() {
    } else if route.counting_blocks() {
        let route = route.clone();
        let _ = tokio::task::spawn_blocking(move || route.accepted(&decoded.events)).await;
    } else {
        route.accepted(&decoded.events);
    }
    Answer::json(status, body)
}

/// Sentry's envelope and store endpoints: processed, checked against the upstream's rate limits,
/// queued (upstream, OTLP logs, spans) and answered once every copy is durable
/// (`receivers/sentry.py`).
async fn sentry_answer(
    export: &Export,
    body: Vec<u8>,
    service: &Service,
    route: &Arc<SentryRoute>,
    project: &str,
    store: bool,
) -> Answer {
    let work = {
        let (pipeline, route) = (service.pipeline.clone(), route.clone());
        let (encoding, project) = (export.encoding.clone(), project.to_owned());
        move || route.queue(&pipeline, &body, encoding.as_deref(), &project, store)
    };
    let queued = match run_ingest(export, service, work).await {
        Ok(queued) => queued,
        Err(answer) => return answer,
    };
    let durable = match queued {
        Ok(queued) => {
            let [upstream, logs, spans] = queued.points;
            let main = &service.pipeline;
            let synced = match super::durable(route.forward.as_deref().unwrap_or(main), upstream).await {
                Ok(()) => match super::durable(main, logs).await {
                    Ok(()) => super::durable(main, spans).await,
                    err => err,
                },
                err => err,
            };
            synced.map(|()| queued.processed).map_err(sentry_route::Refused::Queue)
        }
        Err(refused) => Err(refused),
    };
    let refused = match durable {
        Ok(processed) => {
            route.accepted(&processed);
            let answer = Answer::json(200, sentry_route::answer(&processed.event_id));
            return match route.held_header(&processed) {
                Some(limits) => Answer {
                    built_headers: vec![("X-Sentry-Rate-Limits", limits)],
                    ..answer
                },
                None => answer,
            };
        }
        Err(refused) => refused,
    };
    if let (sentry_route::Refused::Queue(CoreError::Storage(e)), Some(log)) = (&refused, &service.config.log) {
        let fields = vec![("receiver", "sentry".into()), ("error", e.clone().into())];
        log("error", "queue storage failed", fields);
    }
    let Some((status, message)) = sentry_route::error_status(&refused, store) else {
        return unhandled(export, service, format!("{refused:?}"));
    };
    let answer = Answer::json(status, sentry_route::error_body(&message));
    match refused {
        sentry_route::Refused::Limited(limited) => {
            let (limits, retry_after) = crate::sentry_limits::client_headers(&limited);
            Answer {
                built_headers: vec![("X-Sentry-Rate-Limits", limits), ("Retry-After", retry_after)],
                ..answer
            }
        }
        sentry_route::Refused::Queue(CoreError::QueueFull { .. }) => answer.with(&[("Retry-After", "1")], false),
        sentry_route::Refused::Queue(CoreError::Closed) => answer.with(&[("Retry-After", "5")], true),
        sentry_route::Refused::Queue(_) => answer.with(&[("Retry-After", "5")], false),
        sentry_route::Refused::Body(_) => answer,
    }
}

/// Runs a request's ingest here when it is small and plain (`inline`), else on a blocking
/// thread; a panic there, or a blocking task that did not run, is the logged 500 (`unhandled`).
async fn run_ingest<T: Send + 'static>(
    export: &Export,
    service: &Service,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, Answer> {
    let run = move || catch_unwind(AssertUnwindSafe(work));
    let outcome = if inline(export, service) {
        Ok(run())
    } else {
        tokio::task::spawn_blocking(run).await
    };
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => Err(unhandled(export, service, failure_text(Ok(panic)))),
        Err(join) => Err(unhandled(export, service, failure_text(Err(join)))),
    }
}

/// A 500 for what the front does not expect (a panic, an error no status is meant for), logged
/// as the app logs its own: nothing else would show it.
fn unhandled(export: &Export, service: &Service, error: String) -> Answer {
    if let Some(log) = &service.config.log {
        let fields = vec![
            ("receiver", export.kind.receiver().into()),
            ("path", export.route.into()),
            ("error", error.into()),
        ];
        log("error", "unhandled error", fields);
    }
    export.kind.internal_error()
}

/// What a caught panic or a failed blocking task says.
fn failure_text(outcome: std::result::Result<Box<dyn std::any::Any + Send>, tokio::task::JoinError>) -> String {
    match outcome {
        Ok(panic) => match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
            (Some(text), _) => format!("panic: {text}"),
            (_, Some(text)) => format!("panic: {text}"),
            _ => "panic".to_owned(),
        },
        Err(join) => join.to_string(),
    }
}

/// A failed Fluent ingest: `receivers/fluent.py`'s statuses and words.
fn fluent_error_answer(err: &CoreError) -> Answer {
    let json = |status, message: &str| Answer::json(status, fluent_route::error_body(message));
    match err {
        CoreError::Decode(m) => json(400, &format!("cannot decode Fluent logs: {m}")),
        CoreError::TooLarge { .. } | CoreError::ItemTooLarge { .. } | CoreError::LineTooLong { .. } => {
            json(413, &err.to_string())
        }
        CoreError::Unsupported(m) => json(415, m),
        CoreError::QueueFull { .. } => json(429, &format!("{err}; retry later")).with(&[("Retry-After", "1")], false),
        CoreError::Closed => json(503, "gateway is shutting down").with(&[("Retry-After", "5")], true),
        _ => json(503, "queue storage unavailable; retry later").with(&[("Retry-After", "5")], false),
    }
}

/// The answer to a failed ingest: the app's statuses and words for each error.
fn error_answer(signal: Signal, format: Format, err: &CoreError) -> Answer {
    match err {
        CoreError::Decode(m) => {
            let message = format!("cannot decode OTLP {} {}: {m}", format.as_str(), signal.as_str());
            Answer::status(400, Code::InvalidArgument, &message, format)
        }
        CoreError::TooLarge { .. } | CoreError::ItemTooLarge { .. } | CoreError::LineTooLong { .. } => {
            Answer::status(413, Code::OutOfRange, &err.to_string(), format)
        }
        CoreError::Unsupported(m) => Answer::status(415, Code::Unimplemented, m, format),
        CoreError::QueueFull { .. } => {
            Answer::status(429, Code::ResourceExhausted, &format!("{err}; retry later"), format)
                .with(&[("Retry-After", "1")], false)
        }
        CoreError::Closed => Answer::status(503, Code::Unavailable, "gateway is shutting down", format)
            .with(&[("Retry-After", "5")], true),
        // The queue's disk failed (full, read-only): nothing was accepted.
        _ => Answer::status(503, Code::Unavailable, "queue storage unavailable; retry later", format)
            .with(&[("Retry-After", "5")], false),
    }
}

/// Hands the connection, from the request at the start of `buf` on, to the app behind the front.
async fn relay(client: TcpStream, buf: Vec<u8>, service: &Service, shutdown: &Shutdown) {
    service.stats.relayed.fetch_add(1, Ordering::Relaxed);
    let config = &service.config;
    if let Err(mut client) = relay::relay(
        client,
        buf,
        &config.backend,
        config.body_timeout,
        config.idle_timeout,
        shutdown,
    )
    .await
    {
        let body = "the gateway's HTTP app is not reachable (starting or stopping); retry later\n";
        let answer = Answer::text(503, body).with(&[("Retry-After", "1")], true);
        let _ = client.write_all(&answer.write(false, false)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tokens: &[&str]) -> Config {
        Config {
            tokens: tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
            max_body_bytes: 1000,
            body_timeout: Duration::from_secs(30),
            idle_timeout: None,
            max_inflight_bytes: 1 << 20,
            max_connections: 16,
            blocking: false,
            backend: Backend::Tcp("127.0.0.1:1".into()),
            latency_buckets: vec![0.001, 0.01],
            log: None,
            fluent: Routes::new(vec!["/logs/ingest".into()], "fluent-tag"),
            events: None,
            sentry: None,
        }
    }

    fn export(head: &str, tokens: &[&str]) -> Option<Export> {
        export_of(head.as_bytes(), &config(tokens))
    }

    #[test]
    fn answers_plain_otlp_posts() {
        let e = export(
            "POST /v1/traces?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-protobuf\r\nContent-Length: 12\r\nContent-Encoding: gzip",
            &[],
        )
        .unwrap();
        assert_eq!(
            (e.route, &e.kind, e.length),
            (
                "/v1/traces",
                &Kind::Otlp {
                    signal: Signal::Traces,
                    format: Format::Protobuf
                },
                12
            )
        );
        assert_eq!(e.encoding.as_deref(), Some("gzip"));
        assert!(e.keep_alive);
        let e = export(
            "POST /v1/logs HTTP/1.0\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: 0",
            &[],
        )
        .unwrap();
        assert_eq!(
            (e.kind, e.keep_alive),
            (
                Kind::Otlp {
                    signal: Signal::Logs,
                    format: Format::Json
                },
                false
            )
        );
        let e = export(
            "POST /v1/metrics HTTP/1.1\r\nContent-Type: application/protobuf\r\nContent-Length: 1\r\nConnection: close",
            &[],
        )
        .unwrap();
        assert!(!e.keep_alive);
    }

    #[test]
    fn leaves_everything_else_to_the_app() {
        let ok = "Content-Type: application/x-protobuf\r\nContent-Length: 5";
        for head in [
            format!("GET /v1/logs HTTP/1.1\r\n{ok}"),
            format!("POST /v1/logz HTTP/1.1\r\n{ok}"),
            format!("POST /api/1/envelope/ HTTP/1.1\r\n{ok}"),
            format!("POST /v1/logs HTTP/2.0\r\n{ok}"),
            "PRI * HTTP/2.0".to_string(),
            "POST /v1/logs HTTP/1.1\r\nContent-Type: application/x-protobuf".to_string(), // no length
            format!("POST /v1/logs HTTP/1.1\r\n{ok}\r\nTransfer-Encoding: chunked"),
            format!("POST /v1/logs HTTP/1.1\r\n{ok}\r\nExpect: 100-continue"),
            format!("POST /v1/logs HTTP/1.1\r\n{ok}\r\nContent-Length: 5"), // twice
            "POST /v1/logs HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 5".to_string(),
            "POST /v1/logs HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1001".to_string(),
            "POST /v1/logs HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: -1".to_string(),
            format!("POST /v1/logs HTTP/1.1\r\n{ok}\r\n folded"),
            format!("POST /v1/logs HTTP/1.1\r\n{ok}\r\nX-Trackgate-Peer: 10.0.0.1"),
            format!("POST /v1/logs HTTP/1.1\r\n{ok}\r\nConnection: Upgrade"),
            // A control character in a value (even one `trim` would take for space).
            format!("POST /v1/logs HTTP/1.1\r\n{ok}\r\nX-Note: a\x0c"),
            format!("POST /v1/logs HTTP/1.1\r\n{ok}\r\nX-Note: a\x01b"),
            // Targets the app's parser cuts or refuses.
            format!("POST /v1/logs?a<b HTTP/1.1\r\n{ok}"),
            format!("POST /v1/logs?q=\"x\" HTTP/1.1\r\n{ok}"),
            format!("POST /v1/logs#frag HTTP/1.1\r\n{ok}"),
            format!("POST /v1/fluent/a#b HTTP/1.1\r\n{ok}"),
            format!("POST /v1/fluent/a\tb HTTP/1.1\r\n{ok}"),
            format!("POST /v1/logs?{} HTTP/1.1\r\n{ok}", "q".repeat(MAX_TARGET)),
        ] {
            assert_eq!(export(&head, &[]), None, "{head}");
        }
    }

    #[test]
    fn answers_fluent_posts_with_their_tags() {
        let fluent = |head: &str| export(head, &[]).map(|e| (e.route, e.kind));
        let kind = |format, tag: &str| Kind::Fluent {
            format,
            tag: tag.to_owned(),
        };
        assert_eq!(
            fluent("POST /v1/fluent/app.web HTTP/1.1\r\nContent-Type: application/x-ndjson\r\nContent-Length: 3"),
            Some(("/v1/fluent/:tag", kind(BodyFormat::Lines, "app.web")))
        );
        // No tag in the path: the tag header's; no content type: JSON (as the app reads it).
        assert_eq!(
            fluent("POST /v1/fluent HTTP/1.1\r\nFluent-Tag:  k8s.pod \r\nContent-Length: 3"),
            Some(("/v1/fluent", kind(BodyFormat::Json, "k8s.pod")))
        );
        assert_eq!(
            fluent("POST /logs/ingest?x HTTP/1.1\r\nContent-Type: application/msgpack\r\nContent-Length: 3"),
            Some(("/logs/ingest", kind(BodyFormat::Msgpack, "")))
        );
        // The path's tag wins over the header's.
        assert_eq!(
            fluent("POST /v1/fluent/a HTTP/1.1\r\nfluent-tag: b\r\nContent-Length: 3"),
            Some(("/v1/fluent/:tag", kind(BodyFormat::Json, "a")))
        );
        // The app reads the tag from the configured header whatever its name.
        let routes = Routes::new(vec![], "Content-Encoding");
        let e = export_of(
            b"POST /v1/fluent HTTP/1.1\r\ncontent-encoding: gzip\r\nContent-Length: 3",
            &Config {
                fluent: routes,
                events: None,
                ..config(&[])
            },
        )
        .unwrap();
        assert_eq!(
            (e.kind, e.encoding.as_deref()),
            (kind(BodyFormat::Json, "gzip"), Some("gzip"))
        );
        let long = "t".repeat(257);
        for head in [
            "POST /v1/fluent/a HTTP/1.1\r\nContent-Type: application/pdf\r\nContent-Length: 3".to_string(),
            "POST /v1/fluent/a%20b HTTP/1.1\r\nContent-Length: 3".to_string(),
            format!("POST /v1/fluent/{long} HTTP/1.1\r\nContent-Length: 3"),
            format!("POST /v1/fluent HTTP/1.1\r\nFluent-Tag: {long}\r\nContent-Length: 3"),
            "POST /v1/fluent HTTP/1.1\r\nFluent-Tag: a\r\nFluent-Tag: b\r\nContent-Length: 3".to_string(),
            "POST /v1/fluent/a HTTP/1.1\r\nContent-Length: 1001".to_string(),
            "GET /v1/fluent/a HTTP/1.1\r\nContent-Length: 3".to_string(),
            "POST /logs/ingest/ HTTP/1.1\r\nContent-Length: 3".to_string(),
        ] {
            assert_eq!(fluent(&head), None, "{head}");
        }
    }

    #[test]
    fn fluent_errors_match_the_app() {
        let a = fluent_error_answer(&CoreError::decode("line 1: bad"));
        assert_eq!((a.status, a.media), (400, "application/json"));
        assert_eq!(a.body, b"{\"error\": \"cannot decode Fluent logs: line 1: bad\"}\n");
        let a = fluent_error_answer(&CoreError::QueueFull { used: 9, limit: 10 });
        assert_eq!(
            (a.status, a.headers, a.close),
            (429, &[("Retry-After", "1")][..], false)
        );
        let a = fluent_error_answer(&CoreError::Storage("disk".into()));
        assert_eq!((a.status, a.headers), (503, &[("Retry-After", "5")][..]));
        assert!(!String::from_utf8_lossy(&a.body).contains("disk"));
        assert_eq!(fluent_error_answer(&CoreError::TooLarge { limit: 5 }).status, 413);
    }

    #[test]
    fn a_bad_token_goes_to_the_app_for_its_401() {
        let head = |auth: &str| {
            format!("POST /v1/logs HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 5{auth}")
        };
        assert!(export(&head("\r\nAuthorization: Bearer s3cret"), &["s3cret"]).is_some());
        assert!(export(&head("\r\nAuthorization: bearer  s3cret "), &["other", "s3cret"]).is_some());
        assert!(export(&head("\r\nAuthorization: Bearer wrong"), &["s3cret"]).is_none());
        assert!(export(&head("\r\nAuthorization: Basic s3cret"), &["s3cret"]).is_none());
        assert!(export(&head(""), &["s3cret"]).is_none());
    }

    #[test]
    fn error_answers_match_the_app() {
        let a = error_answer(Signal::Logs, Format::Json, &CoreError::QueueFull { used: 9, limit: 10 });
        assert_eq!((a.status, a.headers), (429, &[("Retry-After", "1")][..]));
        let text = String::from_utf8(a.write(true, false)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"),
            "{text}"
        );
        assert!(
            text.contains("queue is full (9 of 10 bytes in use); retry later"),
            "{text}"
        );
        assert!(!text.contains("connection: close"));
        let a = error_answer(Signal::Traces, Format::Json, &CoreError::decode("bad"));
        assert_eq!(a.status, 400);
        assert!(String::from_utf8_lossy(&a.body).contains("cannot decode OTLP json traces: bad"));
        let a = error_answer(Signal::Logs, Format::Protobuf, &CoreError::Closed);
        assert!(a.close && a.status == 503);
        assert_eq!(
            error_answer(Signal::Logs, Format::Json, &CoreError::Storage("disk".into())).status,
            503
        );
        // Python: [format(x, "g") for x in (30, 0.5, 1/3, 1e6, 123456.7, 2.5e-5, 0.0001, 100.25)]
        for (seconds, text) in [
            (30.0, "30"),
            (0.5, "0.5"),
            (1.0 / 3.0, "0.333333"),
            (1e6, "1e+06"),
            (123_456.7, "123457"),
            (2.5e-5, "2.5e-05"),
            (0.0001, "0.0001"),
            (100.25, "100.25"),
        ] {
            assert_eq!(seconds_text(Duration::from_secs_f64(seconds)), text, "{seconds}");
        }
    }

    #[test]
    fn latency_buckets_follow_prometheus_le() {
        let stats = Stats::new(vec![0.001, 0.01]);
        stats.count("/v1/logs", 200, Duration::from_micros(1000));
        stats.count("/v1/logs", 200, Duration::from_millis(5));
        stats.count("/v1/logs", 429, Duration::from_secs(1));
        assert_eq!(stats.answered(), vec![("/v1/logs", 200, 2), ("/v1/logs", 429, 1)]);
        let latency = stats.latency();
        assert_eq!(latency[0].1, vec![1, 1, 1]);
    }
}

#[cfg(test)]
#[path = "otlp_http_tests.rs"]
mod socket_tests;
