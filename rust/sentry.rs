//! Sentry ingestion: one envelope (or legacy store event) in; the envelope to forward (scrubbed,
//! transactions sampled) and an OTLP logs request of its error/message events and log items out.
//!
//! The envelope is parsed into slices of the body (`envelope`); an item is copied through as
//! received unless scrubbing changed its payload (`scrub`) or sampling removed it. Events,
//! transactions and the other JSON items (all but `UNSCRUBBED_TYPES`) are parsed to
//! `serde_json::Value` (at most their item limit each); the OTLP records are built from the
//! scrubbed events, so nothing filtered from the forwarded event reaches OTLP.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::Value;

use crate::decompress::{self, FirstLine};
use crate::envelope::{self, Envelope, Item, Out};
use crate::error::{quote, CoreError, Result};
use crate::sample::Sampler;
use crate::scrub::{self, ScrubOptions, Scrubber};
use crate::sentry_spans::TracesBuilder;
use crate::wire;

/// Payload limits per item type, as in Relay. An envelope with an item over its limit is
/// rejected whole (`CoreError::ItemTooLarge`, HTTP 413).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLimits {
    /// `event`, `transaction`, `security`, `raw_security`, `span`, `otel_span`, `feedback`,
    /// `user_report`, `replay_event` (the JSON items that are scrubbed); also the store
    /// endpoint's event, and how much of an item of a type unknown today is parsed to scrub it.
    pub event: usize,
    /// `log`, `trace_metric`.
    pub log: usize,
    pub check_in: usize,
    pub attachment: usize,
}

impl Default for ItemLimits {
    fn default() -> Self {
        ItemLimits {
            event: 1024 * 1024,
            log: 2 * 1024 * 1024,
            check_in: 100 * 1024,
            attachment: 200 * 1024 * 1024,
        }
    }
}

impl ItemLimits {
    pub fn for_type(&self, ty: &str) -> Option<usize> {
        match ty {
            "event" | "transaction" | "security" | "raw_security" | "span" | "otel_span" | "feedback"
            | "user_report" | "replay_event" => Some(self.event),
            "log" | "trace_metric" => Some(self.log),
            "check_in" => Some(self.check_in),
            "attachment" => Some(self.attachment),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SentryOptions {
    pub scrub: ScrubOptions,
    /// Fraction of transactions kept, consistent by trace id. Error events are always kept.
    pub transaction_sample_rate: f64,
    pub limits: ItemLimits,
    /// Build `Processed::otlp_logs` from events and log items, and `Processed::otlp_traces` from
    /// the transactions kept.
    pub to_otlp: bool,
}

impl Default for SentryOptions {
    fn default() -> Self {
        SentryOptions {
            scrub: ScrubOptions::default(),
            transaction_sample_rate: 1.0,
            limits: ItemLimits::default(),
            to_otlp: true,
        }
    }
}

/// The outcome of one envelope.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Processed {
    /// The envelope to forward: the input byte-for-byte unless an item was scrubbed or sampled
    /// out. The header (`dsn`, `sent_at`, ...) is always as received. Holds only a header when
    /// `items_forwarded` is 0.
    pub envelope: Vec<u8>,
    /// The envelope's `event_id` as 32 lowercase hex digits, for the `{"id": ...}` answer.
    pub event_id: Option<String>,
    /// The envelope header's `dsn`, one of the ways a client authenticates.
    pub dsn: Option<String>,
    /// Data categories of the items received (Sentry's rate-limit names: `error`,
    /// `transaction`, `security`, `attachment`, `session`, `log_item`, `span`, `profile`,
    /// `profile_chunk`, `replay`, `monitor`, `feedback`, `user_report`, `internal`,
    /// `metric_bucket`, `trace_metric`), each once, in order of first appearance. Unknown item
    /// types have none.
    pub categories: Vec<&'static str>,
    /// Items received and forwarded.
    pub items: usize,
    pub items_forwarded: usize,
    /// Items whose payload scrubbing changed.
    pub items_scrubbed: usize,
    /// `event` items turned into OTLP log records.
    pub events_converted: usize,
    /// Log records in `otlp_logs` (events and Sentry log items).
    pub log_records: usize,
    pub transactions_sampled_out: usize,
    /// Transactions sampled out plus the `profile` items removed with them.
    pub items_sampled_out: usize,
    /// An `ExportLogsServiceRequest` (protobuf); empty when there are no records.
    pub otlp_logs: Vec<u8>,
    /// `transaction` items (kept by sampling) turned into spans.
    pub transactions_converted: usize,
    /// Spans in `otlp_traces`: each converted transaction's root span and its children.
    pub spans: usize,
    /// An `ExportTraceServiceRequest` (protobuf, see `sentry_spans`); empty when there are no spans.
    pub otlp_traces: Vec<u8>,
    /// Items left out of `envelope` because the upstream limits their category now (`held`);
    /// still converted to OTLP, which the upstream's limits do not concern.
    pub items_rate_limited: usize,
    /// Their categories, each once.
    pub held: Vec<&'static str>,
}

/// Whether the upstream Sentry limits a data category now (see `process_held`).
pub type Held<'a> = &'a dyn Fn(&'static str) -> bool;

/// Processes a decompressed envelope. `project_id` comes from the route
/// (`/api/{project_id}/envelope/`) and becomes the resource attribute `sentry.project_id`.
///
/// Errors: `Decode` for a malformed envelope (see `envelope::parse`), a missing `event_id` when
/// there is an event, transaction or attachment item, or an event, transaction or log payload
/// that is not a JSON object; `ItemTooLarge` when an item is over its limit.
pub fn process(body: &[u8], project_id: &str, options: &SentryOptions) -> Result<Processed> {
    process_held(body, project_id, options, &|_| false)
}

/// `process`, leaving out of the forwarded envelope the items whose category `held` says the
/// upstream limits now, as Sentry's Relay does: the rest of the envelope still goes, and the
/// client is told the limits (a whole envelope refused with 429 would lose an error for the sake
/// of its attachment: SDKs do not send a 429'd envelope again).
pub fn process_held(body: &[u8], project_id: &str, options: &SentryOptions, held: Held<'_>) -> Result<Processed> {
    let env = envelope::parse(body)?;
    check_envelope(&env, &options.limits)?;
    let scrubber = Scrubber::new(&options.scrub);
    let sampler = Sampler::new(options.transaction_sample_rate);
    let observed = now_nanos();
    let mut logs = LogsBuilder::new(project_id);
    let mut traces = TracesBuilder::default();
    let mut out = Processed {
        event_id: env.event_id.clone(),
        dsn: env.header.get("dsn").and_then(Value::as_str).map(str::to_owned),
        items: env.items.len(),
        ..Processed::default()
    };
    // What becomes of each item, by index.
    let mut decisions: Vec<Decision> = Vec::with_capacity(env.items.len());
    let header_trace = env
        .header
        .get("trace")
        .and_then(|t| t.get("trace_id"))
        .and_then(Value::as_str);
    let mut transactions_kept = 0usize;
    for item in &env.items {
        if let Some(category) = item_category(&item.ty) {
            if !out.categories.contains(&category) {
                out.categories.push(category);
            }
        }
        let decision = match item.ty.as_str() {
            "event" => {
                let mut event = json_object(item)?;
                let scrubbed = scrubber.scrub_value(&mut event);
                if options.to_otlp {
                    logs.add(event_record(&event, env.event_id.as_deref(), observed));
                    out.events_converted += 1;
                }
                replace_if(scrubbed, &event)
            }
            "transaction" => {
                let mut event = json_object(item)?;
                let trace_id = header_trace.or_else(|| str_at(&event, &["contexts", "trace", "trace_id"]));
                if keep_transaction(&sampler, trace_id, env.event_id.as_deref(), item.payload) {
                    transactions_kept += 1;
                    let scrubbed = scrubber.scrub_value(&mut event);
                    // Built from the scrubbed event, like the log records of errors.
                    if options.to_otlp
                        && traces.add_transaction(&event, header_trace, env.event_id.as_deref(), project_id) > 0
                    {
                        out.transactions_converted += 1;
                    }
                    replace_if(scrubbed, &event)
                } else {
                    out.transactions_sampled_out += 1;
                    Decision::Drop
                }
            }
            "log" if scrubber.enabled() || options.to_otlp => {
                let mut payload = json_object(item)?;
                let scrubbed = scrubber.scrub_value(&mut payload);
                if options.to_otlp {
                    for record in log_item_records(&payload, observed) {
                        logs.add(record);
                    }
                }
                replace_if(scrubbed, &payload)
            }
            ty if scrubber.enabled() && !UNSCRUBBED_TYPES.contains(&ty) => {
                scrub_json_item(&scrubber, item, &options.limits)
            }
            _ => Decision::Keep,
        };
        let decision = match item_category(&item.ty) {
            Some(category) if !matches!(decision, Decision::Drop) && held(category) => {
                out.items_rate_limited += 1;
                if !out.held.contains(&category) {
                    out.held.push(category);
                }
                Decision::Drop
            }
            _ => decision,
        };
        decisions.push(decision);
    }
    // A profile belongs to the transaction it was recorded with: drop it with its transaction.
    if out.transactions_sampled_out > 0 && transactions_kept == 0 {
        for (item, decision) in env.items.iter().zip(decisions.iter_mut()) {
            if item.ty == "profile" {
                *decision = Decision::Drop;
                out.items_sampled_out += 1;
            }
        }
    }
    // An attachment belongs to the error event it came with, a profile to its transaction: held
    // back with them, as Relay does (upstream, alone, they would be orphans).
    for (dependent, owner) in [("attachment", "error"), ("profile", "transaction")] {
        if out.held.contains(&owner) {
            for (item, decision) in env.items.iter().zip(decisions.iter_mut()) {
                if item.ty == dependent && !matches!(decision, Decision::Drop) {
                    *decision = Decision::Drop;
                    out.items_rate_limited += 1;
                }
            }
        }
    }
    out.items_sampled_out += out.transactions_sampled_out;
    out.items_scrubbed = decisions.iter().filter(|d| matches!(d, Decision::Replace(_))).count();
    out.items_forwarded = decisions.iter().filter(|d| !matches!(d, Decision::Drop)).count();
    out.envelope = if decisions.iter().all(|d| matches!(d, Decision::Keep)) {
        body.to_vec()
    } else {
        let items: Vec<Out<'_, '_>> = env
            .items
            .iter()
            .zip(&decisions)
            .filter_map(|(item, decision)| match decision {
                Decision::Keep => Some(Out::Keep(item)),
                Decision::Replace(payload) => Some(Out::Replace(item, payload)),
                Decision::Drop => None,
            })
            .collect();
        envelope::serialize(env.header_raw, &items)
    };
    out.log_records = logs.len();
    out.otlp_logs = logs.finish();
    out.spans = traces.len();
    out.otlp_traces = traces.finish();
    Ok(out)
}

/// What the first line of an envelope says about how it authenticates (see `header_dsn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderDsn {
    /// The prefix does not hold the whole envelope header line yet: read more of the body.
    NeedMore,
    /// The envelope header's `dsn` (None: absent, or not a string).
    Found(Option<String>),
}

/// The envelope header's `dsn`, from the start of a request body (`complete` when `prefix` is
/// all of it): decoded only as far as the first newline, at most `envelope::MAX_HEADER_LINE`
/// bytes, and read without building the header's other values. This authenticates a request
/// that carries its key only there before the rest is read, inflated or parsed.
///
/// Errors: `LineTooLong` past the cap; `Decode` for an empty body, a header line that is not a
/// JSON object, or corrupt compressed data (once complete); `Unsupported` for an unknown encoding.
pub fn header_dsn(
    prefix: &[u8],
    encoding: Option<&str>,
    complete: bool,
    max_envelope_bytes: usize,
) -> Result<HeaderDsn> {
    match decompress::first_line(
        prefix,
        encoding,
        complete,
        envelope::MAX_HEADER_LINE,
        max_envelope_bytes,
    )? {
        FirstLine::Incomplete => Ok(HeaderDsn::NeedMore),
        FirstLine::TooLong => Err(envelope::header_too_long("the envelope header line")),
        FirstLine::Line { line, ended: false } if line.is_empty() => Err(envelope::empty_body()),
        FirstLine::Line { line, .. } => envelope::header_dsn(&line).map(HeaderDsn::Found),
    }
}

/// The data categories of an envelope's items (for rate limits), each once, in order.
pub fn envelope_categories(body: &[u8]) -> Result<Vec<&'static str>> {
    let env = envelope::parse(body)?;
    let mut out = Vec::new();
    for category in env.items.iter().filter_map(|item| item_category(&item.ty)) {
        if !out.contains(&category) {
            out.push(category);
        }
    }
    Ok(out)
}

/// Processes one event from the legacy store endpoint (`/api/{project_id}/store/`): the body
/// is the event JSON (or, from old SDKs, base64 of zlib-compressed JSON). It is wrapped into an
/// envelope whose `event_id` is the event's own or a new one, as an `event` item, or a
/// `transaction` item when the event's `type` says so.
pub fn process_store(body: &[u8], project_id: &str, options: &SentryOptions) -> Result<Processed> {
    process_store_held(body, project_id, options, &|_| false)
}

/// `process_store`, the event left out of the forwarded envelope when `held` says so.
pub fn process_store_held(body: &[u8], project_id: &str, options: &SentryOptions, held: Held<'_>) -> Result<Processed> {
    let limit = options.limits.event;
    let json = legacy_decode(body, limit)?;
    if json.len() > limit {
        return Err(CoreError::ItemTooLarge {
            item: "the event".to_owned(),
            size: json.len(),
            limit,
        });
    }
    let event: Value = serde_json::from_slice(&json)
        .map_err(|e| CoreError::decode(format!("invalid store request: the event is not valid JSON ({e})")))?;
    let Some(event) = event.as_object() else {
        return Err(CoreError::decode(
            "invalid store request: the event is not a JSON object",
        ));
    };
    let event_id = match event.get("event_id") {
        None | Some(Value::Null) => new_event_id(),
        Some(Value::String(s)) => envelope::normalize_event_id(s).ok_or_else(|| {
            CoreError::decode(format!(
                "invalid store request: event_id {} is not a UUID",
                quote(s.as_bytes())
            ))
        })?,
        Some(other) => {
            return Err(CoreError::decode(format!(
                "invalid store request: event_id is {}, not a string",
                envelope::json_type(other)
            )))
        }
    };
    let ty = match event.get("type").and_then(Value::as_str) {
        Some("transaction") => "transaction",
        _ => "event",
    };
    let mut env = Vec::with_capacity(json.len() + 128);
    env.extend_from_slice(format!("{{\"event_id\":\"{event_id}\"}}\n").as_bytes());
    env.extend_from_slice(format!("{{\"type\":\"{ty}\",\"length\":{}}}\n", json.len()).as_bytes());
    env.extend_from_slice(&json);
    env.push(b'\n');
    process_held(&env, project_id, options, held)
}

enum Decision {
    Keep,
    Replace(Vec<u8>),
    Drop,
}

/// Item types whose payloads are never scrubbed: binary or compressed data (attachments,
/// profiles, replay recordings and videos) and types that carry no user-supplied text (client
/// reports, sessions, metrics). Every other item whose payload is a JSON object or array is
/// scrubbed like an event: `span`, `otel_span`, `feedback`, `user_report`, `security`,
/// `raw_security`, `check_in`, `replay_event`, `trace_metric`, and types unknown today.
pub const UNSCRUBBED_TYPES: &[&str] = &[
    "attachment",
    "profile",
    "profile_chunk",
    "replay_recording",
    "replay_video",
    "client_report",
    "session",
    "sessions",
    "statsd",
    "metric_buckets",
];

/// Scrubs an item of a type other than event, transaction and log when its payload is JSON;
/// anything else is forwarded as received. A type with a size limit of its own
/// (`ItemLimits::for_type`) was checked against it; others are parsed up to the event limit, and
/// a larger payload of a type unknown today passes as received.
fn scrub_json_item(scrubber: &Scrubber, item: &Item<'_>, limits: &ItemLimits) -> Decision {
    let json = matches!(item.payload.trim_ascii_start().first(), Some(b'{' | b'['));
    let bounded = limits.for_type(&item.ty).is_some() || item.payload.len() <= limits.event;
    if !(json && bounded) {
        return Decision::Keep;
    }
    match serde_json::from_slice::<Value>(item.payload) {
        Ok(mut value) => replace_if(scrubber.scrub_value(&mut value), &value),
        Err(_) => Decision::Keep,
    }
}

fn replace_if(changed: bool, value: &Value) -> Decision {
    if changed {
        Decision::Replace(scrub::to_json(value))
    } else {
        Decision::Keep
    }
}

fn check_envelope(env: &Envelope<'_>, limits: &ItemLimits) -> Result<()> {
    if env.event_id.is_none() {
        if let Some(item) = env
            .items
            .iter()
            .find(|i| matches!(i.ty.as_str(), "event" | "transaction" | "attachment"))
        {
            return Err(CoreError::decode(format!(
                "invalid envelope: the envelope header has no event_id, which {} requires",
                item.describe()
            )));
        }
    }
    for item in &env.items {
        if let Some(limit) = limits.for_type(&item.ty) {
            if item.payload.len() > limit {
                return Err(CoreError::ItemTooLarge {
                    item: format!("envelope {}", item.describe()),
                    size: item.payload.len(),
                    limit,
                });
            }
        }
    }
    Ok(())
}

fn json_object(item: &Item<'_>) -> Result<Value> {
    let value: Value = serde_json::from_slice(item.payload).map_err(|e| {
        CoreError::decode(format!(
            "invalid envelope: {}: the payload is not valid JSON ({e})",
            item.describe()
        ))
    })?;
    if !value.is_object() {
        return Err(CoreError::decode(format!(
            "invalid envelope: {}: the payload is {}, not a JSON object",
            item.describe(),
            envelope::json_type(&value)
        )));
    }
    Ok(value)
}

fn keep_transaction(sampler: &Sampler, trace_id: Option<&str>, event_id: Option<&str>, payload: &[u8]) -> bool {
    if sampler.keeps_all() {
        return true;
    }
    match trace_id {
        Some(hex) => match hex_id::<16>(hex) {
            Some(id) => sampler.keep_trace_id(&id),
            None => sampler.keep_hash(hex.as_bytes()),
        },
        None => sampler.keep_hash(event_id.map_or(payload, str::as_bytes)),
    }
}

/// Sentry's data category for an item type (rate limits and client reports).
pub fn item_category(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "event" => "error",
        "transaction" => "transaction",
        "security" | "raw_security" => "security",
        "attachment" => "attachment",
        "session" | "sessions" => "session",
        "log" => "log_item",
        "span" | "otel_span" => "span",
        "profile" => "profile",
        "profile_chunk" => "profile_chunk",
        "replay_event" | "replay_recording" | "replay_video" => "replay",
        "check_in" => "monitor",
        "feedback" => "feedback",
        "user_report" => "user_report",
        "client_report" => "internal",
        "statsd" | "metric_buckets" => "metric_bucket",
        "trace_metric" => "trace_metric",
        _ => return None,
    })
}

// ---- X-Sentry-Rate-Limits ----

/// One entry of an `X-Sentry-Rate-Limits` header:
/// `<retry_after>:<category;category...>:<scope>[:<reason>[:<namespaces>]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Seconds, rounded up.
    pub retry_after: u64,
    /// Empty: every category.
    pub categories: Vec<String>,
    pub scope: String,
    pub reason: Option<String>,
    pub namespaces: Vec<String>,
}

impl RateLimit {
    pub fn applies_to(&self, category: &str) -> bool {
        self.categories.is_empty() || self.categories.iter().any(|c| c == category)
    }
}

/// Parses an `X-Sentry-Rate-Limits` header (comma-separated entries). Entries whose
/// `retry_after` is not a non-negative number are skipped, as SDKs do.
pub fn parse_rate_limits(header: &str) -> Vec<RateLimit> {
    let list = |s: Option<&str>| -> Vec<String> {
        s.unwrap_or_default()
            .split(';')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    header
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.trim().split(':');
            let seconds: f64 = parts.next()?.trim().parse().ok()?;
            if !(seconds.is_finite() && seconds >= 0.0) {
                return None;
            }
            let categories = list(parts.next());
            let scope = parts.next().unwrap_or_default().trim().to_owned();
            let reason = parts.next().map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned);
            let namespaces = list(parts.next());
            Some(RateLimit {
                retry_after: seconds.ceil() as u64,
                categories,
                scope,
                reason,
                namespaces,
            })
        })
        .collect()
}

// ---- OTLP conversion ----

pub(crate) const ANY_STRING: u32 = 1;
pub(crate) const ANY_BOOL: u32 = 2;
pub(crate) const ANY_INT: u32 = 3;
pub(crate) const ANY_DOUBLE: u32 = 4;

/// Correlation ids lifted into attributes, by base name: `job` → `job.id` (also read as `job_id`).
pub(crate) const CORRELATION: &[&str] = &["job", "worker", "machine", "session", "request"];

#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl Attr {
    fn put(&self, any: &mut Vec<u8>) {
        match self {
            Attr::Str(s) => wire::put_bytes(any, ANY_STRING, s.as_bytes()),
            Attr::Bool(b) => wire::put_uint(any, ANY_BOOL, u64::from(*b)),
            Attr::Int(i) => wire::put_uint(any, ANY_INT, *i as u64),
            Attr::Double(d) => put_fixed64(any, ANY_DOUBLE, d.to_bits()),
        }
    }
}

/// One LogRecord and where it goes.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    resource: ResourceKey,
    scope: ScopeKey,
    time: Option<u64>,
    observed: u64,
    severity: u64,
    severity_text: String,
    body: Option<String>,
    attributes: Vec<(String, Attr)>,
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
}

impl Record {
    fn attr(&mut self, key: &str, value: Attr) {
        if !self.attributes.iter().any(|(k, _)| k == key) {
            self.attributes.push((key.to_owned(), value));
        }
    }

    fn attr_str(&mut self, key: &str, value: Option<String>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.attr(key, Attr::Str(v));
        }
    }

    /// LogRecord fields in field-number order.
    fn encode(&self, out: &mut Vec<u8>) {
        if let Some(t) = self.time {
            put_fixed64(out, 1, t);
        }
        if self.severity != 0 {
            wire::put_uint(out, 2, self.severity);
        }
        if !self.severity_text.is_empty() {
            wire::put_bytes(out, 3, self.severity_text.as_bytes());
        }
        if let Some(body) = &self.body {
            wire::put_message(out, 5, |any| wire::put_bytes(any, ANY_STRING, body.as_bytes()));
        }
        for (key, value) in &self.attributes {
            put_kv(out, 6, key, value);
        }
        if let Some(id) = &self.trace_id {
            wire::put_bytes(out, 9, id);
        }
        if let Some(id) = &self.span_id {
            wire::put_bytes(out, 10, id);
        }
        put_fixed64(out, 11, self.observed);
    }
}

pub(crate) use crate::wire::put_fixed64;

pub(crate) fn put_kv(out: &mut Vec<u8>, number: u32, key: &str, value: &Attr) {
    wire::put_message(out, number, |kv| {
        wire::put_bytes(kv, 1, key.as_bytes());
        wire::put_message(kv, 2, |any| value.put(any));
    });
}

/// Resource attributes of a record or span.
pub(crate) type ResourceKey = Vec<(&'static str, String)>;
/// Instrumentation scope name and version.
pub(crate) type ScopeKey = (String, String);

/// Items grouped by resource, then scope, in the order first seen: the shape shared by
/// `ExportLogsServiceRequest` and `ExportTraceServiceRequest` (resource = 1, scope groups = 2;
/// in a scope group, scope = 1, items = 2).
pub(crate) struct Grouped<T> {
    groups: Vec<(ResourceKey, Vec<ScopeGroup<T>>)>,
}

/// The items of one instrumentation scope.
type ScopeGroup<T> = (ScopeKey, Vec<T>);

impl<T> Default for Grouped<T> {
    fn default() -> Self {
        Grouped { groups: Vec::new() }
    }
}

impl<T> Grouped<T> {
    pub(crate) fn extend(&mut self, resource: ResourceKey, scope: ScopeKey, items: impl IntoIterator<Item = T>) {
        let scopes = match self.groups.iter().position(|(r, _)| *r == resource) {
            Some(i) => &mut self.groups[i].1,
            None => {
                self.groups.push((resource, Vec::new()));
                &mut self.groups.last_mut().expect("just pushed").1
            }
        };
        match scopes.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, list)) => list.extend(items),
            None => scopes.push((scope, items.into_iter().collect())),
        }
    }

    /// The request (protobuf), each item written by `encode`.
    pub(crate) fn encode(&self, encode: impl Fn(&T, &mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        for (resource, scopes) in &self.groups {
            wire::put_message(&mut out, 1, |rg| {
                wire::put_message(rg, 1, |res| {
                    for (key, value) in resource {
                        put_kv(res, 1, key, &Attr::Str(value.clone()));
                    }
                });
                for ((name, version), items) in scopes {
                    wire::put_message(rg, 2, |sg| {
                        wire::put_message(sg, 1, |scope| {
                            wire::put_bytes(scope, 1, name.as_bytes());
                            if !version.is_empty() {
                                wire::put_bytes(scope, 2, version.as_bytes());
                            }
                        });
                        for item in items {
                            wire::put_message(sg, 2, |m| encode(item, m));
                        }
                    });
                }
            });
        }
        out
    }
}

/// Groups records by resource, then scope, and writes an `ExportLogsServiceRequest`.
struct LogsBuilder {
    project_id: String,
    groups: Grouped<Record>,
    count: usize,
}

impl LogsBuilder {
    fn new(project_id: &str) -> Self {
        LogsBuilder {
            project_id: project_id.to_owned(),
            groups: Grouped::default(),
            count: 0,
        }
    }

    fn len(&self) -> usize {
        self.count
    }

    fn add(&mut self, mut record: Record) {
        self.count += 1;
        if !self.project_id.is_empty() {
            record.resource.push(("sentry.project_id", self.project_id.clone()));
        }
        let resource = std::mem::take(&mut record.resource);
        let scope = record.scope.clone();
        self.groups.extend(resource, scope, [record]);
    }

    fn finish(self) -> Vec<u8> {
        self.groups.encode(Record::encode)
    }
}

/// One LogRecord for an error or message event.
fn event_record(event: &Value, envelope_event_id: Option<&str>, observed: u64) -> Record {
    let level = str_at(event, &["level"]).unwrap_or("error").to_owned();
    let release = scalar_at(event, &["release"]);
    let service = tag(event, "service.name")
        .or_else(|| scalar_at(event, &["server_name"]))
        .or_else(|| tag(event, "server_name"))
        .unwrap_or_else(|| "unknown_service".to_owned());
    let mut resource = vec![("service.name", service)];
    if let Some(release) = release.clone() {
        resource.push(("service.version", release));
    }
    let mut record = Record {
        resource,
        scope: sdk_scope(str_at(event, &["sdk", "name"]), str_at(event, &["sdk", "version"])),
        time: event.get("timestamp").and_then(timestamp_nanos),
        observed,
        severity: severity_number(&level),
        severity_text: level.clone(),
        body: None,
        attributes: Vec::new(),
        trace_id: str_at(event, &["contexts", "trace", "trace_id"]).and_then(hex_id::<16>),
        span_id: str_at(event, &["contexts", "trace", "span_id"]).and_then(hex_id::<8>),
    };
    let exceptions = exception_values(event);
    let last = exceptions.last().copied();
    let message = event_message(event);
    record.body = message.or_else(|| last.map(exception_summary));
    if let Some(exc) = last {
        record.attr_str("exception.type", exception_type(exc));
        record.attr_str("exception.message", scalar_at(exc, &["value"]));
        record.attr_str("exception.stacktrace", Some(render_traceback(&exceptions)));
    }
    let event_id = str_at(event, &["event_id"])
        .and_then(envelope::normalize_event_id)
        .or_else(|| envelope_event_id.map(str::to_owned));
    record.attr_str("sentry.event_id", event_id);
    record.attr_str("sentry.release", release);
    record.attr_str("deployment.environment.name", scalar_at(event, &["environment"]));
    record.attr_str("sentry.level", Some(level));
    record.attr_str("sentry.platform", scalar_at(event, &["platform"]));
    record.attr_str("sentry.logger", scalar_at(event, &["logger"]));
    record.attr_str("sentry.transaction", scalar_at(event, &["transaction"]));
    for base in CORRELATION {
        record.attr_str(&format!("{base}.id"), correlation_id(event, base));
    }
    record
}

/// Log records for a Sentry `log` item: `{"items": [{timestamp, trace_id, span_id, level,
/// severity_number, body, attributes: {key: {value, type}}}]}`.
fn log_item_records(payload: &Value, observed: u64) -> Vec<Record> {
    let Some(items) = payload.get("items").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter().filter(|i| i.is_object()) {
        let attrs: Vec<(String, Attr)> = item
            .get("attributes")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| typed_attr(v).map(|a| (k.clone(), a)))
                    .collect()
            })
            .unwrap_or_default();
        let attr_string = |key: &str| {
            attrs.iter().find(|(k, _)| k == key).and_then(|(_, a)| match a {
                Attr::Str(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
        };
        let service = attr_string("service.name")
            .or_else(|| attr_string("server.address"))
            .unwrap_or_else(|| "unknown_service".to_owned());
        let mut resource = vec![("service.name", service)];
        if let Some(release) = attr_string("sentry.release") {
            resource.push(("service.version", release));
        }
        let level = str_at(item, &["level"]).unwrap_or("info").to_owned();
        let severity = item
            .get("severity_number")
            .and_then(Value::as_u64)
            .filter(|n| (1..=24).contains(n))
            .unwrap_or_else(|| severity_number(&level));
        let environment = attr_string("sentry.environment");
        let correlation: Vec<(String, Option<String>)> = CORRELATION
            .iter()
            .map(|base| {
                let value = attr_string(&format!("{base}.id")).or_else(|| attr_string(&format!("{base}_id")));
                (format!("{base}.id"), value)
            })
            .collect();
        let mut record = Record {
            resource,
            scope: sdk_scope(
                attr_string("sentry.sdk.name").as_deref(),
                attr_string("sentry.sdk.version").as_deref(),
            ),
            time: item.get("timestamp").and_then(timestamp_nanos),
            observed,
            severity,
            severity_text: level,
            body: item.get("body").and_then(scalar),
            attributes: attrs,
            trace_id: str_at(item, &["trace_id"]).and_then(hex_id::<16>),
            span_id: str_at(item, &["span_id"]).and_then(hex_id::<8>),
        };
        record.attr_str("deployment.environment.name", environment);
        for (key, value) in correlation {
            record.attr_str(&key, value);
        }
        out.push(record);
    }
    out
}

pub(crate) fn sdk_scope(name: Option<&str>, version: Option<&str>) -> ScopeKey {
    (
        name.filter(|n| !n.is_empty()).unwrap_or("sentry").to_owned(),
        version.unwrap_or_default().to_owned(),
    )
}

/// A Sentry log attribute `{"value": v, "type": "string|integer|double|boolean"}` (or a bare
/// value) as an OTLP value.
fn typed_attr(v: &Value) -> Option<Attr> {
    let (value, ty) = match v.as_object() {
        Some(m) if m.contains_key("value") => (&m["value"], m.get("type").and_then(Value::as_str)),
        _ => (v, None),
    };
    let inferred = || match value {
        Value::Null => None,
        Value::Bool(b) => Some(Attr::Bool(*b)),
        Value::Number(n) => Some(
            n.as_i64()
                .map_or_else(|| Attr::Double(n.as_f64().unwrap_or(f64::NAN)), Attr::Int),
        ),
        Value::String(s) => Some(Attr::Str(s.clone())),
        other => Some(Attr::Str(other.to_string())),
    };
    match ty {
        Some("string") => scalar(value).map(Attr::Str),
        Some("integer") => value
            .as_i64()
            .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
            .map(Attr::Int)
            .or_else(inferred),
        Some("double") => value
            .as_f64()
            .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
            .map(Attr::Double)
            .or_else(inferred),
        Some("boolean") => value.as_bool().map(Attr::Bool).or_else(inferred),
        _ => inferred(),
    }
}

/// OTel severity number for a Sentry level (0 when unknown).
fn severity_number(level: &str) -> u64 {
    match level.to_ascii_lowercase().as_str() {
        "trace" => 1,
        "debug" => 5,
        "info" | "log" => 9,
        "warning" | "warn" => 13,
        "error" => 17,
        "fatal" | "critical" => 21,
        _ => 0,
    }
}

/// `logentry.formatted`, `logentry.message`, or `message` (a string, or the old object form).
fn event_message(event: &Value) -> Option<String> {
    let from = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(_) => str_at(v, &["formatted"])
                .or_else(|| str_at(v, &["message"]))
                .map(str::to_owned),
            _ => None,
        }
    };
    event
        .get("logentry")
        .and_then(from)
        .or_else(|| event.get("message").and_then(from))
        .filter(|m| !m.is_empty())
}

/// `exception.values` (or the old bare-list form), oldest first as Sentry stores them.
fn exception_values(event: &Value) -> Vec<&Value> {
    let list = match event.get("exception") {
        Some(Value::Array(values)) => Some(values),
        Some(Value::Object(m)) => m.get("values").and_then(Value::as_array),
        _ => None,
    };
    list.map(|v| v.iter().filter(|e| e.is_object()).collect())
        .unwrap_or_default()
}

/// The exception's type, qualified by its module unless that is Python's builtins.
fn exception_type(exc: &Value) -> Option<String> {
    let ty = str_at(exc, &["type"])?;
    match str_at(exc, &["module"]) {
        Some(m) if !m.is_empty() && !matches!(m, "builtins" | "__builtin__" | "exceptions") => {
            Some(format!("{m}.{ty}"))
        }
        _ => Some(ty.to_owned()),
    }
}

fn exception_summary(exc: &Value) -> String {
    let ty = exception_type(exc).unwrap_or_else(|| "Error".to_owned());
    match scalar_at(exc, &["value"]).filter(|v| !v.is_empty()) {
        Some(value) => format!("{ty}: {value}"),
        None => ty,
    }
}

/// A Python-traceback-like rendering of the exception chain, oldest first.
fn render_traceback(exceptions: &[&Value]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (i, exc) in exceptions.iter().enumerate() {
        if i > 0 {
            out.push_str("\nDuring handling of the above exception, another exception occurred:\n\n");
        }
        let frames = exc
            .get("stacktrace")
            .and_then(|s| s.get("frames"))
            .and_then(Value::as_array)
            .filter(|f| !f.is_empty());
        if let Some(frames) = frames {
            out.push_str("Traceback (most recent call last):\n");
            for frame in frames {
                let file = str_at(frame, &["abs_path"])
                    .or_else(|| str_at(frame, &["filename"]))
                    .or_else(|| str_at(frame, &["module"]))
                    .unwrap_or("<unknown>");
                let _ = write!(out, "  File \"{file}\"");
                if let Some(line) = frame.get("lineno").and_then(Value::as_u64) {
                    let _ = write!(out, ", line {line}");
                }
                let function = str_at(frame, &["function"]).unwrap_or("<unknown>");
                let _ = writeln!(out, ", in {function}");
                if let Some(code) = str_at(frame, &["context_line"])
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                {
                    let _ = writeln!(out, "    {code}");
                }
            }
        }
        out.push_str(&exception_summary(exc));
        out.push('\n');
    }
    out.pop();
    out
}

/// A correlation id from tags (`job.id`, `job_id`), contexts (`contexts.job.id`, or
/// `job.id`/`job_id` in any context) or `extra`.
pub(crate) fn correlation_id(event: &Value, base: &str) -> Option<String> {
    let dotted = format!("{base}.id");
    let underscored = format!("{base}_id");
    let keys = [dotted.as_str(), underscored.as_str()];
    if let Some(v) = keys.iter().find_map(|k| tag(event, k)) {
        return Some(v);
    }
    let contexts = event.get("contexts").and_then(Value::as_object);
    if let Some(v) = contexts
        .and_then(|c| c.get(base))
        .and_then(|c| c.get("id"))
        .and_then(scalar)
    {
        return Some(v);
    }
    let in_contexts = contexts.and_then(|c| {
        c.values()
            .filter_map(Value::as_object)
            .find_map(|ctx| keys.iter().find_map(|k| ctx.get(*k).and_then(scalar)))
    });
    in_contexts.or_else(|| {
        let extra = event.get("extra").and_then(Value::as_object)?;
        keys.iter().find_map(|k| extra.get(*k).and_then(scalar))
    })
}

/// A tag value; tags are an object or a list of `[key, value]` pairs.
pub(crate) fn tag(event: &Value, key: &str) -> Option<String> {
    match event.get("tags")? {
        Value::Object(m) => m.get(key).and_then(scalar),
        Value::Array(pairs) => pairs.iter().find_map(|p| match p.as_array().map(Vec::as_slice) {
            Some([k, v]) if k.as_str() == Some(key) => scalar(v),
            _ => None,
        }),
        _ => None,
    }
    .filter(|v| !v.is_empty())
}

pub(crate) fn str_at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(value, |v, k| v.get(*k))?.as_str()
}

pub(crate) fn scalar_at(value: &Value, path: &[&str]) -> Option<String> {
    path.iter().try_fold(value, |v, k| v.get(*k)).and_then(scalar)
}

/// A string, number or boolean as text.
pub(crate) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Lowercase or uppercase hex of exactly N bytes, not all zero (an invalid id in OTel).
pub(crate) fn hex_id<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    (out != [0u8; N]).then_some(out)
}

/// A Sentry timestamp: seconds since the epoch as a number (or numeric string), or RFC 3339.
pub(crate) fn timestamp_nanos(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_f64().and_then(seconds_to_nanos),
        Value::String(s) => parse_rfc3339(s).or_else(|| s.trim().parse::<f64>().ok().and_then(seconds_to_nanos)),
        _ => None,
    }
}

fn seconds_to_nanos(secs: f64) -> Option<u64> {
    // Up to the year 2554, where u64 nanoseconds end.
    if !(secs.is_finite() && (0.0..1.8e10).contains(&secs)) {
        return None;
    }
    let whole = secs.trunc();
    let frac = ((secs - whole) * 1e9).round() as u64;
    Some(whole as u64 * 1_000_000_000 + frac)
}

/// `YYYY-MM-DD[T ]hh:mm:ss[.fraction][Z|±hh:mm|±hhmm]`; no offset means UTC (as Sentry reads it).
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = b.get(from..to)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut nanos = 0u64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        for k in 0..9 {
            let digit = if start + k < i {
                u64::from(b[start + k] - b'0')
            } else {
                0
            };
            nanos = nanos * 10 + digit;
        }
    }
    let offset = match &b[i..] {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    let d = |c: &u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
                    (d(h1)? * 10 + d(h2)?, d(m1)? * 10 + d(m2)?)
                }
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset;
    u64::try_from(secs).ok()?.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the era-based civil-date algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A random (version 4) event id: hashes of the time and a counter under the process's
/// randomly keyed hasher. Unique, not secret.
fn new_event_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = RandomState::new();
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut h = state.build_hasher();
        h.write_u64(now_nanos());
        h.write_u64(count);
        h.write_usize(i);
        *half = h.finish();
    }
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&halves[0].to_be_bytes());
    bytes[8..].copy_from_slice(&halves[1].to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The store endpoint's body: JSON, or (old SDKs) base64 of zlib-compressed JSON.
fn legacy_decode(body: &[u8], limit: usize) -> Result<Cow<'_, [u8]>> {
    let trimmed = body.trim_ascii_start();
    if trimmed.first() == Some(&b'{') || trimmed.is_empty() {
        return Ok(Cow::Borrowed(body));
    }
    let invalid = || CoreError::decode("invalid store request: the body is neither JSON nor base64-encoded zlib");
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(body.trim_ascii())
        .map_err(|_| invalid())?;
    // Over the limit after inflating: `TooLarge` (HTTP 413), like an oversized body.
    let json = crate::decompress::decompress(&compressed, Some("deflate"), limit).map_err(|e| match e {
        CoreError::TooLarge { .. } => e,
        _ => invalid(),
    })?;
    Ok(Cow::Owned(json.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Signal;
    use serde_json::{json, Map};

    const EVENT_ID: &str = "9ec79c33ec9942ab8353589fcb2e04dc";
    const TRACE_ID: &str = "771a43a4192642f0b136d5159a501700";

    fn envelope(header: &Value, items: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = serde_json::to_vec(header).unwrap();
        out.push(b'\n');
        for (ty, payload) in items {
            out.extend_from_slice(format!("{{\"type\":\"{ty}\",\"length\":{}}}\n", payload.len()).as_bytes());
            out.extend_from_slice(payload);
            out.push(b'\n');
        }
        out
    }

    fn otlp_json(p: &Processed) -> Value {
        crate::validate::validate(Signal::Logs, &p.otlp_logs).unwrap();
        let json = crate::json_encode::protobuf_to_json(Signal::Logs, &p.otlp_logs).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    fn attrs(record: &Value) -> Map<String, Value> {
        record["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                let v = &kv["value"];
                let v = v
                    .get("stringValue")
                    .or_else(|| v.get("intValue"))
                    .or_else(|| v.get("boolValue"))
                    .or_else(|| v.get("doubleValue"))
                    .cloned()
                    .unwrap();
                (kv["key"].as_str().unwrap().to_owned(), v)
            })
            .collect()
    }

    fn error_event() -> Value {
        json!({
            "event_id": EVENT_ID,
            "timestamp": "2024-05-01T12:00:00.5Z",
            "platform": "python",
            "level": "error",
            "release": "app@1.2.3",
            "environment": "prod",
            "server_name": "worker-7",
            "sdk": {"name": "sentry.python", "version": "2.19.0"},
            "tags": [["job.id", "j-42"], ["service.name", "ingest"]],
            "contexts": {
                "trace": {"trace_id": TRACE_ID, "span_id": "b0e6f15b45c36b12"},
                "runner": {"worker_id": 7},
            },
            "extra": {"machine_id": "m-1"},
            "exception": {"values": [
                {"type": "KeyError", "value": "'x'", "stacktrace": {"frames": [
                    {"filename": "app/a.py", "abs_path": "/srv/app/a.py", "function": "load", "lineno": 3, "context_line": "    return d['x']"}
                ]}},
                {"type": "JobFailed", "module": "app.jobs", "value": "job j-42 failed", "stacktrace": {"frames": [
                    {"filename": "app/run.py", "function": "main", "lineno": 10, "context_line": "run()",
                     "vars": {"password": "hunter2", "x": 1}},
                    {"filename": "app/jobs.py", "function": "run", "lineno": 20}
                ]}}
            ]},
        })
    }

    /// The item types of an envelope, in order.
    fn item_types(body: &[u8]) -> Vec<String> {
        envelope::parse(body)
            .unwrap()
            .items
            .iter()
            .map(|i| i.ty.clone())
            .collect()
    }

    #[test]
    fn items_of_a_held_category_are_left_out_and_the_rest_goes() {
        let event = serde_json::to_vec(&error_event()).unwrap();
        let body = envelope(
            &json!({"event_id": EVENT_ID}),
            &[
                ("event", event.clone()),
                ("attachment", b"log tail".to_vec()),
                ("user_report", br#"{"comments":"it broke"}"#.to_vec()),
            ],
        );
        // The attachment limited: the event and the report still go.
        let held_attachments = |c: &'static str| c == "attachment";
        let p = process_held(&body, "1", &SentryOptions::default(), &held_attachments).unwrap();
        assert_eq!(item_types(&p.envelope), ["event", "user_report"]);
        assert_eq!((p.items, p.items_forwarded, p.items_rate_limited), (3, 2, 1));
        assert_eq!(p.held, ["attachment"]);
        // Errors limited: the event goes, and its attachment with it; the OTLP copy stays.
        let held_errors = |c: &'static str| c == "error";
        let p = process_held(&body, "1", &SentryOptions::default(), &held_errors).unwrap();
        assert_eq!(item_types(&p.envelope), ["user_report"]);
        assert_eq!((p.items_forwarded, p.items_rate_limited), (1, 2));
        assert_eq!(p.held, ["error"]);
        assert_eq!(p.events_converted, 1);
        assert!(!p.otlp_logs.is_empty());
        // Nothing limited: every item goes.
        let p = process_held(&body, "1", &SentryOptions::default(), &|_| false).unwrap();
        assert_eq!(item_types(&p.envelope), ["event", "attachment", "user_report"]);
        assert!(p.held.is_empty() && p.items_rate_limited == 0);
        // The store endpoint's one event, held: nothing forwarded.
        let p = process_store_held(&event, "1", &SentryOptions::default(), &held_errors).unwrap();
        assert_eq!((p.items_forwarded, p.items_rate_limited), (0, 1));
    }

    #[test]
    fn error_event_becomes_a_log_record() {
        let payload = serde_json::to_vec(&error_event()).unwrap();
        let body = envelope(
            &json!({"event_id": EVENT_ID, "dsn": "https://k@o.ingest/1"}),
            &[("event", payload)],
        );
        let p = process(&body, "42", &SentryOptions::default()).unwrap();
        assert_eq!(p.event_id.as_deref(), Some(EVENT_ID));
        assert_eq!(p.categories, vec!["error"]);
        assert_eq!(
            (
                p.items,
                p.items_forwarded,
                p.items_scrubbed,
                p.events_converted,
                p.log_records
            ),
            (1, 1, 1, 1, 1)
        );
        let doc = otlp_json(&p);
        let rl = &doc["resourceLogs"][0];
        let resource = attrs(&rl["resource"]);
        assert_eq!(resource["service.name"], "ingest");
        assert_eq!(resource["service.version"], "app@1.2.3");
        assert_eq!(resource["sentry.project_id"], "42");
        assert_eq!(
            rl["scopeLogs"][0]["scope"],
            json!({"name": "sentry.python", "version": "2.19.0"})
        );
        let record = &rl["scopeLogs"][0]["logRecords"][0];
        assert_eq!(record["timeUnixNano"], "1714564800500000000");
        assert_eq!(record["severityNumber"], 17);
        assert_eq!(record["severityText"], "error");
        assert_eq!(record["body"]["stringValue"], "app.jobs.JobFailed: job j-42 failed");
        assert_eq!(record["traceId"], TRACE_ID);
        assert_eq!(record["spanId"], "b0e6f15b45c36b12");
        let a = attrs(record);
        assert_eq!(a["exception.type"], "app.jobs.JobFailed");
        assert_eq!(a["exception.message"], "job j-42 failed");
        assert_eq!(
            a["exception.stacktrace"],
            "Traceback (most recent call last):\n  File \"/srv/app/a.py\", line 3, in load\n    return d['x']\nKeyError: 'x'\n\
             \nDuring handling of the above exception, another exception occurred:\n\n\
             Traceback (most recent call last):\n  File \"app/run.py\", line 10, in main\n    run()\n  \
             File \"app/jobs.py\", line 20, in run\napp.jobs.JobFailed: job j-42 failed"
        );
        assert_eq!(a["sentry.event_id"], EVENT_ID);
        assert_eq!(a["sentry.release"], "app@1.2.3");
        assert_eq!(a["deployment.environment.name"], "prod");
        assert_eq!(a["sentry.level"], "error");
        assert_eq!(a["sentry.platform"], "python");
        assert_eq!(a["job.id"], "j-42");
        assert_eq!(a["worker.id"], "7");
        assert_eq!(a["machine.id"], "m-1");
        assert!(!a.contains_key("session.id") && !a.contains_key("request.id"));
        // The password local variable was scrubbed in the forwarded envelope.
        let env = envelope::parse(&p.envelope).unwrap();
        assert_eq!(
            env.header_raw,
            br#"{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","dsn":"https://k@o.ingest/1"}"#
        );
        let fwd: Value = serde_json::from_slice(env.items[0].payload).unwrap();
        assert_eq!(
            fwd["exception"]["values"][1]["stacktrace"]["frames"][0]["vars"],
            json!({"password": "[Filtered]", "x": 1})
        );
        assert_eq!(env.items[0].length, Some(env.items[0].payload.len()));
    }

    #[test]
    fn message_event_and_defaults() {
        let event = json!({"message": {"formatted": "disk almost full"}, "level": "warning", "timestamp": 1714564800.25,
                           "tags": {"session_id": "s-1", "request.id": 99}});
        let body = envelope(
            &json!({"event_id": EVENT_ID}),
            &[("event", serde_json::to_vec(&event).unwrap())],
        );
        let p = process(&body, "", &SentryOptions::default()).unwrap();
        // Nothing to scrub: forwarded byte-for-byte.
        assert_eq!(p.envelope, body);
        assert_eq!(p.items_scrubbed, 0);
        let doc = otlp_json(&p);
        let rl = &doc["resourceLogs"][0];
        assert_eq!(
            attrs(&rl["resource"]),
            json!({"service.name": "unknown_service"}).as_object().unwrap().clone()
        );
        assert_eq!(rl["scopeLogs"][0]["scope"], json!({"name": "sentry"}));
        let record = &rl["scopeLogs"][0]["logRecords"][0];
        assert_eq!(record["timeUnixNano"], "1714564800250000000");
        assert_eq!(record["severityNumber"], 13);
        assert_eq!(record["body"]["stringValue"], "disk almost full");
        assert!(record.get("traceId").is_none());
        let a = attrs(record);
        assert_eq!(a["sentry.event_id"], EVENT_ID);
        assert_eq!(a["session.id"], "s-1");
        assert_eq!(a["request.id"], "99");
        assert!(!a.contains_key("exception.type"));
        // service.name falls back to server_name.
        let event = json!({"message": "m", "server_name": "web-1", "release": "r2"});
        let body = envelope(
            &json!({"event_id": EVENT_ID}),
            &[("event", serde_json::to_vec(&event).unwrap())],
        );
        let doc = otlp_json(&process(&body, "1", &SentryOptions::default()).unwrap());
        let resource = attrs(&doc["resourceLogs"][0]["resource"]);
        assert_eq!(
            resource,
            *json!({"service.name": "web-1", "service.version": "r2", "sentry.project_id": "1"})
                .as_object()
                .unwrap()
        );
        // logentry wins over message; a level-less event is an error.
        let event = json!({"logentry": {"message": "raw %s", "formatted": "raw x"}, "message": "other"});
        let body = envelope(
            &json!({"event_id": EVENT_ID}),
            &[("event", serde_json::to_vec(&event).unwrap())],
        );
        let doc = otlp_json(&process(&body, "1", &SentryOptions::default()).unwrap());
        let record = &doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(record["body"]["stringValue"], "raw x");
        assert_eq!(record["severityNumber"], 17);
        assert_eq!(record["severityText"], "error");
    }

    #[test]
    fn log_items_become_log_records() {
        let payload = json!({"version": 2, "items": [
            {"timestamp": 1714564800.0, "trace_id": TRACE_ID, "level": "trace", "body": "tick",
             "attributes": {"sentry.release": {"value": "r1", "type": "string"}, "count": {"value": 3, "type": "integer"},
                            "ratio": {"value": 0.5, "type": "double"}, "ok": {"value": true, "type": "boolean"},
                            "job_id": {"value": "j-9", "type": "string"}, "api_token": {"value": "t", "type": "string"},
                            "server.address": {"value": "host-1", "type": "string"}}},
            {"timestamp": 1714564801.5, "level": "fatal", "body": "boom", "attributes": {}},
        ]});
        let body = envelope(&json!({}), &[("log", serde_json::to_vec(&payload).unwrap())]);
        let p = process(&body, "5", &SentryOptions::default()).unwrap();
        assert_eq!(p.categories, vec!["log_item"]);
        assert_eq!((p.log_records, p.events_converted, p.items_scrubbed), (2, 0, 1));
        let doc = otlp_json(&p);
        let groups = doc["resourceLogs"].as_array().unwrap();
        assert_eq!(groups.len(), 2, "different resources: {doc}");
        assert_eq!(attrs(&groups[0]["resource"])["service.name"], "host-1");
        assert_eq!(attrs(&groups[0]["resource"])["service.version"], "r1");
        let first = &groups[0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(first["severityNumber"], 1);
        assert_eq!(first["severityText"], "trace");
        assert_eq!(first["traceId"], TRACE_ID);
        assert_eq!(first["body"]["stringValue"], "tick");
        let a = attrs(first);
        assert_eq!(a["count"], "3");
        assert_eq!(a["ratio"], 0.5);
        assert_eq!(a["ok"], true);
        assert_eq!(a["job.id"], "j-9");
        assert_eq!(a["api_token"], "[Filtered]");
        let second = &groups[1]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(second["severityNumber"], 21);
        assert_eq!(second["timeUnixNano"], "1714564801500000000");
    }

    #[test]
    fn otlp_off_and_scrubbing_off() {
        let payload = serde_json::to_vec(&json!({"extra": {"password": "x"}, "message": "m"})).unwrap();
        let body = envelope(&json!({"event_id": EVENT_ID}), &[("event", payload)]);
        let options = SentryOptions {
            scrub: ScrubOptions {
                enabled: false,
                ..ScrubOptions::default()
            },
            to_otlp: false,
            ..SentryOptions::default()
        };
        let p = process(&body, "1", &options).unwrap();
        assert_eq!(p.envelope, body);
        assert!(p.otlp_logs.is_empty());
        assert_eq!(p.events_converted, 0);
    }

    fn transaction(trace_id: &str) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"type": "transaction", "transaction": "GET /", "contexts": {"trace": {"trace_id": trace_id}},
                                   "spans": [{"data": {"db.password": "x"}}]}),
        )
        .unwrap()
    }

    #[test]
    fn transactions_sampled_consistently_and_errors_kept() {
        let options = SentryOptions {
            transaction_sample_rate: 0.5,
            ..SentryOptions::default()
        };
        let mut kept = 0;
        for i in 0..200u32 {
            let trace = format!(
                "{:032x}",
                u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            );
            // Trace id from the envelope header in one form, from the event in the other.
            let a = envelope(
                &json!({"event_id": EVENT_ID, "trace": {"trace_id": trace}}),
                &[("transaction", transaction("00000000000000000000000000000001"))],
            );
            let b = envelope(&json!({"event_id": EVENT_ID}), &[("transaction", transaction(&trace))]);
            let pa = process(&a, "1", &options).unwrap();
            let pb = process(&b, "1", &options).unwrap();
            let pa2 = process(&a, "1", &options).unwrap();
            assert_eq!(pa, pa2);
            assert_eq!(pa.transactions_sampled_out, pb.transactions_sampled_out, "{trace}");
            if pa.transactions_sampled_out == 0 {
                kept += 1;
                assert_eq!(pa.items_forwarded, 1);
                assert_eq!(pa.items_scrubbed, 1);
            } else {
                assert_eq!(pa.items_forwarded, 0);
                assert_eq!(
                    pa.envelope,
                    serde_json::to_vec(&json!({"event_id": EVENT_ID, "trace": {"trace_id": trace}}))
                        .map(|mut v| {
                            v.push(b'\n');
                            v
                        })
                        .unwrap()
                );
            }
            assert_eq!(pa.categories, vec!["transaction"]);
        }
        assert!((60..140).contains(&kept), "kept {kept} of 200");
        // Ratio 0: every transaction and its profile go, errors stay.
        let none = SentryOptions {
            transaction_sample_rate: 0.0,
            ..SentryOptions::default()
        };
        let body = envelope(
            &json!({"event_id": EVENT_ID}),
            &[
                ("transaction", transaction(TRACE_ID)),
                ("profile", b"{}".to_vec()),
                ("event", br#"{"message":"still here"}"#.to_vec()),
                ("attachment", b"\x00\n".to_vec()),
            ],
        );
        let p = process(&body, "1", &none).unwrap();
        assert_eq!(
            (p.transactions_sampled_out, p.items_sampled_out, p.items_forwarded),
            (1, 2, 2)
        );
        assert_eq!(p.categories, vec!["transaction", "profile", "error", "attachment"]);
        let env = envelope::parse(&p.envelope).unwrap();
        let types: Vec<_> = env.items.iter().map(|i| i.ty.as_str()).collect();
        assert_eq!(types, ["event", "attachment"]);
        assert_eq!(env.items[1].payload, b"\x00\n");
        assert_eq!(p.events_converted, 1);
    }

    #[test]
    fn untouched_items_copied_byte_for_byte() {
        let event = br#"{"message":"ok",  "extra":{"password":"p"}}"#;
        let body = [
            format!("{{\"event_id\":\"{EVENT_ID}\",\"unknown\":1}}\n").into_bytes(),
            b"{\"type\":\"future\",\"k\":[1]}\nopaque\n".to_vec(),
            format!("{{\"type\":\"event\",\"length\":{}}}\n", event.len()).into_bytes(),
            event.to_vec(),
            b"\n{\"type\":\"session\"}\n{\"sid\":\"x\"}".to_vec(),
        ]
        .concat();
        let p = process(&body, "1", &SentryOptions::default()).unwrap();
        assert_eq!(p.categories, vec!["error", "session"]);
        let text = String::from_utf8(p.envelope).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"event_id\":\"{EVENT_ID}\",\"unknown\":1}}\n{{\"type\":\"future\",\"k\":[1]}}\nopaque\n\
                 {{\"type\":\"event\",\"length\":50}}\n{{\"message\":\"ok\",\"extra\":{{\"password\":\"[Filtered]\"}}}}\n\
                 {{\"type\":\"session\"}}\n{{\"sid\":\"x\"}}"
            )
        );
    }

    #[test]
    fn dsn_from_the_first_line() {
        use std::io::Write as _;
        const MIB: usize = 1 << 20;
        let gzip = |data: &[u8]| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        };
        let body = b"{\"dsn\":\"http://k@h/1\",\"event_id\":\"nonsense\"}\n{\"type\":\"event\"}\nnot json\n";
        let found = HeaderDsn::Found(Some("http://k@h/1".to_owned()));
        // Only the first line is read: the rest (invalid here) is not looked at.
        assert_eq!(header_dsn(body, None, true, MIB), Ok(found.clone()));
        assert_eq!(header_dsn(&gzip(body), Some("gzip"), true, MIB), Ok(found.clone()));
        assert_eq!(header_dsn(&body[..10], None, false, MIB), Ok(HeaderDsn::NeedMore));
        assert_eq!(header_dsn(b"{}\n", None, false, MIB), Ok(HeaderDsn::Found(None)));
        assert_eq!(header_dsn(b"{}", None, true, MIB), Ok(HeaderDsn::Found(None)));
        assert_eq!(header_dsn(b"", None, true, MIB), Err(envelope::empty_body()));
        assert_eq!(
            header_dsn(&gzip(b""), Some("gzip"), true, MIB),
            Err(envelope::empty_body())
        );
        assert!(
            matches!(header_dsn(b"\n{}", None, true, MIB), Err(CoreError::Decode(m)) if m.contains("not valid JSON"))
        );
        // The issue's bomb: a header line of zeros, inflated no further than the cap.
        let mut line = b"{\"dsn\":\"http://wrong@h/1\",\"a\":[".to_vec();
        line.extend(b"0,".repeat(4 * MIB));
        line.extend(b"0]}\n");
        let bomb = gzip(&line);
        assert_eq!(
            header_dsn(&bomb, Some("gzip"), true, 64 * MIB),
            Err(CoreError::LineTooLong {
                line: "the envelope header line".to_owned(),
                limit: envelope::MAX_HEADER_LINE
            })
        );
    }

    #[test]
    fn envelope_level_errors() {
        let e = process(b"{}\n{\"type\":\"event\"}\n{}\n", "1", &SentryOptions::default()).unwrap_err();
        assert_eq!(
            e,
            CoreError::decode("invalid envelope: the envelope header has no event_id, which item 0 (event) requires")
        );
        // Sessions need none.
        let p = process(b"{}\n{\"type\":\"session\"}\n{}\n", "1", &SentryOptions::default()).unwrap();
        assert_eq!((p.event_id, p.categories), (None, vec!["session"]));
        let e = process(
            format!("{{\"event_id\":\"{EVENT_ID}\"}}\n{{\"type\":\"event\"}}\n[1]\n").as_bytes(),
            "1",
            &SentryOptions::default(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            CoreError::decode("invalid envelope: item 0 (event): the payload is an array, not a JSON object")
        );
        let e = process(
            format!("{{\"event_id\":\"{EVENT_ID}\"}}\n{{\"type\":\"transaction\"}}\n{{nope\n").as_bytes(),
            "1",
            &SentryOptions::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid envelope: item 0 (transaction): the payload is not valid JSON ("),
            "{e}"
        );
        // Size limits.
        let options = SentryOptions {
            limits: ItemLimits {
                event: 10,
                ..ItemLimits::default()
            },
            ..SentryOptions::default()
        };
        let body = envelope(
            &json!({"event_id": EVENT_ID}),
            &[
                ("attachment", vec![0; 100]),
                ("event", br#"{"message":"abc"}"#.to_vec()),
            ],
        );
        let e = process(&body, "1", &options).unwrap_err();
        assert_eq!(
            e,
            CoreError::ItemTooLarge {
                item: "envelope item 1 (event)".to_owned(),
                size: 17,
                limit: 10
            }
        );
        assert_eq!(
            e.to_string(),
            "envelope item 1 (event) is 17 bytes, over the limit of 10 bytes"
        );
        let e = process_store(br#"{"message":"abcdefgh"}"#, "1", &options).unwrap_err();
        assert!(
            matches!(
                e,
                CoreError::ItemTooLarge {
                    size: 22,
                    limit: 10,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn store_endpoint() {
        let event = format!(r#"{{"event_id":"{EVENT_ID}","message":"hi","request":{{"headers":{{"Cookie":"a=b"}}}}}}"#);
        let p = process_store(event.as_bytes(), "3", &SentryOptions::default()).unwrap();
        assert_eq!(p.event_id.as_deref(), Some(EVENT_ID));
        assert_eq!((p.items, p.items_scrubbed, p.events_converted), (1, 1, 1));
        let env = envelope::parse(&p.envelope).unwrap();
        assert_eq!(env.items[0].ty, "event");
        assert!(std::str::from_utf8(env.items[0].payload)
            .unwrap()
            .contains(r#""Cookie":"[Filtered]""#));
        // Without an event id: a new one, different each time.
        let a = process_store(br#"{"message":"x"}"#, "3", &SentryOptions::default()).unwrap();
        let b = process_store(br#"{"message":"x"}"#, "3", &SentryOptions::default()).unwrap();
        let (a, b) = (a.event_id.unwrap(), b.event_id.unwrap());
        assert_ne!(a, b);
        assert!(envelope::normalize_event_id(&a).as_deref() == Some(a.as_str()) && a.as_bytes()[12] == b'4');
        // Transactions are sampled like envelope transactions.
        let none = SentryOptions {
            transaction_sample_rate: 0.0,
            ..SentryOptions::default()
        };
        let p = process_store(&transaction(TRACE_ID), "3", &none).unwrap();
        assert_eq!(
            (p.transactions_sampled_out, p.items_forwarded, p.categories.clone()),
            (1, 0, vec!["transaction"])
        );
        // Old SDKs: base64 of zlib.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, event.as_bytes()).unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap());
        let p = process_store(encoded.as_bytes(), "3", &SentryOptions::default()).unwrap();
        assert_eq!(p.event_id.as_deref(), Some(EVENT_ID));
        // Inflating past the event limit is `TooLarge`.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, &vec![b' '; 2 * 1024 * 1024]).unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap());
        let e = process_store(encoded.as_bytes(), "3", &SentryOptions::default()).unwrap_err();
        assert_eq!(e, CoreError::TooLarge { limit: 1024 * 1024 });
        // Errors.
        for (body, msg) in [
            (
                &b"[1]"[..],
                "invalid store request: the body is neither JSON nor base64-encoded zlib",
            ),
            (b"{\"a\":", "invalid store request: the event is not valid JSON"),
            (
                b"{\"event_id\":\"zz\"}",
                "invalid store request: event_id \"zz\" is not a UUID",
            ),
            (
                b"{\"event_id\":1}",
                "invalid store request: event_id is a number, not a string",
            ),
        ] {
            let e = process_store(body, "3", &SentryOptions::default())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(msg), "{e}");
        }
    }

    #[test]
    fn store_event_id_is_echoed_short() {
        let body = format!(r#"{{"event_id":"{}","message":"x"}}"#, "z".repeat(500_000));
        let e = process_store(body.as_bytes(), "3", &SentryOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.len() < 200 && e.contains("event_id \"zzz") && e.contains("…\" is not a UUID"),
            "{e}"
        );
    }

    #[test]
    fn every_json_item_type_is_scrubbed_but_binary_and_non_pii_ones() {
        let secret = json!({"extra": {"password": "hunter2"}, "message": "Bearer abc123def"});
        let scrubbed_types = [
            "span",
            "otel_span",
            "feedback",
            "user_report",
            "security",
            "raw_security",
            "check_in",
            "replay_event",
            "trace_metric",
            "brand_new_type",
        ];
        for ty in scrubbed_types {
            let body = envelope(
                &json!({"event_id": EVENT_ID}),
                &[(ty, serde_json::to_vec(&secret).unwrap())],
            );
            let p = process(&body, "1", &SentryOptions::default()).unwrap();
            assert_eq!(p.items_scrubbed, 1, "{ty}");
            let env = envelope::parse(&p.envelope).unwrap();
            assert_eq!(env.items[0].ty, ty);
            let out: Value = serde_json::from_slice(env.items[0].payload).unwrap();
            assert_eq!(
                out,
                json!({"extra": {"password": "[Filtered]"}, "message": "Bearer [Filtered]"}),
                "{ty}"
            );
        }
        // A JSON array payload too; a payload that is not JSON passes as received.
        let body = envelope(
            &json!({}),
            &[
                ("span", br#"[{"data": {"db.password": "x"}}]"#.to_vec()),
                ("user_report", b"not json password=x".to_vec()),
            ],
        );
        let p = process(&body, "1", &SentryOptions::default()).unwrap();
        let env = envelope::parse(&p.envelope).unwrap();
        assert_eq!(env.items[0].payload, br#"[{"data":{"db.password":"[Filtered]"}}]"#);
        assert_eq!(env.items[1].payload, b"not json password=x");
        // Binary and non-PII types are forwarded byte-for-byte.
        for ty in UNSCRUBBED_TYPES {
            let body = envelope(
                &json!({"event_id": EVENT_ID}),
                &[(ty, serde_json::to_vec(&secret).unwrap())],
            );
            let p = process(&body, "1", &SentryOptions::default()).unwrap();
            assert_eq!((p.items_scrubbed, &p.envelope), (0, &body), "{ty}");
        }
        // Scrubbing off: nothing is parsed or changed.
        let off = SentryOptions {
            scrub: ScrubOptions {
                enabled: false,
                ..ScrubOptions::default()
            },
            ..SentryOptions::default()
        };
        let body = envelope(&json!({}), &[("span", serde_json::to_vec(&secret).unwrap())]);
        assert_eq!(process(&body, "1", &off).unwrap().envelope, body);
        // A span item v2 (typed attributes) keeps its attribute types valid.
        let spans = json!({"items": [{"trace_id": TRACE_ID, "attributes": {
            "db.password": {"type": "string", "value": "x"},
            "http.url": {"type": "string", "value": "https://h/p?token=t1&a=1"},
            "card": {"type": "integer", "value": 4111111111111111u64},
            "count": {"type": "integer", "value": 3},
        }}]});
        let body = envelope(&json!({}), &[("span", serde_json::to_vec(&spans).unwrap())]);
        let p = process(&body, "1", &SentryOptions::default()).unwrap();
        let env = envelope::parse(&p.envelope).unwrap();
        let out: Value = serde_json::from_slice(env.items[0].payload).unwrap();
        assert_eq!(
            out["items"][0]["attributes"],
            json!({
                "db.password": {"type": "string", "value": "[Filtered]"},
                "http.url": {"type": "string", "value": "https://h/p?token=[Filtered]&a=1"},
                "card": {"type": "string", "value": "[Filtered]"},
                "count": {"type": "integer", "value": 3},
            })
        );
    }

    #[test]
    fn item_limits_of_scrubbed_types() {
        let big = serde_json::to_vec(&json!({"pad": "x".repeat(1024 * 1024)})).unwrap();
        for ty in ["span", "feedback", "user_report", "replay_event"] {
            let body = envelope(&json!({}), &[(ty, big.clone())]);
            let e = process(&body, "1", &SentryOptions::default()).unwrap_err();
            assert!(matches!(e, CoreError::ItemTooLarge { .. }), "{ty}: {e:?}");
        }
        // A type unknown today is not refused: over the event limit it passes unparsed.
        let mut big_secret = big.clone();
        big_secret.splice(1..1, br#""password":"x","#.iter().copied());
        let body = envelope(&json!({}), &[("brand_new_type", big_secret)]);
        let p = process(&body, "1", &SentryOptions::default()).unwrap();
        assert_eq!((p.items_scrubbed, &p.envelope), (0, &body));
    }

    #[test]
    fn categories_follow_sentry() {
        for (ty, cat) in [
            ("event", Some("error")),
            ("transaction", Some("transaction")),
            ("attachment", Some("attachment")),
            ("session", Some("session")),
            ("sessions", Some("session")),
            ("log", Some("log_item")),
            ("span", Some("span")),
            ("profile", Some("profile")),
            ("replay_recording", Some("replay")),
            ("check_in", Some("monitor")),
            ("feedback", Some("feedback")),
            ("user_report", Some("user_report")),
            ("client_report", Some("internal")),
            ("security", Some("security")),
            ("something_new", None),
        ] {
            assert_eq!(item_category(ty), cat, "{ty}");
        }
    }

    #[test]
    fn rate_limit_headers() {
        let one = |h: &str| parse_rate_limits(h);
        assert_eq!(
            one("60:error:key"),
            vec![RateLimit {
                retry_after: 60,
                categories: vec!["error".into()],
                scope: "key".into(),
                reason: None,
                namespaces: vec![],
            }]
        );
        assert_eq!(
            one("2700:default;error;security:organization:quota_exceeded"),
            vec![RateLimit {
                retry_after: 2700,
                categories: vec!["default".into(), "error".into(), "security".into()],
                scope: "organization".into(),
                reason: Some("quota_exceeded".into()),
                namespaces: vec![],
            }]
        );
        let all = one("60::organization");
        assert_eq!(all.len(), 1);
        assert!(all[0].categories.is_empty() && all[0].applies_to("transaction"));
        let several = one("60:transaction:key, 2700:default;error;security:organization, 1.5:metric_bucket:organization:quota_exceeded:custom;spans, junk, :error:key,");
        assert_eq!(several.len(), 3);
        assert_eq!(
            (several[0].retry_after, several[1].retry_after, several[2].retry_after),
            (60, 2700, 2)
        );
        assert!(several[0].applies_to("transaction") && !several[0].applies_to("error"));
        assert!(several[1].applies_to("security"));
        assert_eq!(several[2].namespaces, vec!["custom", "spans"]);
        assert!(one("").is_empty());
        assert!(one("-5:error:key").is_empty());
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00Z"), Some(1_714_564_800_000_000_000));
        assert_eq!(
            parse_rfc3339("2024-05-01T14:00:00.123456789+02:00"),
            Some(1_714_564_800_123_456_789)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01 11:30:00.1234567891-0030"),
            Some(1_714_564_800_123_456_789)
        );
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00"), Some(1_714_564_800_000_000_000));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400_000_000_000));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01",
            "1969-12-31T23:59:59Z",
            "2024-05-01T12:00:00+2",
            "２０２４-05-01T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(timestamp_nanos(&json!(1.5)), Some(1_500_000_000));
        assert_eq!(
            timestamp_nanos(&json!("1714564800.25")),
            Some(1_714_564_800_250_000_000)
        );
        assert_eq!(timestamp_nanos(&json!(-1)), None);
        assert_eq!(timestamp_nanos(&json!(null)), None);
    }

    #[test]
    fn ids_and_severity() {
        assert_eq!(
            hex_id::<8>("B0E6F15B45C36B12"),
            Some([0xb0, 0xe6, 0xf1, 0x5b, 0x45, 0xc3, 0x6b, 0x12])
        );
        assert_eq!(hex_id::<8>("0000000000000000"), None);
        assert_eq!(hex_id::<8>("b0e6f15b45c36b1"), None);
        assert_eq!(hex_id::<8>("b0e6f15b45c36b1é"), None);
        let levels = [
            ("trace", 1),
            ("debug", 5),
            ("info", 9),
            ("warning", 13),
            ("error", 17),
            ("fatal", 21),
            ("odd", 0),
        ];
        for (level, n) in levels {
            assert_eq!(severity_number(level), n);
        }
    }

    #[test]
    fn odd_events_convert_without_panicking() {
        let events = [
            json!({}),
            json!({"exception": [{"type": "E"}]}),
            json!({"exception": {"values": [{"value": "only value", "stacktrace": {"frames": [{}]}}]}}),
            json!({"exception": {"values": "nope"}, "tags": "x", "contexts": [1], "message": 5, "timestamp": {}}),
            json!({"contexts": {"trace": {"trace_id": 5, "span_id": "zz"}}, "level": 3, "sdk": "s"}),
        ];
        for event in events {
            let body = envelope(
                &json!({"event_id": EVENT_ID}),
                &[("event", serde_json::to_vec(&event).unwrap())],
            );
            let p = process(&body, "1", &SentryOptions::default()).unwrap();
            otlp_json(&p);
        }
        let logs = [
            json!({}),
            json!({"items": 1}),
            json!({"items": [1, {"attributes": {"a": {"type": "integer", "value": "x"}, "b": null, "c": [1]}}]}),
        ];
        for payload in logs {
            let body = envelope(&json!({}), &[("log", serde_json::to_vec(&payload).unwrap())]);
            otlp_json(&process(&body, "1", &SentryOptions::default()).unwrap());
        }
    }

    #[test]
    fn mutated_envelopes_never_panic() {
        let body = envelope(
            &json!({"event_id": EVENT_ID, "trace": {"trace_id": TRACE_ID}}),
            &[
                ("event", serde_json::to_vec(&error_event()).unwrap()),
                ("transaction", transaction(TRACE_ID)),
                ("log", br#"{"items":[{"timestamp":1.0,"level":"info","body":"x","attributes":{"k":{"value":1,"type":"integer"}}}]}"#.to_vec()),
                ("attachment", b"\x00\x01\n".to_vec()),
            ],
        );
        let options = SentryOptions {
            transaction_sample_rate: 0.5,
            ..SentryOptions::default()
        };
        for n in 0..=body.len() {
            let _ = process(&body[..n], "1", &options);
        }
        let mut next = crate::test_support::xorshift(0x2545_f491_4f6c_dd1du64);
        let alphabet = b"{}[]\":,\n0123456789.-eE ntfu\\\x00\xff";
        for _ in 0..3_000 {
            let mut m = body.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % m.len() as u64) as usize;
                let c = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 => m[i] = c,
                    1 => {
                        m.remove(i);
                    }
                    _ => m.insert(i, c),
                }
            }
            if let Ok(p) = process(&m, "1", &options) {
                crate::validate::validate(Signal::Logs, &p.otlp_logs).unwrap();
                envelope::parse(&p.envelope).unwrap();
            }
            let _ = process_store(&m, "1", &options);
        }
    }
}
