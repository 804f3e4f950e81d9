//! The Python module `trackgate._core`, as `python/trackgate/_core.pyi` describes it. The only
//! module that knows Python: every call converts arguments, runs plain Rust with the GIL released
//! and panics caught, then converts the result or maps the `CoreError` to one exception.

use std::any::Any;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyBaseException, PyException, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString};

use crate::batch::Limits;
use crate::disk_queue::{DiskOptions, DiskQueue, ExporterLimit, Fsync};
use crate::error::{CoreError, Result};
use crate::events::metrics;
use crate::fluent::handshake::Auth;
use crate::ingest::{Format, IngestOptions, Ingested};
use crate::limits::ContentReport;
use crate::net::events_route::{self, EventsRoute};
use crate::net::sentry_route::{self, SentryRoute};
use crate::net::{fluent_http, forward, otlp_grpc, otlp_http, Listeners as NetListeners};
use crate::pipeline::{EventsTap, Pipeline, PipelineOptions};
use crate::queue::{DurableSink, Seq, SyncPoint};
use crate::scrub::ScrubOptions;
use crate::sentry::{self, HeaderDsn, Processed, SentryOptions};
use crate::sentry_limits::RateLimits;
use crate::signal::Signal;
use crate::{decompress, encode, events, json_decode, json_encode, limits};

create_exception!(
    trackgate.exceptions,
    DecodeError,
    PyValueError,
    "The body is not valid OTLP. HTTP 400."
);
create_exception!(
    trackgate.exceptions,
    PayloadTooLarge,
    PyValueError,
    "The body is over the limit after decompression. HTTP 413."
);
create_exception!(
    trackgate.exceptions,
    UnsupportedMedia,
    PyValueError,
    "Unknown Content-Encoding or content format. HTTP 415."
);
create_exception!(
    trackgate.exceptions,
    QueueFull,
    PyException,
    "The queue is at its byte limit. HTTP 429 with Retry-After."
);
create_exception!(
    trackgate.exceptions,
    QueueLocked,
    PyException,
    "The queue directory is held by another process; each process needs its own."
);
create_exception!(
    trackgate.exceptions,
    PipelineClosed,
    PyException,
    "The pipeline was closed (shutting down). HTTP 503."
);

fn to_py(err: CoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        CoreError::Decode(_) => DecodeError::new_err(msg),
        CoreError::TooLarge { .. } | CoreError::ItemTooLarge { .. } | CoreError::LineTooLong { .. } => {
            PayloadTooLarge::new_err(msg)
        }
        CoreError::Unsupported(_) => UnsupportedMedia::new_err(msg),
        CoreError::QueueFull { .. } => QueueFull::new_err(msg),
        CoreError::Closed => PipelineClosed::new_err(msg),
        CoreError::Usage(_) => PyValueError::new_err(msg),
        CoreError::Locked(_) => QueueLocked::new_err(msg),
        CoreError::Storage(_) => PyOSError::new_err(msg),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "panic"
    }
}

/// Runs `f` with the GIL released and turns a panic into a `RuntimeError`: a `PanicException`
/// would slip past `except Exception` in the server.
fn guarded<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> Result<T> + Send,
    T: Send,
{
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(to_py),
        Err(panic) => Err(PyRuntimeError::new_err(format!(
            "internal error in trackgate._core: {}",
            panic_message(&*panic)
        ))),
    }
}

fn parse_signal(signal: &str) -> PyResult<Signal> {
    Signal::from_str(signal).map_err(to_py)
}

fn parse_format(format: &str) -> PyResult<Format> {
    match format {
        "protobuf" => Ok(Format::Protobuf),
        "json" => Ok(Format::Json),
        other => Err(to_py(CoreError::Unsupported(format!(
            "unsupported content format {other:?} (supported: protobuf, json)"
        )))),
    }
}

/// `timeout` in seconds: finite and >= 0, or infinity for no limit.
fn parse_timeout(timeout: f64) -> PyResult<Option<Duration>> {
    if timeout.is_nan() || timeout < 0.0 {
        return Err(PyValueError::new_err(format!(
            "timeout must be >= 0 seconds (got {timeout})"
        )));
    }
    Ok(Duration::try_from_secs_f64(timeout).ok())
}

/// `(max_bytes, max_age_s)` per exporter, 0 meaning no limit, as [`ExporterLimit`]s.
fn parse_limits(limits: HashMap<String, (u64, f64)>) -> PyResult<Vec<(String, ExporterLimit)>> {
    let mut out = Vec::with_capacity(limits.len());
    for (name, (max_bytes, max_age)) in limits {
        if !max_age.is_finite() || max_age < 0.0 {
            return Err(PyValueError::new_err(format!(
                "exporter_limits[{name:?}] max_age must be >= 0 seconds (got {max_age})"
            )));
        }
        let limit = ExporterLimit {
            max_bytes: (max_bytes > 0).then_some(max_bytes),
            max_age: (max_age > 0.0).then(|| Duration::from_secs_f64(max_age)),
        };
        out.push((name, limit));
    }
    Ok(out)
}

/// Identifies the Core a batch came from, so acking it on another Core is an error rather than
/// a commit of unrelated seqs.
static NEXT_CORE_ID: AtomicU64 = AtomicU64::new(1);

#[pyclass(frozen, module = "trackgate._core")]
struct IngestResult {
    #[pyo3(get)]
    signal: &'static str,
    #[pyo3(get)]
    received: u64,
    #[pyo3(get)]
    accepted: u64,
    #[pyo3(get)]
    rejected: u64,
    #[pyo3(get)]
    sampled_out: u64,
    #[pyo3(get)]
    error_message: String,
    #[pyo3(get)]
    decoded_bytes: usize,
    /// The notifier passed in will be told, with the token passed in, once the fsync covering
    /// this request ran or failed: until then the request is not durable.
    #[pyo3(get)]
    waiting: bool,
}

impl IngestResult {
    fn new(signal: Signal, out: Ingested, waiting: bool) -> Self {
        IngestResult {
            waiting,
            signal: signal.as_str(),
            received: out.received,
            accepted: out.accepted,
            rejected: out.rejected,
            sampled_out: out.sampled_out,
            error_message: out.error_message,
            decoded_bytes: out.decoded_bytes,
        }
    }
}

#[pymethods]
impl IngestResult {
    fn __repr__(&self) -> String {
        format!(
            "IngestResult(signal={:?}, received={}, accepted={}, rejected={}, sampled_out={}, error_message={:?})",
            self.signal, self.received, self.accepted, self.rejected, self.sampled_out, self.error_message
        )
    }
}

#[pyclass(frozen, module = "trackgate._core")]
struct Batch {
    core: u64,
    signal: Signal,
    #[pyo3(get)]
    exporter: String,
    #[pyo3(get)]
    records: u64,
    last_seq: Seq,
    body: Py<PyBytes>,
    /// Dash0 content counts kept with the entries at ingest, summed, and the body ranges of
    /// the entries that came without (read back from disk, queued raw): walked only if asked.
    counted: ContentReport,
    uncounted: Vec<std::ops::Range<usize>>,
}

#[pymethods]
impl Batch {
    #[getter]
    fn signal(&self) -> &'static str {
        self.signal.as_str()
    }

    #[getter]
    fn body(&self, py: Python<'_>) -> Py<PyBytes> {
        self.body.clone_ref(py)
    }

    /// Records over Dash0's documented content limits, by limit, as `dash0_content_report`
    /// gives for the body; from the counts ingest kept, without walking the body again.
    #[getter]
    fn content_report(&self, py: Python<'_>) -> PyResult<Vec<(&'static str, u64)>> {
        if self.uncounted.is_empty() {
            return Ok(self.counted.items().to_vec());
        }
        let body = self.body.bind(py).as_bytes();
        let report = guarded(py, || {
            let now = limits::now_ns();
            let mut report = self.counted;
            for range in &self.uncounted {
                let part = body.get(range.clone()).unwrap_or_default();
                report.add(&limits::check(self.signal, part, &limits::ContentLimits::DASH0, now)?);
            }
            Ok(report)
        })?;
        Ok(report.items().to_vec())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Batch(exporter={:?}, signal={:?}, records={}, bytes={})",
            self.exporter,
            self.signal.as_str(),
            self.records,
            self.body.bind(py).as_bytes().len()
        )
    }
}

#[pyclass(frozen, module = "trackgate._core")]
struct Core {
    id: u64,
    /// Shared with the listeners of the network runtime, which ingest without Python.
    pipeline: Arc<Pipeline>,
}

impl Core {
    /// Finishes a deferred ingest: waits for its fsync here (no sink), or hands the wait to the
    /// queue's syncer thread and returns whether `sink` will be told.
    fn settle<T>(
        &self,
        (out, point): (T, Option<SyncPoint>),
        sink: Option<Arc<dyn DurableSink>>,
        token: u64,
    ) -> Result<(T, bool)> {
        match (point, sink) {
            (None, _) => Ok((out, false)),
            (Some(point), None) => self.pipeline.sync_point(Some(point)).map(|()| (out, false)),
            (Some(point), Some(sink)) => {
                self.pipeline.when_durable(point, sink, token);
                Ok((out, true))
            }
        }
    }
}

/// Tells a Python callable about durable appends: `callback(done, failed)` with the tokens whose
/// fsync ran and `(token, exception)` pairs for those it failed (or that shutdown cut off). Called
/// on the queue's syncer thread, once per group commit, so it should only hand over to the
/// event loop (`loop.call_soon_threadsafe`).
#[pyclass(frozen, module = "trackgate._core")]
struct DurableNotifier {
    sink: Arc<PySink>,
}

/// Where a group commit's outcomes go. With a callback, the syncer thread calls it (taking the
/// GIL once per group). Without one, the outcomes wait in `pending` and one byte on a socket
/// pair wakes the event loop, which collects them with `drain()`: the syncer never takes the
/// GIL, so it never competes with the loop for it.
enum PySink {
    Callback(Py<PyAny>),
    Wakeup {
        pending: Mutex<Vec<(u64, Result<()>)>>,
        writer: UnixStream,
        reader: UnixStream,
    },
}

impl DurableSink for PySink {
    fn deliver(&self, results: Vec<(u64, Result<()>)>) {
        match self {
            PySink::Callback(callback) => Python::attach(|py| {
                let (done, failed) = split_outcomes(py, results);
                if let Err(err) = callback.call1(py, (done, failed)) {
                    err.write_unraisable(py, Some(callback.bind(py)));
                }
            }),
            PySink::Wakeup { pending, writer, .. } => {
                let was_empty = {
                    let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                    let was_empty = pending.is_empty();
                    pending.extend(results);
                    was_empty
                };
                // One byte per batch of outcomes the loop has not collected yet: a full socket
                // buffer (WouldBlock) already holds a wakeup.
                if was_empty {
                    let _ = (&*writer).write(&[1]);
                }
            }
        }
    }
}

/// Outcomes as Python sees them: the tokens whose fsync ran, and `(token, exception)`.
type Outcomes = (Vec<u64>, Vec<(u64, Py<PyBaseException>)>);

fn split_outcomes(py: Python<'_>, results: Vec<(u64, Result<()>)>) -> Outcomes {
    let mut done = Vec::with_capacity(results.len());
    let mut failed = Vec::new();
    for (token, result) in results {
        match result {
            Ok(()) => done.push(token),
            Err(err) => failed.push((token, to_py(err).into_value(py))),
        }
    }
    (done, failed)
}

impl DurableNotifier {
    fn sink(&self) -> Arc<dyn DurableSink> {
        Arc::clone(&self.sink) as Arc<dyn DurableSink>
    }
}

#[pymethods]
impl DurableNotifier {
    #[new]
    #[pyo3(signature = (callback = None))]
    fn new(callback: Option<Py<PyAny>>) -> PyResult<Self> {
        let sink = match callback {
            Some(callback) => PySink::Callback(callback),
            None => {
                let (writer, reader) = UnixStream::pair()?;
                writer.set_nonblocking(true)?;
                reader.set_nonblocking(true)?;
                PySink::Wakeup {
                    pending: Mutex::new(Vec::new()),
                    writer,
                    reader,
                }
            }
        };
        Ok(DurableNotifier { sink: Arc::new(sink) })
    }

    /// The descriptor that becomes readable when outcomes wait (no callback given), else -1.
    fn fileno(&self) -> i32 {
        match &*self.sink {
            PySink::Wakeup { reader, .. } => reader.as_raw_fd(),
            PySink::Callback(_) => -1,
        }
    }

    /// The outcomes waiting (no callback given): `(done tokens, [(token, exception)])`.
    fn drain(&self, py: Python<'_>) -> Outcomes {
        let PySink::Wakeup { pending, reader, .. } = &*self.sink else {
            return (Vec::new(), Vec::new());
        };
        // The wakeup bytes first, then the outcomes: a deliver after this read finds the list
        // empty and writes a new byte, so none is left without one.
        let mut buf = [0u8; 256];
        while matches!((&*reader).read(&mut buf), Ok(n) if n > 0) {}
        let results = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
        split_outcomes(py, results)
    }
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (
        *,
        exporters,
        sampling_traces = 1.0,
        sampling_logs = 1.0,
        keep_errors = true,
        resource_attributes = Vec::new(),
        queue_max_bytes = 268_435_456,
        batch_max_records = 8192,
        batch_max_bytes = 4_194_304,
        batch_max_delay_ms = 200,
        max_body_bytes = 67_108_864,
        storage_dir = None,
        fsync = "always",
        fsync_interval_ms = 200,
        segment_bytes = 67_108_864,
        preallocate = false,
        compression = "lz4",
        exporter_limits = None,
        scrub_otlp = false,
        scrub_fluent = false,
        scrub_extra_keys = Vec::new(),
        scrub_safe_keys = Vec::new(),
        scrub_patterns = Vec::new(),
        fluent_utc_offset_s = 0,
        content_counts = true,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        exporters: Vec<String>,
        sampling_traces: f64,
        sampling_logs: f64,
        keep_errors: bool,
        resource_attributes: Vec<(String, String)>,
        queue_max_bytes: usize,
        batch_max_records: u64,
        batch_max_bytes: usize,
        batch_max_delay_ms: u64,
        max_body_bytes: usize,
        storage_dir: Option<PathBuf>,
        fsync: &str,
        fsync_interval_ms: u64,
        segment_bytes: u64,
        preallocate: bool,
        compression: &str,
        exporter_limits: Option<HashMap<String, (u64, f64)>>,
        scrub_otlp: bool,
        scrub_fluent: bool,
        scrub_extra_keys: Vec<String>,
        scrub_safe_keys: Vec<String>,
        scrub_patterns: Vec<String>,
        fluent_utc_offset_s: i32,
        content_counts: bool,
    ) -> PyResult<Self> {
        let scrub = scrub_options(true, scrub_extra_keys, scrub_safe_keys, scrub_patterns)?;
        let fsync = Fsync::parse(fsync, Duration::from_millis(fsync_interval_ms)).map_err(to_py)?;
        let limits = parse_limits(exporter_limits.unwrap_or_default())?;
        let compress = match compression {
            "lz4" => true,
            "none" => false,
            other => {
                return Err(to_py(CoreError::Usage(format!(
                    "unknown storage compression {other:?} (expected lz4 or none)"
                ))))
            }
        };
        let pipeline = guarded(py, || {
            let batch = Limits::new(
                batch_max_records,
                batch_max_bytes,
                Duration::from_millis(batch_max_delay_ms),
            )?;
            let ingest = IngestOptions {
                sampling_traces,
                sampling_logs,
                keep_errors,
                resource_attributes,
                max_body_bytes,
                scrub: (scrub_otlp || scrub_fluent).then_some(scrub),
                content_counts,
            };
            let Some(dir) = storage_dir else {
                if !limits.is_empty() {
                    return Err(CoreError::Usage("exporter_limits need a storage_dir".into()));
                }
                return Pipeline::new(PipelineOptions {
                    exporters,
                    ingest,
                    queue_max_bytes,
                    batch,
                });
            };
            let queue = DiskQueue::open(DiskOptions {
                segment_bytes,
                fsync,
                limits,
                // Without fsyncs there is no journal commit to save: segments grow as written.
                preallocate: preallocate && fsync != Fsync::Never,
                compress,
                ..DiskOptions::new(dir, exporters, queue_max_bytes as u64)
            })?;
            Pipeline::with_queue(ingest, Box::new(queue), batch)
        })?;
        pipeline.set_scrub_tracks(scrub_otlp, scrub_fluent);
        pipeline.set_fluent_utc_offset(fluent_utc_offset_s);
        Ok(Core {
            id: NEXT_CORE_ID.fetch_add(1, Ordering::Relaxed),
            pipeline: Arc::new(pipeline),
        })
    }

    /// With `notify`, returns without waiting for fsync: see `IngestResult.waiting`.
    #[pyo3(signature = (signal, body, format, content_encoding = None, scrub = true, notify = None, token = 0))]
    #[allow(clippy::too_many_arguments)]
    fn ingest(
        &self,
        py: Python<'_>,
        signal: &str,
        body: &[u8],
        format: &str,
        content_encoding: Option<&str>,
        scrub: bool,
        notify: Option<&Bound<'_, DurableNotifier>>,
        token: u64,
    ) -> PyResult<IngestResult> {
        let signal = parse_signal(signal)?;
        let format = parse_format(format)?;
        let sink = notify.map(|n| n.get().sink());
        let (out, waiting) = guarded(py, || {
            let deferred = self
                .pipeline
                .ingest_deferred(signal, body, format, content_encoding, scrub)?;
            self.settle(deferred, sink, token)
        })?;
        Ok(IngestResult::new(signal, out, waiting))
    }

    /// Queues a protobuf request the gateway built itself (the events' log records, Sentry's
    /// events and spans) as `ingest` does, without checking it against the schema or the body
    /// limit again. `scrub=False`: records a track scrubbed already skip the OTLP scrubbing.
    #[pyo3(signature = (signal, body, notify = None, token = 0, scrub = true))]
    fn ingest_built(
        &self,
        py: Python<'_>,
        signal: &str,
        body: &[u8],
        notify: Option<&Bound<'_, DurableNotifier>>,
        token: u64,
        scrub: bool,
    ) -> PyResult<IngestResult> {
        let signal = parse_signal(signal)?;
        let sink = notify.map(|n| n.get().sink());
        let (out, waiting) = guarded(py, || {
            let deferred = self.pipeline.ingest_built_deferred(signal, body, scrub)?;
            self.settle(deferred, sink, token)
        })?;
        Ok(IngestResult::new(signal, out, waiting))
    }

    /// Converts a Fluent body (Fluent Bit's `http` output or input: JSON, NDJSON, msgpack, text,
    /// form) to OTLP logs and queues them. `media_type` is the Content-Type without parameters.
    #[pyo3(signature = (body, media_type, tag, content_encoding = None, notify = None, token = 0))]
    #[allow(clippy::too_many_arguments)]
    fn ingest_fluent(
        &self,
        py: Python<'_>,
        body: &[u8],
        media_type: &str,
        tag: &str,
        content_encoding: Option<&str>,
        notify: Option<&Bound<'_, DurableNotifier>>,
        token: u64,
    ) -> PyResult<IngestResult> {
        let sink = notify.map(|n| n.get().sink());
        let (out, waiting) = guarded(py, || {
            let format = crate::fluent::BodyFormat::from_media_type(media_type)?;
            let deferred = self
                .pipeline
                .ingest_fluent_deferred(body, format, content_encoding, tag)?;
            self.settle(deferred, sink, token)
        })?;
        Ok(IngestResult::new(Signal::Logs, out, waiting))
    }

    /// Converts one whole Fluentd forward-protocol message (e.g. a PackedForward
    /// `[tag, entries, option]`) to OTLP logs and queues them, as the forward listener does.
    fn ingest_forward(&self, py: Python<'_>, message: &[u8]) -> PyResult<IngestResult> {
        let out = guarded(py, || self.pipeline.ingest_forward(message))?;
        Ok(IngestResult::new(Signal::Logs, out, false))
    }

    /// Takes the events carried by every logs request this core ingests (OTLP/HTTP, OTLP/gRPC,
    /// Fluent http, the Fluent http input and forward listeners): records whose attributes or
    /// JSON body hold an `event_type` in `types` are queued on `bus` (the event bus's core) after
    /// the records themselves, before the call answers; then `on_events(ndjson, accepted,
    /// scrubbed)` is called (with the GIL, only when events were found). A request without the
    /// bytes `event_type` costs one byte scan. `bus` and `on_events` both None: no tap.
    #[pyo3(signature = (bus, types, on_events = None, *, scrub = false, scrub_extra_keys = Vec::new(),
        scrub_safe_keys = Vec::new(), scrub_patterns = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn set_events_tap(
        &self,
        bus: Option<PyRef<'_, Core>>,
        types: Vec<String>,
        on_events: Option<Py<PyAny>>,
        scrub: bool,
        scrub_extra_keys: Vec<String>,
        scrub_safe_keys: Vec<String>,
        scrub_patterns: Vec<String>,
    ) -> PyResult<()> {
        let options = scrub_options(true, scrub_extra_keys, scrub_safe_keys, scrub_patterns)?;
        let bus = bus.map(|core| core.pipeline.clone());
        if bus.is_none() && on_events.is_none() {
            self.pipeline.set_events_tap(None);
            return Ok(());
        }
        let scrubber = scrub.then(|| crate::scrub::Scrubber::new(&options));
        let tap: EventsTap = Arc::new(move |request: &[u8]| {
            // The records are queued already: a request the walk cannot read has no events.
            let found = match events::from_logs::events_from_logs(request, &types, events::unix_nanos()) {
                Err(CoreError::Decode(_)) => return Ok(()),
                found => found?,
            };
            if found.is_empty() {
                return Ok(());
            }
            let mut decoded = events::Decoded {
                events: found,
                ..Default::default()
            };
            let scrubbed = scrubber.as_ref().map_or(0, |s| events::scrub_data(&mut decoded, s));
            let accepted = decoded.events.len();
            let ndjson = events::to_ndjson(&decoded.events);
            if let Some(bus) = &bus {
                bus.enqueue(Signal::Logs, accepted as u64, ndjson.clone())?;
            }
            if let Some(callback) = &on_events {
                Python::attach(|py| {
                    // The events are queued: a failing callback (metrics) must not fail the logs.
                    if let Err(err) = callback.call1(py, (PyBytes::new(py, &ndjson), accepted, scrubbed)) {
                        err.write_unraisable(py, None);
                    }
                });
            }
            Ok(())
        });
        self.pipeline.set_events_tap(Some(tap));
        Ok(())
    }

    /// Queues `payload` as is (no OTLP decoding): used for Sentry envelopes. Returns whether
    /// `notify` will be told when it is durable (see `IngestResult.waiting`).
    #[pyo3(signature = (signal, payload, records, notify = None, token = 0))]
    fn enqueue(
        &self,
        py: Python<'_>,
        signal: &str,
        payload: Vec<u8>,
        records: u64,
        notify: Option<&Bound<'_, DurableNotifier>>,
        token: u64,
    ) -> PyResult<bool> {
        let signal = parse_signal(signal)?;
        let sink = notify.map(|n| n.get().sink());
        guarded(py, || {
            let point = self.pipeline.enqueue_deferred(signal, records, payload)?;
            Ok(self.settle(((), point), sink, token)?.1)
        })
    }

    #[pyo3(signature = (exporter, signal, timeout, flush = false))]
    fn next_batch(
        &self,
        py: Python<'_>,
        exporter: &str,
        signal: &str,
        timeout: f64,
        flush: bool,
    ) -> PyResult<Option<Batch>> {
        let signal = parse_signal(signal)?;
        let timeout = parse_timeout(timeout)?;
        let Some(batch) = guarded(py, || self.pipeline.next_batch(exporter, signal, timeout, flush))? else {
            return Ok(None);
        };
        // Concatenate the payloads straight into the Python object: one copy.
        let body = PyBytes::new_with(py, batch.len(), |buf| batch.write_body(buf).map_err(to_py))?;
        let (counted, uncounted) = batch.content_counts(&limits::ContentLimits::DASH0, limits::now_ns());
        Ok(Some(Batch {
            core: self.id,
            signal: batch.signal,
            exporter: batch.exporter,
            records: batch.records,
            last_seq: batch.last_seq,
            body: body.unbind(),
            counted,
            uncounted,
        }))
    }

    fn ack(&self, py: Python<'_>, batch: &Bound<'_, Batch>) -> PyResult<()> {
        let batch = batch.get();
        if batch.core != self.id {
            return Err(PyValueError::new_err("this batch was handed out by another Core"));
        }
        guarded(py, || self.pipeline.ack(&batch.exporter, batch.signal, batch.last_seq))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = guarded(py, || Ok(self.pipeline.stats()))?;
        let dict = PyDict::new(py);
        for (key, value) in stats {
            dict.set_item(key, value)?;
        }
        Ok(dict)
    }

    /// What opening the queue found and repaired; empty without a storage_dir.
    fn recovery<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (key, value) in self.pipeline.recovery() {
            dict.set_item(key, value)?;
        }
        Ok(dict)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, || {
            self.pipeline.close();
            Ok(())
        })
    }

    #[getter]
    fn closed(&self) -> bool {
        self.pipeline.is_closed()
    }

    fn __repr__(&self) -> String {
        format!(
            "Core(exporters={:?}, closed={})",
            self.pipeline.exporters(),
            self.pipeline.is_closed()
        )
    }
}

/// The non-ASGI listeners: one network runtime (tokio) in the extension, one shutdown path.
#[pyclass(frozen, module = "trackgate._core")]
struct Listeners {
    inner: NetListeners,
}

fn parse_seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be a finite number of seconds >= 0 (got {value})")))
}

#[pymethods]
impl Listeners {
    #[new]
    #[pyo3(signature = (threads = 2))]
    fn new(threads: usize) -> PyResult<Self> {
        Ok(Listeners {
            inner: NetListeners::new(threads)?,
        })
    }

    /// Serves OTLP/gRPC on host:port into `core`; returns the bound port.
    #[pyo3(signature = (core, host, port, *, tokens = Vec::new(), max_body_bytes = 67_108_864,
        max_concurrent_streams = 100, keepalive_interval_s = 60.0, keepalive_timeout_s = 20.0,
        body_timeout_s = 30.0, max_inflight_bytes = 268_435_456, reuse_port = false))]
    #[allow(clippy::too_many_arguments)]
    fn add_otlp_grpc(
        &self,
        py: Python<'_>,
        core: &Bound<'_, Core>,
        host: &str,
        port: u16,
        tokens: Vec<String>,
        max_body_bytes: usize,
        max_concurrent_streams: u32,
        keepalive_interval_s: f64,
        keepalive_timeout_s: f64,
        body_timeout_s: f64,
        max_inflight_bytes: usize,
        reuse_port: bool,
    ) -> PyResult<u16> {
        let keepalive = parse_seconds("keepalive_interval_s", keepalive_interval_s)?;
        let config = otlp_grpc::Config {
            tokens: tokens.into_iter().map(String::into_bytes).collect(),
            max_body_bytes,
            max_concurrent_streams,
            keepalive_interval: (!keepalive.is_zero()).then_some(keepalive),
            keepalive_timeout: parse_seconds("keepalive_timeout_s", keepalive_timeout_s)?,
            body_timeout: parse_seconds("body_timeout_s", body_timeout_s)?,
            max_inflight_bytes,
        };
        let service = otlp_grpc::Service::new(core.get().pipeline.clone(), config);
        let addr = py.detach(|| self.inner.add_otlp_grpc(host, port, reuse_port, service))?;
        Ok(addr.port())
    }

    /// Serves the Fluentd forward protocol on host:port into `core`; returns the bound port.
    /// With `shared_key`, every connection must pass the handshake first (and name one of
    /// `users`, (username, password) pairs, when that is not empty).
    #[pyo3(signature = (core, host, port, *, max_message_bytes = 67_108_864, reuse_port = false,
        shared_key = None, self_hostname = String::from("localhost"), users = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn add_forward(
        &self,
        py: Python<'_>,
        core: &Bound<'_, Core>,
        host: &str,
        port: u16,
        max_message_bytes: usize,
        reuse_port: bool,
        shared_key: Option<String>,
        self_hostname: String,
        users: Vec<(String, String)>,
    ) -> PyResult<u16> {
        let auth = match shared_key {
            Some(key) if key.is_empty() => return Err(PyValueError::new_err("shared_key is empty")),
            Some(key) => Some(Auth {
                shared_key: key.into_bytes(),
                hostname: self_hostname,
                users: users
                    .into_iter()
                    .map(|(u, p)| (u.into_bytes(), p.into_bytes()))
                    .collect(),
            }),
            None if !users.is_empty() => return Err(PyValueError::new_err("users need a shared_key")),
            None => None,
        };
        let service = forward::Service {
            pipeline: core.get().pipeline.clone(),
            config: forward::Config {
                max_message_bytes,
                auth,
            },
            stats: Arc::default(),
        };
        let addr = py.detach(|| self.inner.add_forward(host, port, reuse_port, service))?;
        Ok(addr.port())
    }

    /// Serves a drop-in for Fluent Bit's `http` input into `core`; returns the bound port.
    #[pyo3(signature = (core, host, port, *, tokens = Vec::new(), max_body_bytes = 67_108_864,
        body_timeout_s = 30.0, idle_timeout_s = 0.0, reuse_port = false))]
    #[allow(clippy::too_many_arguments)]
    fn add_fluent_http(
        &self,
        py: Python<'_>,
        core: &Bound<'_, Core>,
        host: &str,
        port: u16,
        tokens: Vec<String>,
        max_body_bytes: usize,
        body_timeout_s: f64,
        idle_timeout_s: f64,
        reuse_port: bool,
    ) -> PyResult<u16> {
        let service = fluent_http::Service {
            pipeline: core.get().pipeline.clone(),
            config: fluent_http::Config {
                tokens: tokens.into_iter().map(String::into_bytes).collect(),
                max_body_bytes,
                body_timeout: parse_seconds("body_timeout_s", body_timeout_s)?,
                idle_timeout: Some(parse_seconds("idle_timeout_s", idle_timeout_s)?).filter(|t| !t.is_zero()),
            },
        };
        let addr = py.detach(|| self.inner.add_fluent_http(host, port, reuse_port, service))?;
        Ok(addr.port())
    }

    /// Serves OTLP/HTTP on the gateway's main port (the front): OTLP posts, and Fluent posts on
    /// `/v1/fluent[/{tag}]` and `fluent_paths` (the tag, when the path has none, from the
    /// `fluent_tag_header` header), are answered by the core; every other request is relayed to
    /// the app at `backend_uds` (a Unix socket) or `backend_tcp` (HOST:PORT). Returns the bound port.
    #[pyo3(signature = (core, host, port, *, backend_uds = None, backend_tcp = None, tokens = Vec::new(),
        max_body_bytes = 67_108_864, body_timeout_s = 30.0, idle_timeout_s = 0.0, max_inflight_bytes = 268_435_456,
        max_connections = 1024, blocking = false, latency_buckets = Vec::new(), log = None, budget = None,
        reuse_port = false, fluent_paths = Vec::new(), fluent_tag_header = String::new(), events = false,
        events_bus = None, events_scrub = None, job_metrics = None, job_state = None, sentry = None,
        sentry_keys = Vec::new(), sentry_any_key = false, sentry_forward = None, sentry_limits = None))]
    #[allow(clippy::too_many_arguments)]
    fn add_otlp_http(
        &self,
        py: Python<'_>,
        core: &Bound<'_, Core>,
        host: &str,
        port: u16,
        backend_uds: Option<PathBuf>,
        backend_tcp: Option<String>,
        tokens: Vec<String>,
        max_body_bytes: usize,
        body_timeout_s: f64,
        idle_timeout_s: f64,
        max_inflight_bytes: usize,
        max_connections: usize,
        blocking: bool,
        latency_buckets: Vec<f64>,
        log: Option<Py<PyAny>>,
        budget: Option<Py<InflightBudget>>,
        reuse_port: bool,
        fluent_paths: Vec<String>,
        fluent_tag_header: String,
        events: bool,
        events_bus: Option<PyRef<'_, Core>>,
        events_scrub: Option<(Vec<String>, Vec<String>, Vec<String>)>,
        job_metrics: Option<Py<JobMetrics>>,
        job_state: Option<Py<PyAny>>,
        sentry: Option<PyRef<'_, SentryProcessor>>,
        sentry_keys: Vec<String>,
        sentry_any_key: bool,
        sentry_forward: Option<PyRef<'_, Core>>,
        sentry_limits: Option<PyRef<'_, SentryRateLimits>>,
    ) -> PyResult<u16> {
        // log(level, message, fields): the app's logger, called with the GIL on rare paths only.
        let log = log.map(|callable| -> otlp_http::Log {
            Arc::new(move |level, message, fields| {
                Python::attach(|py| {
                    let fields: HashMap<&str, Py<PyAny>> = fields
                        .into_iter()
                        .map(|(key, value)| {
                            let value = match value {
                                otlp_http::LogValue::Text(text) => PyString::new(py, &text).into_any(),
                                otlp_http::LogValue::Count(n) => PyInt::new(py, n).into_any(),
                            };
                            (key, value.unbind())
                        })
                        .collect();
                    if let Err(err) = callable.call1(py, (level, message, fields)) {
                        err.write_unraisable(py, Some(callable.bind(py)));
                    }
                })
            })
        });
        let backend = match (backend_uds, backend_tcp) {
            (Some(path), None) => otlp_http::Backend::Unix(path),
            (None, Some(addr)) => otlp_http::Backend::Tcp(addr),
            _ => return Err(PyValueError::new_err("give one of backend_uds and backend_tcp")),
        };
        if latency_buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(PyValueError::new_err("latency_buckets must be increasing"));
        }
        let config = otlp_http::Config {
            tokens: tokens.into_iter().map(String::into_bytes).collect(),
            max_body_bytes,
            body_timeout: parse_seconds("body_timeout_s", body_timeout_s)?,
            idle_timeout: Some(parse_seconds("idle_timeout_s", idle_timeout_s)?).filter(|t| !t.is_zero()),
            max_inflight_bytes,
            max_connections,
            blocking,
            backend,
            latency_buckets,
            log,
            fluent: crate::net::fluent_route::Routes::new(fluent_paths, &fluent_tag_header),
            events: if events {
                Some(Arc::new(events_route(
                    events_bus,
                    events_scrub,
                    job_metrics,
                    job_state,
                )?))
            } else {
                None
            },
            sentry: sentry.map(|processor| {
                Arc::new(SentryRoute {
                    options: processor.options.clone(),
                    max_bytes: processor.max_bytes,
                    keys: sentry_keys.into_iter().map(String::into_bytes).collect(),
                    any_key: sentry_any_key,
                    forward: sentry_forward.map(|core| core.pipeline.clone()),
                    limits: sentry_limits.map(|l| l.inner.clone()).unwrap_or_default(),
                    counts: sentry_route::Counts::default(),
                })
            }),
        };
        let pipeline = core.get().pipeline.clone();
        let service = match budget {
            Some(budget) => otlp_http::Service::with_budget(pipeline, config, budget.get().inner.clone()),
            None => otlp_http::Service::new(pipeline, config),
        };
        let addr = py.detach(|| self.inner.add_otlp_http(host, port, reuse_port, service))?;
        Ok(addr.port())
    }

    /// Events the front answered on `/v1/events`: (accepted, rejected, scrubbed).
    fn events_counts(&self) -> (u64, u64, u64) {
        self.inner.events_counts()
    }

    /// Sentry envelopes and items the front answered: (name, count) for `accepted`,
    /// `rate_limited` and `rejected` envelopes, and `items_received`, `items_forwarded`,
    /// `items_scrubbed` and `items_sampled_out`.
    fn sentry_counts(&self) -> Vec<(&'static str, u64)> {
        self.inner.sentry_counts()
    }

    /// Requests the OTLP/HTTP front answered: (route, status, count).
    fn http_answered(&self) -> Vec<(&'static str, u16, u64)> {
        let mut out: Vec<(&'static str, u16, u64)> = Vec::new();
        for (route, status, n) in self.inner.http_stats().iter().flat_map(|s| s.answered()) {
            match out.iter_mut().find(|(r, c, _)| (*r, *c) == (route, status)) {
                Some(entry) => entry.2 += n,
                None => out.push((route, status, n)),
            }
        }
        out
    }

    /// The front's latencies: (route, count per bucket with +Inf last, sum of seconds).
    fn http_latency(&self) -> Vec<(&'static str, Vec<u64>, f64)> {
        self.inner.http_stats().iter().flat_map(|s| s.latency()).collect()
    }

    /// Connections the front handed to the app.
    fn http_relayed(&self) -> u64 {
        self.inner.http_stats().iter().map(|s| s.relayed()).sum()
    }

    /// Requests the front refused because the body budget was spent.
    fn http_refused(&self) -> u64 {
        self.inner.http_stats().iter().map(|s| s.refused()).sum()
    }

    /// Forward-protocol counters: (name, count).
    fn forward_stats(&self) -> Vec<(&'static str, u64)> {
        self.inner.forward_stats()
    }

    /// Calls served over gRPC: (method, code, count).
    fn stats(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.inner.stats()
    }

    /// Stops accepting and lets calls in flight finish within `grace_s`. Idempotent.
    #[pyo3(signature = (grace_s = 5.0))]
    fn close(&self, py: Python<'_>, grace_s: f64) -> PyResult<()> {
        let grace = parse_seconds("grace_s", grace_s)?;
        py.detach(|| self.inner.close(grace));
        Ok(())
    }
}

/// Bytes of request bodies buffered at once in one worker (`server.max_inflight_bytes`), shared
/// by the app (one event loop) and the OTLP/HTTP front (the network runtime).
#[pyclass(frozen, module = "trackgate._core")]
pub struct InflightBudget {
    inner: Arc<otlp_http::Budget>,
}

#[pymethods]
impl InflightBudget {
    #[new]
    fn new(limit: usize) -> Self {
        InflightBudget {
            inner: Arc::new(otlp_http::Budget::new(limit)),
        }
    }

    /// Takes `size` bytes if they fit; False when they do not.
    fn reserve(&self, size: usize) -> bool {
        self.inner.reserve(size)
    }

    fn release(&self, size: usize) {
        self.inner.release(size);
    }

    #[getter]
    fn used(&self) -> usize {
        self.inner.used()
    }

    #[getter]
    fn limit(&self) -> usize {
        self.inner.limit()
    }
}

#[pyclass(frozen, module = "trackgate._core")]
struct SentryResult {
    envelope: Vec<u8>,
    otlp_logs: Vec<u8>,
    otlp_traces: Vec<u8>,
    #[pyo3(get)]
    event_id: Option<String>,
    #[pyo3(get)]
    dsn: Option<String>,
    #[pyo3(get)]
    categories: Vec<&'static str>,
    #[pyo3(get)]
    items: usize,
    #[pyo3(get)]
    items_forwarded: usize,
    #[pyo3(get)]
    items_scrubbed: usize,
    #[pyo3(get)]
    events_converted: usize,
    #[pyo3(get)]
    log_records: usize,
    #[pyo3(get)]
    transactions_sampled_out: usize,
    #[pyo3(get)]
    transactions_converted: usize,
    #[pyo3(get)]
    spans: usize,
    #[pyo3(get)]
    items_rate_limited: usize,
    #[pyo3(get)]
    held: Vec<&'static str>,
}

impl From<Processed> for SentryResult {
    fn from(p: Processed) -> Self {
        SentryResult {
            envelope: p.envelope,
            otlp_logs: p.otlp_logs,
            otlp_traces: p.otlp_traces,
            event_id: p.event_id,
            dsn: p.dsn,
            categories: p.categories,
            items: p.items,
            items_forwarded: p.items_forwarded,
            items_scrubbed: p.items_scrubbed,
            events_converted: p.events_converted,
            log_records: p.log_records,
            transactions_sampled_out: p.transactions_sampled_out,
            transactions_converted: p.transactions_converted,
            spans: p.spans,
            items_rate_limited: p.items_rate_limited,
            held: p.held,
        }
    }
}

#[pymethods]
impl SentryResult {
    #[getter]
    fn envelope<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.envelope)
    }

    #[getter]
    fn otlp_logs<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.otlp_logs)
    }

    #[getter]
    fn otlp_traces<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.otlp_traces)
    }

    fn __repr__(&self) -> String {
        format!(
            "SentryResult(event_id={:?}, items={}, forwarded={}, scrubbed={}, log_records={}, spans={})",
            self.event_id, self.items, self.items_forwarded, self.items_scrubbed, self.log_records, self.spans
        )
    }
}

/// The scrub rules from a binding's keyword arguments; a ValueError names the first pattern that
/// cannot be used.
fn scrub_options(
    enabled: bool,
    extra_keys: Vec<String>,
    safe_keys: Vec<String>,
    patterns: Vec<String>,
) -> PyResult<ScrubOptions> {
    for (index, pattern) in patterns.iter().enumerate() {
        if let Some(why) = crate::scrub::check_pattern(pattern) {
            return Err(PyValueError::new_err(format!(
                "scrub pattern {index} is not usable: {why}"
            )));
        }
    }
    Ok(ScrubOptions {
        enabled,
        extra_keys,
        safe_keys,
        patterns,
    })
}

/// Why a `[scrub] extra_patterns` entry cannot be used, or None when it can.
#[pyfunction]
fn scrub_pattern_error(pattern: &str) -> Option<String> {
    crate::scrub::check_pattern(pattern)
}

/// The Sentry track's data plane: decompress, parse, scrub, sample and convert envelopes.
#[pyclass(frozen, module = "trackgate._core")]
struct SentryProcessor {
    options: SentryOptions,
    max_bytes: usize,
}

#[pymethods]
impl SentryProcessor {
    #[new]
    #[pyo3(signature = (*, scrub = true, scrub_extra_keys = Vec::new(), scrub_safe_keys = Vec::new(),
        scrub_patterns = Vec::new(), transaction_sample_rate = 1.0, to_otlp = true, max_envelope_bytes = 200 * 1024 * 1024,
        max_event_bytes = 1024 * 1024))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        scrub: bool,
        scrub_extra_keys: Vec<String>,
        scrub_safe_keys: Vec<String>,
        scrub_patterns: Vec<String>,
        transaction_sample_rate: f64,
        to_otlp: bool,
        max_envelope_bytes: usize,
        max_event_bytes: usize,
    ) -> PyResult<Self> {
        if !(0.0..=1.0).contains(&transaction_sample_rate) {
            return Err(PyValueError::new_err(format!(
                "transaction_sample_rate must be between 0 and 1 (got {transaction_sample_rate})"
            )));
        }
        let mut options = SentryOptions {
            scrub: scrub_options(scrub, scrub_extra_keys, scrub_safe_keys, scrub_patterns)?,
            transaction_sample_rate,
            to_otlp,
            ..SentryOptions::default()
        };
        options.limits.event = max_event_bytes;
        Ok(SentryProcessor {
            options,
            max_bytes: max_envelope_bytes,
        })
    }

    /// One request body: an envelope, or with `store=True` a legacy store-endpoint event.
    /// With `limits`, the items of the categories they limit now are left out of the envelope
    /// (`items_rate_limited`, `held`).
    #[pyo3(signature = (body, project_id, content_encoding = None, store = false, limits = None))]
    fn process(
        &self,
        py: Python<'_>,
        body: &[u8],
        project_id: &str,
        content_encoding: Option<&str>,
        store: bool,
        limits: Option<PyRef<'_, SentryRateLimits>>,
    ) -> PyResult<SentryResult> {
        let limits = limits.map(|l| l.inner.clone());
        let out = guarded(py, || {
            let body = decompress::decompress(body, content_encoding, self.max_bytes)?;
            let held = |category: &'static str| limits.as_ref().is_some_and(|l| !l.limited(&[category]).is_empty());
            if store {
                sentry::process_store_held(&body, project_id, &self.options, &held)
            } else {
                sentry::process_held(&body, project_id, &self.options, &held)
            }
        })?;
        Ok(out.into())
    }

    /// The envelope header's `dsn` from the start of a body, decoding no further than the first
    /// line: `(True, dsn)` once the line is complete, `(False, None)` while `prefix` (of a body
    /// not `complete` yet) does not hold it all.
    #[pyo3(signature = (prefix, content_encoding = None, complete = true))]
    fn header_dsn(
        &self,
        py: Python<'_>,
        prefix: &[u8],
        content_encoding: Option<&str>,
        complete: bool,
    ) -> PyResult<(bool, Option<String>)> {
        let found = guarded(py, || {
            sentry::header_dsn(prefix, content_encoding, complete, self.max_bytes)
        })?;
        Ok(match found {
            HeaderDsn::NeedMore => (false, None),
            HeaderDsn::Found(dsn) => (true, dsn),
        })
    }
}

/// The upstream Sentry's rate limits, by data category (`sentry_limits`): the Sentry exporter
/// records them, and the Sentry receivers (the app's and the front's) answer clients with them.
#[pyclass(frozen, module = "trackgate._core")]
struct SentryRateLimits {
    inner: Arc<RateLimits>,
}

#[pymethods]
impl SentryRateLimits {
    #[new]
    fn new() -> Self {
        SentryRateLimits { inner: Arc::default() }
    }

    /// Records the limits of one upstream answer (a 429, or a 200 carrying limits).
    #[pyo3(signature = (header, retry_after, status))]
    fn update(&self, header: Option<&str>, retry_after: Option<f64>, status: u16) {
        self.inner.update(header, retry_after, status);
    }

    /// The categories among `categories` still limited, with the seconds left.
    fn limited(&self, categories: Vec<String>) -> HashMap<String, f64> {
        self.inner.limited(&categories).into_iter().collect()
    }

    /// (X-Sentry-Rate-Limits, Retry-After) values describing `limited` to a client.
    #[staticmethod]
    fn header(limited: HashMap<String, f64>) -> (String, String) {
        let limited: Vec<(String, f64)> = limited.into_iter().collect();
        crate::sentry_limits::client_headers(&limited)
    }
}

/// Records of an outgoing batch over Dash0's documented content limits, by limit.
#[pyfunction]
fn dash0_content_report(py: Python<'_>, signal: &str, body: &[u8]) -> PyResult<Vec<(&'static str, u64)>> {
    let signal = parse_signal(signal)?;
    let now = limits::now_ns();
    let report = guarded(py, || limits::check(signal, body, &limits::ContentLimits::DASH0, now))?;
    Ok(report.items().to_vec())
}

/// The rate-limit categories of a queued envelope's items.
#[pyfunction]
fn envelope_categories(py: Python<'_>, envelope: &[u8]) -> PyResult<Vec<&'static str>> {
    guarded(py, || sentry::envelope_categories(envelope))
}

/// `X-Sentry-Rate-Limits` as (seconds, categories) pairs; no categories means all.
#[pyfunction]
fn parse_rate_limits(header: &str) -> Vec<(u64, Vec<String>)> {
    sentry::parse_rate_limits(header)
        .into_iter()
        .map(|l| (l.retry_after, l.categories))
        .collect()
}

thread_local! {
    /// `to_json`'s output buffer, kept per thread (the file sink's runner encodes every batch of
    /// a signal on one thread): no fresh multi-megabyte allocation to fault in per batch.
    static JSON_OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A kept buffer larger than this is given back after use: kept, it would hold that much memory
/// per runner thread. 4 MiB covers the JSON of a default batch of 8,192 ordinary records.
const JSON_OUT_KEEP: usize = 4 << 20;

/// A batch encoded as one OTLP/JSON line, newline included, kept in the core: the file sink
/// appends it to its file with the GIL released, and it is never copied into a Python object
/// (that copy, of megabytes, held the GIL).
#[pyclass(frozen, module = "trackgate._core")]
struct JsonLine {
    data: Vec<u8>,
}

#[pymethods]
impl JsonLine {
    fn __len__(&self) -> usize {
        self.data.len()
    }

    /// Appends the whole line to the file at `path` (opened for append here; the caller holds
    /// the file's lock and fsyncs it).
    fn write_to(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let data = &self.data[..];
        py.detach(|| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut file| file.write_all(data))
        })?;
        Ok(())
    }
}

impl Drop for JsonLine {
    fn drop(&mut self) {
        // Hand the buffer back to this thread's slot for the next batch, if the slot is empty.
        if self.data.capacity() <= JSON_OUT_KEEP {
            let data = std::mem::take(&mut self.data);
            let _ = JSON_OUT.try_with(|slot| {
                if let Ok(mut slot) = slot.try_borrow_mut() {
                    if slot.capacity() == 0 {
                        *slot = data;
                    }
                }
            });
        }
    }
}

/// Encodes a batch as one OTLP/JSON line for the file sink, the GIL released.
#[pyfunction]
fn to_json_line(py: Python<'_>, signal: &str, body: &[u8]) -> PyResult<JsonLine> {
    let signal = parse_signal(signal)?;
    let data = guarded(py, || {
        let mut out = JSON_OUT.with_borrow_mut(std::mem::take);
        json_encode::protobuf_to_json_into(signal, body, &mut out)?;
        out.push(b'\n');
        Ok(out)
    })?;
    Ok(JsonLine { data })
}

#[pyfunction]
fn to_json<'py>(py: Python<'py>, signal: &str, body: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let signal = parse_signal(signal)?;
    guarded(py, || {
        JSON_OUT.with_borrow_mut(|out| json_encode::protobuf_to_json_into(signal, body, out))
    })?;
    Ok(JSON_OUT.with_borrow_mut(|out| {
        let bytes = PyBytes::new(py, out);
        if out.capacity() > JSON_OUT_KEEP {
            *out = Vec::new();
        }
        bytes
    }))
}

#[pyfunction]
fn to_protobuf<'py>(py: Python<'py>, signal: &str, body: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let signal = parse_signal(signal)?;
    let out = guarded(py, || json_decode::json_to_protobuf(signal, body))?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn export_response<'py>(
    py: Python<'py>,
    signal: &str,
    rejected: u64,
    error_message: &str,
    format: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let signal = parse_signal(signal)?;
    let format = parse_format(format)?;
    let out = guarded(py, || {
        Ok(encode::export_response(signal, rejected, error_message, format))
    })?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn status_body<'py>(py: Python<'py>, code: i32, message: &str, format: &str) -> PyResult<Bound<'py, PyBytes>> {
    let format = parse_format(format)?;
    let out = guarded(py, || Ok(encode::status_body(code, message, format)))?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn parse_partial_success(py: Python<'_>, body: &[u8], format: &str) -> PyResult<(u64, String)> {
    let format = parse_format(format)?;
    guarded(py, || encode::parse_partial_success(body, format))
}

#[pyfunction]
#[pyo3(signature = (data, level = 6))]
fn gzip<'py>(py: Python<'py>, data: &[u8], level: u32) -> PyResult<Bound<'py, PyBytes>> {
    let out = guarded(py, || encode::gzip(data, level))?;
    Ok(PyBytes::new(py, &out))
}

/// Raw deflate with miniz_oxide, the exporters' previous backend: only for the compression
/// benchmark (benches/test_bench_compress.py), which compares it with `gzip` in one run.
#[pyfunction]
#[pyo3(name = "_deflate_miniz")]
fn deflate_miniz<'py>(py: Python<'py>, data: &[u8], level: u8) -> PyResult<Bound<'py, PyBytes>> {
    if level > 9 {
        return Err(PyValueError::new_err(format!("level must be 0 to 9 (got {level})")));
    }
    let out = py.detach(|| miniz_oxide::deflate::compress_to_vec(data, level));
    Ok(PyBytes::new(py, &out))
}

/// The RetryInfo delay (seconds) in a gRPC `grpc-status-details-bin`, or None.
#[pyfunction]
fn grpc_retry_delay(py: Python<'_>, status_details: &[u8]) -> PyResult<Option<f64>> {
    let delay = guarded(py, || crate::net::grpc::retry_delay(status_details))?;
    Ok(delay.map(|d| d.as_secs_f64()))
}

/// What one `POST /v1/events` body decoded to.
#[pyclass(frozen, module = "trackgate._core")]
struct EventsResult {
    #[pyo3(get)]
    accepted: usize,
    #[pyo3(get)]
    rejected: usize,
    /// (index in the body, reason) of the first refused events.
    #[pyo3(get)]
    errors: Vec<(usize, String)>,
    #[pyo3(get)]
    error_message: String,
    /// Events whose `data` scrubbing changed.
    #[pyo3(get)]
    scrubbed: usize,
    ndjson: Vec<u8>,
    otlp_logs: Vec<u8>,
    /// The accepted events, for the job metrics (`JobMetrics.count`).
    events: Vec<events::Event>,
}

#[pymethods]
impl EventsResult {
    /// The accepted events, normalized, one JSON object per line (what the event bus carries).
    #[getter]
    fn ndjson<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.ndjson)
    }

    /// The accepted events' ids, in body order (built on demand: no copy kept beside the events).
    #[getter]
    fn event_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.events.iter().map(|e| e.event_id.as_str()))
    }

    /// The accepted events as an OTLP logs request (protobuf).
    #[getter]
    fn otlp_logs<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.otlp_logs)
    }

    fn __repr__(&self) -> String {
        format!("EventsResult(accepted={}, rejected={})", self.accepted, self.rejected)
    }
}

/// Decodes, validates and normalizes a `POST /v1/events` body (one event, an array, or NDJSON).
/// Scrubs each event's `data` with `options` (None: untouched); returns how many changed.
fn scrub_events(decoded: &mut events::Decoded, options: Option<ScrubOptions>) -> usize {
    let Some(options) = options else { return 0 };
    events::scrub_data(decoded, &crate::scrub::Scrubber::new(&options))
}

/// With `scrub`, each event's `data` goes through the PII rules (`[scrub] tracks` with `events`)
/// before anything is built from it.
#[pyfunction]
#[pyo3(signature = (body, content_encoding = None, max_body_bytes = 67_108_864, *, scrub = false,
    scrub_extra_keys = Vec::new(), scrub_safe_keys = Vec::new(), scrub_patterns = Vec::new()))]
#[allow(clippy::too_many_arguments)]
fn decode_events(
    py: Python<'_>,
    body: &[u8],
    content_encoding: Option<&str>,
    max_body_bytes: usize,
    scrub: bool,
    scrub_extra_keys: Vec<String>,
    scrub_safe_keys: Vec<String>,
    scrub_patterns: Vec<String>,
) -> PyResult<EventsResult> {
    let options = scrub_options(true, scrub_extra_keys, scrub_safe_keys, scrub_patterns)?;
    guarded(py, || {
        let body = decompress::decompress(body, content_encoding, max_body_bytes)?;
        let now = events::unix_nanos();
        let mut decoded = events::decode(&body, now)?;
        let scrubbed = scrub_events(&mut decoded, scrub.then_some(options));
        let mut result = EventsResult::new(decoded, now);
        result.scrubbed = scrubbed;
        Ok(result)
    })
}

impl EventsResult {
    fn new(decoded: events::Decoded, now: u64) -> Self {
        EventsResult {
            accepted: decoded.events.len(),
            rejected: decoded.rejected_count,
            error_message: decoded.error_message(),
            scrubbed: 0,
            ndjson: events::to_ndjson(&decoded.events),
            otlp_logs: events::to_otlp_logs(&decoded.events, now),
            errors: decoded.rejected,
            events: decoded.events,
        }
    }
}

/// `/v1/events` on the front: the bus's pipeline, the `[scrub]` rules for events' `data`
/// ((extra keys, safe keys, patterns); None: untouched), and the job metrics. With the shared
/// state in Redis, `job_state(pending)` asks it and finishes the count (on a blocking thread).
fn events_route(
    bus: Option<PyRef<'_, Core>>,
    scrub: Option<(Vec<String>, Vec<String>, Vec<String>)>,
    job_metrics: Option<Py<JobMetrics>>,
    job_state: Option<Py<PyAny>>,
) -> PyResult<EventsRoute> {
    let scrubber = match scrub {
        Some((extra, safe, patterns)) => Some(crate::scrub::Scrubber::new(&scrub_options(
            true, extra, safe, patterns,
        )?)),
        None => None,
    };
    let count_jobs = job_metrics.map(|jobs| {
        let blocks = job_state.is_some();
        let count: events_route::CountJobs = Arc::new(move |accepted: &[events::Event]| {
            let Some(pending) = jobs.get().count_events(metrics::from_events(accepted)) else {
                return;
            };
            let Some(ask) = &job_state else { return };
            Python::attach(|py| {
                // The events are queued: a failing count must not fail the request.
                if let Err(err) = Py::new(py, pending).and_then(|p| ask.call1(py, (p,))) {
                    err.write_unraisable(py, Some(ask.bind(py)));
                }
            });
        });
        (count, blocks)
    });
    Ok(EventsRoute {
        bus: bus.map(|core| core.pipeline.clone()),
        scrubber,
        count_jobs,
        counts: events_route::Counts::default(),
    })
}

/// A request's lifecycle events waiting for the shared state's reply (`JobMetrics.finish`).
#[pyclass(module = "trackgate._core")]
struct StatePending {
    events: Vec<metrics::JobEvent<'static>>,
    argv: Vec<Vec<u8>>,
    ops: usize,
}

#[pymethods]
impl StatePending {
    /// The state script's ARGV: done prefix, keep seconds, then (op, job, service, time) per op.
    #[getter]
    fn argv<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.argv.iter().map(|a| PyBytes::new(py, a)).collect()
    }

    fn __len__(&self) -> usize {
        self.ops
    }
}

/// Job metrics derived from lifecycle events (rust/events/metrics.rs): counters, histograms,
/// the local job state (`shared_state` None) and the OTLP/JSON export.
#[pyclass(frozen, module = "trackgate._core")]
struct JobMetrics {
    inner: Mutex<metrics::JobMetrics>,
}

impl JobMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, metrics::JobMetrics> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_events(&self, events: Vec<metrics::JobEvent<'_>>) -> Option<StatePending> {
        let mut m = self.lock();
        match m.state_argv(&events) {
            None => {
                m.apply(&events, None);
                None
            }
            Some(argv) => {
                let ops = events.iter().filter(|e| e.job.is_some()).count();
                let events = events.into_iter().map(metrics::JobEvent::into_owned).collect();
                Some(StatePending { events, argv, ops })
            }
        }
    }
}

#[pymethods]
impl JobMetrics {
    /// `shared_state`: (the `done:` key prefix, seconds its keys are kept) when the job state is
    /// in Redis; None: in this process.
    #[new]
    #[pyo3(signature = (start_ns, resource, *, delta = false, shared_state = None))]
    fn new(start_ns: u64, resource: Vec<(String, String)>, delta: bool, shared_state: Option<(String, u64)>) -> Self {
        let state = match shared_state {
            Some((done_prefix, keep_s)) => metrics::State::Shared { done_prefix, keep_s },
            None => metrics::State::Local(metrics::LocalState::default()),
        };
        JobMetrics {
            inner: Mutex::new(metrics::JobMetrics::new(start_ns, delta, resource, state)),
        }
    }

    /// Counts one request's accepted events. With the local state: done, None.
    /// With the shared state: the events whose job state must be asked first (their script ARGV
    /// in `argv`), to hand back to `finish` with the reply; None when there is nothing to ask.
    /// `events`: a `decode_events` result (its events read as decoded, no NDJSON parse), or
    /// the bus NDJSON (events found in logs).
    fn count(&self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<Option<StatePending>> {
        if let Ok(result) = events.extract::<PyRef<'_, EventsResult>>() {
            let decoded = &result.events;
            return guarded(py, || Ok(self.count_events(metrics::from_events(decoded))));
        }
        let ndjson: &[u8] = events.extract()?;
        guarded(py, || Ok(self.count_events(metrics::read_events(ndjson))))
    }

    /// Finishes counting `pending` with the state script's `reply` (None: the state was not
    /// reachable; counted without it). A reply that does not read is counted without the state,
    /// then raises DecodeError (a ValueError).
    #[pyo3(signature = (pending, reply))]
    fn finish(&self, py: Python<'_>, mut pending: PyRefMut<'_, StatePending>, reply: Option<&[u8]>) -> PyResult<()> {
        let events = std::mem::take(&mut pending.events);
        let ops = pending.ops;
        guarded(py, || {
            let results = reply.map(|r| metrics::parse_reply(r, ops)).transpose();
            let mut m = self.lock();
            match results {
                Ok(results) => {
                    m.apply(&events, Some(results.as_deref().unwrap_or(&[])));
                    Ok(())
                }
                Err(message) => {
                    m.apply(&events, Some(&[]));
                    Err(CoreError::decode(message))
                }
            }
        })
    }

    /// Local state: ends the jobs started before `before` (Unix s) as timed out; how many.
    fn expire(&self, py: Python<'_>, before: f64) -> PyResult<usize> {
        guarded(py, || Ok(self.lock().expire_local(before)))
    }

    /// Shared state: counts the jobs the sweep script ended as timed out (its reply); how many.
    fn expired(&self, py: Python<'_>, reply: &[u8]) -> PyResult<usize> {
        guarded(py, || {
            let services = metrics::parse_expired(reply).map_err(CoreError::decode)?;
            self.lock().timed_out(&services);
            Ok(services.len())
        })
    }

    /// The metrics as an OTLP/JSON request at `now_ns` (None: no series yet). Delta: call
    /// `exported` once it is queued.
    fn export<'py>(&self, py: Python<'py>, now_ns: u64) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let body = guarded(py, || Ok(self.lock().export(now_ns)))?;
        Ok(body.map(|b| PyBytes::new(py, &b)))
    }

    /// The last export was queued (or had nothing to send): the next delta starts from it.
    fn exported(&self) {
        self.lock().exported();
    }

    #[getter]
    fn start_ns(&self) -> u64 {
        self.lock().start_ns
    }

    /// (status, service) → jobs processed so far.
    fn processed(&self) -> HashMap<(String, String), i64> {
        let m = self.lock();
        let flat = m.totals.processed.iter().flat_map(|(status, inner)| {
            inner
                .iter()
                .map(move |(service, n)| ((status.clone(), service.clone()), *n))
        });
        flat.collect()
    }

    /// service → jobs active now.
    fn active(&self) -> HashMap<String, i64> {
        self.lock().totals.active.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// A batch of queued events packed for the Redis exporter's `XADD` script: (streams, blob,
/// entries, skipped lines). See `events::bus`.
#[pyfunction]
fn pack_bus_entries<'py>(
    py: Python<'py>,
    body: &[u8],
    prefix: &str,
    per_type: bool,
) -> (Vec<String>, Bound<'py, PyBytes>, usize, usize) {
    let packed = py.detach(|| crate::events::bus::pack(body, prefix, per_type));
    (
        packed.streams,
        PyBytes::new(py, &packed.blob),
        packed.entries,
        packed.skipped,
    )
}

/// The state script's reply read as (counted, time) per operation (what `finish` reads).
#[pyfunction]
fn parse_state_reply(reply: &[u8], ops: usize) -> PyResult<Vec<(bool, Option<f64>)>> {
    metrics::parse_reply(reply, ops).map_err(PyValueError::new_err)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("EVENTS_CONTENT_TYPES", events_route::CONTENT_TYPES.to_vec())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("PayloadTooLarge", py.get_type::<PayloadTooLarge>())?;
    m.add("UnsupportedMedia", py.get_type::<UnsupportedMedia>())?;
    m.add("QueueFull", py.get_type::<QueueFull>())?;
    m.add("PipelineClosed", py.get_type::<PipelineClosed>())?;
    m.add("QueueLocked", py.get_type::<QueueLocked>())?;
    m.add_class::<IngestResult>()?;
    m.add_class::<Batch>()?;
    m.add_class::<JsonLine>()?;
    m.add_class::<Core>()?;
    m.add_class::<DurableNotifier>()?;
    m.add_class::<InflightBudget>()?;
    m.add_class::<Listeners>()?;
    m.add_function(wrap_pyfunction!(to_json, m)?)?;
    m.add_function(wrap_pyfunction!(to_json_line, m)?)?;
    m.add_function(wrap_pyfunction!(to_protobuf, m)?)?;
    m.add_function(wrap_pyfunction!(export_response, m)?)?;
    m.add_function(wrap_pyfunction!(status_body, m)?)?;
    m.add_function(wrap_pyfunction!(gzip, m)?)?;
    m.add_function(wrap_pyfunction!(deflate_miniz, m)?)?;
    m.add_function(wrap_pyfunction!(parse_partial_success, m)?)?;
    m.add_function(wrap_pyfunction!(parse_rate_limits, m)?)?;
    m.add_function(wrap_pyfunction!(envelope_categories, m)?)?;
    m.add_function(wrap_pyfunction!(dash0_content_report, m)?)?;
    m.add_function(wrap_pyfunction!(grpc_retry_delay, m)?)?;
    m.add_function(wrap_pyfunction!(scrub_pattern_error, m)?)?;
    m.add_class::<SentryProcessor>()?;
    m.add_class::<SentryRateLimits>()?;
    m.add_class::<SentryResult>()?;
    m.add_class::<EventsResult>()?;
    m.add_function(wrap_pyfunction!(decode_events, m)?)?;
    m.add_class::<JobMetrics>()?;
    m.add_class::<StatePending>()?;
    m.add_function(wrap_pyfunction!(parse_state_reply, m)?)?;
    m.add_function(wrap_pyfunction!(pack_bus_entries, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    Ok(())
}

/// One `load` target: (kind, host, port, path, headers, body, records per call, connections, gzip).
type LoadTarget = (
    String,
    String,
    u16,
    String,
    Vec<(String, String)>,
    Vec<u8>,
    u64,
    usize,
    bool,
);

/// `trackgate bench`'s load run (rust/loadgen): the GIL is released for the run except for
/// `progress(elapsed_s, calls, accepted, failed)` every `interval_s`, and to notice Ctrl-C.
#[pyfunction]
#[pyo3(signature = (targets, duration_s, rate=0.0, threads=2, timeout_s=30.0, progress=None, interval_s=0.25,
    honor_retry_after=false))]
#[allow(clippy::too_many_arguments)]
fn load<'py>(
    py: Python<'py>,
    targets: Vec<LoadTarget>,
    duration_s: f64,
    rate: f64,
    threads: usize,
    timeout_s: f64,
    progress: Option<Bound<'py, PyAny>>,
    interval_s: f64,
    honor_retry_after: bool,
) -> PyResult<(f64, Vec<Bound<'py, PyDict>>)> {
    use crate::loadgen::{self, Kind, TargetSpec};
    let seconds = |s: f64, what: &str| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| PyValueError::new_err(format!("{what} must be a positive number of seconds, not {s}")))
    };
    let options = loadgen::Options {
        duration: seconds(duration_s, "duration")?,
        rate: if rate.is_finite() && rate > 0.0 { rate } else { 0.0 },
        threads,
        timeout: seconds(timeout_s, "timeout")?,
        honor_retry_after,
    };
    let interval = seconds(interval_s, "interval")?.max(Duration::from_millis(10));
    let mut built = Vec::with_capacity(targets.len());
    for (kind, host, port, path, headers, body, records, connections, gzip) in targets {
        let kind = match kind.as_str() {
            "http" => Kind::Http,
            "grpc" => Kind::Grpc,
            "forward" => Kind::Forward,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown load kind {other:?} (http, grpc, forward)"
                )))
            }
        };
        let spec = TargetSpec {
            kind,
            host,
            port,
            path,
            headers,
            body,
            records,
            connections,
            gzip,
        };
        built.push(py.detach(|| spec.build()).map_err(PyValueError::new_err)?);
    }
    let mut run = py.detach(|| loadgen::start(built, options))?;
    let (outcomes, elapsed) = loop {
        if let Some(done) = py.detach(|| run.wait(interval)) {
            break done;
        }
        let live = &run.live;
        let stopped = py.check_signals().and_then(|()| match &progress {
            Some(f) => f
                .call1((
                    run.elapsed(),
                    live.calls.load(Ordering::Relaxed),
                    live.accepted.load(Ordering::Relaxed),
                    live.failed.load(Ordering::Relaxed),
                ))
                .map(drop),
            None => Ok(()),
        });
        if let Err(err) = stopped {
            run.stop();
            py.detach(|| while run.wait(interval).is_none() {});
            return Err(err);
        }
    };
    let mut out = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let d = PyDict::new(py);
        let statuses = PyDict::new(py);
        let mut counts = o.statuses.clone();
        counts.sort();
        for (label, n) in counts {
            statuses.set_item(label.name(), n)?;
        }
        d.set_item("statuses", statuses)?;
        let latency = PyDict::new(py);
        for (name, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)] {
            latency.set_item(name, o.latency_us.percentile(p) as f64 / 1e3)?;
        }
        latency.set_item("max", o.latency_us.max() as f64 / 1e3)?;
        d.set_item("latency_ms", latency)?;
        d.set_item("calls", o.calls())?;
        d.set_item("accepted", o.accepted)?;
        d.set_item("records", o.records)?;
        d.set_item("bytes_sent", o.bytes_sent)?;
        d.set_item("bytes_received", o.bytes_received)?;
        d.set_item("retry_waits", o.retry_waits)?;
        d.set_item("retry_wait_s", o.retry_wait.as_secs_f64())?;
        out.push(d);
    }
    Ok((elapsed, out))
}
