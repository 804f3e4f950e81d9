//! Dash0's documented content limits, checked on an outgoing batch: Dash0 truncates what is
//! over them rather than failing the request, so the gateway counts those records for operators
//! (a metric per limit) instead of rewriting them.
//!
//! Counted once, at ingest, in the record walk (`ingest.rs` feeds [`Counter`] the fields it reads
//! anyway) and kept with the queued payload as [`Counts`]; a batch sums its entries' counts.
//! [`check`] walks a request on its own, for entries that come back without counts (read back
//! from disk after a restart or a cache eviction, queued raw) and for tests. It reads only what a
//! limit needs (bodies, attribute counts and value lengths, timestamps) with the zero-copy field
//! reader; the input has already been validated at ingest.

use crate::error::Result;
use crate::ingest::{REQUEST_RESOURCES, RESOURCE_SCOPES, SCOPE_RECORDS};
use crate::signal::Signal;
use crate::wire::{Fields, I64, LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentLimits {
    pub log_body_bytes: usize,
    pub log_attributes: usize,
    pub span_attributes: usize,
    pub attribute_value_chars: usize,
    pub max_age_ns: u64,
}

impl ContentLimits {
    /// The limits Dash0 documents: log body 4 KB, 16 log attributes, 32 span attributes,
    /// attribute values of 2,048 characters, timestamps at most 6 h old.
    pub const DASH0: ContentLimits = ContentLimits {
        log_body_bytes: 4096,
        log_attributes: 16,
        span_attributes: 32,
        attribute_value_chars: 2048,
        max_age_ns: 6 * 3600 * 1_000_000_000,
    };
}

/// Records over each limit (a record over several limits counts once under each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentReport {
    pub log_body: u64,
    pub log_attributes: u64,
    pub span_attributes: u64,
    pub attribute_value: u64,
    pub too_old: u64,
}

impl ContentReport {
    pub fn add(&mut self, other: &ContentReport) {
        self.log_body += other.log_body;
        self.log_attributes += other.log_attributes;
        self.span_attributes += other.span_attributes;
        self.attribute_value += other.attribute_value;
        self.too_old += other.too_old;
    }

    pub fn items(&self) -> [(&'static str, u64); 5] {
        [
            ("log_body", self.log_body),
            ("log_attributes", self.log_attributes),
            ("span_attributes", self.span_attributes),
            ("attribute_value", self.attribute_value),
            ("too_old", self.too_old),
        ]
    }
}

// Field numbers (opentelemetry-proto): Span.attributes 9, Span.start_time_unix_nano 7;
// LogRecord.time_unix_nano 1, observed 11, body 5, attributes 6; KeyValue.value 2;
// AnyValue.string_value 1.
pub(crate) const SPAN_START: u32 = 7;
pub(crate) const SPAN_ATTRIBUTES: u32 = 9;
pub(crate) const LOG_TIME: u32 = 1;
pub(crate) const LOG_OBSERVED: u32 = 11;
pub(crate) const LOG_BODY: u32 = 5;
pub(crate) const LOG_ATTRIBUTES: u32 = 6;
const KEYVALUE_VALUE: u32 = 2;
const ANYVALUE_STRING: u32 = 1;

/// A payload's report as counted at ingest, and what it needs to stay true later: `too_old`
/// depends on when the batch leaves, so the oldest record that was still fresh is kept too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub report: ContentReport,
    /// Effective time of the oldest record counted as fresh (`u64::MAX`: none had a time).
    pub oldest_fresh_ns: u64,
}

impl Counts {
    /// The report at `now_ns`, or `None` when a record counted fresh has aged past the limit
    /// since (the caller walks the payload again: rare, a record close to the limit or a long
    /// outage).
    pub fn at(&self, limits: &ContentLimits, now_ns: u64) -> Option<ContentReport> {
        (self.oldest_fresh_ns == u64::MAX || !is_old(self.oldest_fresh_ns, limits, now_ns)).then_some(self.report)
    }
}

/// Counts records one at a time from fields a walk has already read.
#[derive(Debug, Clone, Copy)]
pub struct Counter {
    limits: ContentLimits,
    now_ns: u64,
    counts: Counts,
}

impl Counter {
    pub fn new(limits: ContentLimits, now_ns: u64) -> Self {
        Counter {
            limits,
            now_ns,
            counts: Counts {
                report: ContentReport::default(),
                oldest_fresh_ns: u64::MAX,
            },
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether a KeyValue (an attribute) holds a string value over the character limit.
    pub fn long_value(&self, key_value: &[u8]) -> Result<bool> {
        // A value has at most as many characters as the whole KeyValue has bytes: most
        // attributes are decided without reading them.
        if key_value.len() <= self.limits.attribute_value_chars {
            return Ok(false);
        }
        Ok(value_chars(key_value)? > self.limits.attribute_value_chars)
    }

    /// Whether a log body is over the limit: a string body's bytes, else the whole AnyValue's.
    pub fn long_body(&self, log_body: &[u8]) -> Result<bool> {
        if log_body.len() <= self.limits.log_body_bytes {
            return Ok(false);
        }
        Ok(string_value(log_body)?.map_or(log_body.len(), <[u8]>::len) > self.limits.log_body_bytes)
    }

    /// Counts one kept span or log record from what a walk read of it.
    pub fn add(&mut self, signal: Signal, facts: &Facts) {
        let (limits, report) = (&self.limits, &mut self.counts.report);
        match signal {
            Signal::Traces => report.span_attributes += u64::from(facts.attributes > limits.span_attributes),
            Signal::Logs => {
                report.log_body += u64::from(facts.long_body);
                report.log_attributes += u64::from(facts.attributes > limits.log_attributes);
            }
            Signal::Metrics => return,
        }
        report.attribute_value += u64::from(facts.long_value);
        self.time(facts.time_ns);
    }

    fn time(&mut self, time_ns: u64) {
        if is_old(time_ns, &self.limits, self.now_ns) {
            self.counts.report.too_old += 1;
        } else if time_ns != 0 {
            self.counts.oldest_fresh_ns = self.counts.oldest_fresh_ns.min(time_ns);
        }
    }

    /// Counts one span or log record from its bytes (for a record the walk rewrote).
    pub fn record(&mut self, signal: Signal, record: &[u8]) -> Result<()> {
        match signal {
            Signal::Traces => self.check_span(record),
            Signal::Logs => self.check_log(record),
            Signal::Metrics => Ok(()),
        }
    }

    fn check_span(&mut self, span: &[u8]) -> Result<()> {
        let mut facts = Facts::default();
        for field in Fields::new(span) {
            let field = field?;
            match (field.number, field.wire_type) {
                (SPAN_ATTRIBUTES, LEN) => facts.attribute(self.long_value(field.data)?),
                (SPAN_START, I64) => facts.time_ns = field.int,
                _ => {}
            }
        }
        self.add(Signal::Traces, &facts);
        Ok(())
    }

    fn check_log(&mut self, record: &[u8]) -> Result<()> {
        let (mut facts, mut observed) = (Facts::default(), 0u64);
        for field in Fields::new(record) {
            let field = field?;
            match (field.number, field.wire_type) {
                (LOG_ATTRIBUTES, LEN) => facts.attribute(self.long_value(field.data)?),
                (LOG_BODY, LEN) => facts.long_body = self.long_body(field.data)?,
                (LOG_TIME, I64) => facts.time_ns = field.int,
                (LOG_OBSERVED, I64) => observed = field.int,
                _ => {}
            }
        }
        facts.observed(observed);
        self.add(Signal::Logs, &facts);
        Ok(())
    }
}

/// What the limits need of one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    pub attributes: usize,
    /// Some attribute holds a string over the character limit.
    pub long_value: bool,
    /// The log body is over its limit (see [`Counter::long_body`]); false for spans.
    pub long_body: bool,
    /// A span's start; a log record's time, else when it was observed.
    pub time_ns: u64,
}

impl Facts {
    pub fn attribute(&mut self, long_value: bool) {
        self.attributes += 1;
        self.long_value |= long_value;
    }

    /// OTLP's rule for a log record with no time: when it was observed.
    pub fn observed(&mut self, observed_ns: u64) {
        if self.time_ns == 0 {
            self.time_ns = observed_ns;
        }
    }
}

/// Checks an `Export{Logs,Trace}ServiceRequest` against `limits` at time `now_ns`. Metrics have
/// no documented limits and report nothing.
pub fn check(signal: Signal, body: &[u8], limits: &ContentLimits, now_ns: u64) -> Result<ContentReport> {
    Ok(count(signal, body, limits, now_ns)?.report)
}

/// [`check`], with what [`Counts::at`] needs to judge the report again later.
pub fn count(signal: Signal, body: &[u8], limits: &ContentLimits, now_ns: u64) -> Result<Counts> {
    let mut counter = Counter::new(*limits, now_ns);
    if signal == Signal::Metrics {
        return Ok(counter.counts());
    }
    for resource in Fields::new(body) {
        let resource = resource?;
        if resource.number != REQUEST_RESOURCES || resource.wire_type != LEN {
            continue;
        }
        for scope in Fields::new(resource.data) {
            let scope = scope?;
            if scope.number != RESOURCE_SCOPES || scope.wire_type != LEN {
                continue;
            }
            for record in Fields::new(scope.data) {
                let record = record?;
                if record.number == SCOPE_RECORDS && record.wire_type == LEN {
                    counter.record(signal, record.data)?;
                }
            }
        }
    }
    Ok(counter.counts())
}

/// Nanoseconds since the Unix epoch, as the limits compare timestamps.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Characters in a KeyValue's string value (0 for other kinds of value).
fn value_chars(key_value: &[u8]) -> Result<usize> {
    for field in Fields::new(key_value) {
        let field = field?;
        if field.number == KEYVALUE_VALUE && field.wire_type == LEN {
            return Ok(string_value(field.data)?.map_or(0, |s| {
                // Validated UTF-8: count characters, i.e. bytes that do not continue one.
                s.iter().filter(|&&b| (b as i8) >= -0x40).count()
            }));
        }
    }
    Ok(0)
}

/// The bytes of an AnyValue's string_value, if that is what it holds.
fn string_value(any_value: &[u8]) -> Result<Option<&[u8]>> {
    for field in Fields::new(any_value) {
        let field = field?;
        if field.number == ANYVALUE_STRING && field.wire_type == LEN {
            return Ok(Some(field.data));
        }
    }
    Ok(None)
}

fn is_old(time_ns: u64, limits: &ContentLimits, now_ns: u64) -> bool {
    time_ns != 0 && now_ns.saturating_sub(time_ns) > limits.max_age_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{put_bytes, put_message, put_tag, put_uint};

    const NOW: u64 = 1_800_000_000_000_000_000;
    const HOUR: u64 = 3600 * 1_000_000_000;

    fn key_value(out: &mut Vec<u8>, number: u32, key: &str, value: &str) {
        put_message(out, number, |kv| {
            put_bytes(kv, 1, key.as_bytes());
            put_message(kv, KEYVALUE_VALUE, |v| put_bytes(v, ANYVALUE_STRING, value.as_bytes()));
        });
    }

    fn fixed64(out: &mut Vec<u8>, number: u32, value: u64) {
        put_tag(out, number, I64);
        out.extend_from_slice(&value.to_le_bytes());
    }

    fn request(records: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        put_message(&mut out, 1, |rs| {
            put_message(rs, 2, |ss| {
                for record in records {
                    put_bytes(ss, 2, record);
                }
            })
        });
        out
    }

    fn log(body: &str, attributes: usize, value_len: usize, time: u64) -> Vec<u8> {
        let mut rec = Vec::new();
        fixed64(&mut rec, LOG_TIME, time);
        put_uint(&mut rec, 2, 9);
        put_message(&mut rec, LOG_BODY, |v| put_bytes(v, ANYVALUE_STRING, body.as_bytes()));
        for i in 0..attributes {
            key_value(&mut rec, LOG_ATTRIBUTES, &format!("k{i}"), &"é".repeat(value_len));
        }
        rec
    }

    fn span(attributes: usize, value_len: usize, start: u64) -> Vec<u8> {
        let mut rec = Vec::new();
        put_bytes(&mut rec, 1, &[1; 16]);
        put_bytes(&mut rec, 2, &[2; 8]);
        fixed64(&mut rec, SPAN_START, start);
        for i in 0..attributes {
            key_value(&mut rec, SPAN_ATTRIBUTES, &format!("k{i}"), &"x".repeat(value_len));
        }
        rec
    }

    #[test]
    fn logs_within_limits_report_nothing() {
        let body = request(&[log("ok", 16, 2048, NOW - HOUR), log(&"b".repeat(4096), 0, 0, 0)]);
        assert_eq!(
            check(Signal::Logs, &body, &ContentLimits::DASH0, NOW).unwrap(),
            ContentReport::default()
        );
    }

    #[test]
    fn logs_over_each_limit_are_counted_once_per_limit() {
        let body = request(&[
            log(&"b".repeat(4097), 0, 0, NOW),
            log("x", 17, 3, NOW),
            log("x", 1, 2049, NOW), // 2,049 characters (4,098 bytes of "é")
            log("x", 0, 0, NOW - 7 * HOUR),
            log(&"b".repeat(5000), 20, 3000, NOW - 7 * HOUR),
        ]);
        let report = check(Signal::Logs, &body, &ContentLimits::DASH0, NOW).unwrap();
        assert_eq!(
            report,
            ContentReport {
                log_body: 2,
                log_attributes: 2,
                span_attributes: 0,
                attribute_value: 2,
                too_old: 2
            }
        );
    }

    #[test]
    fn characters_not_bytes_for_attribute_values() {
        // 2,048 two-byte characters: 4,096 bytes, within the limit.
        let body = request(&[log("x", 1, 2048, NOW)]);
        assert_eq!(
            check(Signal::Logs, &body, &ContentLimits::DASH0, NOW)
                .unwrap()
                .attribute_value,
            0
        );
    }

    #[test]
    fn spans_over_limits() {
        let body = request(&[
            span(32, 10, NOW),
            span(33, 10, NOW),
            span(1, 2049, NOW),
            span(0, 0, NOW - 7 * HOUR),
        ]);
        let report = check(Signal::Traces, &body, &ContentLimits::DASH0, NOW).unwrap();
        assert_eq!(
            report,
            ContentReport {
                log_body: 0,
                log_attributes: 0,
                span_attributes: 1,
                attribute_value: 1,
                too_old: 1
            }
        );
    }

    #[test]
    fn counts_stay_true_until_a_fresh_record_ages_out() {
        let body = request(&[
            log("x", 0, 0, NOW - 7 * HOUR),
            log("x", 0, 0, NOW - 5 * HOUR),
            log("x", 0, 0, 0),
        ]);
        let counts = count(Signal::Logs, &body, &ContentLimits::DASH0, NOW).unwrap();
        assert_eq!((counts.report.too_old, counts.oldest_fresh_ns), (1, NOW - 5 * HOUR));
        let limits = &ContentLimits::DASH0;
        assert_eq!(counts.at(limits, NOW + HOUR).map(|r| r.too_old), Some(1));
        // The 5-hour-old record is now over 6 hours old: the counts no longer say, walk again.
        assert_eq!(counts.at(limits, NOW + HOUR + 1), None);
        assert_eq!(check(Signal::Logs, &body, limits, NOW + HOUR + 1).unwrap().too_old, 2);
        // Records without a time never age.
        let timeless = count(Signal::Logs, &request(&[log("x", 0, 0, 0)]), limits, NOW).unwrap();
        assert_eq!(timeless.at(limits, u64::MAX), Some(ContentReport::default()));
    }

    #[test]
    fn metrics_and_truncated_input() {
        assert_eq!(
            check(Signal::Metrics, b"\xff", &ContentLimits::DASH0, NOW).unwrap(),
            ContentReport::default()
        );
        let body = request(&[log("x", 1, 1, NOW)]);
        assert!(check(Signal::Logs, &body[..body.len() - 3], &ContentLimits::DASH0, NOW).is_err());
    }
}
