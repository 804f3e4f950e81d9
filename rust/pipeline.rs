//! The data plane as one object: ingest into the queue, hand batches to exporters, take acks.
//!
//! Receivers call [`Pipeline::ingest`] from many threads; each exporter loop calls
//! [`Pipeline::next_batch`] (blocking up to a timeout) and [`Pipeline::ack`] once the batch is
//! delivered or given up on. [`Pipeline::close`] refuses new data and lets exporters drain.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::batch::{Batch, Batcher, Limits, Poll, Room};
use crate::decompress::decompress;
use crate::error::{CoreError, Result};
use crate::fluent;
use crate::ingest::{Format, IngestOptions, Ingested, Ingester};
use crate::queue::{DurableSink, MemoryQueue, Payload, Queue, Seq, SyncPoint};
use crate::sentry::now_nanos;
use crate::signal::Signal;

/// An ingest that has not waited for fsync, with the point to wait on when there is one.
pub type Deferred = (Ingested, Option<SyncPoint>);

pub struct PipelineOptions {
    pub exporters: Vec<String>,
    pub ingest: IngestOptions,
    pub queue_max_bytes: usize,
    pub batch: Limits,
}

/// Takes the events a logs request carries (`events::from_logs`) to the event bus. Called with the
/// whole request (protobuf, before sampling: events are never sampled) after its records were
/// queued, and only when its bytes hold `event_type` or `event.name`; an error fails the ingest call (the client
/// resends: its log records may repeat, its events come back with the same `event_id`).
pub type EventsTap = Arc<dyn Fn(&[u8]) -> Result<()> + Send + Sync>;

/// Counters of successful ingest calls for one signal (a call that fails counts nowhere: the
/// client gets an error and will usually retry).
#[derive(Default)]
struct Counters {
    received_records: AtomicU64,
    accepted_records: AtomicU64,
    rejected_records: AtomicU64,
    sampled_out_records: AtomicU64,
    scrubbed_records: AtomicU64,
    received_bytes: AtomicU64,
}

/// State the waiters sleep on. An append registers under this lock, runs without it (a durable
/// queue may wait for fsync there, and concurrent appends then share one), and takes the lock
/// again before notifying, so a waiter that polled and found nothing cannot miss the wake-up.
///
/// An append wakes a signal's waiters only when it concerns one: some waiter found nothing
/// pending, or the appends since the waiters polled fill the room some batch had left. A waiter
/// whose batch is merely growing sleeps on until its batch is due (one wake-up per batch
/// instead of one per request).
struct Wake {
    closed: bool,
    /// Appends in progress: a closed pipeline has drained only once these have landed.
    appending: usize,
    /// Per signal: waiters asleep with nothing pending.
    idle: [usize; 3],
    /// Per signal: the least room a sleeping waiter's batch had left when it polled (less what
    /// was appended between that poll and `appended`'s start), and what was appended since.
    room: [Room; 3],
    appended: [Room; 3],
}

impl Wake {
    /// Notes an append of signal `l`; true when its waiters must be woken.
    fn append(&mut self, l: usize, records: u64, bytes: u64) -> bool {
        self.appended[l].add(records, bytes);
        let wanted = self.idle[l] > 0 || self.room[l].filled_by(self.appended[l]);
        if wanted {
            // Everyone wakes and polls again, registering what it waits for anew.
            self.room[l] = Room::ANY;
            self.appended[l] = Room::NONE;
        }
        wanted
    }

    /// A waiter of signal `l` goes to sleep with `room` left in its batch.
    fn sleep_with(&mut self, l: usize, room: Room) {
        self.room[l] = self.room[l].less(self.appended[l]).min(room);
        self.appended[l] = Room::NONE;
    }
}

pub struct Pipeline {
    ingester: Ingester,
    queue: Box<dyn Queue>,
    batcher: Batcher,
    wake: Mutex<Wake>,
    /// One per signal, so an ingest only wakes the exporters waiting on its signal.
    ready: [Condvar; 3],
    counters: [Counters; 3],
    /// Requests refused because the queue was full, whichever receiver sent them (HTTP through
    /// Python, gRPC straight from the network runtime): readiness watches it.
    refused_full: AtomicU64,
    /// Queue bytes in use when an append was last refused as full within `SHED_HEADROOM` of the
    /// limit; `u64::MAX`: none is. While the queue holds at least that much, requests are refused
    /// before any work is spent on them (`shed`).
    full_at: AtomicU64,
    /// When (ms since `born`) a request last went on to the append while shedding, or an append
    /// was refused: one is let through every `shed_probe_ms` (`SHED_PROBE_MS`).
    probed_ms: AtomicU64,
    shed_probe_ms: u64,
    born: Instant,
    /// Which tracks the ingester's scrubber (when configured) runs on: OTLP requests (HTTP and
    /// gRPC) and records converted from Fluent. Both on unless `set_scrub_tracks` says otherwise.
    scrub_otlp: AtomicBool,
    scrub_fluent: AtomicBool,
    /// Seconds east of UTC at which Fluent time fields written without an offset are read.
    fluent_utc_offset_s: AtomicI32,
    /// Set when `[events] from_logs` feeds the event bus from every log path (OTLP/HTTP, OTLP/gRPC,
    /// Fluent http, Fluent http input, forward).
    events_tap: RwLock<Option<EventsTap>>,
}

/// How close to its limit the queue must be (this, or 1/64 of the limit if less), when an append
/// is refused as full, for the next requests to be refused before they are decoded
/// (`Pipeline::shed`). A refusal with more room left was a large request: smaller ones may still
/// fit, so they are tried.
const SHED_HEADROOM: u64 = 4 << 20;
/// While shedding, one request a second still goes on to the append: the append applies the
/// exporters' own limits (`queue.max_age_s`, `queue.max_bytes`), which may free room that no
/// delivery will (a destination that is down), and shedding must not keep them from it.
const SHED_PROBE_MS: u64 = 1000;

fn check_ratio(name: &str, ratio: f64) -> Result<()> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(CoreError::Usage(format!(
            "{name} must be between 0.0 and 1.0 (got {ratio})"
        )))
    }
}

impl Pipeline {
    /// A pipeline over an in-memory queue.
    pub fn new(options: PipelineOptions) -> Result<Self> {
        let queue = MemoryQueue::new(options.exporters, options.queue_max_bytes)?;
        Self::with_queue(options.ingest, Box::new(queue), options.batch)
    }

    /// A pipeline over any [`Queue`] (e.g. a persistent one).
    pub fn with_queue(ingest: IngestOptions, queue: Box<dyn Queue>, batch: Limits) -> Result<Self> {
        check_ratio("sampling_traces", ingest.sampling_traces)?;
        check_ratio("sampling_logs", ingest.sampling_logs)?;
        Limits::new(batch.max_records, batch.max_bytes, batch.max_delay)?;
        Ok(Pipeline {
            ingester: Ingester::new(ingest),
            queue,
            batcher: Batcher::new(batch),
            wake: Mutex::new(Wake {
                closed: false,
                appending: 0,
                idle: [0; 3],
                room: [Room::ANY; 3],
                appended: [Room::NONE; 3],
            }),
            ready: [Condvar::new(), Condvar::new(), Condvar::new()],
            counters: Default::default(),
            refused_full: AtomicU64::new(0),
            full_at: AtomicU64::new(u64::MAX),
            probed_ms: AtomicU64::new(0),
            shed_probe_ms: SHED_PROBE_MS,
            born: Instant::now(),
            scrub_otlp: AtomicBool::new(true),
            scrub_fluent: AtomicBool::new(true),
            fluent_utc_offset_s: AtomicI32::new(0),
            events_tap: RwLock::new(None),
        })
    }

    /// Which tracks the configured scrubber runs on (it runs on none when not configured).
    pub fn set_scrub_tracks(&self, otlp: bool, fluent: bool) {
        self.scrub_otlp.store(otlp, Ordering::Relaxed);
        self.scrub_fluent.store(fluent, Ordering::Relaxed);
    }

    /// `[receivers.fluent] default_utc_offset`, in seconds east of UTC.
    pub fn set_fluent_utc_offset(&self, seconds: i32) {
        self.fluent_utc_offset_s.store(seconds, Ordering::Relaxed);
    }

    /// Sets (or, with None, removes) the hook that takes events out of ingested logs.
    pub fn set_events_tap(&self, tap: Option<EventsTap>) {
        *self.events_tap.write().unwrap_or_else(PoisonError::into_inner) = tap;
    }

    /// Hands a logs request to the events tap when one is set and the request's bytes hold
    /// `event_type` or `event.name` (one memchr-accelerated scan: logs without events cost
    /// nothing more).
    pub fn tap_events(&self, request: &[u8]) -> Result<()> {
        let tap = self.events_tap.read().unwrap_or_else(PoisonError::into_inner).clone();
        match tap {
            Some(tap) if crate::events::from_logs::may_carry_events(request) => tap(request),
            _ => Ok(()),
        }
    }

    /// A panic while holding this lock leaves only a flag and a count, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Wake> {
        self.wake.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn exporters(&self) -> &[String] {
        self.queue.exporters()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Decodes, filters and queues one request body. The returned `payload` is empty: it now
    /// lives in the queue.
    pub fn ingest(&self, signal: Signal, body: &[u8], format: Format, encoding: Option<&str>) -> Result<Ingested> {
        self.ingest_with(signal, body, format, encoding, true)
    }

    /// `ingest`; with `scrub` false, no scrubbing (for data another track scrubbed already).
    pub fn ingest_with(
        &self,
        signal: Signal,
        body: &[u8],
        format: Format,
        encoding: Option<&str>,
        scrub: bool,
    ) -> Result<Ingested> {
        let (out, point) = self.ingest_deferred(signal, body, format, encoding, scrub)?;
        self.sync_point(point)?;
        Ok(out)
    }

    /// `QueueFull` before any work on a request, while the queue is still as full as when an
    /// append was last refused near its limit (`full_at`): under sustained overload a refusal
    /// then costs no inflate and no walk of a body the append would refuse anyway. Once anything
    /// was freed, requests are tried again.
    fn shed(&self) -> Result<()> {
        let at = self.full_at.load(Ordering::Relaxed);
        if at == u64::MAX {
            return Ok(());
        }
        let usage = self.queue.usage();
        if (usage.bytes as u64) < at {
            // A refusal in between may have set it anew: that one stands.
            let _ = self
                .full_at
                .compare_exchange(at, u64::MAX, Ordering::Relaxed, Ordering::Relaxed);
            return Ok(());
        }
        let now = self.age_ms();
        let last = self.probed_ms.load(Ordering::Relaxed);
        if now >= last.saturating_add(self.shed_probe_ms)
            && self
                .probed_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Ok(()); // this one goes on to the append (see `SHED_PROBE_MS`)
        }
        self.refused_full.fetch_add(1, Ordering::Relaxed);
        Err(CoreError::QueueFull {
            used: usage.bytes,
            limit: usage.max_bytes,
        })
    }

    fn age_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `ingest_with` without waiting for fsync: the point returned, if any, is durable once
    /// [`Pipeline::sync_point`] returns or [`Pipeline::when_durable`] says so. Until then the
    /// request must not be acknowledged.
    pub fn ingest_deferred(
        &self,
        signal: Signal,
        body: &[u8],
        format: Format,
        encoding: Option<&str>,
        scrub: bool,
    ) -> Result<Deferred> {
        if self.is_closed() {
            return Err(CoreError::Closed);
        }
        self.shed()?;
        let scrub = scrub && self.scrub_otlp.load(Ordering::Relaxed);
        // Inflated into this thread's scratch buffer: the walk copies the records it keeps.
        self.ingester.with_decoded(signal, body, format, encoding, |decoded| {
            let out = self.ingester.ingest_decoded(signal, decoded, scrub)?;
            let out = self.queue_ingested(out, body.len())?;
            if signal == Signal::Logs {
                self.tap_events(&decoded.request)?;
            }
            Ok(out)
        })
    }

    /// `ingest_deferred` for a protobuf request the gateway built itself (events as log records):
    /// the same walk (sampling, enrichment, OTLP scrubbing, the events tap), without checking
    /// every field against the schema again. `scrub` false: records converted from a track that
    /// scrubbed them already (Sentry's) skip the OTLP scrubbing.
    pub fn ingest_built_deferred(&self, signal: Signal, request: &[u8], scrub: bool) -> Result<Deferred> {
        if self.is_closed() {
            return Err(CoreError::Closed);
        }
        self.shed()?;
        let scrub = scrub && self.scrub_otlp.load(Ordering::Relaxed);
        let out = self.ingester.ingest_request(signal, request, request.len(), scrub)?;
        let out = self.queue_ingested(out, request.len())?;
        if signal == Signal::Logs {
            self.tap_events(request)?;
        }
        Ok(out)
    }

    /// Decodes a Fluent body (`fluent::BodyFormat`), converts its records to OTLP logs and queues
    /// them as `ingest` does. Events that are not records count as rejected (partial success).
    pub fn ingest_fluent(
        &self,
        body: &[u8],
        format: fluent::BodyFormat,
        encoding: Option<&str>,
        tag: &str,
    ) -> Result<Ingested> {
        let (out, point) = self.ingest_fluent_deferred(body, format, encoding, tag)?;
        self.sync_point(point)?;
        Ok(out)
    }

    /// `ingest_fluent` without waiting for fsync (see `ingest_deferred`).
    pub fn ingest_fluent_deferred(
        &self,
        body: &[u8],
        format: fluent::BodyFormat,
        encoding: Option<&str>,
        tag: &str,
    ) -> Result<Deferred> {
        if self.is_closed() {
            return Err(CoreError::Closed);
        }
        self.shed()?;
        let decoded = decompress(body, encoding, self.ingester.max_body_bytes())?;
        let offset = self.fluent_utc_offset_s.load(Ordering::Relaxed);
        let converted = fluent::convert_body_at(&decoded, format, tag, now_nanos(), offset)?;
        self.ingest_converted_deferred(converted, decoded.len(), body.len())
    }

    /// Decodes one whole forward-protocol message (any mode: Message, Forward, PackedForward,
    /// CompressedPackedForward) and queues its entries as the forward listener does; the `chunk`
    /// option is ignored (there is no connection to ack on).
    pub fn ingest_forward(&self, message: &[u8]) -> Result<Ingested> {
        if self.is_closed() {
            return Err(CoreError::Closed);
        }
        self.shed()?;
        let max = self.ingester.max_body_bytes();
        match fluent::forward::next_frame(message, max, now_nanos())? {
            fluent::forward::Frame::Message(m) if m.wire_bytes == message.len() => {
                self.ingest_converted(m.builder.finish(), message.len(), message.len())
            }
            fluent::forward::Frame::Message(_) => Err(CoreError::decode("bytes after the forward message")),
            fluent::forward::Frame::Incomplete => Err(CoreError::decode("forward message cut short")),
            fluent::forward::Frame::Heartbeat(_) => Err(CoreError::decode("a heartbeat (nil), not a forward message")),
        }
    }

    /// Queues records converted elsewhere (Fluent http bodies, forward entries), then the events
    /// they carry (`tap_events`).
    pub fn ingest_converted(
        &self,
        converted: fluent::Converted,
        decoded_bytes: usize,
        body_bytes: usize,
    ) -> Result<Ingested> {
        let (out, point) = self.ingest_converted_deferred(converted, decoded_bytes, body_bytes)?;
        self.sync_point(point)?;
        Ok(out)
    }

    /// `ingest_converted` without waiting for fsync (see `ingest_deferred`); the events are
    /// queued (and, on the bus, synced) before it returns.
    pub fn ingest_converted_deferred(
        &self,
        converted: fluent::Converted,
        decoded_bytes: usize,
        body_bytes: usize,
    ) -> Result<Deferred> {
        let out = self.queue_converted(&converted, decoded_bytes, body_bytes)?;
        self.tap_events(&converted.payload)?;
        Ok(out)
    }

    /// `ingest_converted_deferred` without the events: the caller runs `tap_events` (the forward
    /// listener, which retries only that step while the events' queue is full).
    pub fn queue_converted(
        &self,
        converted: &fluent::Converted,
        decoded_bytes: usize,
        body_bytes: usize,
    ) -> Result<Deferred> {
        if self.is_closed() {
            return Err(CoreError::Closed);
        }
        let mut out = self.ingester.ingest_request(
            Signal::Logs,
            &converted.payload,
            decoded_bytes,
            self.scrub_fluent.load(Ordering::Relaxed),
        )?;
        if converted.rejected > 0 {
            out.received += converted.rejected;
            out.rejected += converted.rejected;
            out.error_message = if out.error_message.is_empty() {
                converted.error_message.clone()
            } else {
                format!("{}; {}", converted.error_message, out.error_message)
            };
        }
        self.queue_ingested(out, body_bytes)
    }

    fn queue_ingested(&self, mut out: Ingested, body_bytes: usize) -> Result<Deferred> {
        let signal = out.signal;
        // Not `accepted > 0`: a metric with a name and no data points is forwarded (as the
        // Collector does) though it counts no data point.
        let mut point = None;
        if !out.payload.is_empty() {
            let payload = Payload::with_counts(std::mem::take(&mut out.payload), out.counts);
            point = self.append(signal, out.accepted, payload)?;
        }
        let c = &self.counters[signal.index()];
        c.received_records.fetch_add(out.received, Ordering::Relaxed);
        c.accepted_records.fetch_add(out.accepted, Ordering::Relaxed);
        c.rejected_records.fetch_add(out.rejected, Ordering::Relaxed);
        c.sampled_out_records.fetch_add(out.sampled_out, Ordering::Relaxed);
        c.scrubbed_records.fetch_add(out.scrubbed, Ordering::Relaxed);
        c.received_bytes.fetch_add(body_bytes as u64, Ordering::Relaxed);
        Ok((out, point))
    }

    /// Queues a payload decoded elsewhere, as is: a Sentry envelope for the Sentry forwarding
    /// pipeline. The same durability and backpressure as `ingest`, without OTLP decoding.
    pub fn enqueue(&self, signal: Signal, records: u64, payload: Vec<u8>) -> Result<()> {
        let point = self.enqueue_deferred(signal, records, payload)?;
        self.sync_point(point)
    }

    /// `enqueue` without waiting for fsync (see `ingest_deferred`).
    pub fn enqueue_deferred(&self, signal: Signal, records: u64, payload: Vec<u8>) -> Result<Option<SyncPoint>> {
        if self.is_closed() {
            return Err(CoreError::Closed);
        }
        let size = payload.len() as u64;
        let point = self.append(signal, records, Payload::from(payload))?;
        let c = &self.counters[signal.index()];
        c.received_records.fetch_add(records, Ordering::Relaxed);
        c.accepted_records.fetch_add(records, Ordering::Relaxed);
        c.received_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(point)
    }

    /// Waits until a deferred ingest is durable (nothing to wait for: `None`).
    pub fn sync_point(&self, point: Option<SyncPoint>) -> Result<()> {
        point.map_or(Ok(()), |p| self.queue.sync_point(p))
    }

    /// Has `sink` told with `token` once `point` is durable (or never will be), without waiting:
    /// the queue's syncer thread fsyncs the appends waiting at once and tells each sink once.
    pub fn when_durable(&self, point: SyncPoint, sink: Arc<dyn DurableSink>, token: u64) {
        self.queue.when_durable(point, sink, token);
    }

    /// Appends outside the wake lock (concurrent fsync'd appends share one sync), keeping count
    /// of appends in flight so that close-and-drain waits for them.
    fn append(&self, signal: Signal, records: u64, payload: Payload) -> Result<Option<SyncPoint>> {
        {
            let mut wake = self.lock();
            if wake.closed {
                return Err(CoreError::Closed);
            }
            wake.appending += 1;
        }
        let bytes = payload.len() as u64;
        let appended = self.queue.append_deferred(signal, records, payload);
        let (last, wanted) = {
            let mut wake = self.lock();
            wake.appending -= 1;
            let wanted = appended.is_ok() && wake.append(signal.index(), records, bytes);
            (wake.closed && wake.appending == 0, wanted)
        };
        if last {
            // Drain waiters of every signal may be waiting for this append to land.
            self.ready.iter().for_each(Condvar::notify_all);
        } else if wanted {
            self.ready[signal.index()].notify_all();
        }
        if let Err(CoreError::QueueFull { used, limit }) = &appended {
            self.refused_full.fetch_add(1, Ordering::Relaxed);
            let (used, limit) = (*used as u64, *limit as u64);
            if limit.saturating_sub(used) <= SHED_HEADROOM.min(limit / 64) {
                self.probed_ms.store(self.age_ms(), Ordering::Relaxed);
                self.full_at.store(used, Ordering::Relaxed);
            }
        }
        appended.map(|(_, point)| point)
    }

    /// The next batch for `exporter`, waiting up to `timeout` (`None`: until one is due or the
    /// pipeline closes). A batch is due at the batch limits or when its oldest entry is
    /// `max_delay` old; `flush` takes whatever is pending at once. Once closed, returns what is
    /// left without waiting, then `None`. A storage error means the queue could not read the next
    /// entry back: nothing was handed out, and asking again tries again.
    pub fn next_batch(
        &self,
        exporter: &str,
        signal: Signal,
        timeout: Option<Duration>,
        flush: bool,
    ) -> Result<Option<Batch>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let ready = &self.ready[signal.index()];
        // Polling under the lock also keeps two callers for one (exporter, signal) from cutting
        // overlapping batches.
        let mut wake = self.lock();
        loop {
            let now = Instant::now();
            let (due, room) = match self
                .batcher
                .poll(&*self.queue, exporter, signal, now, flush || wake.closed)?
            {
                Poll::Ready(batch) => return Ok(Some(batch)),
                Poll::Empty if wake.closed && wake.appending == 0 => {
                    drop(wake);
                    // Drained: record the final acks whatever the fsync policy. A failure only
                    // means redelivery after a restart.
                    let _ = self.queue.sync();
                    return Ok(None);
                }
                Poll::Empty => (None, None),
                Poll::Wait(due, room) => (Some(due), Some(room)),
            };
            let until = match (due, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            let l = signal.index();
            match room {
                Some(room) => wake.sleep_with(l, room),
                None => wake.idle[l] += 1,
            }
            wake = match until {
                Some(until) => {
                    let wait = until.saturating_duration_since(now);
                    ready.wait_timeout(wake, wait).unwrap_or_else(PoisonError::into_inner).0
                }
                None => ready.wait(wake).unwrap_or_else(PoisonError::into_inner),
            };
            if room.is_none() {
                wake.idle[l] -= 1;
            }
        }
    }

    /// Commits `exporter`'s cursor up to `upto` (see [`Queue::ack`]).
    pub fn ack(&self, exporter: &str, signal: Signal, upto: Seq) -> Result<()> {
        self.queue.ack(exporter, signal, upto)
    }

    pub fn ack_batch(&self, batch: &Batch) -> Result<()> {
        self.ack(&batch.exporter, batch.signal, batch.last_seq)
    }

    /// Counters and gauges: `<signal>_<name>` for received_records, accepted_records,
    /// rejected_records, sampled_out_records, scrubbed_records, received_bytes, queued_records,
    /// queued_bytes; then
    /// queue_bytes, queue_max_bytes and queue_full_refusals (requests refused as queue-full);
    /// then the queue's own ([`Queue::counters`]).
    pub fn stats(&self) -> Vec<(String, u64)> {
        let usage = self.queue.usage();
        let mut out = Vec::with_capacity(Signal::ALL.len() * 8 + 2);
        for signal in Signal::ALL {
            let i = signal.index();
            let c = &self.counters[i];
            for (name, value) in [
                ("received_records", c.received_records.load(Ordering::Relaxed)),
                ("accepted_records", c.accepted_records.load(Ordering::Relaxed)),
                ("rejected_records", c.rejected_records.load(Ordering::Relaxed)),
                ("sampled_out_records", c.sampled_out_records.load(Ordering::Relaxed)),
                ("scrubbed_records", c.scrubbed_records.load(Ordering::Relaxed)),
                ("received_bytes", c.received_bytes.load(Ordering::Relaxed)),
                ("queued_records", usage.records_by_signal[i]),
                ("queued_bytes", usage.bytes_by_signal[i]),
            ] {
                out.push((format!("{signal}_{name}"), value));
            }
        }
        out.push(("queue_bytes".into(), usage.bytes as u64));
        out.push(("queue_max_bytes".into(), usage.max_bytes as u64));
        out.push(("queue_full_refusals".into(), self.refused_full.load(Ordering::Relaxed)));
        out.extend(self.queue.counters());
        out
    }

    /// What opening the queue found and repaired (empty for the in-memory queue).
    pub fn recovery(&self) -> Vec<(&'static str, u64)> {
        self.queue.recovery()
    }

    /// Refuses further ingest and wakes every waiter; exporters then drain what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        for ready in &self.ready {
            ready.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, Fields};
    use std::thread;

    fn options(exporters: &[&str], max_records: u64, delay_ms: u64, queue_max_bytes: usize) -> PipelineOptions {
        PipelineOptions {
            exporters: exporters.iter().map(|s| s.to_string()).collect(),
            ingest: IngestOptions {
                sampling_traces: 1.0,
                sampling_logs: 1.0,
                keep_errors: true,
                resource_attributes: Vec::new(),
                max_body_bytes: 1 << 20,
                scrub: None,
                content_counts: true,
            },
            queue_max_bytes,
            batch: Limits::new(max_records, 1 << 20, Duration::from_millis(delay_ms)).unwrap(),
        }
    }

    fn pipeline(exporters: &[&str], max_records: u64, delay_ms: u64) -> Pipeline {
        Pipeline::new(options(exporters, max_records, delay_ms, 1 << 20)).unwrap()
    }

    /// ExportLogsServiceRequest with one resource, one scope, one log record.
    fn logs_request(text: &str) -> Vec<u8> {
        let mut record = Vec::new();
        wire::put_bytes(&mut record, 3, b"INFO");
        wire::put_message(&mut record, 5, |v| wire::put_bytes(v, 1, text.as_bytes()));
        let mut scope = Vec::new();
        wire::put_bytes(&mut scope, 2, &record);
        let mut resource = Vec::new();
        wire::put_bytes(&mut resource, 2, &scope);
        let mut request = Vec::new();
        wire::put_bytes(&mut request, 1, &resource);
        request
    }

    fn ingest(p: &Pipeline, text: &str) -> Ingested {
        p.ingest(Signal::Logs, &logs_request(text), Format::Protobuf, None)
            .unwrap()
    }

    fn stat(p: &Pipeline, name: &str) -> u64 {
        p.stats().into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap()
    }

    const WAIT: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn a_built_request_is_queued_and_tapped_as_a_clients_is() {
        let (client, built) = (pipeline(&["a"], 100, 0), pipeline(&["a"], 100, 0));
        let taps = Arc::new(AtomicU64::new(0));
        let tapped = taps.clone();
        built.set_events_tap(Some(Arc::new(move |_: &[u8]| {
            tapped.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })));
        let request = logs_request(r#"{"event_type":"job_started"}"#);
        let want = client.ingest(Signal::Logs, &request, Format::Protobuf, None).unwrap();
        let (got, _) = built.ingest_built_deferred(Signal::Logs, &request, true).unwrap();
        assert_eq!((got.accepted, got.rejected), (want.accepted, want.rejected));
        assert_eq!(taps.load(Ordering::Relaxed), 1);
        for name in ["logs_accepted_records", "logs_received_bytes"] {
            assert_eq!(stat(&built, name), stat(&client, name), "{name}");
        }
        built.close();
        assert_eq!(
            built.ingest_built_deferred(Signal::Logs, &request, true).unwrap_err(),
            CoreError::Closed
        );
    }

    #[test]
    fn the_events_tap_sees_logs_with_event_bytes_after_they_are_queued_and_can_fail_the_call() {
        let p = Arc::new(pipeline(&["a"], 100, 0));
        let seen = Arc::new(Mutex::new(Vec::<(Vec<u8>, u64)>::new()));
        let fail = Arc::new(AtomicBool::new(false));
        let (tap_seen, tap_fail, tap_p) = (seen.clone(), fail.clone(), Arc::downgrade(&p));
        p.set_events_tap(Some(Arc::new(move |request: &[u8]| {
            // The records are in the queue by the time the tap runs.
            let queued = tap_p.upgrade().map_or(0, |p| stat(&p, "logs_accepted_records"));
            tap_seen.lock().unwrap().push((request.to_vec(), queued));
            if tap_fail.load(Ordering::Relaxed) {
                return Err(CoreError::QueueFull { used: 1, limit: 1 });
            }
            Ok(())
        })));
        ingest(&p, "an ordinary line, an event loop");
        assert!(
            seen.lock().unwrap().is_empty(),
            "no `event_type`/`event.name`: the tap is not called"
        );
        let request = logs_request(r#"{"event_type":"job_started"}"#);
        p.ingest(Signal::Logs, &request, Format::Protobuf, None).unwrap();
        assert_eq!(seen.lock().unwrap().last().unwrap(), &(request.clone(), 2));
        let converted = fluent::Converted {
            payload: logs_request("x event.name y"),
            records: 1,
            rejected: 0,
            error_message: String::new(),
        };
        p.ingest_converted(converted, 10, 10).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 2, "converted Fluent records are tapped too");
        fail.store(true, Ordering::Relaxed);
        let err = p.ingest(Signal::Logs, &request, Format::Protobuf, None).unwrap_err();
        assert!(
            matches!(err, CoreError::QueueFull { .. }),
            "the call fails: the client resends"
        );
        p.set_events_tap(None);
        p.ingest(Signal::Logs, &request, Format::Protobuf, None).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_request_that_fails_the_check_queues_nothing() {
        // The first record is good and kept by the walk before it reaches the bad one.
        let p = pipeline(&["a"], 100, 0);
        let mut record = Vec::new();
        wire::put_message(&mut record, 5, |v| wire::put_bytes(v, 1, b"fine"));
        let mut bad = Vec::new();
        wire::put_bytes(&mut bad, 3, &[0xff]);
        let mut scope = Vec::new();
        wire::put_bytes(&mut scope, 2, &record);
        wire::put_bytes(&mut scope, 2, &bad);
        let mut resource = Vec::new();
        wire::put_bytes(&mut resource, 2, &scope);
        let mut request = Vec::new();
        wire::put_bytes(&mut request, 1, &resource);
        let err = p.ingest(Signal::Logs, &request, Format::Protobuf, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("LogRecord.severity_text (field 3) is not valid UTF-8"),
            "{err}"
        );
        assert_eq!(stat(&p, "logs_accepted_records"), 0);
        assert_eq!(stat(&p, "logs_received_records"), 0);
        assert!(p
            .next_batch("a", Signal::Logs, Some(Duration::ZERO), true)
            .unwrap()
            .is_none());
        ingest(&p, "then a good one");
        assert_eq!(stat(&p, "logs_accepted_records"), 1);
    }

    #[test]
    fn a_metric_without_points_is_queued() {
        let p = Pipeline::new(options(&["a"], 100, 0, 1 << 20)).unwrap();
        let body = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"jobs.queued","gauge":{}}]}]}]}"#;
        let out = p.ingest(Signal::Metrics, body, Format::Json, None).unwrap();
        assert_eq!((out.received, out.accepted), (0, 0));
        let batch = p
            .next_batch("a", Signal::Metrics, Some(Duration::ZERO), true)
            .unwrap()
            .unwrap();
        let json = crate::json_encode::protobuf_to_json(Signal::Metrics, &batch.body()).unwrap();
        assert!(String::from_utf8(json).unwrap().contains("jobs.queued"));
    }

    #[test]
    fn ingest_batch_ack() {
        let p = pipeline(&["otlp", "file"], 100, 60_000);
        for i in 0..3 {
            let out = ingest(&p, &format!("line {i}"));
            assert_eq!((out.accepted, out.rejected), (1, 0));
            assert!(out.payload.is_empty(), "the payload moved into the queue");
        }
        assert_eq!(stat(&p, "logs_received_records"), 3);
        assert_eq!(stat(&p, "logs_accepted_records"), 3);
        assert_eq!(stat(&p, "logs_queued_records"), 3);
        assert!(stat(&p, "logs_received_bytes") > 0);
        assert!(stat(&p, "queue_bytes") > 0);
        assert_eq!(stat(&p, "queue_max_bytes"), 1 << 20);
        assert_eq!(stat(&p, "queue_full_refusals"), 0);
        assert_eq!(p.stats().len(), 27);

        // Nothing is due (delay 60 s), so a zero timeout returns nothing; flush takes it all.
        assert!(p
            .next_batch("otlp", Signal::Logs, Some(Duration::ZERO), false)
            .unwrap()
            .is_none());
        let batch = p
            .next_batch("otlp", Signal::Logs, Some(Duration::ZERO), true)
            .unwrap()
            .unwrap();
        assert_eq!(
            (batch.exporter.as_str(), batch.signal, batch.records, batch.entries()),
            ("otlp", Signal::Logs, 3, 3)
        );
        let body = batch.body();
        let top: Vec<_> = Fields::new(&body).collect::<Result<_>>().unwrap();
        assert_eq!(top.len(), 3);
        assert!(top.iter().all(|f| f.number == 1));

        p.ack_batch(&batch).unwrap();
        p.ack_batch(&batch).unwrap();
        assert_eq!(stat(&p, "logs_queued_records"), 3, "file has not acked yet");
        let other = p
            .next_batch("file", Signal::Logs, Some(Duration::ZERO), true)
            .unwrap()
            .unwrap();
        assert_eq!(other.body(), body);
        p.ack_batch(&other).unwrap();
        assert_eq!(stat(&p, "logs_queued_records"), 0);
        assert_eq!(stat(&p, "queue_bytes"), 0);
    }

    #[test]
    fn unknown_exporter_is_an_error() {
        let p = pipeline(&["otlp"], 100, 0);
        let err = p
            .next_batch("sentry", Signal::Logs, Some(Duration::ZERO), false)
            .unwrap_err();
        assert_eq!(err.to_string(), "unknown exporter \"sentry\" (configured: otlp)");
        assert!(p.ack("sentry", Signal::Logs, 1).is_err());
    }

    #[test]
    fn options_are_checked() {
        let mut o = options(&["a"], 1, 0, 100);
        o.ingest.sampling_traces = 1.5;
        assert!(matches!(Pipeline::new(o), Err(CoreError::Usage(_))));
        let mut o = options(&["a"], 1, 0, 100);
        o.ingest.sampling_logs = f64::NAN;
        assert!(Pipeline::new(o).is_err());
        assert!(Pipeline::new(options(&[], 1, 0, 100)).is_err());
    }

    #[test]
    fn next_batch_times_out_without_data() {
        let p = pipeline(&["a"], 100, 0);
        let start = Instant::now();
        assert!(p
            .next_batch("a", Signal::Traces, Some(Duration::from_millis(50)), false)
            .unwrap()
            .is_none());
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn blocking_next_batch_wakes_on_ingest_from_another_thread() {
        let p = Arc::new(pipeline(&["a"], 1, 60_000));
        let waiter = {
            let p = Arc::clone(&p);
            thread::spawn(move || {
                let start = Instant::now();
                let batch = p.next_batch("a", Signal::Logs, WAIT, false).unwrap();
                (batch, start.elapsed())
            })
        };
        thread::sleep(Duration::from_millis(50));
        ingest(&p, "hello");
        let (batch, waited) = waiter.join().unwrap();
        assert_eq!(batch.unwrap().records, 1);
        assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    }

    #[test]
    fn blocking_next_batch_wakes_at_the_delay() {
        let p = Arc::new(pipeline(&["a"], 1000, 100));
        let waiter = {
            let p = Arc::clone(&p);
            thread::spawn(move || p.next_batch("a", Signal::Logs, WAIT, false).unwrap())
        };
        thread::sleep(Duration::from_millis(20));
        let sent = Instant::now();
        ingest(&p, "a");
        ingest(&p, "b");
        let batch = waiter.join().unwrap().unwrap();
        let waited = sent.elapsed();
        assert_eq!(batch.records, 2);
        assert!(
            waited >= Duration::from_millis(95) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }

    #[test]
    fn a_waiter_whose_batch_grows_wakes_when_the_appends_fill_it() {
        // Appends below the room left do not wake the waiters (one wake-up per batch); the one
        // that fills a batch must, for each exporter, or the batch would wait out the delay.
        let p = Arc::new(pipeline(&["a", "b"], 3, 60_000));
        let waiters: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|x| {
                let p = Arc::clone(&p);
                thread::spawn(move || p.next_batch(x, Signal::Logs, WAIT, false).unwrap())
            })
            .collect();
        for text in ["one", "two", "three"] {
            thread::sleep(Duration::from_millis(20));
            ingest(&p, text);
        }
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap().unwrap().records, 3);
        }
        // The room is tracked anew after a batch: the next one fills and wakes too.
        let waiter = {
            let p = Arc::clone(&p);
            thread::spawn(move || p.next_batch("a", Signal::Logs, WAIT, false).unwrap())
        };
        for text in ["four", "five", "six"] {
            ingest(&p, text);
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(waiter.join().unwrap().unwrap().records, 3);
    }

    #[test]
    fn other_signals_do_not_satisfy_a_waiter() {
        let p = pipeline(&["a"], 1, 0);
        ingest(&p, "log");
        assert!(p
            .next_batch("a", Signal::Traces, Some(Duration::from_millis(20)), false)
            .unwrap()
            .is_none());
        assert!(p
            .next_batch("a", Signal::Logs, Some(Duration::ZERO), false)
            .unwrap()
            .is_some());
    }

    #[test]
    fn close_wakes_waiters_and_drains() {
        let p = Arc::new(pipeline(&["a", "b"], 2, 60_000));
        let waiter = {
            let p = Arc::clone(&p);
            thread::spawn(move || {
                let start = Instant::now();
                let batch = p.next_batch("a", Signal::Metrics, None, false).unwrap();
                (batch, start.elapsed())
            })
        };
        for i in 0..3 {
            ingest(&p, &format!("{i}"));
        }
        thread::sleep(Duration::from_millis(50));
        p.close();
        assert!(p.is_closed());
        let (batch, waited) = waiter.join().unwrap();
        assert!(batch.is_none());
        assert!(waited < Duration::from_secs(5));

        let late = p.ingest(Signal::Logs, &logs_request("late"), Format::Protobuf, None);
        assert!(matches!(late, Err(CoreError::Closed)));
        // The 3 queued records drain without waiting for the delay, still in batches of 2.
        let first = p.next_batch("b", Signal::Logs, WAIT, false).unwrap().unwrap();
        let second = p.next_batch("b", Signal::Logs, WAIT, false).unwrap().unwrap();
        assert_eq!((first.records, second.records), (2, 1));
        assert!(p.next_batch("b", Signal::Logs, WAIT, false).unwrap().is_none());
        p.ack_batch(&second).unwrap();
        assert_eq!(
            p.next_batch("a", Signal::Logs, None, false).unwrap().unwrap().records,
            2
        );
    }

    #[test]
    fn queue_full_then_recovers_after_acks() {
        let size = logs_request("0123456789").len();
        let p = Pipeline::new(options(&["a"], 1000, 0, size * 3)).unwrap();
        let mut accepted = 0;
        let err = loop {
            match p.ingest(Signal::Logs, &logs_request("0123456789"), Format::Protobuf, None) {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 100, "never full");
        };
        assert!(matches!(err, CoreError::QueueFull { .. }), "{err}");
        assert!(accepted >= 1);
        assert_eq!(stat(&p, "queue_full_refusals"), 1);
        assert_eq!(
            stat(&p, "logs_accepted_records"),
            accepted,
            "a refused request is not counted"
        );
        let batch = p
            .next_batch("a", Signal::Logs, Some(Duration::ZERO), true)
            .unwrap()
            .unwrap();
        p.ack_batch(&batch).unwrap();
        ingest(&p, "0123456789");
    }

    /// Ingests one-record requests of `record` until one is refused; how many were accepted.
    fn fill(p: &Pipeline, record: &str) -> usize {
        let mut accepted = 0;
        while p
            .ingest(Signal::Logs, &logs_request(record), Format::Protobuf, None)
            .is_ok()
        {
            accepted += 1;
            assert!(accepted < 1000, "never full");
        }
        accepted
    }

    #[test]
    fn a_full_queue_refuses_before_decoding_until_room_is_freed() {
        let record = "x".repeat(900);
        let size = logs_request(&record).len();
        // 64 KiB: requests of ~1 KB leave less than 1/64 of the limit when one is refused.
        let mut p = Pipeline::new(options(&["a"], 1000, 0, 64 << 10)).unwrap();
        p.shed_probe_ms = u64::MAX; // no request goes through to probe (the next test's)
        assert!(fill(&p, &record) * size > 60 << 10);
        // Still as full: a body is refused before it is read, so even garbage gets a 429, not a 400.
        let shed = p.ingest(Signal::Logs, b"\xff\xff\xff", Format::Protobuf, None);
        assert!(matches!(shed, Err(CoreError::QueueFull { .. })), "{shed:?}");
        let shed = p.ingest_fluent(b"{", fluent::BodyFormat::Json, None, "t");
        assert!(matches!(shed, Err(CoreError::QueueFull { .. })), "{shed:?}");
        assert_eq!(stat(&p, "queue_full_refusals"), 3);
        // Room freed: bodies are read again.
        let batch = p
            .next_batch("a", Signal::Logs, Some(Duration::ZERO), true)
            .unwrap()
            .unwrap();
        p.ack_batch(&batch).unwrap();
        let bad = p.ingest(Signal::Logs, b"\xff\xff\xff", Format::Protobuf, None);
        assert!(matches!(bad, Err(CoreError::Decode(_))), "{bad:?}");
        ingest(&p, "fits again");
    }

    #[test]
    fn while_shedding_one_request_a_probe_interval_goes_on_to_the_append() {
        use crate::disk_queue::{DiskOptions, DiskQueue, TempDir};
        // Exporter "down" never takes anything; its limit of 2 s of age is applied at the append.
        let dir = TempDir::new("shed-probe");
        let o = options(&["down"], 1000, 0, 64 << 10);
        let mut disk = DiskOptions::new(&dir.0, o.exporters, 64 << 10);
        disk.segment_bytes = 4096;
        disk.limits = vec![(
            "down".into(),
            crate::disk_queue::ExporterLimit {
                max_age: Some(Duration::from_secs(2)),
                max_bytes: None,
            },
        )];
        let queue = DiskQueue::open(disk).unwrap();
        let mut p = Pipeline::with_queue(o.ingest, Box::new(queue), o.batch).unwrap();
        p.shed_probe_ms = 300;
        let record = "x".repeat(900);
        fill(&p, &record);
        let shed = p.ingest(Signal::Logs, &logs_request(&record), Format::Protobuf, None);
        assert!(matches!(shed, Err(CoreError::QueueFull { .. })), "{shed:?}");
        // Past the age limit, the next probe's append drops what "down" never took, and fits.
        thread::sleep(Duration::from_millis(2100));
        ingest(&p, "after the age limit");
        ingest(&p, "and the next");
    }

    #[test]
    fn a_large_refused_request_does_not_shed_smaller_ones() {
        let p = Pipeline::new(options(&["a"], 1000, 0, 64 << 10)).unwrap();
        ingest(&p, "small");
        let big = logs_request(&"x".repeat(40 << 10));
        ingest(&p, "room for one more big one");
        p.ingest(Signal::Logs, &big, Format::Protobuf, None).unwrap();
        // This one does not fit, with far more than 1/64 of the limit left: small ones still go in.
        let refused = p.ingest(Signal::Logs, &big, Format::Protobuf, None);
        assert!(matches!(refused, Err(CoreError::QueueFull { .. })), "{refused:?}");
        ingest(&p, "small again");
    }

    #[test]
    fn a_disk_queue_redelivers_what_was_not_acked_after_a_restart() {
        use crate::disk_queue::{DiskOptions, DiskQueue, TempDir};
        let dir = TempDir::new("pipeline");
        let open = || {
            let o = options(&["otlp", "file"], 100, 60_000, 1 << 20);
            let queue = DiskQueue::open(DiskOptions::new(&dir.0, o.exporters, 1 << 20)).unwrap();
            Pipeline::with_queue(o.ingest, Box::new(queue), o.batch).unwrap()
        };
        {
            let p = open();
            ingest(&p, "one");
            ingest(&p, "two");
            let batch = p
                .next_batch("otlp", Signal::Logs, Some(Duration::ZERO), true)
                .unwrap()
                .unwrap();
            p.ack_batch(&batch).unwrap();
            assert!(stat(&p, "queue_segments") >= 1);
            assert_eq!(p.recovery().iter().find(|(k, _)| *k == "frames"), Some(&("frames", 0)));
        }
        let p = open();
        assert_eq!(
            p.recovery().iter().find(|(k, _)| *k == "pending_entries"),
            Some(&("pending_entries", 2))
        );
        let batch = p
            .next_batch("file", Signal::Logs, Some(Duration::ZERO), true)
            .unwrap()
            .unwrap();
        assert_eq!(batch.records, 2);
        p.ack_batch(&batch).unwrap();
        assert!(p
            .next_batch("otlp", Signal::Logs, Some(Duration::ZERO), true)
            .unwrap()
            .is_none());
        assert_eq!(stat(&p, "logs_queued_records"), 0);
        // Closing and draining leaves nothing to redeliver.
        p.close();
        assert!(p.next_batch("otlp", Signal::Logs, WAIT, false).unwrap().is_none());
        drop(p);
        assert_eq!(
            open().recovery().iter().find(|(k, _)| *k == "pending_entries"),
            Some(&("pending_entries", 0))
        );
    }

    #[test]
    fn concurrent_ingest_and_export_deliver_everything_once() {
        let p = Arc::new(pipeline(&["a"], 7, 1));
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let p = Arc::clone(&p);
                thread::spawn(move || {
                    for i in 0..250 {
                        ingest(&p, &format!("{t}-{i}"));
                    }
                })
            })
            .collect();
        let consumer = {
            let p = Arc::clone(&p);
            thread::spawn(move || {
                let mut records = 0;
                while let Some(batch) = p.next_batch("a", Signal::Logs, WAIT, false).unwrap() {
                    assert!(batch.records <= 7);
                    records += batch.records;
                    p.ack_batch(&batch).unwrap();
                }
                records
            })
        };
        for t in producers {
            t.join().unwrap();
        }
        p.close();
        assert_eq!(consumer.join().unwrap(), 1000);
        assert_eq!(stat(&p, "queue_bytes"), 0);
    }
}
