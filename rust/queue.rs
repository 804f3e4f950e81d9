//! The queue between ingest and the exporters: one lane per signal, one cursor per exporter.
//!
//! Entries are numbered per signal by `Seq` (1, 2, …). Each exporter has a read cursor (the last
//! seq handed to it) and an acked cursor (the last seq it committed); an entry is freed once every
//! exporter has acked it. [`Queue`] speaks only in seqs, cursors and acks so that the disk-backed
//! queue ([`crate::disk_queue::DiskQueue`]) implements it beside [`MemoryQueue`]. `read` shows
//! metadata only and `take` hands out payloads, so a queue that keeps payloads on disk reads each
//! one once per exporter.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::error::{CoreError, Result};
use crate::limits::Counts;
use crate::signal::Signal;

/// Position of an entry in its signal's lane; 0 means "before the first entry".
pub type Seq = u64;

/// One queued, immutable `Export*ServiceRequest`, shared by every exporter that reads it, with
/// the Dash0 content counts ingest took of it when it has them (kept in memory only: a payload
/// read back from disk comes without, and is walked again if an exporter asks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(Arc<PayloadData>);

#[derive(Debug, PartialEq, Eq)]
struct PayloadData {
    data: Vec<u8>,
    counts: Option<Counts>,
}

impl Payload {
    /// Takes the buffer without copying, unless it holds much more capacity than data: the queue
    /// accounts for `len`, so slack would be memory the byte limit does not see.
    pub fn with_counts(mut data: Vec<u8>, counts: Option<Counts>) -> Self {
        if data.capacity() - data.len() > data.len() / 4 + 64 {
            data.shrink_to_fit();
        }
        Payload(Arc::new(PayloadData { data, counts }))
    }

    pub fn len(&self) -> usize {
        self.0.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.data.is_empty()
    }

    /// The content counts taken at ingest, if any.
    pub fn counts(&self) -> Option<&Counts> {
        self.0.counts.as_ref()
    }
}

impl From<Vec<u8>> for Payload {
    fn from(data: Vec<u8>) -> Self {
        Payload::with_counts(data, None)
    }
}

impl From<&[u8]> for Payload {
    fn from(data: &[u8]) -> Self {
        Payload::with_counts(data.to_vec(), None)
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.data
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.0.data
    }
}

/// Where an append ends in its storage: the append is durable once an fsync covers this point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPoint {
    pub segment: u64,
    pub end: u64,
}

/// Told when the fsyncs covering deferred appends ran: `deliver` gets, once per group commit,
/// the `(token, outcome)` of every waiter of this sink that the group settled. Called from the
/// queue's syncer thread; it must not block on anything that waits for that thread.
pub trait DurableSink: Send + Sync {
    fn deliver(&self, results: Vec<(u64, Result<()>)>);
}

/// One entry as readers see it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: Seq,
    /// Records (spans, log records, data points) in the payload.
    pub records: u64,
    pub payload: Payload,
    /// When the entry was appended (a persistent queue may use the time it loaded the entry).
    pub appended: Instant,
}

/// What [`Queue::read`] shows of an entry: enough to cut a batch, without the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryInfo {
    pub seq: Seq,
    pub records: u64,
    /// Payload length in bytes.
    pub len: usize,
    pub appended: Instant,
}

impl Entry {
    pub fn info(&self) -> EntryInfo {
        EntryInfo {
            seq: self.seq,
            records: self.records,
            len: self.payload.len(),
            appended: self.appended,
        }
    }
}

/// What an exporter has not yet been handed for one signal: what a batcher needs to decide
/// whether to wait, without walking the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub entries: u64,
    pub records: u64,
    pub bytes: u64,
    /// Append time of the first unread entry.
    pub oldest: Option<Instant>,
}

/// Byte and record accounting of the entries still held (not yet acked by every exporter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub bytes: usize,
    pub max_bytes: usize,
    /// Held records and bytes per signal, indexed by [`Signal::index`].
    pub records_by_signal: [u64; 3],
    pub bytes_by_signal: [u64; 3],
}

/// A bounded queue with per-exporter cursors. All methods are safe to call from many threads.
///
/// Acks are cumulative: acking seq `n` commits every entry up to `n` for that exporter, so an
/// exporter that keeps several batches in flight must ack them in order.
pub trait Queue: Send + Sync {
    /// The exporters this queue keeps cursors for, in configuration order.
    fn exporters(&self) -> &[String];

    /// Appends an entry and returns its seq. `QueueFull` when it does not fit under the byte limit
    /// now, `TooLarge` when it never would.
    fn append(&self, signal: Signal, records: u64, payload: Payload) -> Result<Seq>;

    /// `append` without waiting for the fsync the policy asks for: returns the point to wait on
    /// (with [`Queue::sync_point`] or [`Queue::when_durable`]) when there is one. The entry may
    /// be handed to exporters before then, as with `append`.
    fn append_deferred(&self, signal: Signal, records: u64, payload: Payload) -> Result<(Seq, Option<SyncPoint>)> {
        self.append(signal, records, payload).map(|seq| (seq, None))
    }

    /// Waits until `point` is durable (group commit with concurrent waiters).
    fn sync_point(&self, _point: SyncPoint) -> Result<()> {
        Ok(())
    }

    /// Has `sink` told (with `token`) once `point` is durable or can never be, without waiting.
    fn when_durable(&self, _point: SyncPoint, sink: Arc<dyn DurableSink>, token: u64) {
        sink.deliver(vec![(token, Ok(()))]);
    }

    /// What `exporter` has not been handed yet.
    fn pending(&self, exporter: &str, signal: Signal) -> Result<Pending>;

    /// Visits the entries after `exporter`'s read cursor in seq order until `visit` returns false.
    /// Does not move the cursor.
    fn read(&self, exporter: &str, signal: Signal, visit: &mut dyn FnMut(&EntryInfo) -> bool) -> Result<()>;

    /// Hands `exporter` the entries after its read cursor up to and including `upto`, and moves
    /// the read cursor there. Returns nothing when the cursor is already at or past `upto`. A
    /// queue that reads payloads back from storage may hand out fewer (the cursor moves past
    /// what it hands out), or fail with the cursor unmoved when the first cannot be read.
    fn take(&self, exporter: &str, signal: Signal, upto: Seq) -> Result<Vec<Entry>>;

    /// Commits `exporter`'s entries up to and including `upto`. Acking again, or below the
    /// current acked position, is a no-op; acking past what was handed out is an error.
    fn ack(&self, exporter: &str, signal: Signal, upto: Seq) -> Result<()>;

    fn usage(&self) -> Usage;

    /// Makes every append and ack so far durable, whatever the fsync policy (called once the
    /// pipeline has drained at shutdown). A queue that keeps nothing has nothing to do.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Queue-specific counters and gauges for [`crate::pipeline::Pipeline::stats`].
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// What opening the queue found and repaired, as (name, value); empty for a queue that
    /// starts empty every time.
    fn recovery(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Checks a list of exporter names: at least one, no duplicates, no empty name.
pub fn check_exporters(exporters: &[String]) -> Result<()> {
    if exporters.is_empty() {
        return Err(CoreError::Usage("at least one exporter is required".into()));
    }
    for (i, name) in exporters.iter().enumerate() {
        if name.is_empty() {
            return Err(CoreError::Usage("exporter names must not be empty".into()));
        }
        if exporters[..i].contains(name) {
            return Err(CoreError::Usage(format!("exporter {name:?} is configured twice")));
        }
    }
    Ok(())
}

/// The error for an exporter name that is not configured.
pub fn unknown_exporter(name: &str, exporters: &[String]) -> CoreError {
    CoreError::Usage(format!(
        "unknown exporter {name:?} (configured: {})",
        exporters.join(", ")
    ))
}

/// An entry plus running totals of its lane up to and including it, so pending counts are O(1).
#[derive(Debug)]
struct Stored {
    entry: Entry,
    total_records: u64,
    total_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    read: Seq,
    /// Lane totals at `read`, kept here because that entry may already be freed.
    read_records: u64,
    read_bytes: u64,
    acked: Seq,
}

#[derive(Debug)]
struct Lane {
    /// Held entries; seqs are contiguous, the front one is the oldest not acked by everyone.
    entries: VecDeque<Stored>,
    /// Seq of the last appended entry.
    last: Seq,
    /// Running totals of everything ever appended.
    total_records: u64,
    total_bytes: u64,
    held_records: u64,
    held_bytes: u64,
    cursors: Vec<Cursor>,
}

impl Lane {
    fn new(exporters: usize) -> Self {
        Lane {
            entries: VecDeque::new(),
            last: 0,
            total_records: 0,
            total_bytes: 0,
            held_records: 0,
            held_bytes: 0,
            cursors: vec![Cursor::default(); exporters],
        }
    }

    /// The held entry with this seq, if any.
    fn get(&self, seq: Seq) -> Option<&Stored> {
        let first = self.entries.front()?.entry.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.entries.get(index)
    }

    /// Held entries after `seq`, in order.
    fn after(&self, seq: Seq) -> impl Iterator<Item = &Stored> {
        let skip = match self.entries.front() {
            Some(front) => usize::try_from((seq + 1).saturating_sub(front.entry.seq)).unwrap_or(usize::MAX),
            None => 0,
        };
        self.entries.iter().skip(skip)
    }
}

#[derive(Debug)]
struct State {
    lanes: [Lane; 3],
    used: usize,
}

/// The in-memory [`Queue`]: lost on restart, bounded by `max_bytes` of payload.
#[derive(Debug)]
pub struct MemoryQueue {
    exporters: Vec<String>,
    max_bytes: usize,
    state: Mutex<State>,
}

impl MemoryQueue {
    pub fn new(exporters: Vec<String>, max_bytes: usize) -> Result<Self> {
        check_exporters(&exporters)?;
        if max_bytes == 0 {
            return Err(CoreError::Usage("queue_max_bytes must be at least 1".into()));
        }
        let n = exporters.len();
        let state = State {
            lanes: [Lane::new(n), Lane::new(n), Lane::new(n)],
            used: 0,
        };
        Ok(MemoryQueue {
            exporters,
            max_bytes,
            state: Mutex::new(state),
        })
    }

    fn exporter_index(&self, name: &str) -> Result<usize> {
        self.exporters
            .iter()
            .position(|e| e == name)
            .ok_or_else(|| unknown_exporter(name, &self.exporters))
    }

    /// Locks the state. A panic elsewhere while holding the lock cannot leave it half-updated in
    /// a way later calls would trip on (every update is a few field writes), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Queue for MemoryQueue {
    fn exporters(&self) -> &[String] {
        &self.exporters
    }

    fn append(&self, signal: Signal, records: u64, payload: Payload) -> Result<Seq> {
        let len = payload.len();
        if len > self.max_bytes {
            return Err(CoreError::TooLarge { limit: self.max_bytes });
        }
        let mut state = self.lock();
        if state.used + len > self.max_bytes {
            return Err(CoreError::QueueFull {
                used: state.used,
                limit: self.max_bytes,
            });
        }
        state.used += len;
        let lane = &mut state.lanes[signal.index()];
        lane.last += 1;
        lane.total_records += records;
        lane.total_bytes += len as u64;
        lane.held_records += records;
        lane.held_bytes += len as u64;
        let entry = Entry {
            seq: lane.last,
            records,
            payload,
            appended: Instant::now(),
        };
        let stored = Stored {
            entry,
            total_records: lane.total_records,
            total_bytes: lane.total_bytes,
        };
        lane.entries.push_back(stored);
        Ok(lane.last)
    }

    fn pending(&self, exporter: &str, signal: Signal) -> Result<Pending> {
        let e = self.exporter_index(exporter)?;
        let state = self.lock();
        let lane = &state.lanes[signal.index()];
        let cursor = lane.cursors[e];
        Ok(Pending {
            entries: lane.last - cursor.read,
            records: lane.total_records - cursor.read_records,
            bytes: lane.total_bytes - cursor.read_bytes,
            oldest: lane.get(cursor.read + 1).map(|s| s.entry.appended),
        })
    }

    fn read(&self, exporter: &str, signal: Signal, visit: &mut dyn FnMut(&EntryInfo) -> bool) -> Result<()> {
        let e = self.exporter_index(exporter)?;
        let state = self.lock();
        let lane = &state.lanes[signal.index()];
        for stored in lane.after(lane.cursors[e].read) {
            if !visit(&stored.entry.info()) {
                break;
            }
        }
        Ok(())
    }

    fn take(&self, exporter: &str, signal: Signal, upto: Seq) -> Result<Vec<Entry>> {
        let e = self.exporter_index(exporter)?;
        let mut state = self.lock();
        let lane = &mut state.lanes[signal.index()];
        let upto = upto.min(lane.last);
        let read = lane.cursors[e].read;
        if upto <= read {
            return Ok(Vec::new());
        }
        let taken: Vec<Entry> = lane
            .after(read)
            .take_while(|s| s.entry.seq <= upto)
            .map(|s| s.entry.clone())
            .collect();
        // Entries past an exporter's read cursor are never freed, so `upto` is held.
        let Some(last) = lane.get(upto) else {
            return Err(CoreError::Usage(format!("{signal} entry {upto} is no longer queued")));
        };
        let (read_records, read_bytes) = (last.total_records, last.total_bytes);
        let cursor = &mut lane.cursors[e];
        cursor.read = upto;
        cursor.read_records = read_records;
        cursor.read_bytes = read_bytes;
        Ok(taken)
    }

    fn ack(&self, exporter: &str, signal: Signal, upto: Seq) -> Result<()> {
        let e = self.exporter_index(exporter)?;
        let mut state = self.lock();
        let lane = &mut state.lanes[signal.index()];
        let cursor = &mut lane.cursors[e];
        if upto <= cursor.acked {
            return Ok(());
        }
        if upto > cursor.read {
            return Err(CoreError::Usage(format!(
                "exporter {exporter:?} acked {signal} entry {upto} but was only handed up to {}",
                cursor.read
            )));
        }
        cursor.acked = upto;
        let everyone = lane.cursors.iter().map(|c| c.acked).min().unwrap_or(0);
        let mut freed = 0usize;
        while lane.entries.front().is_some_and(|s| s.entry.seq <= everyone) {
            if let Some(stored) = lane.entries.pop_front() {
                let len = stored.entry.payload.len();
                lane.held_records -= stored.entry.records;
                lane.held_bytes -= len as u64;
                freed += len;
            }
        }
        state.used -= freed;
        Ok(())
    }

    fn usage(&self) -> Usage {
        let state = self.lock();
        let mut usage = Usage {
            bytes: state.used,
            max_bytes: self.max_bytes,
            ..Usage::default()
        };
        for (i, lane) in state.lanes.iter().enumerate() {
            usage.records_by_signal[i] = lane.held_records;
            usage.bytes_by_signal[i] = lane.held_bytes;
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn queue(exporters: &[&str], max_bytes: usize) -> MemoryQueue {
        MemoryQueue::new(names(exporters), max_bytes).unwrap()
    }

    fn seqs(q: &MemoryQueue, exporter: &str, signal: Signal) -> Vec<Seq> {
        let mut out = Vec::new();
        q.read(exporter, signal, &mut |e| {
            out.push(e.seq);
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn seqs_are_per_signal() {
        let q = queue(&["a"], 1000);
        assert_eq!(q.append(Signal::Logs, 1, Payload::from(&b"x"[..])).unwrap(), 1);
        assert_eq!(q.append(Signal::Logs, 1, Payload::from(&b"y"[..])).unwrap(), 2);
        assert_eq!(q.append(Signal::Traces, 1, Payload::from(&b"z"[..])).unwrap(), 1);
        assert_eq!(seqs(&q, "a", Signal::Logs), [1, 2]);
        assert_eq!(seqs(&q, "a", Signal::Traces), [1]);
        assert!(seqs(&q, "a", Signal::Metrics).is_empty());
    }

    #[test]
    fn each_exporter_has_its_own_cursor() {
        let q = queue(&["a", "b"], 1000);
        for i in 0..3u8 {
            q.append(Signal::Logs, 2, Payload::from(vec![i; 10])).unwrap();
        }
        let p = q.pending("a", Signal::Logs).unwrap();
        assert_eq!((p.entries, p.records, p.bytes), (3, 6, 30));
        assert!(p.oldest.is_some());

        let taken = q.take("a", Signal::Logs, 2).unwrap();
        assert_eq!(taken.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(&taken[1].payload[..], &[1u8; 10]);
        assert_eq!(seqs(&q, "a", Signal::Logs), [3]);
        assert_eq!(seqs(&q, "b", Signal::Logs), [1, 2, 3]);
        let p = q.pending("a", Signal::Logs).unwrap();
        assert_eq!((p.entries, p.records, p.bytes), (1, 2, 10));
        // Taking again up to an already-read seq hands out nothing.
        assert!(q.take("a", Signal::Logs, 2).unwrap().is_empty());
        // `upto` past the end is clamped to what exists.
        assert_eq!(q.take("a", Signal::Logs, 99).unwrap().len(), 1);
        let p = q.pending("a", Signal::Logs).unwrap();
        assert_eq!((p.entries, p.records, p.bytes, p.oldest), (0, 0, 0, None));
    }

    #[test]
    fn payloads_are_shared_not_copied() {
        let q = queue(&["a", "b"], 1000);
        q.append(Signal::Traces, 1, Payload::from(vec![7u8; 100])).unwrap();
        let a = q.take("a", Signal::Traces, 1).unwrap();
        let b = q.take("b", Signal::Traces, 1).unwrap();
        assert_eq!(a[0].payload.as_ptr(), b[0].payload.as_ptr());
    }

    #[test]
    fn entries_are_freed_only_after_every_exporter_acked() {
        let q = queue(&["a", "b"], 1000);
        for _ in 0..3 {
            q.append(Signal::Metrics, 5, Payload::from(vec![0u8; 100])).unwrap();
        }
        assert_eq!(q.usage().bytes, 300);
        q.take("a", Signal::Metrics, 3).unwrap();
        q.ack("a", Signal::Metrics, 3).unwrap();
        let u = q.usage();
        assert_eq!((u.bytes, u.records_by_signal[Signal::Metrics.index()]), (300, 15));

        q.take("b", Signal::Metrics, 2).unwrap();
        q.ack("b", Signal::Metrics, 2).unwrap();
        let u = q.usage();
        assert_eq!((u.bytes, u.bytes_by_signal[Signal::Metrics.index()]), (100, 100));
        assert_eq!(u.records_by_signal[Signal::Metrics.index()], 5);
        // b still reads entry 3, although a is done with it.
        assert_eq!(seqs(&q, "b", Signal::Metrics), [3]);
        assert!(seqs(&q, "a", Signal::Metrics).is_empty());

        q.take("b", Signal::Metrics, 3).unwrap();
        q.ack("b", Signal::Metrics, 3).unwrap();
        assert_eq!(
            q.usage(),
            Usage {
                bytes: 0,
                max_bytes: 1000,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn acking_twice_or_backwards_is_harmless() {
        let q = queue(&["a"], 1000);
        q.append(Signal::Logs, 1, Payload::from(vec![0u8; 10])).unwrap();
        q.append(Signal::Logs, 1, Payload::from(vec![0u8; 10])).unwrap();
        q.take("a", Signal::Logs, 2).unwrap();
        q.ack("a", Signal::Logs, 2).unwrap();
        q.ack("a", Signal::Logs, 2).unwrap();
        q.ack("a", Signal::Logs, 1).unwrap();
        assert_eq!(q.usage().bytes, 0);
    }

    #[test]
    fn acking_past_the_read_cursor_is_an_error() {
        let q = queue(&["a"], 1000);
        q.append(Signal::Logs, 1, Payload::from(vec![0u8; 10])).unwrap();
        let err = q.ack("a", Signal::Logs, 1).unwrap_err();
        assert!(matches!(err, CoreError::Usage(_)), "{err}");
        assert_eq!(q.usage().bytes, 10);
    }

    #[test]
    fn unknown_exporter_is_a_clear_error() {
        let q = queue(&["dash0", "file"], 1000);
        let err = q.pending("sentry", Signal::Logs).unwrap_err();
        assert_eq!(err.to_string(), "unknown exporter \"sentry\" (configured: dash0, file)");
        assert!(q.ack("sentry", Signal::Logs, 1).is_err());
        assert!(q.take("sentry", Signal::Logs, 1).is_err());
    }

    #[test]
    fn exporter_list_is_checked() {
        assert!(MemoryQueue::new(Vec::new(), 10).is_err());
        assert!(MemoryQueue::new(names(&["a", "a"]), 10).is_err());
        assert!(MemoryQueue::new(names(&[""]), 10).is_err());
        assert!(MemoryQueue::new(names(&["a"]), 0).is_err());
    }

    #[test]
    fn queue_full_at_the_byte_limit_and_recovers_after_acks() {
        let q = queue(&["a", "b"], 250);
        q.append(Signal::Logs, 1, Payload::from(vec![0u8; 100])).unwrap();
        q.append(Signal::Traces, 1, Payload::from(vec![0u8; 100])).unwrap();
        let err = q.append(Signal::Metrics, 1, Payload::from(vec![0u8; 51])).unwrap_err();
        assert_eq!(err, CoreError::QueueFull { used: 200, limit: 250 });
        // Exactly at the limit fits.
        q.append(Signal::Metrics, 1, Payload::from(vec![0u8; 50])).unwrap();
        assert!(matches!(
            q.append(Signal::Logs, 1, Payload::from(&b"x"[..])),
            Err(CoreError::QueueFull { .. })
        ));

        for name in ["a", "b"] {
            q.take(name, Signal::Logs, 1).unwrap();
            q.ack(name, Signal::Logs, 1).unwrap();
        }
        assert_eq!(q.usage().bytes, 150);
        q.append(Signal::Logs, 1, Payload::from(vec![0u8; 100])).unwrap();
        assert_eq!(q.usage().bytes, 250);
    }

    #[test]
    fn an_entry_larger_than_the_whole_queue_is_too_large() {
        let q = queue(&["a"], 10);
        let err = q.append(Signal::Logs, 1, Payload::from(vec![0u8; 11])).unwrap_err();
        assert_eq!(err, CoreError::TooLarge { limit: 10 });
    }

    #[test]
    fn read_stops_when_asked() {
        let q = queue(&["a"], 1000);
        for _ in 0..5 {
            q.append(Signal::Logs, 1, Payload::from(&b"x"[..])).unwrap();
        }
        let mut seen = 0;
        q.read("a", Signal::Logs, &mut |_| {
            seen += 1;
            seen < 2
        })
        .unwrap();
        assert_eq!(seen, 2);
    }

    #[test]
    fn payload_drops_large_slack() {
        let mut v = Vec::with_capacity(10_000);
        v.extend_from_slice(b"abc");
        let p = Payload::from(v);
        assert_eq!(&p[..], b"abc");
        assert!(p.0.data.capacity() < 10_000);
    }
}
