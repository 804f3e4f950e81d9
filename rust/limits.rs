//! Dash0's documented content limits, checked on an outgoing batch: Dash0 truncates what is
//! over them rather than failing the request, so the gateway counts those records for operators
//! (a metric per limit) instead of rewriting them.
//!
//! Reads only what a limit needs (bodies, attribute counts and value lengths, timestamps) with
//! the zero-copy field reader; the batch has already been validated at ingest.

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
const SPAN_START: u32 = 7;
const SPAN_ATTRIBUTES: u32 = 9;
const LOG_TIME: u32 = 1;
const LOG_OBSERVED: u32 = 11;
const LOG_BODY: u32 = 5;
const LOG_ATTRIBUTES: u32 = 6;
const KEYVALUE_VALUE: u32 = 2;
const ANYVALUE_STRING: u32 = 1;

/// Checks an `Export{Logs,Trace}ServiceRequest` against `limits` at time `now_ns`. Metrics have
/// no documented limits and report nothing.
pub fn check(signal: Signal, body: &[u8], limits: &ContentLimits, now_ns: u64) -> Result<ContentReport> {
    let mut report = ContentReport::default();
    if signal == Signal::Metrics {
        return Ok(report);
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
                if record.number != SCOPE_RECORDS || record.wire_type != LEN {
                    continue;
                }
                match signal {
                    Signal::Traces => check_span(record.data, limits, now_ns, &mut report)?,
                    _ => check_log(record.data, limits, now_ns, &mut report)?,
                }
            }
        }
    }
    Ok(report)
}

fn check_span(span: &[u8], limits: &ContentLimits, now_ns: u64, report: &mut ContentReport) -> Result<()> {
    let (mut attributes, mut long_value, mut start) = (0usize, false, 0u64);
    for field in Fields::new(span) {
        let field = field?;
        match (field.number, field.wire_type) {
            (SPAN_ATTRIBUTES, LEN) => {
                attributes += 1;
                long_value |= value_chars(field.data)? > limits.attribute_value_chars;
            }
            (SPAN_START, I64) => start = field.int,
            _ => {}
        }
    }
    report.span_attributes += u64::from(attributes > limits.span_attributes);
    report.attribute_value += u64::from(long_value);
    report.too_old += u64::from(is_old(start, limits, now_ns));
    Ok(())
}

fn check_log(record: &[u8], limits: &ContentLimits, now_ns: u64, report: &mut ContentReport) -> Result<()> {
    let (mut attributes, mut long_value, mut time, mut observed, mut body_len) = (0usize, false, 0u64, 0u64, 0usize);
    for field in Fields::new(record) {
        let field = field?;
        match (field.number, field.wire_type) {
            (LOG_ATTRIBUTES, LEN) => {
                attributes += 1;
                long_value |= value_chars(field.data)? > limits.attribute_value_chars;
            }
            (LOG_BODY, LEN) => body_len = string_value(field.data)?.map_or(field.data.len(), <[u8]>::len),
            (LOG_TIME, I64) => time = field.int,
            (LOG_OBSERVED, I64) => observed = field.int,
            _ => {}
        }
    }
    report.log_body += u64::from(body_len > limits.log_body_bytes);
    report.log_attributes += u64::from(attributes > limits.log_attributes);
    report.attribute_value += u64::from(long_value);
    // The record's own time, else when it was observed (OTLP's rule for an unset time).
    report.too_old += u64::from(is_old(if time != 0 { time } else { observed }, limits, now_ns));
    Ok(())
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
    fn metrics_and_truncated_input() {
        assert_eq!(
            check(Signal::Metrics, b"\xff", &ContentLimits::DASH0, NOW).unwrap(),
            ContentReport::default()
        );
        let body = request(&[log("x", 1, 1, NOW)]);
        assert!(check(Signal::Logs, &body[..body.len() - 3], &ContentLimits::DASH0, NOW).is_err());
    }
}
