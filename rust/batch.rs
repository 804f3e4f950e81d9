//! Batching across requests for one (exporter, signal).
//!
//! Every queued payload is a complete `Export*ServiceRequest` whose only top-level field is the
//! repeated field 1, and protobuf merges concatenated messages by appending repeated fields, so a
//! batch body is the payloads written back to back: no decoding, one copy.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::error::{CoreError, Result};
use crate::limits::{self, ContentLimits, ContentReport};
use crate::queue::{Payload, Queue, Seq};
use crate::signal::Signal;

/// When a batch closes: at `max_records` or `max_bytes` (an entry larger than either forms its
/// own batch), or once the oldest pending entry is `max_delay` old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_records: u64,
    pub max_bytes: usize,
    pub max_delay: Duration,
}

impl Limits {
    pub fn new(max_records: u64, max_bytes: usize, max_delay: Duration) -> Result<Self> {
        if max_records == 0 {
            return Err(CoreError::Usage("batch_max_records must be at least 1".into()));
        }
        if max_bytes == 0 {
            return Err(CoreError::Usage("batch_max_bytes must be at least 1".into()));
        }
        Ok(Limits {
            max_records,
            max_bytes,
            max_delay,
        })
    }
}

impl Default for Limits {
    /// The OpenTelemetry Collector's batch processor defaults (8192 records, 200 ms), 4 MiB.
    fn default() -> Self {
        Limits {
            max_records: 8192,
            max_bytes: 4 << 20,
            max_delay: Duration::from_millis(200),
        }
    }
}

/// Consecutive queue entries handed to one exporter, to be sent as one request.
#[derive(Debug, Clone)]
pub struct Batch {
    pub exporter: String,
    pub signal: Signal,
    pub first_seq: Seq,
    /// Acking the batch commits the exporter's cursor up to here.
    pub last_seq: Seq,
    pub records: u64,
    parts: Vec<Payload>,
    len: usize,
}

impl Batch {
    /// Length of the body in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of queued requests merged into this batch.
    pub fn entries(&self) -> usize {
        self.parts.len()
    }

    /// Writes the body into `out`, which must be exactly [`Batch::len`] bytes (for filling a
    /// buffer allocated elsewhere, e.g. a Python `bytes`, without an intermediate copy).
    pub fn write_body(&self, out: &mut [u8]) -> Result<()> {
        if out.len() != self.len {
            return Err(CoreError::Usage(format!(
                "batch body is {} bytes, buffer is {}",
                self.len,
                out.len()
            )));
        }
        let mut rest = out;
        for part in &self.parts {
            let Some((head, tail)) = rest.split_at_mut_checked(part.len()) else {
                return Err(CoreError::Usage("batch parts are longer than the batch".into()));
            };
            head.copy_from_slice(part);
            rest = tail;
        }
        Ok(())
    }

    /// The Dash0 content report of the body at `now_ns`, from the counts ingest kept with each
    /// entry. Entries without usable counts (read back from disk, queued raw, or holding a record
    /// that has aged past the limit since) are returned as byte ranges of the body to walk with
    /// [`limits::check`]; their counts are not in the report.
    pub fn content_counts(&self, limits: &ContentLimits, now_ns: u64) -> (ContentReport, Vec<Range<usize>>) {
        let mut report = ContentReport::default();
        let mut walk = Vec::new();
        let mut at = 0;
        for part in &self.parts {
            match part.counts().and_then(|c| c.at(limits, now_ns)) {
                Some(r) => report.add(&r),
                None => walk.push(at..at + part.len()),
            }
            at += part.len();
        }
        (report, walk)
    }

    /// The report of a body this batch wrote, at `now_ns`: the kept counts plus a walk of
    /// the entries that have none.
    pub fn content_report(&self, body: &[u8], limits: &ContentLimits, now_ns: u64) -> Result<ContentReport> {
        let (mut report, walk) = self.content_counts(limits, now_ns);
        for range in walk {
            let part = body
                .get(range)
                .ok_or_else(|| CoreError::Usage("body is shorter than the batch".into()))?;
            report.add(&limits::check(self.signal, part, limits, now_ns)?);
        }
        Ok(report)
    }

    /// The body as a new buffer.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for part in &self.parts {
            out.extend_from_slice(part);
        }
        out
    }
}

/// What [`Batcher::poll`] found.
#[derive(Debug)]
pub enum Poll {
    /// Nothing pending.
    Empty,
    /// Entries are pending but no limit is reached; ask again at this instant, or once the
    /// appends since this poll fill the room left.
    Wait(Instant, Room),
    Ready(Batch),
}

/// What may still be appended before a pending batch reaches a limit (and is due at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub records: u64,
    pub bytes: u64,
}

impl Room {
    pub const NONE: Room = Room { records: 0, bytes: 0 };
    pub const ANY: Room = Room {
        records: u64::MAX,
        bytes: u64::MAX,
    };

    /// Whether `appended` fills this room (reaches a limit).
    pub fn filled_by(self, appended: Room) -> bool {
        appended.records >= self.records || appended.bytes >= self.bytes
    }

    /// The room left after `appended`, at most `other`'s.
    pub fn less(self, appended: Room) -> Room {
        Room {
            records: self.records.saturating_sub(appended.records),
            bytes: self.bytes.saturating_sub(appended.bytes),
        }
    }

    pub fn min(self, other: Room) -> Room {
        Room {
            records: self.records.min(other.records),
            bytes: self.bytes.min(other.bytes),
        }
    }

    pub fn add(&mut self, records: u64, bytes: u64) {
        self.records = self.records.saturating_add(records);
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// Cuts batches out of a [`Queue`] by [`Limits`]. Stateless: the cursors live in the queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Batcher {
    pub limits: Limits,
}

impl Batcher {
    pub fn new(limits: Limits) -> Self {
        Batcher { limits }
    }

    /// Takes the next batch for `exporter` if one is due at `now` (or anything pending, with
    /// `flush`), moving the exporter's read cursor past it.
    ///
    /// Two polls for the same (exporter, signal) must not run at once (the pipeline serializes
    /// them); otherwise the second may take entries past the cut the first computed.
    pub fn poll(&self, queue: &dyn Queue, exporter: &str, signal: Signal, now: Instant, flush: bool) -> Result<Poll> {
        let limits = &self.limits;
        let pending = queue.pending(exporter, signal)?;
        let Some(oldest) = pending.oldest else {
            return Ok(Poll::Empty);
        };
        let full = pending.records >= limits.max_records || pending.bytes >= limits.max_bytes as u64;
        let due = oldest.checked_add(limits.max_delay).unwrap_or(now);
        if !full && !flush && now < due {
            let room = Room {
                records: limits.max_records - pending.records,
                bytes: (limits.max_bytes as u64).saturating_sub(pending.bytes),
            };
            return Ok(Poll::Wait(due, room));
        }

        // Find the cut: as many entries as fit, and always at least one.
        let (mut upto, mut records, mut bytes) = (0, 0u64, 0usize);
        queue.read(exporter, signal, &mut |entry| {
            let len = entry.len;
            if upto != 0 && (records + entry.records > limits.max_records || bytes + len > limits.max_bytes) {
                return false;
            }
            upto = entry.seq;
            records += entry.records;
            bytes += len;
            records < limits.max_records && bytes < limits.max_bytes
        })?;
        let entries = queue.take(exporter, signal, upto)?;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(Poll::Empty);
        };
        let (first_seq, last_seq) = (first.seq, last.seq);
        let records = entries.iter().map(|e| e.records).sum();
        let len = entries.iter().map(|e| e.payload.len()).sum();
        let parts = entries.into_iter().map(|e| e.payload).collect();
        Ok(Poll::Ready(Batch {
            exporter: exporter.to_owned(),
            signal,
            first_seq,
            last_seq,
            records,
            parts,
            len,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::MemoryQueue;
    use crate::wire::{self, Fields};

    fn queue() -> MemoryQueue {
        MemoryQueue::new(vec!["a".into(), "b".into()], 1 << 20).unwrap()
    }

    /// A request holding `n` top-level entries of `size` bytes each, like an ingest payload.
    fn request(n: usize, size: usize, fill: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            wire::put_bytes(&mut out, 1, &vec![fill; size]);
        }
        out
    }

    fn batcher(max_records: u64, max_bytes: usize, delay_ms: u64) -> Batcher {
        Batcher::new(Limits::new(max_records, max_bytes, Duration::from_millis(delay_ms)).unwrap())
    }

    fn ready(p: Poll) -> Batch {
        match p {
            Poll::Ready(b) => b,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn closes_at_max_records() {
        let q = queue();
        for i in 0..5 {
            q.append(Signal::Logs, 3, Payload::from(request(1, 4, i))).unwrap();
        }
        let b = batcher(7, 1 << 20, 60_000);
        let now = Instant::now();
        // 3 + 3 fit under 7, a third entry would pass it.
        let first = ready(b.poll(&q, "a", Signal::Logs, now, false).unwrap());
        assert_eq!(
            (first.first_seq, first.last_seq, first.records, first.entries()),
            (1, 2, 6, 2)
        );
        let second = ready(b.poll(&q, "a", Signal::Logs, now, false).unwrap());
        assert_eq!((second.first_seq, second.last_seq, second.records), (3, 4, 6));
        // One entry (3 records) left: below the limit, so it waits for the delay.
        assert!(matches!(
            b.poll(&q, "a", Signal::Logs, now, false).unwrap(),
            Poll::Wait(..)
        ));
        // The other exporter is unaffected.
        assert_eq!(ready(b.poll(&q, "b", Signal::Logs, now, false).unwrap()).last_seq, 2);
    }

    #[test]
    fn exactly_at_max_records_is_full() {
        let q = queue();
        q.append(Signal::Traces, 2, Payload::from(request(2, 1, 0))).unwrap();
        q.append(Signal::Traces, 2, Payload::from(request(2, 1, 0))).unwrap();
        q.append(Signal::Traces, 2, Payload::from(request(2, 1, 0))).unwrap();
        let b = batcher(4, 1 << 20, 60_000);
        let batch = ready(b.poll(&q, "a", Signal::Traces, Instant::now(), false).unwrap());
        assert_eq!((batch.last_seq, batch.records), (2, 4));
    }

    #[test]
    fn closes_at_max_bytes() {
        let q = queue();
        for _ in 0..4 {
            q.append(Signal::Metrics, 1, Payload::from(vec![0u8; 40])).unwrap();
        }
        let b = batcher(1000, 100, 60_000);
        let now = Instant::now();
        let batch = ready(b.poll(&q, "a", Signal::Metrics, now, false).unwrap());
        assert_eq!((batch.last_seq, batch.len()), (2, 80));
        // 80 bytes left: under the limit, so they wait (or go with flush).
        assert!(matches!(
            b.poll(&q, "a", Signal::Metrics, now, false).unwrap(),
            Poll::Wait(..)
        ));
        let batch = ready(b.poll(&q, "a", Signal::Metrics, now, true).unwrap());
        assert_eq!((batch.first_seq, batch.last_seq, batch.len()), (3, 4, 80));
    }

    #[test]
    fn an_oversize_entry_forms_its_own_batch() {
        let q = queue();
        q.append(Signal::Logs, 1, Payload::from(vec![1u8; 10])).unwrap();
        q.append(Signal::Logs, 50, Payload::from(vec![2u8; 500])).unwrap();
        q.append(Signal::Logs, 1, Payload::from(vec![3u8; 10])).unwrap();
        let b = batcher(10, 100, 60_000);
        let now = Instant::now();
        let first = ready(b.poll(&q, "a", Signal::Logs, now, false).unwrap());
        assert_eq!((first.last_seq, first.len()), (1, 10));
        let big = ready(b.poll(&q, "a", Signal::Logs, now, false).unwrap());
        assert_eq!((big.first_seq, big.last_seq, big.records, big.len()), (2, 2, 50, 500));
        assert!(matches!(
            b.poll(&q, "a", Signal::Logs, now, false).unwrap(),
            Poll::Wait(..)
        ));
    }

    #[test]
    fn waits_for_the_delay_of_the_oldest_entry() {
        let q = queue();
        q.append(Signal::Logs, 1, Payload::from(request(1, 3, 0))).unwrap();
        let start = Instant::now();
        q.append(Signal::Logs, 1, Payload::from(request(1, 3, 0))).unwrap();
        let b = batcher(100, 1 << 20, 200);
        let Poll::Wait(due, _) = b.poll(&q, "a", Signal::Logs, start, false).unwrap() else {
            panic!("expected to wait");
        };
        assert!(due > start && due <= start + Duration::from_millis(200));
        assert!(matches!(
            b.poll(&q, "a", Signal::Logs, due - Duration::from_millis(1), false)
                .unwrap(),
            Poll::Wait(..)
        ));
        let batch = ready(b.poll(&q, "a", Signal::Logs, due, false).unwrap());
        assert_eq!((batch.records, batch.entries()), (2, 2));
        assert!(matches!(
            b.poll(&q, "a", Signal::Logs, due, false).unwrap(),
            Poll::Empty
        ));
    }

    #[test]
    fn zero_delay_sends_at_once() {
        let q = queue();
        q.append(Signal::Logs, 1, Payload::from(request(1, 3, 0))).unwrap();
        let b = batcher(100, 1 << 20, 0);
        assert_eq!(
            ready(b.poll(&q, "a", Signal::Logs, Instant::now(), false).unwrap()).records,
            1
        );
    }

    #[test]
    fn flush_ignores_the_delay_but_not_the_limits() {
        let q = queue();
        for _ in 0..3 {
            q.append(Signal::Traces, 2, Payload::from(request(2, 3, 0))).unwrap();
        }
        let b = batcher(4, 1 << 20, 60_000);
        let now = Instant::now();
        assert_eq!(ready(b.poll(&q, "a", Signal::Traces, now, true).unwrap()).records, 4);
        assert_eq!(ready(b.poll(&q, "a", Signal::Traces, now, true).unwrap()).records, 2);
        assert!(matches!(
            b.poll(&q, "a", Signal::Traces, now, true).unwrap(),
            Poll::Empty
        ));
    }

    #[test]
    fn body_is_the_payloads_concatenated_and_a_valid_request() {
        let q = queue();
        let parts = [request(2, 5, 1), request(1, 200, 2), request(3, 1, 3)];
        for p in &parts {
            q.append(Signal::Logs, 1, Payload::from(p.clone())).unwrap();
        }
        let batch = ready(
            batcher(100, 1 << 20, 0)
                .poll(&q, "a", Signal::Logs, Instant::now(), false)
                .unwrap(),
        );
        let body = batch.body();
        assert_eq!(body, parts.concat());
        let mut buf = vec![0u8; batch.len()];
        batch.write_body(&mut buf).unwrap();
        assert_eq!(buf, body);
        assert!(batch.write_body(&mut [0u8; 3]).is_err());
        let fields: Vec<_> = Fields::new(&body).collect::<crate::Result<_>>().unwrap();
        assert_eq!(fields.len(), 6);
        assert!(fields.iter().all(|f| f.number == 1 && f.wire_type == wire::LEN));
        assert_eq!(fields[2].data, &[2u8; 200][..]);
    }

    #[test]
    fn content_report_sums_the_kept_counts_and_walks_the_rest() {
        use crate::limits::{check, count, ContentLimits};
        let now = 1_800_000_000_000_000_000u64;
        let limits = &ContentLimits::DASH0;
        // A log request with one record whose body is over the limit.
        let big_log = |fill: u8| {
            let mut rec = Vec::new();
            wire::put_message(&mut rec, 5, |v| wire::put_bytes(v, 1, &vec![fill; 5000]));
            let mut out = Vec::new();
            wire::put_message(&mut out, 1, |rs| {
                wire::put_message(rs, 2, |ss| wire::put_bytes(ss, 2, &rec))
            });
            out
        };
        let q = queue();
        let counted = big_log(b'a');
        let counts = count(Signal::Logs, &counted, limits, now).unwrap();
        q.append(Signal::Logs, 1, Payload::with_counts(counted, Some(counts)))
            .unwrap();
        q.append(Signal::Logs, 1, Payload::from(big_log(b'b'))).unwrap(); // e.g. read back from disk
        let batch = ready(
            batcher(100, 1 << 20, 0)
                .poll(&q, "a", Signal::Logs, Instant::now(), false)
                .unwrap(),
        );
        let (report, walk) = batch.content_counts(limits, now);
        assert_eq!(report.log_body, 1);
        let second = batch.len() - walk[0].len();
        assert_eq!(walk, vec![second..batch.len()]);
        let body = batch.body();
        let full = batch.content_report(&body, limits, now).unwrap();
        assert_eq!(full, check(Signal::Logs, &body, limits, now).unwrap());
        assert_eq!(full.log_body, 2);
    }

    #[test]
    fn limits_must_be_positive() {
        assert!(Limits::new(0, 1, Duration::ZERO).is_err());
        assert!(Limits::new(1, 0, Duration::ZERO).is_err());
        assert!(Limits::new(1, 1, Duration::ZERO).is_ok());
    }
}
