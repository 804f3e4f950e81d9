//! `POST /v1/events` on the front: decoded, queued twice (OTLP logs on the main pipeline, then
//! normalized NDJSON on the event bus) and counted for the job metrics, with the statuses and
//! JSON bodies `receivers/events.py` gives, byte for byte. What the front does not take here (an
//! unknown content type, no or a bad token, a declared excess) goes to the app.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{json_message, push_json_string, queue_error_status};
use crate::decompress;
use crate::error::{CoreError, Result};
use crate::events::{self, Decoded, Event};
use crate::pipeline::Pipeline;
use crate::queue::SyncPoint;
use crate::scrub::Scrubber;
use crate::signal::Signal;

pub const ROUTE: &str = "/v1/events";

/// The content types `/v1/events` takes ("" is none given); the app reads them from here
/// (`_core.EVENTS_CONTENT_TYPES`).
pub const CONTENT_TYPES: &[&str] = &[
    "",
    "application/json",
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/jsonlines",
    "application/x-jsonlines",
    "text/plain",
];

/// Whether the front answers a body of this media type (lowercased, no parameters).
pub fn takes(media: Option<&str>) -> bool {
    CONTENT_TYPES.contains(&media.unwrap_or(""))
}

/// Counts one request's accepted events for the job metrics, once they are durable.
pub type CountJobs = Arc<dyn Fn(&[Event]) + Send + Sync>;

/// Events, by outcome, for /metrics (`trackgate_events_total`, `trackgate_events_scrubbed_total`).
#[derive(Debug, Default)]
pub struct Counts {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub scrubbed: AtomicU64,
}

/// What the route needs besides the main pipeline.
pub struct EventsRoute {
    /// The event bus's pipeline; None when no bus is configured.
    pub bus: Option<Arc<Pipeline>>,
    /// `[scrub]` rules for each event's `data`, when `[scrub] tracks` covers events.
    pub scrubber: Option<Scrubber>,
    /// The job metrics' intake, and whether it waits on I/O (the shared state in Redis): then it
    /// runs on a blocking thread.
    pub count_jobs: Option<(CountJobs, bool)>,
    pub counts: Counts,
}

/// A body decoded and its accepted events queued: durable once both points are.
pub struct Queued {
    pub decoded: Decoded,
    pub points: [Option<SyncPoint>; 2],
}

impl EventsRoute {
    /// Decodes a body and queues its accepted events on `main` (as OTLP log records, scrubbed by
    /// the OTLP rules too), then on the bus: a failure before the bus makes the client retry, and
    /// only the OTLP copy can repeat. Refused and scrubbed events are counted once decoded.
    pub fn queue(
        &self,
        main: &Pipeline,
        body: &[u8],
        encoding: Option<&str>,
        limit: usize,
    ) -> std::result::Result<Queued, Refused> {
        let now = events::unix_nanos();
        let mut decoded = decompress::decompress(body, encoding, limit)
            .and_then(|body| events::decode(&body, now))
            .map_err(Refused::Body)?;
        let scrubbed = self
            .scrubber
            .as_ref()
            .map_or(0, |s| events::scrub_data(&mut decoded, s));
        self.counts.scrubbed.fetch_add(scrubbed as u64, Ordering::Relaxed);
        self.counts
            .rejected
            .fetch_add(decoded.rejected_count as u64, Ordering::Relaxed);
        let points = self.queue_decoded(main, &decoded, now).map_err(Refused::Queue)?;
        Ok(Queued { decoded, points })
    }

    fn queue_decoded(&self, main: &Pipeline, decoded: &Decoded, now: u64) -> Result<[Option<SyncPoint>; 2]> {
        let mut points = [None, None];
        if !decoded.events.is_empty() {
            let logs = events::to_otlp_logs(&decoded.events, now);
            // Built here from checked events: walked without the schema check. It may be larger
            // than the body it came from, and is not held to the body limit.
            points[0] = main.ingest_built_deferred(Signal::Logs, &logs, true)?.1;
            if let Some(bus) = &self.bus {
                let ndjson = events::to_ndjson(&decoded.events);
                points[1] = bus.enqueue_deferred(Signal::Logs, decoded.events.len() as u64, ndjson)?;
            }
        }
        Ok(points)
    }

    /// Counts the accepted events of a durable request (job metrics first, as the app does).
    pub fn accepted(&self, events: &[Event]) {
        if let Some((count, _)) = &self.count_jobs {
            // The events are durable and answered for: a failed count must not fail the request.
            let _ = catch_unwind(AssertUnwindSafe(|| count(events)));
        }
        self.counts.accepted.fetch_add(events.len() as u64, Ordering::Relaxed);
    }

    /// Whether the job metrics' intake may wait on I/O.
    pub fn counting_blocks(&self) -> bool {
        self.count_jobs.as_ref().is_some_and(|(_, blocks)| *blocks)
    }
}

/// `{"error": message}` as the app writes it.
pub fn error_body(message: &str) -> Vec<u8> {
    json_message("error", message)
}

/// The answer's status and body: `{"accepted": n, "event_ids": [...]}`, with `partialSuccess`
/// when events were refused; 400 when every event was refused.
pub fn answer(decoded: &Decoded) -> (u16, Vec<u8>) {
    let accepted = decoded.events.len();
    let mut out = Vec::with_capacity(32 + accepted * 40);
    out.extend_from_slice(format!("{{\"accepted\":{accepted},\"event_ids\":[").as_bytes());
    for (i, event) in decoded.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_string(&mut out, &event.event_id);
    }
    out.push(b']');
    let rejected = decoded.rejected_count;
    if rejected > 0 {
        out.extend_from_slice(
            format!(",\"partialSuccess\":{{\"rejectedEvents\":{rejected},\"errorMessage\":").as_bytes(),
        );
        push_json_string(&mut out, &decoded.error_message());
        out.extend_from_slice(b",\"errors\":[");
        for (i, (index, reason)) in decoded.rejected.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("{{\"index\":{index},\"reason\":").as_bytes());
            push_json_string(&mut out, reason);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b'}');
    let status = if rejected > 0 && accepted == 0 { 400 } else { 200 };
    (status, out)
}

/// Why a request's events were not queued: its body does not decode (the client's to fix), or
/// queueing them (or their fsync) failed.
#[derive(Debug)]
pub enum Refused {
    Body(CoreError),
    Queue(CoreError),
}

/// The status and message the app answers with; `None`: its 500 (an error it does not expect).
pub fn error_status(refused: &Refused) -> Option<(u16, String)> {
    Some(match refused {
        Refused::Body(CoreError::Decode(m)) => (400, format!("cannot decode events: {m}")),
        Refused::Body(err @ CoreError::TooLarge { .. }) => (413, err.to_string()),
        Refused::Body(CoreError::Unsupported(m)) => (415, m.clone()),
        Refused::Queue(err) => return queue_error_status(err),
        Refused::Body(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(body: &str) -> Decoded {
        events::decode(body.as_bytes(), 1).unwrap()
    }

    #[test]
    fn the_answer_lists_ids_and_refusals_in_the_apps_order() {
        let d = decoded(r#"[{"event_type":"job_started","event_id":"a\u0001\"é"}, 5]"#);
        let (status, body) = answer(&d);
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.starts_with(
                r#"{"accepted":1,"event_ids":["a\u0001\"é"],"partialSuccess":{"rejectedEvents":1,"errorMessage":"#
            ),
            "{text}"
        );
        assert!(
            text.ends_with(r#""errors":[{"index":1,"reason":"an event must be a JSON object"}]}}"#),
            "{text}"
        );
        let (status, _) = answer(&decoded("[5]"));
        assert_eq!(status, 400, "every event refused");
        assert_eq!(
            answer(&decoded("[]")),
            (200, br#"{"accepted":0,"event_ids":[]}"#.to_vec())
        );
    }

    #[test]
    fn content_types_are_the_apps() {
        assert!(takes(None) && takes(Some("application/x-ndjson")) && takes(Some("text/plain")));
        assert!(!takes(Some("application/x-protobuf")));
    }

    #[test]
    fn errors_get_the_apps_statuses() {
        let status = |r: Refused| error_status(&r).map(|(s, _)| s);
        assert_eq!(
            error_status(&Refused::Body(CoreError::decode("x"))),
            Some((400, "cannot decode events: x".into()))
        );
        assert_eq!(status(Refused::Body(CoreError::TooLarge { limit: 9 })), Some(413));
        assert_eq!(
            status(Refused::Queue(CoreError::QueueFull { used: 1, limit: 2 })),
            Some(429)
        );
        assert_eq!(
            error_status(&Refused::Queue(CoreError::Storage("disk".into()))),
            Some((503, "queue storage unavailable; retry later".into()))
        );
        // What the app does not expect while queueing is its 500.
        assert_eq!(status(Refused::Queue(CoreError::decode("x"))), None);
        assert_eq!(status(Refused::Queue(CoreError::Locked("x".into()))), None);
        assert_eq!(error_body("a\"b"), br#"{"error":"a\"b"}"#.to_vec());
    }
}
