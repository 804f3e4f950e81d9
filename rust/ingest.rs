//! One request in, one queueable payload out: decompress → decode → walk resources, scopes and records
//! → reject malformed records, sample, enrich → a valid `Export*ServiceRequest` of the records kept.
//!
//! Records are never decoded into structs: each is scanned for the few fields a decision needs (ids,
//! status, severity, metric name) and, if kept, copied through as the bytes it arrived as. Resources and
//! scopes are rebuilt around the kept records only, so a resource or scope left empty disappears.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::decompress::decompress;
use crate::enrich::Enricher;
use crate::error::{CoreError, Result};
use crate::limits::{self, ContentLimits, Counter, Counts, Facts};
use crate::sample::Sampler;
use crate::schema::{self, Kind, Msg};
use crate::scrub::{ScrubOptions, Scrubber};
use crate::scrub_otlp::scrub_record;
use crate::signal::Signal;
use crate::wire::{self, Fields, I64, LEN, VARINT};

/// Field numbers shared by the three signals: `Export*ServiceRequest.resource_*` (1),
/// `Resource*.resource` (1), `Resource*.scope_*` (2), `Scope*.<records>` (2).
pub(crate) const REQUEST_RESOURCES: u32 = 1;
pub(crate) const RESOURCE_RESOURCE: u32 = 1;
pub(crate) const RESOURCE_SCOPES: u32 = 2;
pub(crate) const SCOPE_RECORDS: u32 = 2;

/// `Status.code` value STATUS_CODE_ERROR.
const STATUS_ERROR: i32 = 2;
/// `SeverityNumber` SEVERITY_NUMBER_ERROR: ERROR and FATAL (17..=24) count as errors.
const SEVERITY_ERROR: i32 = 17;

/// Body format of a request (the receiver maps the Content-Type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Protobuf => "protobuf",
            Format::Json => "json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "protobuf" => Ok(Format::Protobuf),
            "json" => Ok(Format::Json),
            other => Err(CoreError::Usage(format!(
                "unknown format {other:?} (expected protobuf or json)"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct IngestOptions {
    /// Fraction of traces kept (consistent by trace id).
    pub sampling_traces: f64,
    /// Fraction of log records kept (by trace id when they have one, else by a hash of the record).
    pub sampling_logs: f64,
    /// Keep error spans (status code ERROR) and error logs (severity >= ERROR) whatever the ratio.
    pub keep_errors: bool,
    /// Added to every resource that lacks the key.
    pub resource_attributes: Vec<(String, String)>,
    /// Limit on the body after decompression.
    pub max_body_bytes: usize,
    /// Scrubbing of log bodies and attributes and of span, span event and span link attributes
    /// (`scrub_otlp`), in the same walk; `None`: records pass as they came.
    pub scrub: Option<ScrubOptions>,
    /// Count the kept records over Dash0's content limits in the walk (`Ingested::counts`), for
    /// exporters that report them; off, an exporter that asks walks the batch itself.
    pub content_counts: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            sampling_traces: 1.0,
            sampling_logs: 1.0,
            keep_errors: true,
            resource_attributes: Vec::new(),
            max_body_bytes: 64 * 1024 * 1024,
            scrub: None,
            content_counts: true,
        }
    }
}

/// The outcome of one request. Counts are in the signal's unit: spans, log records, data points;
/// `received == accepted + rejected + sampled_out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub signal: Signal,
    /// A valid `Export*ServiceRequest` (protobuf) holding only the accepted records; empty when none.
    pub payload: Vec<u8>,
    pub received: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub sampled_out: u64,
    /// For `partial_success.error_message`; empty when nothing was rejected.
    pub error_message: String,
    /// Size of the body after decompression (before JSON transcoding).
    pub decoded_bytes: usize,
    /// Records kept that scrubbing changed.
    pub scrubbed: u64,
    /// The kept records over Dash0's content limits (with `content_counts`), for the queue entry.
    pub counts: Option<Counts>,
}

#[derive(Debug, Clone)]
pub struct Ingester {
    traces: Sampler,
    logs: Sampler,
    keep_errors: bool,
    enricher: Enricher,
    max_body_bytes: usize,
    scrubber: Option<Scrubber>,
    content_counts: bool,
}

impl Ingester {
    pub fn new(options: IngestOptions) -> Self {
        Ingester {
            traces: Sampler::new(options.sampling_traces),
            logs: Sampler::new(options.sampling_logs),
            keep_errors: options.keep_errors,
            enricher: Enricher::new(options.resource_attributes),
            max_body_bytes: options.max_body_bytes,
            scrubber: options.scrub.as_ref().filter(|o| o.enabled).map(Scrubber::new),
            content_counts: options.content_counts,
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Decodes one request body and returns the payload to queue plus the counts for the response.
    ///
    /// Errors: `Unsupported` (encoding), `TooLarge` (after decompression), `Decode` (not valid OTLP).
    /// Per-record problems are not errors: those records are counted in `rejected`.
    pub fn ingest(&self, signal: Signal, body: &[u8], format: Format, encoding: Option<&str>) -> Result<Ingested> {
        self.ingest_with(signal, body, format, encoding, true)
    }

    /// `ingest`, scrubbing only when `scrub` (and configured): data converted from a track that
    /// scrubbed it already (Sentry) passes with `false`.
    pub fn ingest_with(
        &self,
        signal: Signal,
        body: &[u8],
        format: Format,
        encoding: Option<&str>,
        scrub: bool,
    ) -> Result<Ingested> {
        self.with_decoded(signal, body, format, encoding, |decoded| {
            self.ingest_decoded(signal, decoded, scrub)
        })
    }

    /// `f` on the request `decode_request` would return, inflated into this thread's scratch
    /// buffer (`decompress::with_decompressed`) instead of a new one per request; `f` must not
    /// keep the bytes (the walk copies what it keeps).
    pub fn with_decoded<T>(
        &self,
        signal: Signal,
        body: &[u8],
        format: Format,
        encoding: Option<&str>,
        f: impl FnOnce(&Decoded<'_>) -> Result<T>,
    ) -> Result<T> {
        crate::decompress::with_decompressed(body, encoding, self.max_body_bytes, |bytes| {
            f(&Self::transcode(signal, Cow::Borrowed(bytes), format)?)
        })
    }

    /// A body decompressed and (JSON) transcoded to a protobuf request. A protobuf body is not
    /// checked here: `ingest_decoded` checks it in the same walk that filters it.
    pub fn decode_request<'b>(
        &self,
        signal: Signal,
        body: &'b [u8],
        format: Format,
        encoding: Option<&str>,
    ) -> Result<Decoded<'b>> {
        Self::transcode(signal, decompress(body, encoding, self.max_body_bytes)?, format)
    }

    /// A decompressed body as the protobuf request to walk (JSON transcoded).
    fn transcode(signal: Signal, decoded: Cow<'_, [u8]>, format: Format) -> Result<Decoded<'_>> {
        let decoded_bytes = decoded.len();
        let (request, unchecked) = match format {
            Format::Protobuf => (decoded, true),
            Format::Json => (
                Cow::Owned(crate::json_decode::json_to_protobuf(signal, &decoded)?),
                false,
            ),
        };
        Ok(Decoded {
            request,
            decoded_bytes,
            unchecked,
        })
    }

    /// Checks (a client's protobuf), filters and enriches a decoded request in one walk: nothing
    /// comes out of a request that fails the check, and its error is `validate`'s.
    pub fn ingest_decoded(&self, signal: Signal, decoded: &Decoded<'_>, scrub: bool) -> Result<Ingested> {
        self.walk(
            signal,
            &decoded.request,
            decoded.decoded_bytes,
            scrub,
            decoded.unchecked,
        )
    }

    /// Walks a request the gateway built itself (already a valid protobuf request, e.g. converted
    /// from Fluent records): sampling, enrichment and record checks as for `ingest`.
    pub fn ingest_request(
        &self,
        signal: Signal,
        request: &[u8],
        decoded_bytes: usize,
        scrub: bool,
    ) -> Result<Ingested> {
        self.walk(signal, request, decoded_bytes, scrub, false)
    }

    fn walk(&self, signal: Signal, request: &[u8], decoded_bytes: usize, scrub: bool, check: bool) -> Result<Ingested> {
        let mut walk = Walk {
            ingester: self,
            signal,
            schema: check.then(|| levels(signal)),
            scrubber: self.scrubber.as_ref().filter(|_| scrub),
            tally: Tally::default(),
            counter: (self.content_counts && signal != Signal::Metrics)
                .then(|| Counter::new(ContentLimits::DASH0, limits::now_ns())),
            facts: Facts::default(),
        };
        let payload = match walk.request(request) {
            Ok(payload) => payload,
            // The walk stops at the first thing wrong; `validate` names it, as it did when it ran
            // ahead of the walk (a second walk, on the bad-input path only).
            Err(e) if check => {
                crate::validate::validate(signal, request)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let tally = walk.tally;
        let counts = walk.counter.map(|c| c.counts());
        Ok(Ingested {
            signal,
            payload,
            received: tally.received,
            accepted: tally.accepted,
            rejected: tally.rejected,
            sampled_out: tally.sampled_out,
            error_message: tally.message(signal),
            decoded_bytes,
            scrubbed: tally.scrubbed,
            counts,
        })
    }
}

/// A request body decompressed and, from JSON, transcoded.
#[derive(Debug)]
pub struct Decoded<'b> {
    /// An `Export*ServiceRequest` in protobuf.
    pub request: Cow<'b, [u8]>,
    /// Size of the body after decompression (before JSON transcoding).
    pub decoded_bytes: usize,
    /// The client's own protobuf, not yet checked against the schema (the walk checks it).
    unchecked: bool,
}

/// The messages a walk descends through, by depth: the request, `Resource*`, `Scope*`, the record.
fn levels(signal: Signal) -> [&'static Msg; 4] {
    fn child(msg: &'static Msg, number: u32) -> &'static Msg {
        match msg.field(number).map(|f| f.kind) {
            Some(Kind::Message(child)) => child,
            _ => panic!("schema: {} has no message field {number}", msg.name),
        }
    }
    let request = schema::request(signal);
    let resource = child(request, REQUEST_RESOURCES);
    let scope = child(resource, RESOURCE_SCOPES);
    [request, resource, scope, child(scope, SCOPE_RECORDS)]
}

/// Depths of the levels the walk descends through (the request is 0).
const RESOURCE: usize = 1;
const SCOPE: usize = 2;
const RECORD: usize = 3;

/// State of one request's walk.
struct Walk<'i> {
    ingester: &'i Ingester,
    signal: Signal,
    /// With the request's messages (`levels`), every field the walk passes is checked as
    /// `validate` checks it, subtrees it does not descend into included; `None`: trusted input.
    schema: Option<[&'static Msg; 4]>,
    scrubber: Option<&'i Scrubber>,
    tally: Tally,
    /// Dash0 content counts of the kept records, in the same walk (`None`: not counting).
    counter: Option<Counter>,
    /// What `keep` read of the last record for the counter.
    facts: Facts,
}

impl Walk<'_> {
    /// Field `field` of a message at `depth` passes `validate` (when checking), contents included.
    /// The error says nothing: `Ingester::walk` asks `validate` for the message.
    #[inline]
    fn check(&self, depth: usize, field: &wire::Field<'_>) -> Result<()> {
        match self.schema {
            Some(levels) if !crate::validate::field_ok(levels[depth], field, depth) => {
                Err(CoreError::decode("invalid protobuf"))
            }
            _ => Ok(()),
        }
    }

    fn request(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(request.len() + 64);
        for field in Fields::new(request) {
            let field = field?;
            // Only resources travel on; the request has no other fields worth queueing.
            if field.number != REQUEST_RESOURCES || field.wire_type != LEN {
                self.check(0, &field)?;
                continue;
            }
            let mark = out.len();
            let mut kept = Ok(false);
            wire::put_message(&mut out, REQUEST_RESOURCES, |o| kept = self.resource(field.data, o));
            if !kept? {
                out.truncate(mark);
            }
        }
        // Mostly-dropped requests would otherwise pin their input's size in the queue.
        if out.capacity() > out.len() + out.len() / 4 + 4096 {
            out.shrink_to_fit();
        }
        Ok(out)
    }

    /// Writes the body of a `Resource*` message; returns whether any record was kept.
    fn resource(&mut self, msg: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let ingester = self.ingester;
        let enricher = &ingester.enricher;
        let enrich = !enricher.is_empty();
        if enrich {
            // The client's Resource is normally one field; several occurrences merge, as protobuf says.
            let mut resource: Option<Cow<[u8]>> = None;
            for field in Fields::new(msg) {
                let field = field?;
                if field.number == RESOURCE_RESOURCE && field.wire_type == LEN {
                    resource = Some(match resource.take() {
                        None => Cow::Borrowed(field.data),
                        // Extend in place: re-concatenating per field would be quadratic.
                        Some(prev) => {
                            let mut merged = prev.into_owned();
                            merged.extend_from_slice(field.data);
                            Cow::Owned(merged)
                        }
                    });
                }
            }
            let mut written = Ok(());
            wire::put_message(out, RESOURCE_RESOURCE, |o| {
                written = enricher.write_resource(resource.as_deref(), o)
            });
            written?;
        }
        let mut kept_any = false;
        for field in Fields::new(msg) {
            let field = field?;
            if (field.number, field.wire_type) != (RESOURCE_SCOPES, LEN) {
                self.check(RESOURCE, &field)?;
            }
            match (field.number, field.wire_type) {
                (RESOURCE_RESOURCE, LEN) if enrich => {}
                (RESOURCE_SCOPES, LEN) => {
                    let mark = out.len();
                    let mut kept = Ok(false);
                    wire::put_message(out, RESOURCE_SCOPES, |o| kept = self.scope(field.data, o));
                    if kept? {
                        kept_any = true;
                    } else {
                        out.truncate(mark);
                    }
                }
                // A scope list with the wrong wire type cannot be copied as one; validation rejects it anyway.
                (RESOURCE_SCOPES, _) => {}
                // resource (when not enriching), schema_url, fields newer than this code: as they came.
                _ => out.extend_from_slice(field.raw),
            }
        }
        Ok(kept_any)
    }

    /// Writes the body of a `Scope*` message; returns whether any record was kept.
    fn scope(&mut self, msg: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let mut kept_any = false;
        // Fields copied as they came are adjacent in `msg` while nothing between them is
        // dropped or rewritten: copied as one run (one `memcpy` for a whole scope of kept
        // records instead of one per record).
        let mut run = 0..0;
        for field in Fields::new(msg) {
            let field = field?;
            if (field.number, field.wire_type) != (SCOPE_RECORDS, LEN) {
                self.check(SCOPE, &field)?;
            }
            let as_is = match (field.number, field.wire_type) {
                (SCOPE_RECORDS, LEN) => {
                    if !self.keep(field.data)? {
                        false
                    } else {
                        kept_any = true;
                        // Rewritten only when scrubbing changed something; else the bytes as they came.
                        let rewritten = match self.scrubber {
                            Some(s) => scrub_record(s, self.signal, field.data)?,
                            None => None,
                        };
                        match rewritten {
                            Some(new) => {
                                out.extend_from_slice(&msg[std::mem::replace(&mut run, 0..0)]);
                                wire::put_bytes(out, SCOPE_RECORDS, &new);
                                self.tally.scrubbed += 1;
                                // Counted as it leaves: scrubbing changes lengths.
                                if let Some(c) = &mut self.counter {
                                    c.record(self.signal, &new)?;
                                }
                                false
                            }
                            None => {
                                if let Some(c) = &mut self.counter {
                                    c.add(self.signal, &self.facts);
                                }
                                true
                            }
                        }
                    }
                }
                (SCOPE_RECORDS, _) => false,
                // scope, schema_url, unknown fields: as they came.
                _ => true,
            };
            if as_is {
                let at = schema::offset_in(msg, field.raw);
                if run.end != at {
                    out.extend_from_slice(&msg[std::mem::replace(&mut run, at..at)]);
                }
                run.end = at + field.raw.len();
            }
        }
        out.extend_from_slice(&msg[run]);
        Ok(kept_any)
    }

    fn keep(&mut self, record: &[u8]) -> Result<bool> {
        match self.signal {
            Signal::Traces => self.span(record),
            Signal::Logs => self.log(record),
            Signal::Metrics => self.metric(record),
        }
    }

    fn span(&mut self, span: &[u8]) -> Result<bool> {
        let (mut trace_id, mut span_id, mut parent): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
        let mut code = 0i32;
        let mut facts = Facts::default();
        let counter = self.counter.as_ref();
        for field in Fields::new(span) {
            let field = field?;
            self.check(RECORD, &field)?;
            match (field.number, field.wire_type) {
                (1, LEN) => trace_id = field.data,
                (2, LEN) => span_id = field.data,
                (4, LEN) => parent = field.data,
                (15, LEN) => code = status_code(field.data)?.unwrap_or(code),
                (limits::SPAN_ATTRIBUTES, LEN) => {
                    if let Some(c) = counter {
                        facts.attribute(c.long_value(field.data)?);
                    }
                }
                (limits::SPAN_START, I64) => facts.time_ns = field.int,
                _ => {}
            }
        }
        self.facts = facts;
        self.tally.received += 1;
        let problem = if trace_id.len() != 16 {
            Some(Reason::TraceIdLength(trace_id.len()))
        } else if is_zero(trace_id) {
            Some(Reason::TraceIdZero)
        } else if span_id.len() != 8 {
            Some(Reason::SpanIdLength(span_id.len()))
        } else if is_zero(span_id) {
            Some(Reason::SpanIdZero)
        } else if !parent.is_empty() && parent.len() != 8 {
            Some(Reason::ParentSpanIdLength(parent.len()))
        } else {
            None
        };
        if let Some(reason) = problem {
            self.tally.reject(reason, 1);
            return Ok(false);
        }
        let keep = (self.ingester.keep_errors && code == STATUS_ERROR) || self.ingester.traces.keep_trace_id(trace_id);
        Ok(self.tally.decide(keep, 1))
    }

    fn log(&mut self, record: &[u8]) -> Result<bool> {
        let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
        let mut severity = 0i32;
        let mut is_event = false;
        let (mut facts, mut observed) = (Facts::default(), 0u64);
        let counter = self.counter.as_ref();
        for field in Fields::new(record) {
            let field = field?;
            self.check(RECORD, &field)?;
            match (field.number, field.wire_type) {
                (9, LEN) => trace_id = field.data,
                // `event_name`: an operational event (track 1), never sampled.
                (12, LEN) => is_event = !field.data.is_empty(),
                (10, LEN) => span_id = field.data,
                // An enum is an int32 on the wire, sign-extended to 64 bits when negative.
                (2, VARINT) => severity = field.int as i32,
                (limits::LOG_ATTRIBUTES, LEN) => {
                    if let Some(c) = counter {
                        facts.attribute(c.long_value(field.data)?);
                    }
                }
                (limits::LOG_BODY, LEN) => {
                    if let Some(c) = counter {
                        facts.long_body = c.long_body(field.data)?;
                    }
                }
                (limits::LOG_TIME, I64) => facts.time_ns = field.int,
                (limits::LOG_OBSERVED, I64) => observed = field.int,
                _ => {}
            }
        }
        facts.observed(observed);
        self.facts = facts;
        self.tally.received += 1;
        if !trace_id.is_empty() && trace_id.len() != 16 {
            self.tally.reject(Reason::LogTraceIdLength(trace_id.len()), 1);
            return Ok(false);
        }
        if !span_id.is_empty() && span_id.len() != 8 {
            self.tally.reject(Reason::LogSpanIdLength(span_id.len()), 1);
            return Ok(false);
        }
        let sampler = &self.ingester.logs;
        let keep = if sampler.keeps_all() || is_event || (self.ingester.keep_errors && severity >= SEVERITY_ERROR) {
            true
        } else if sampler.keeps_none() {
            false
        } else if trace_id.len() == 16 && !is_zero(trace_id) {
            // Logs of a trace follow the trace's decision (same rule, same ratio → same decision). An
            // all-zero id means "no trace" (W3C), so those fall through to the hash.
            sampler.keep_trace_id(trace_id)
        } else {
            sampler.keep_hash(record)
        };
        Ok(self.tally.decide(keep, 1))
    }

    fn metric(&mut self, metric: &[u8]) -> Result<bool> {
        let mut name: &[u8] = &[];
        let mut data: &[u8] = &[];
        for field in Fields::new(metric) {
            let field = field?;
            self.check(RECORD, &field)?;
            match (field.number, field.wire_type) {
                (1, LEN) => name = field.data,
                // gauge, sum, histogram, exponential_histogram, summary: a oneof, so the last one wins.
                (5 | 7 | 9 | 10 | 11, LEN) => data = field.data,
                _ => {}
            }
        }
        // Every data kind keeps its points in field 1.
        let mut points = 0u64;
        for field in Fields::new(data) {
            let field = field?;
            if field.number == 1 && field.wire_type == LEN {
                points += 1;
            }
        }
        self.tally.received += points;
        if name.is_empty() {
            self.tally.reject(Reason::MetricName, points);
            return Ok(false);
        }
        // Metrics are never sampled: a sampled metric stream is a wrong metric stream.
        Ok(self.tally.decide(true, points))
    }
}

/// `Status.code` (field 3) if the Status sets it.
fn status_code(status: &[u8]) -> Result<Option<i32>> {
    let mut code = None;
    for field in Fields::new(status) {
        let field = field?;
        if field.number == 3 && field.wire_type == VARINT {
            code = Some(field.int as i32);
        }
    }
    Ok(code)
}

fn is_zero(id: &[u8]) -> bool {
    id.iter().all(|&b| b == 0)
}

/// Why a record was rejected; lengths are what the record carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    TraceIdLength(usize),
    TraceIdZero,
    SpanIdLength(usize),
    SpanIdZero,
    ParentSpanIdLength(usize),
    LogTraceIdLength(usize),
    LogSpanIdLength(usize),
    MetricName,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::TraceIdLength(n) => write!(f, "trace_id must be 16 bytes (got {n})"),
            Reason::TraceIdZero => f.write_str("trace_id must not be all zeros"),
            Reason::SpanIdLength(n) => write!(f, "span_id must be 8 bytes (got {n})"),
            Reason::SpanIdZero => f.write_str("span_id must not be all zeros"),
            Reason::ParentSpanIdLength(n) => write!(f, "parent_span_id must be empty or 8 bytes (got {n})"),
            Reason::LogTraceIdLength(n) => write!(f, "trace_id must be empty or 16 bytes (got {n})"),
            Reason::LogSpanIdLength(n) => write!(f, "span_id must be empty or 8 bytes (got {n})"),
            Reason::MetricName => f.write_str("metric name must not be empty"),
        }
    }
}

/// Distinct reasons listed in a message; the rest are summed, so a hostile request cannot grow it.
const MAX_REASONS: usize = 4;

#[derive(Debug, Default)]
struct Tally {
    received: u64,
    accepted: u64,
    rejected: u64,
    sampled_out: u64,
    reasons: Vec<(Reason, u64)>,
    other_reasons: u64,
    scrubbed: u64,
}

impl Tally {
    fn decide(&mut self, keep: bool, n: u64) -> bool {
        if keep {
            self.accepted += n;
        } else {
            self.sampled_out += n;
        }
        keep
    }

    fn reject(&mut self, reason: Reason, n: u64) {
        if n == 0 {
            return;
        }
        self.rejected += n;
        if let Some(entry) = self.reasons.iter_mut().find(|(r, _)| *r == reason) {
            entry.1 += n;
        } else if self.reasons.len() < MAX_REASONS {
            self.reasons.push((reason, n));
        } else {
            self.other_reasons += n;
        }
    }

    /// "2 spans rejected: trace_id must be 16 bytes (got 8)"; with several reasons, each gets its count.
    fn message(&self, signal: Signal) -> String {
        if self.rejected == 0 {
            return String::new();
        }
        let unit = |n: u64| {
            let plural = signal.record_unit();
            if n == 1 {
                plural.strip_suffix('s').unwrap_or(plural)
            } else {
                plural
            }
        };
        let mut msg = format!("{} {} rejected: ", self.rejected, unit(self.rejected));
        match self.reasons.as_slice() {
            [(reason, _)] if self.other_reasons == 0 => msg.push_str(&reason.to_string()),
            reasons => {
                let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} ({n} {})", unit(*n))).collect();
                if self.other_reasons > 0 {
                    parts.push(format!(
                        "other reasons ({} {})",
                        self.other_reasons,
                        unit(self.other_reasons)
                    ));
                }
                msg.push_str(&parts.join("; "));
            }
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- request builders (wire writers only) ----

    fn span(trace_id: &[u8], span_id: &[u8], parent: &[u8], code: Option<u64>, name: &str) -> Vec<u8> {
        let mut s = Vec::new();
        if !trace_id.is_empty() {
            wire::put_bytes(&mut s, 1, trace_id);
        }
        if !span_id.is_empty() {
            wire::put_bytes(&mut s, 2, span_id);
        }
        if !parent.is_empty() {
            wire::put_bytes(&mut s, 4, parent);
        }
        wire::put_bytes(&mut s, 5, name.as_bytes());
        wire::put_uint(&mut s, 6, 2);
        s.push((7 << 3) | wire::I64);
        s.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
        wire::put_message(&mut s, 9, |kv| {
            wire::put_bytes(kv, 1, b"http.method");
            wire::put_message(kv, 2, |v| wire::put_bytes(v, 1, b"GET"));
        });
        if let Some(code) = code {
            wire::put_message(&mut s, 15, |st| {
                wire::put_bytes(st, 2, b"boom");
                wire::put_uint(st, 3, code);
            });
        }
        s
    }

    fn log(trace_id: &[u8], span_id: &[u8], severity: u64, body: &str) -> Vec<u8> {
        let mut r = Vec::new();
        r.push((1 << 3) | wire::I64);
        r.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
        if severity != 0 {
            wire::put_uint(&mut r, 2, severity);
        }
        wire::put_message(&mut r, 5, |v| wire::put_bytes(v, 1, body.as_bytes()));
        if !trace_id.is_empty() {
            wire::put_bytes(&mut r, 9, trace_id);
        }
        if !span_id.is_empty() {
            wire::put_bytes(&mut r, 10, span_id);
        }
        r
    }

    fn data_point(kind: u32, i: u64) -> Vec<u8> {
        let mut p = Vec::new();
        p.push((3 << 3) | wire::I64);
        p.extend_from_slice(&(1_000 + i).to_le_bytes());
        match kind {
            5 | 7 => {
                p.push((4 << 3) | wire::I64);
                p.extend_from_slice(&1.5f64.to_le_bytes());
            }
            _ => {
                p.push((4 << 3) | wire::I64);
                p.extend_from_slice(&i.to_le_bytes());
            }
        }
        p
    }

    /// A metric whose data is `kind` (5 gauge, 7 sum, 9 histogram, 10 exponential histogram, 11 summary).
    fn metric(name: &str, kind: u32, points: u64) -> Vec<u8> {
        let mut m = Vec::new();
        if !name.is_empty() {
            wire::put_bytes(&mut m, 1, name.as_bytes());
        }
        wire::put_bytes(&mut m, 3, b"ms");
        wire::put_message(&mut m, kind, |d| {
            for i in 0..points {
                wire::put_bytes(d, 1, &data_point(kind, i));
            }
            if kind == 7 || kind == 9 || kind == 10 {
                wire::put_uint(d, 2, 2);
            }
        });
        m
    }

    fn scope_x(name: &str, records: &[Vec<u8>]) -> Vec<u8> {
        let mut s = Vec::new();
        wire::put_message(&mut s, 1, |sc| {
            wire::put_bytes(sc, 1, name.as_bytes());
            wire::put_bytes(sc, 2, b"1.0.0");
        });
        for r in records {
            wire::put_bytes(&mut s, 2, r);
        }
        wire::put_bytes(&mut s, 3, b"https://opentelemetry.io/schemas/1.21.0");
        s
    }

    fn resource_body(attrs: &[(&str, &str)]) -> Vec<u8> {
        let mut r = Vec::new();
        for (k, v) in attrs {
            wire::put_message(&mut r, 1, |kv| {
                wire::put_bytes(kv, 1, k.as_bytes());
                wire::put_message(kv, 2, |any| wire::put_bytes(any, 1, v.as_bytes()));
            });
        }
        r
    }

    fn resource_x(attrs: Option<&[(&str, &str)]>, scopes: &[Vec<u8>]) -> Vec<u8> {
        let mut r = Vec::new();
        if let Some(attrs) = attrs {
            wire::put_bytes(&mut r, 1, &resource_body(attrs));
        }
        for s in scopes {
            wire::put_bytes(&mut r, 2, s);
        }
        wire::put_bytes(&mut r, 3, b"https://opentelemetry.io/schemas/1.24.0");
        r
    }

    fn request(resources: &[Vec<u8>]) -> Vec<u8> {
        let mut q = Vec::new();
        for r in resources {
            wire::put_bytes(&mut q, 1, r);
        }
        q
    }

    // ---- payload parser ----

    #[derive(Debug, Default, PartialEq)]
    struct PScope {
        /// Non-record fields, raw, in order.
        other: Vec<u8>,
        records: Vec<Vec<u8>>,
    }

    #[derive(Debug, Default, PartialEq)]
    struct PResource {
        resource: Option<Vec<u8>>,
        /// Fields other than resource and scopes, raw.
        other: Vec<u8>,
        scopes: Vec<PScope>,
    }

    /// Parses a payload strictly: every field of the three levels must be where OTLP puts it.
    fn parse(payload: &[u8]) -> Vec<PResource> {
        let mut out = Vec::new();
        for f in Fields::new(payload) {
            let f = f.unwrap();
            assert_eq!((f.number, f.wire_type), (1, LEN), "request holds only resources");
            let mut res = PResource::default();
            for rf in Fields::new(f.data) {
                let rf = rf.unwrap();
                match rf.number {
                    1 => {
                        assert!(res.resource.is_none(), "one resource field");
                        res.resource = Some(rf.data.to_vec());
                    }
                    2 => {
                        let mut sc = PScope::default();
                        for sf in Fields::new(rf.data) {
                            let sf = sf.unwrap();
                            if sf.number == 2 {
                                sc.records.push(sf.data.to_vec());
                            } else {
                                sc.other.extend_from_slice(sf.raw);
                            }
                        }
                        assert!(!sc.records.is_empty(), "no empty scopes");
                        res.scopes.push(sc);
                    }
                    _ => res.other.extend_from_slice(rf.raw),
                }
            }
            assert!(!res.scopes.is_empty(), "no empty resources");
            out.push(res);
        }
        out
    }

    fn all_records(payload: &[u8]) -> Vec<Vec<u8>> {
        parse(payload)
            .into_iter()
            .flat_map(|r| r.scopes)
            .flat_map(|s| s.records)
            .collect()
    }

    fn resource_attrs(resource: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for f in Fields::new(resource) {
            let f = f.unwrap();
            assert_eq!(f.number, 1);
            let (mut k, mut v) = (String::new(), String::new());
            for kf in Fields::new(f.data) {
                let kf = kf.unwrap();
                if kf.number == 1 {
                    k = String::from_utf8(kf.data.to_vec()).unwrap();
                } else if kf.number == 2 {
                    let vf = Fields::new(kf.data).next().unwrap().unwrap();
                    v = String::from_utf8(vf.data.to_vec()).unwrap();
                }
            }
            out.push((k, v));
        }
        out
    }

    fn ingester(traces: f64, logs: f64, keep_errors: bool, attrs: &[(&str, &str)]) -> Ingester {
        Ingester::new(IngestOptions {
            sampling_traces: traces,
            sampling_logs: logs,
            keep_errors,
            resource_attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            max_body_bytes: 1 << 20,
            scrub: None,
            content_counts: true,
        })
    }

    fn run(ing: &Ingester, signal: Signal, body: &[u8]) -> Ingested {
        let out = ing.ingest(signal, body, Format::Protobuf, None).unwrap();
        assert_eq!(out.received, out.accepted + out.rejected + out.sampled_out, "{out:?}");
        assert_eq!(out.rejected == 0, out.error_message.is_empty(), "{out:?}");
        crate::validate::validate(signal, &out.payload).unwrap();
        parse(&out.payload);
        out
    }

    /// Deterministic ids: byte `i` of a trace id, with a distinct tail per n.
    fn tid(n: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[0] = 0x4b;
        id[8..].copy_from_slice(&crate::sample::hash64(&n.to_le_bytes()).to_be_bytes());
        id
    }

    fn sid(n: u64) -> [u8; 8] {
        (n + 1).to_be_bytes()
    }

    // ---- tests ----

    #[test]
    fn all_kept_payload_is_the_input() {
        let spans: Vec<_> = (0..5)
            .map(|i| span(&tid(i), &sid(i), &sid(i + 100), None, "op"))
            .collect();
        let body = request(&[
            resource_x(
                Some(&[("service.name", "a")]),
                &[scope_x("lib1", &spans[..2]), scope_x("lib2", &spans[2..])],
            ),
            resource_x(None, &[scope_x("lib3", &spans[..1])]),
        ]);
        let out = run(&ingester(1.0, 1.0, true, &[]), Signal::Traces, &body);
        assert_eq!(out.payload, body);
        assert_eq!(
            (out.received, out.accepted, out.rejected, out.sampled_out),
            (6, 6, 0, 0)
        );
        assert_eq!(out.decoded_bytes, body.len());
        assert_eq!(out.signal, Signal::Traces);
    }

    #[test]
    fn empty_body_is_an_empty_request() {
        for signal in Signal::ALL {
            let out = run(&ingester(0.5, 0.5, true, &[("env", "prod")]), signal, b"");
            assert!(out.payload.is_empty());
            assert_eq!((out.received, out.accepted, out.decoded_bytes), (0, 0, 0));
            assert!(out.error_message.is_empty());
        }
    }

    #[test]
    fn span_rejections_count_and_explain() {
        let good = span(&tid(1), &sid(1), &[], None, "good");
        let body = request(&[resource_x(
            None,
            &[scope_x(
                "lib",
                &[
                    span(&[7; 8], &sid(2), &[], None, "short trace"),
                    good.clone(),
                    span(&[7; 8], &sid(3), &[], None, "short trace again"),
                ],
            )],
        )]);
        let out = run(&ingester(1.0, 1.0, true, &[]), Signal::Traces, &body);
        assert_eq!((out.received, out.accepted, out.rejected), (3, 1, 2));
        assert_eq!(out.error_message, "2 spans rejected: trace_id must be 16 bytes (got 8)");
        assert_eq!(all_records(&out.payload), vec![good]);
    }

    #[test]
    fn every_span_rule() {
        let cases: [(Vec<u8>, &str); 7] = [
            (
                span(&[1; 8], &sid(1), &[], None, "a"),
                "trace_id must be 16 bytes (got 8)",
            ),
            (span(&[], &sid(1), &[], None, "a"), "trace_id must be 16 bytes (got 0)"),
            (
                span(&[0; 16], &sid(1), &[], None, "a"),
                "trace_id must not be all zeros",
            ),
            (span(&tid(1), &[0; 8], &[], None, "a"), "span_id must not be all zeros"),
            (span(&tid(1), &[], &[], None, "a"), "span_id must be 8 bytes (got 0)"),
            (
                span(&tid(1), &[1; 16], &[], None, "a"),
                "span_id must be 8 bytes (got 16)",
            ),
            (
                span(&tid(1), &sid(1), &[1; 4], None, "a"),
                "parent_span_id must be empty or 8 bytes (got 4)",
            ),
        ];
        let ing = ingester(1.0, 1.0, true, &[]);
        for (record, reason) in &cases {
            let out = run(
                &ing,
                Signal::Traces,
                &request(&[resource_x(None, &[scope_x("s", std::slice::from_ref(record))])]),
            );
            assert_eq!(out.error_message, format!("1 span rejected: {reason}"));
            assert_eq!((out.received, out.rejected), (1, 1));
            assert!(out.payload.is_empty(), "a resource left empty is dropped");
        }
        // A zero parent id of the right length is "no parent" in some SDKs: accepted.
        let root = span(&tid(1), &sid(1), &[0; 8], None, "root");
        let out = run(
            &ing,
            Signal::Traces,
            &request(&[resource_x(None, &[scope_x("s", &[root])])]),
        );
        assert_eq!(out.accepted, 1);
    }

    #[test]
    fn several_reasons_each_counted() {
        let records = vec![
            span(&[1; 8], &sid(1), &[], None, "a"),
            span(&[1; 8], &sid(1), &[], None, "b"),
            span(&tid(1), &[0; 8], &[], None, "c"),
            span(&tid(2), &sid(2), &[], None, "ok"),
        ];
        let out = run(
            &ingester(1.0, 1.0, true, &[]),
            Signal::Traces,
            &request(&[resource_x(None, &[scope_x("s", &records)])]),
        );
        assert_eq!(
            out.error_message,
            "3 spans rejected: trace_id must be 16 bytes (got 8) (2 spans); span_id must not be all zeros (1 span)"
        );
        // Many distinct reasons: the message stays bounded.
        let records: Vec<_> = (1..40).map(|n| span(&vec![1; n], &sid(1), &[], None, "x")).collect();
        let out = run(
            &ingester(1.0, 1.0, true, &[]),
            Signal::Traces,
            &request(&[resource_x(None, &[scope_x("s", &records)])]),
        );
        assert_eq!(out.rejected, 38);
        assert!(
            out.error_message.ends_with("; other reasons (34 spans)"),
            "{}",
            out.error_message
        );
    }

    #[test]
    fn log_rejections() {
        let ok_plain = log(&[], &[], 9, "no trace");
        let ok_traced = log(&tid(1), &sid(1), 9, "traced");
        let records = vec![
            log(&[5; 5], &[], 9, "bad trace"),
            ok_plain.clone(),
            log(&tid(2), &[3; 3], 9, "bad span"),
            ok_traced.clone(),
        ];
        let out = run(
            &ingester(1.0, 1.0, true, &[]),
            Signal::Logs,
            &request(&[resource_x(None, &[scope_x("s", &records)])]),
        );
        assert_eq!((out.received, out.accepted, out.rejected), (4, 2, 2));
        assert_eq!(
            out.error_message,
            "2 log records rejected: trace_id must be empty or 16 bytes (got 5) (1 log record); \
             span_id must be empty or 8 bytes (got 3) (1 log record)"
        );
        assert_eq!(all_records(&out.payload), vec![ok_plain, ok_traced]);

        let one = request(&[resource_x(None, &[scope_x("s", &[log(&[5; 5], &[], 9, "x")])])]);
        let out = run(&ingester(1.0, 1.0, true, &[]), Signal::Logs, &one);
        assert_eq!(
            out.error_message,
            "1 log record rejected: trace_id must be empty or 16 bytes (got 5)"
        );
    }

    #[test]
    fn scrubbing_in_the_walk_rewrites_only_records_that_match() {
        let clean = log(&tid(1), &sid(1), 9, "job 7 done");
        let secret = log(&tid(2), &sid(2), 9, "login https://u:pw@db/x failed");
        let body = request(&[resource_x(
            Some(&[("service.name", "api")]),
            &[scope_x("s", &[clean.clone(), secret.clone()])],
        )]);
        let on = Ingester::new(IngestOptions {
            scrub: Some(ScrubOptions::default()),
            ..IngestOptions::default()
        });
        let out = run(&on, Signal::Logs, &body);
        assert_eq!(out.scrubbed, 1);
        let records = all_records(&out.payload);
        assert_eq!(records[0], clean); // the zero-copy path: the bytes as they came
        assert_eq!(
            records[1],
            log(&tid(2), &sid(2), 9, "login https://u:[Filtered]@db/x failed")
        );
        // Not asked for (data another track scrubbed), or not configured: the input as it came.
        let out = on
            .ingest_with(Signal::Logs, &body, Format::Protobuf, None, false)
            .unwrap();
        assert_eq!((out.scrubbed, out.payload.as_slice()), (0, body.as_slice()));
        let out = run(&ingester(1.0, 1.0, true, &[]), Signal::Logs, &body);
        assert_eq!((out.scrubbed, out.payload.as_slice()), (0, body.as_slice()));
        // Metrics are never scrubbed.
        let m = request(&[resource_x(None, &[scope_x("s", &[metric("password", 5, 1)])])]);
        let out = run(&on, Signal::Metrics, &m);
        assert_eq!((out.scrubbed, out.payload.as_slice()), (0, m.as_slice()));
    }

    #[test]
    fn content_counts_are_of_the_records_as_they_leave() {
        use crate::limits::{count, ContentLimits};
        // 4,095 bytes as sent; scrubbing the password makes it 4,103, over Dash0's 4 KB.
        let text = format!("login https://u:pw@db/x {}", "y".repeat(4095 - 24));
        let grown = log(&tid(1), &sid(1), 9, &text);
        let kept = log(&tid(2), &sid(2), 9, &"z".repeat(5000));
        let body = request(&[resource_x(None, &[scope_x("s", &[grown, kept])])]);
        let on = Ingester::new(IngestOptions {
            scrub: Some(ScrubOptions::default()),
            ..IngestOptions::default()
        });
        for ingester in [on, ingester(1.0, 1.0, true, &[])] {
            let out = run(&ingester, Signal::Logs, &body);
            let counts = out.counts.unwrap();
            let walked = count(
                Signal::Logs,
                &out.payload,
                &ContentLimits::DASH0,
                crate::limits::now_ns(),
            );
            assert_eq!(counts, walked.unwrap());
            assert_eq!(counts.report.log_body, 1 + out.scrubbed);
        }
        let off = Ingester::new(IngestOptions {
            content_counts: false,
            ..IngestOptions::default()
        });
        assert_eq!(run(&off, Signal::Logs, &body).counts, None);
        assert_eq!(
            run(&ingester(1.0, 1.0, true, &[]), Signal::Metrics, &request(&[])).counts,
            None
        );
    }

    #[test]
    fn metric_with_a_name_and_no_points_is_kept() {
        let empty = metric("jobs.queued", 5, 0);
        let body = request(&[resource_x(None, &[scope_x("s", std::slice::from_ref(&empty))])]);
        let out = run(&ingester(1.0, 1.0, true, &[]), Signal::Metrics, &body);
        assert_eq!((out.received, out.accepted, out.rejected), (0, 0, 0));
        assert_eq!(all_records(&out.payload), vec![empty]);
    }

    #[test]
    fn metric_without_name_rejects_its_data_points() {
        let named = metric("http.requests", 7, 2);
        let records = vec![
            metric("", 5, 1),  // gauge
            metric("", 7, 2),  // sum
            named.clone(),     // 2 accepted
            metric("", 9, 3),  // histogram
            metric("", 10, 4), // exponential histogram
            metric("", 11, 5), // summary
        ];
        let ing = ingester(0.0, 0.0, false, &[]);
        let out = run(
            &ing,
            Signal::Metrics,
            &request(&[resource_x(None, &[scope_x("s", &records)])]),
        );
        assert_eq!(
            (out.received, out.accepted, out.rejected, out.sampled_out),
            (17, 2, 15, 0)
        );
        assert_eq!(
            out.error_message,
            "15 data points rejected: metric name must not be empty"
        );
        assert_eq!(all_records(&out.payload), vec![named]);
        for (kind, n) in [(5, 1), (7, 2), (9, 3), (10, 4), (11, 5)] {
            let body = request(&[resource_x(None, &[scope_x("s", &[metric("", kind, n)])])]);
            let out = run(&ing, Signal::Metrics, &body);
            assert_eq!((out.received, out.rejected), (n, n), "kind {kind}");
            let unit = if n == 1 { "data point" } else { "data points" };
            assert_eq!(
                out.error_message,
                format!("{n} {unit} rejected: metric name must not be empty")
            );
        }
    }

    #[test]
    fn metrics_are_never_sampled() {
        let records: Vec<_> = (0..20).map(|i| metric(&format!("m{i}"), 5, 3)).collect();
        let out = run(
            &ingester(0.0, 0.0, false, &[]),
            Signal::Metrics,
            &request(&[resource_x(None, &[scope_x("s", &records)])]),
        );
        assert_eq!((out.received, out.accepted, out.sampled_out), (60, 60, 0));
        assert_eq!(all_records(&out.payload), records);
    }

    #[test]
    fn keep_errors_survive_ratio_zero() {
        let err = span(&tid(1), &sid(1), &[], Some(2), "failed");
        let records = vec![
            span(&tid(2), &sid(2), &[], Some(1), "ok"),
            err.clone(),
            span(&tid(3), &sid(3), &[], None, "unset"),
        ];
        let body = request(&[resource_x(None, &[scope_x("s", &records)])]);
        let out = run(&ingester(0.0, 1.0, true, &[]), Signal::Traces, &body);
        assert_eq!((out.accepted, out.sampled_out), (1, 2));
        assert_eq!(all_records(&out.payload), vec![err]);
        let out = run(&ingester(0.0, 1.0, false, &[]), Signal::Traces, &body);
        assert_eq!((out.accepted, out.sampled_out), (0, 3));
        assert!(out.payload.is_empty() && out.error_message.is_empty());

        let error_logs = vec![log(&[], &[], 17, "error"), log(&tid(4), &[], 21, "fatal")];
        let mut records = vec![log(&[], &[], 16, "warn4"), log(&tid(5), &[], 9, "info")];
        records.extend(error_logs.iter().cloned());
        let body = request(&[resource_x(None, &[scope_x("s", &records)])]);
        let out = run(&ingester(1.0, 0.0, true, &[]), Signal::Logs, &body);
        assert_eq!((out.accepted, out.sampled_out), (2, 2));
        assert_eq!(all_records(&out.payload), error_logs);
        let out = run(&ingester(1.0, 0.0, false, &[]), Signal::Logs, &body);
        assert_eq!((out.accepted, out.sampled_out), (0, 4));
    }

    #[test]
    fn span_sampling_is_consistent_by_trace_id() {
        let ratio = 0.3;
        let records: Vec<_> = (0..2_000)
            .map(|i| span(&tid(i / 4), &sid(i), &[], None, "op"))
            .collect();
        let body = request(&[resource_x(None, &[scope_x("s", &records)])]);
        let a = run(&ingester(ratio, 1.0, true, &[]), Signal::Traces, &body);
        let b = run(&ingester(ratio, 1.0, true, &[]), Signal::Traces, &body);
        assert_eq!(a.payload, b.payload);
        let sampler = Sampler::new(ratio);
        let expected: Vec<_> = (0..2_000u64)
            .filter(|i| sampler.keep_trace_id(&tid(i / 4)))
            .map(|i| span(&tid(i / 4), &sid(i), &[], None, "op"))
            .collect();
        assert_eq!(all_records(&a.payload), expected);
        assert_eq!(a.accepted, expected.len() as u64);
        assert_eq!(a.sampled_out, 2_000 - expected.len() as u64);
        assert!(a.accepted.is_multiple_of(4), "the four spans of a trace go together");
        let fraction = a.accepted as f64 / 2_000.0;
        assert!((fraction - ratio).abs() < 0.06, "{fraction}");
    }

    #[test]
    fn log_sampling_by_trace_id_else_hash() {
        let ratio = 0.5;
        let records: Vec<_> = (0..400)
            .map(|i| {
                if i % 2 == 0 {
                    log(&tid(i), &[], 9, &format!("l{i}"))
                } else {
                    log(&[], &[], 9, &format!("l{i}"))
                }
            })
            .collect();
        let body = request(&[resource_x(None, &[scope_x("s", &records)])]);
        let out = run(&ingester(1.0, ratio, true, &[]), Signal::Logs, &body);
        let sampler = Sampler::new(ratio);
        let expected: Vec<_> = records
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                if i % 2 == 0 {
                    sampler.keep_trace_id(&tid(*i as u64))
                } else {
                    sampler.keep_hash(r)
                }
            })
            .map(|(_, r)| r.clone())
            .collect();
        assert!(!expected.is_empty() && expected.len() < records.len());
        assert_eq!(all_records(&out.payload), expected);
    }

    #[test]
    fn enrichment_adds_missing_keeps_existing() {
        let s = span(&tid(1), &sid(1), &[], None, "op");
        let scope = scope_x("lib", std::slice::from_ref(&s));
        let body = request(&[
            resource_x(
                Some(&[("service.name", "checkout"), ("env", "staging")]),
                std::slice::from_ref(&scope),
            ),
            resource_x(None, std::slice::from_ref(&scope)),
        ]);
        let ing = ingester(1.0, 1.0, true, &[("env", "prod"), ("region", "eu-west-1")]);
        let out = run(&ing, Signal::Traces, &body);
        let parsed = parse(&out.payload);
        assert_eq!(parsed.len(), 2);
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(
            resource_attrs(parsed[0].resource.as_deref().unwrap()),
            pairs(&[
                ("service.name", "checkout"),
                ("env", "staging"),
                ("region", "eu-west-1")
            ])
        );
        assert_eq!(
            resource_attrs(parsed[1].resource.as_deref().unwrap()),
            pairs(&[("env", "prod"), ("region", "eu-west-1")])
        );
        for res in &parsed {
            // schema_url and the scope travel unchanged.
            let mut schema = Vec::new();
            wire::put_bytes(&mut schema, 3, b"https://opentelemetry.io/schemas/1.24.0");
            assert_eq!(res.other, schema);
            let sc = &res.scopes[0];
            assert_eq!(sc.records, vec![s.clone()]);
            let mut scope_other = scope.clone();
            let rec_field = {
                let mut f = Vec::new();
                wire::put_bytes(&mut f, 2, &s);
                f
            };
            let at = scope_other
                .windows(rec_field.len())
                .position(|w| w == rec_field)
                .unwrap();
            scope_other.drain(at..at + rec_field.len());
            assert_eq!(sc.other, scope_other);
        }
    }

    #[test]
    fn enrichment_merges_repeated_resource_fields() {
        let s = span(&tid(1), &sid(1), &[], None, "op");
        let mut res = Vec::new();
        wire::put_bytes(&mut res, 1, &resource_body(&[("a", "1")]));
        wire::put_bytes(&mut res, 2, &scope_x("lib", &[s]));
        wire::put_bytes(&mut res, 1, &resource_body(&[("env", "client")]));
        let out = run(
            &ingester(1.0, 1.0, true, &[("env", "prod")]),
            Signal::Traces,
            &request(&[res]),
        );
        let parsed = parse(&out.payload);
        assert_eq!(
            resource_attrs(parsed[0].resource.as_deref().unwrap()),
            vec![
                ("a".to_string(), "1".to_string()),
                ("env".to_string(), "client".to_string())
            ]
        );
    }

    #[test]
    fn many_resource_fields_merge_in_linear_time() {
        // 200k tiny Resource fields (dropped_attributes_count = 0): merging must not re-copy per field.
        let mut res = Vec::new();
        for _ in 0..200_000 {
            wire::put_bytes(&mut res, 1, &[0x10, 0x00]);
        }
        wire::put_bytes(&mut res, 2, &scope_x("lib", &[span(&tid(1), &sid(1), &[], None, "op")]));
        let started = std::time::Instant::now();
        let out = run(
            &ingester(1.0, 1.0, true, &[("env", "prod")]),
            Signal::Traces,
            &request(&[res]),
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let parsed = parse(&out.payload);
        let merged = parsed[0].resource.as_deref().unwrap();
        assert_eq!(
            merged.len(),
            400_000
                + Enricher::new(vec![("env".into(), "prod".into())])
                    .enrich(None)
                    .unwrap()
                    .len()
        );
    }

    #[test]
    fn unknown_and_extra_fields_are_preserved() {
        let s = span(&tid(1), &sid(1), &[], None, "op");
        let mut scope = scope_x("lib", &[s]);
        wire::put_uint(&mut scope, 99, 7);
        let mut res = resource_x(Some(&[("k", "v")]), &[scope.clone()]);
        wire::put_bytes(&mut res, 42, b"future");
        let body = request(&[res.clone()]);
        let out = run(&ingester(1.0, 1.0, true, &[]), Signal::Traces, &body);
        assert_eq!(out.payload, body);
        let out = run(&ingester(1.0, 1.0, true, &[("env", "prod")]), Signal::Traces, &body);
        let parsed = parse(&out.payload);
        let mut other = Vec::new();
        wire::put_bytes(&mut other, 3, b"https://opentelemetry.io/schemas/1.24.0");
        wire::put_bytes(&mut other, 42, b"future");
        assert_eq!(parsed[0].other, other);
        let mut tail = Vec::new();
        wire::put_uint(&mut tail, 99, 7);
        assert!(parsed[0].scopes[0].other.ends_with(&tail));
    }

    #[test]
    fn empty_scopes_and_resources_are_dropped() {
        let keep = span(&tid(1), &sid(1), &[], None, "keep");
        let bad = span(&[1; 8], &sid(2), &[], None, "bad");
        let body = request(&[
            resource_x(
                Some(&[("r", "1")]),
                &[
                    scope_x("all-bad", std::slice::from_ref(&bad)),
                    scope_x("mixed", &[bad.clone(), keep.clone()]),
                ],
            ),
            resource_x(Some(&[("r", "2")]), &[scope_x("all-bad", &[bad.clone(), bad.clone()])]),
            resource_x(Some(&[("r", "3")]), &[scope_x("empty", &[])]),
            resource_x(Some(&[("r", "4")]), &[]),
        ]);
        for attrs in [&[][..], &[("env", "prod")][..]] {
            let out = run(&ingester(1.0, 1.0, true, attrs), Signal::Traces, &body);
            assert_eq!((out.received, out.accepted, out.rejected), (5, 1, 4));
            let parsed = parse(&out.payload);
            assert_eq!(parsed.len(), 1);
            assert_eq!(
                resource_attrs(parsed[0].resource.as_deref().unwrap())[0],
                ("r".into(), "1".into())
            );
            assert_eq!(parsed[0].scopes.len(), 1);
            assert_eq!(parsed[0].scopes[0].records, vec![keep.clone()]);
            let mut scope_name = Vec::new();
            wire::put_bytes(&mut scope_name, 1, b"mixed");
            assert!(parsed[0].scopes[0]
                .other
                .windows(scope_name.len())
                .any(|w| w == scope_name));
        }
    }

    #[test]
    fn multiple_resources_keep_their_grouping() {
        let ing = ingester(1.0, 1.0, true, &[]);
        let recs: Vec<Vec<u8>> = (0..6).map(|i| log(&[], &[], 9, &format!("r{i}"))).collect();
        let body = request(&[
            resource_x(Some(&[("service.name", "a")]), &[scope_x("x", &recs[0..2])]),
            resource_x(
                Some(&[("service.name", "b")]),
                &[scope_x("y", &recs[2..3]), scope_x("z", &recs[3..5])],
            ),
            resource_x(Some(&[("service.name", "c")]), &[scope_x("w", &recs[5..])]),
        ]);
        let out = run(&ing, Signal::Logs, &body);
        let parsed = parse(&out.payload);
        let shape: Vec<Vec<usize>> = parsed
            .iter()
            .map(|r| r.scopes.iter().map(|s| s.records.len()).collect())
            .collect();
        assert_eq!(shape, vec![vec![2], vec![1, 2], vec![1]]);
        assert_eq!(all_records(&out.payload), recs);
        assert_eq!(out.payload, body);
    }

    #[test]
    fn payload_is_exactly_the_kept_records() {
        // Mixed: rejected, sampled-out and kept records across resources; the payload must re-parse as a
        // request whose records are byte-for-byte the kept inputs, in order.
        let ratio = 0.5;
        let sampler = Sampler::new(ratio);
        let mut resources = Vec::new();
        let mut expected = Vec::new();
        for r in 0..5u64 {
            let mut scopes = Vec::new();
            for s in 0..3u64 {
                let mut records = Vec::new();
                for k in 0..7u64 {
                    let n = r * 100 + s * 10 + k;
                    let rec = if n % 5 == 0 {
                        span(&[9; 8], &sid(n), &[], None, "bad")
                    } else {
                        span(
                            &tid(n),
                            &sid(n),
                            &sid(n + 1),
                            if n % 7 == 0 { Some(2) } else { None },
                            "op",
                        )
                    };
                    if n % 5 != 0 && (n % 7 == 0 || sampler.keep_trace_id(&tid(n))) {
                        expected.push(rec.clone());
                    }
                    records.push(rec);
                }
                scopes.push(scope_x(&format!("s{s}"), &records));
            }
            resources.push(resource_x(Some(&[("service.name", "svc")]), &scopes));
        }
        let body = request(&resources);
        let out = run(&ingester(ratio, 1.0, true, &[("env", "prod")]), Signal::Traces, &body);
        assert_eq!(all_records(&out.payload), expected);
        assert_eq!(out.accepted, expected.len() as u64);
        assert_eq!(out.received, 105);
        assert_eq!(out.rejected, 30);
    }

    #[test]
    fn compressed_bodies_and_limits() {
        use std::io::Write;
        let body = request(&[resource_x(
            None,
            &[scope_x("s", &[span(&tid(1), &sid(1), &[], None, "op")])],
        )]);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&body).unwrap();
        let gz = enc.finish().unwrap();
        let ing = ingester(1.0, 1.0, true, &[]);
        let out = ing.ingest(Signal::Traces, &gz, Format::Protobuf, Some("GZIP")).unwrap();
        assert_eq!(
            (out.payload.as_slice(), out.decoded_bytes),
            (body.as_slice(), body.len())
        );

        let small = Ingester::new(IngestOptions {
            max_body_bytes: 10,
            ..IngestOptions::default()
        });
        assert_eq!(small.max_body_bytes(), 10);
        assert_eq!(
            small.ingest(Signal::Traces, &gz, Format::Protobuf, Some("gzip")),
            Err(CoreError::TooLarge { limit: 10 })
        );
        assert_eq!(
            small.ingest(Signal::Traces, &body, Format::Protobuf, None),
            Err(CoreError::TooLarge { limit: 10 })
        );
        assert!(matches!(
            ing.ingest(Signal::Traces, &body, Format::Protobuf, Some("lz4")),
            Err(CoreError::Unsupported(_))
        ));
    }

    #[test]
    fn checks_every_level_in_the_walk_with_validates_errors() {
        // Each body is valid up to one field that `validate` rejects, placed after records the
        // walk already kept or dropped: the ingest fails with `validate`'s own error.
        let good: Vec<_> = (0..3).map(|i| span(&tid(i), &sid(i), &[], None, "op")).collect();
        let bad_name = {
            let mut s = span(&tid(9), &sid(9), &[], None, "op");
            wire::put_bytes(&mut s, 5, &[b'x', 0xff]);
            s
        };
        let bad_attr = {
            let mut s = span(&tid(9), &sid(9), &[], None, "op");
            wire::put_message(&mut s, 9, |kv| wire::put_uint(kv, 1, 3));
            s
        };
        let mut scope_bad_tail = scope_x("s", &good);
        wire::put_uint(&mut scope_bad_tail, 3, 1 << 40);
        wire::put_bytes(&mut scope_bad_tail, 4, &[0xc3]);
        let mut resource_bad_tail = resource_x(Some(&[("a", "b")]), &[scope_x("s", &good)]);
        wire::put_uint(&mut resource_bad_tail, 3, 7);
        let mut request_bad_tail = request(&[resource_x(None, &[scope_x("s", &good)])]);
        wire::put_uint(&mut request_bad_tail, 1, 7);
        let bodies = [
            request(&[resource_x(
                None,
                &[scope_x("s", &[good.clone(), vec![bad_name]].concat())],
            )]),
            request(&[resource_x(
                None,
                &[scope_x("s", &[good.clone(), vec![bad_attr]].concat())],
            )]),
            request(&[resource_x(None, &[scope_bad_tail])]),
            request(&[resource_bad_tail]),
            request_bad_tail,
            // A wire error (a field cut short) inside the last span.
            request(&[resource_x(
                None,
                &[scope_x("s", &[good.clone(), vec![vec![0x2a, 0x05, b'a']]].concat())],
            )]),
        ];
        let ingesters = [
            ingester(1.0, 1.0, true, &[]),
            ingester(0.0, 0.0, false, &[("env", "prod")]),
        ];
        for body in &bodies {
            let want = crate::validate::validate(Signal::Traces, body).unwrap_err();
            for ing in &ingesters {
                assert_eq!(
                    ing.ingest(Signal::Traces, body, Format::Protobuf, None),
                    Err(want.clone())
                );
            }
        }
        // Trusted input (JSON transcoded, or built by the gateway) is not checked again.
        let body = request(&[resource_x(None, &[scope_x("s", &good)])]);
        let ing = &ingesters[0];
        let out = ing.ingest_request(Signal::Traces, &body, body.len(), true).unwrap();
        assert_eq!((out.accepted, out.payload), (3, body));
    }

    #[test]
    fn malformed_protobuf_is_a_decode_error() {
        let ing = ingester(1.0, 1.0, true, &[]);
        for bad in [&[0x0a, 0x05, 0x01][..], &[0xff][..], &[0x0a, 0x80][..]] {
            assert!(matches!(
                ing.ingest(Signal::Traces, bad, Format::Protobuf, None),
                Err(CoreError::Decode(_))
            ));
        }
    }

    #[test]
    fn mutated_requests_never_panic() {
        // Structure past what validation looked at may be broken; the walk must fail cleanly, not panic.
        let records: Vec<_> = (0..4).map(|i| span(&tid(i), &sid(i), &[], Some(2), "op")).collect();
        let logs: Vec<_> = (0..4).map(|i| log(&tid(i), &sid(i), 17, "x")).collect();
        let metrics: Vec<_> = (0..4)
            .map(|i| metric("m", [5, 7, 9, 10, 11][i as usize % 5], 2))
            .collect();
        let inputs = [
            (
                Signal::Traces,
                request(&[resource_x(Some(&[("a", "b")]), &[scope_x("s", &records)])]),
            ),
            (
                Signal::Logs,
                request(&[resource_x(Some(&[("a", "b")]), &[scope_x("s", &logs)])]),
            ),
            (
                Signal::Metrics,
                request(&[resource_x(Some(&[("a", "b")]), &[scope_x("s", &metrics)])]),
            ),
        ];
        let ings = [
            ingester(0.5, 0.5, true, &[("env", "prod")]),
            ingester(1.0, 1.0, false, &[]),
        ];
        let mut rand = crate::test_support::xorshift(0x9e37_79b9_7f4a_7c15u64);
        for (signal, body) in &inputs {
            for ing in &ings {
                for cut in 0..body.len() {
                    let _ = ing.ingest(*signal, &body[..cut], Format::Protobuf, None);
                }
                for _ in 0..3_000 {
                    let mut m = body.clone();
                    for _ in 0..1 + rand() % 3 {
                        let at = (rand() as usize) % m.len();
                        m[at] = rand() as u8;
                    }
                    let _ = ing.ingest(*signal, &m, Format::Protobuf, None);
                    // Cross-signal: a valid request of one signal read as another.
                    let _ = ing.ingest(Signal::ALL[(rand() % 3) as usize], &m, Format::Protobuf, None);
                }
            }
        }
    }

    #[test]
    fn format_names() {
        assert_eq!("protobuf".parse::<Format>(), Ok(Format::Protobuf));
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!(matches!("xml".parse::<Format>(), Err(CoreError::Usage(_))));
        assert_eq!(Format::Json.to_string(), "json");
    }

    #[test]
    fn default_options_match_the_python_defaults() {
        let o = IngestOptions::default();
        assert_eq!((o.sampling_traces, o.sampling_logs, o.keep_errors), (1.0, 1.0, true));
        assert_eq!(o.max_body_bytes, 67_108_864);
        assert!(o.resource_attributes.is_empty());
    }
}
