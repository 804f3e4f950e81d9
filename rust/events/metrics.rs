//! Job metrics derived from lifecycle events (the seed system's Track 4): the counters and
//! histograms of one gateway process, the job state kept in the process when no Redis bus is
//! configured, the shared state's Lua ARGV and reply, and the OTLP/JSON metrics export.
//!
//! One accepted request is counted in one call (`JobMetrics::count`): its bus NDJSON is read
//! borrowing (only the lifecycle types are kept), the state operations run against the local
//! state, or come back as the Lua script's ARGV for one Redis round trip whose reply
//! (`parse_reply`) finishes the count (`JobMetrics::finish`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{raw, Event};

/// `job_duration_seconds` and `job_queue_wait_seconds` bucket bounds (the seed's).
pub const DURATION_BOUNDS: [f64; 9] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Jobs the local state remembers as received, and as ended before their start, at most.
pub const MAX_LOCAL_JOBS: usize = 100_000;
/// AggregationTemporality in the OTLP metrics proto.
const DELTA: u8 = 1;
const CUMULATIVE: u8 = 2;
const UNKNOWN_SERVICE: &str = "unknown_service";

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Histogram {
    pub counts: [u64; DURATION_BOUNDS.len() + 1],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, value: f64) {
        let index = DURATION_BOUNDS
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(DURATION_BOUNDS.len());
        self.counts[index] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn minus(&self, earlier: Option<&Histogram>) -> Histogram {
        let Some(e) = earlier else { return *self };
        let mut counts = self.counts;
        for (c, b) in counts.iter_mut().zip(e.counts) {
            *c -= b;
        }
        Histogram {
            counts,
            sum: self.sum - e.sum,
            count: self.count - e.count,
        }
    }
}

/// The series of one process at one moment (what a delta export subtracts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// status → service → jobs.
    pub processed: Series2,
    /// error_type → service → failed jobs.
    pub errors: Series2,
    pub active: BTreeMap<String, i64>,
    pub input_bytes: BTreeMap<String, i64>,
    pub output_bytes: BTreeMap<String, i64>,
    pub duration: BTreeMap<String, Histogram>,
    pub queue_wait: BTreeMap<String, Histogram>,
}

/// Series of two attributes, nested so that counting looks them up by `&str` (no key built).
pub type Series2 = BTreeMap<String, BTreeMap<String, i64>>;

static NO_SERIES: BTreeMap<String, i64> = BTreeMap::new();

fn changed2(now: &Series2, before: &Series2) -> Series2 {
    now.iter()
        .map(|(a, inner)| (a.clone(), changed(inner, before.get(a).unwrap_or(&NO_SERIES))))
        .filter(|(_, inner)| !inner.is_empty())
        .collect()
}

fn changed<K: Ord + Clone>(now: &BTreeMap<K, i64>, before: &BTreeMap<K, i64>) -> BTreeMap<K, i64> {
    now.iter()
        .filter_map(|(k, n)| {
            let b = before.get(k).copied().unwrap_or(0);
            (*n != b).then(|| (k.clone(), n - b))
        })
        .collect()
}

fn hists_changed(
    now: &BTreeMap<String, Histogram>,
    before: &BTreeMap<String, Histogram>,
) -> BTreeMap<String, Histogram> {
    now.iter()
        .map(|(k, h)| (k.clone(), h.minus(before.get(k))))
        .filter(|(_, h)| h.count != 0)
        .collect()
}

impl Totals {
    /// What changed since `earlier` (series without change left out; `active` as it is).
    pub fn minus(&self, earlier: &Totals) -> Totals {
        Totals {
            processed: changed2(&self.processed, &earlier.processed),
            errors: changed2(&self.errors, &earlier.errors),
            active: self.active.clone(),
            input_bytes: changed(&self.input_bytes, &earlier.input_bytes),
            output_bytes: changed(&self.output_bytes, &earlier.output_bytes),
            duration: hists_changed(&self.duration, &earlier.duration),
            queue_wait: hists_changed(&self.queue_wait, &earlier.queue_wait),
        }
    }
}

fn add(map: &mut BTreeMap<String, i64>, key: &str, n: i64) {
    match map.get_mut(key) {
        Some(v) => *v += n,
        None => {
            map.insert(key.to_owned(), n);
        }
    }
}

fn add2(map: &mut Series2, a: &str, b: &str, n: i64) {
    if !map.contains_key(a) {
        map.insert(a.to_owned(), BTreeMap::new());
    }
    if let Some(inner) = map.get_mut(a) {
        add(inner, b, n);
    }
}

fn observe(map: &mut BTreeMap<String, Histogram>, key: &str, value: f64) {
    match map.get_mut(key) {
        Some(h) => h.observe(value),
        None => map.entry(key.to_owned()).or_default().observe(value),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Received,
    Started,
    Completed,
    Failed,
}

/// One lifecycle event as the metrics read it (other event types are not kept).
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent<'a> {
    pub kind: Kind,
    pub job: Option<Cow<'a, str>>,
    pub service: Cow<'a, str>,
    /// Event time, Unix seconds.
    pub ts: f64,
    pub input_size: Option<f64>,
    pub output_size: Option<f64>,
    /// From `data.duration_ms` / `duration` (ms) / `duration_s`: the first one ≥ 0.
    pub duration_s: Option<f64>,
    /// `data.error_type`, else `unknown` (failed events only).
    pub error_type: Cow<'a, str>,
}

impl JobEvent<'_> {
    /// A copy that outlives the request's body (waiting for the shared state's reply).
    pub fn into_owned(self) -> JobEvent<'static> {
        JobEvent {
            kind: self.kind,
            job: self.job.map(|j| Cow::Owned(j.into_owned())),
            service: Cow::Owned(self.service.into_owned()),
            ts: self.ts,
            input_size: self.input_size,
            output_size: self.output_size,
            duration_s: self.duration_s,
            error_type: Cow::Owned(self.error_type.into_owned()),
        }
    }
}

/// A JSON number (not a bool, not a string) as f64.
fn number(raw: &RawValue) -> Option<f64> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => text.parse().ok(),
        _ => None,
    }
}

/// `str(data.get("error_type") or "unknown")`: a falsy value (null, false, 0, "", {}, []) is unknown.
fn error_type(raw: Option<&RawValue>) -> Cow<'_, str> {
    let Some(raw) = raw else { return "unknown".into() };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => match raw::string(raw) {
            Ok(s) if !s.is_empty() => s,
            _ => "unknown".into(),
        },
        Some(b'n' | b'f') => "unknown".into(),
        Some(b't') => "True".into(),
        Some(b'-' | b'0'..=b'9') if number(raw) == Some(0.0) => "unknown".into(),
        _ if text == "{}" || text == "[]" => "unknown".into(),
        _ => text.into(),
    }
}

/// The lifecycle events of the bus NDJSON (`to_ndjson`'s lines), in order. A line that does not
/// read (never one `to_ndjson` wrote) is skipped.
pub fn read_events(ndjson: &[u8]) -> Vec<JobEvent<'_>> {
    let mut out = Vec::new();
    for line in ndjson.split(|&b| b == b'\n') {
        // Cheap skip of the other types before any parse.
        if line.is_empty() || memchr::memmem::find(line, b"\"event_type\":\"job_").is_none() {
            continue;
        }
        let Ok(text) = std::str::from_utf8(line) else { continue };
        let Ok(pairs) = raw::pairs(text) else { continue };
        if let Some(e) = job_event(&pairs) {
            out.push(e);
        }
    }
    out
}

fn kind_of(event_type: &str) -> Option<Kind> {
    match event_type {
        "job_received" => Some(Kind::Received),
        "job_started" => Some(Kind::Started),
        "job_completed" => Some(Kind::Completed),
        "job_failed" => Some(Kind::Failed),
        _ => None,
    }
}

fn job_event<'a>(pairs: &raw::Pairs<'a>) -> Option<JobEvent<'a>> {
    let get = |key: &str| -> Option<&'a RawValue> { pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v) };
    let string = |key: &str| -> Option<Cow<'a, str>> {
        get(key)
            .filter(|v| v.get().starts_with('"'))
            .and_then(|v| raw::string(v).ok())
            .filter(|s| !s.is_empty())
    };
    let kind = kind_of(&string("event_type")?)?;
    let ts = get("time_unix_nano").and_then(number).unwrap_or(0.0) / 1e9;
    Some(build(
        kind,
        string("job_id"),
        string("service"),
        ts,
        get("data").map(RawValue::get),
    ))
}

/// The lifecycle events among decoded ones (what `read_events` reads from their NDJSON, without
/// writing and parsing it).
pub fn from_events(events: &[Event]) -> Vec<JobEvent<'_>> {
    events
        .iter()
        .filter_map(|e| {
            let kind = kind_of(&e.event_type)?;
            let job = e.id("job_id").map(Cow::Borrowed);
            let service = e.service.as_deref().map(Cow::Borrowed);
            Some(build(kind, job, service, e.time_unix_nano as f64 / 1e9, Some(&e.data)))
        })
        .collect()
}

/// `data`: a JSON object's text (compact, as the decoder wrote it).
fn build<'a>(
    kind: Kind,
    job: Option<Cow<'a, str>>,
    service: Option<Cow<'a, str>>,
    ts: f64,
    data: Option<&'a str>,
) -> JobEvent<'a> {
    let data: raw::Pairs<'a> = data
        // A start reads nothing from `data`.
        .filter(|d| kind != Kind::Started && d.starts_with('{'))
        .and_then(|d| raw::pairs(d).ok())
        .unwrap_or_default();
    let field = |key: &str| -> Option<&'a RawValue> { data.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v) };
    let duration_s = [("duration_ms", 1e-3), ("duration", 1e-3), ("duration_s", 1.0)]
        .iter()
        .find_map(|(key, scale)| field(key).and_then(number).filter(|v| *v >= 0.0).map(|v| v * scale));
    JobEvent {
        kind,
        job: job.filter(|j| !j.is_empty()),
        service: service
            .filter(|s| !s.is_empty())
            .unwrap_or(Cow::Borrowed(UNKNOWN_SERVICE)),
        ts,
        input_size: field("input_size").and_then(number),
        output_size: field("output_size").and_then(number),
        duration_s,
        error_type: if kind == Kind::Failed {
            error_type(field("error_type"))
        } else {
            Cow::Borrowed("")
        },
    }
}

/// One state operation's result: (counted: the start made the job active / the end removed an
/// active job, a time: the received time for a start, the started time for an end).
pub type OpResult = (bool, Option<f64>);

/// The op letter of the Lua script ("r" received, "s" started, "f" finished).
fn op_letter(kind: Kind) -> &'static [u8] {
    match kind {
        Kind::Received => b"r",
        Kind::Started => b"s",
        Kind::Completed | Kind::Failed => b"f",
    }
}

/// Parses the state script's reply: one `counted|time` per operation, joined by `,`.
pub fn parse_reply(reply: &[u8], ops: usize) -> std::result::Result<Vec<OpResult>, String> {
    let text = std::str::from_utf8(reply).map_err(|_| "state reply is not UTF-8".to_string())?;
    let mut out = Vec::with_capacity(ops);
    if ops > 0 {
        for item in text.split(',') {
            let (flag, when) = item
                .split_once('|')
                .ok_or_else(|| format!("state reply item {:?} has no '|'", crate::error::shorten(item)))?;
            let time = if when.is_empty() {
                None
            } else {
                Some(
                    when.parse::<f64>()
                        .map_err(|_| format!("state reply time {when:?} is not a number"))?,
                )
            };
            out.push((flag == "1", time));
        }
    }
    if out.len() != ops {
        return Err(format!("state reply has {} results for {ops} operations", out.len()));
    }
    Ok(out)
}

/// Parses the sweep script's reply: the services of the jobs it ended, each as `<len>:<name>`.
pub fn parse_expired(reply: &[u8]) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = reply;
    while !rest.is_empty() {
        let colon = memchr::memchr(b':', rest).ok_or("sweep reply: no ':' after a length")?;
        let len: usize = std::str::from_utf8(&rest[..colon])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("sweep reply: bad length")?;
        let end = (colon + 1).checked_add(len).ok_or("sweep reply: bad length")?;
        let name = rest.get(colon + 1..end).ok_or("sweep reply: cut short")?;
        let name = String::from_utf8_lossy(name);
        out.push(if name.is_empty() {
            UNKNOWN_SERVICE.to_owned()
        } else {
            name.into_owned()
        });
        rest = &rest[end..];
    }
    Ok(out)
}

/// Job state in this process (no event bus configured): exact for one process only.
#[derive(Debug, Default)]
pub struct LocalState {
    /// job → (received time, insertion number); `received_order` holds the insertions, oldest
    /// first (stale ones, whose job was taken or received again since, are skipped).
    received: HashMap<String, (f64, u64)>,
    received_order: VecDeque<(String, u64)>,
    next: u64,
    /// job → (service, started time).
    active: HashMap<String, (String, f64)>,
    /// Jobs whose end came before their start.
    done: HashSet<String>,
    done_order: VecDeque<String>,
}

impl LocalState {
    pub fn run(&mut self, events: &[JobEvent<'_>]) -> Vec<OpResult> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let Some(job) = &e.job else { continue };
            out.push(match e.kind {
                Kind::Received => {
                    self.received(job, e.ts);
                    (false, None)
                }
                Kind::Started => self.start(job, &e.service, e.ts),
                Kind::Completed | Kind::Failed => self.finish(job),
            });
        }
        out
    }

    fn received(&mut self, job: &str, ts: f64) {
        if let Some(entry) = self.received.get_mut(job) {
            entry.0 = ts; // keeps its place, as an OrderedDict assignment does
            return;
        }
        self.next += 1;
        self.received.insert(job.to_owned(), (ts, self.next));
        self.received_order.push_back((job.to_owned(), self.next));
        while self.received.len() > MAX_LOCAL_JOBS {
            let Some((old, n)) = self.received_order.pop_front() else {
                break;
            };
            if self.received.get(&old).is_some_and(|(_, m)| *m == n) {
                self.received.remove(&old);
            }
        }
        if self.received_order.len() > 2 * self.received.len() + 1024 {
            let received = &self.received;
            self.received_order
                .retain(|(job, n)| received.get(job).is_some_and(|(_, m)| m == n));
        }
    }

    fn start(&mut self, job: &str, service: &str, ts: f64) -> OpResult {
        let received = self.received.remove(job).map(|(t, _)| t);
        if self.done.contains(job) || self.active.contains_key(job) {
            return (false, received);
        }
        self.active.insert(job.to_owned(), (service.to_owned(), ts));
        (true, received)
    }

    fn finish(&mut self, job: &str) -> OpResult {
        if let Some((_, started)) = self.active.remove(job) {
            return (true, Some(started));
        }
        if self.done.insert(job.to_owned()) {
            self.done_order.push_back(job.to_owned());
            while self.done.len() > MAX_LOCAL_JOBS {
                let Some(old) = self.done_order.pop_front() else { break };
                self.done.remove(&old);
            }
        }
        (false, None)
    }

    /// Ends the jobs started before `before` (Unix s): their services.
    pub fn expired(&mut self, before: f64) -> Vec<String> {
        let mut out = Vec::new();
        self.active.retain(|_, (service, ts)| {
            if *ts < before {
                out.push(std::mem::take(service));
                false
            } else {
                true
            }
        });
        out
    }
}

/// Where the job state lives.
#[derive(Debug)]
pub enum State {
    Local(LocalState),
    /// In Redis: (the `done:` key prefix, seconds the keys are kept), the script's first ARGV.
    Shared {
        done_prefix: String,
        keep_s: u64,
    },
}

/// One process's job metrics.
#[derive(Debug)]
pub struct JobMetrics {
    pub totals: Totals,
    pub state: State,
    pub start_ns: u64,
    pub delta: bool,
    /// Resource attributes of the export.
    pub resource: Vec<(String, String)>,
    /// Delta: what the last export that reached the queue reported, and when.
    reported: Totals,
    reported_ns: u64,
    /// The last export built and not yet known to be queued.
    pending_export: Option<(Totals, u64)>,
}

impl JobMetrics {
    pub fn new(start_ns: u64, delta: bool, resource: Vec<(String, String)>, state: State) -> Self {
        JobMetrics {
            totals: Totals::default(),
            state,
            start_ns,
            delta,
            resource,
            reported: Totals::default(),
            reported_ns: start_ns,
            pending_export: None,
        }
    }

    /// Counts `events` with their state operations' results (`None`: without the state). With
    /// the local state, runs the operations first.
    pub fn apply(&mut self, events: &[JobEvent<'_>], results: Option<&[OpResult]>) {
        let local;
        let results = match (results, &mut self.state) {
            (Some(r), _) => Some(r),
            (None, State::Local(state)) => {
                local = state.run(events);
                Some(local.as_slice())
            }
            (None, State::Shared { .. }) => None,
        };
        let mut results = results.unwrap_or(&[]).iter().copied();
        let t = &mut self.totals;
        for e in events {
            let service: &str = &e.service;
            let result = if e.job.is_some() {
                results.next().unwrap_or((false, None))
            } else {
                (false, None)
            };
            match e.kind {
                Kind::Received => {
                    if let Some(size) = e.input_size {
                        add(&mut t.input_bytes, service, size as i64);
                    }
                }
                Kind::Started => {
                    if e.job.is_none() {
                        continue;
                    }
                    let (counted, received) = result;
                    if counted {
                        add(&mut t.active, service, 1);
                    }
                    if let Some(received) = received.filter(|r| e.ts >= *r) {
                        observe(&mut t.queue_wait, service, e.ts - received);
                    }
                }
                Kind::Completed | Kind::Failed => {
                    let (was_active, started) = result;
                    if e.job.is_some() && was_active {
                        add(&mut t.active, service, -1);
                    }
                    let failed = e.kind == Kind::Failed;
                    add2(
                        &mut t.processed,
                        if failed { "failed" } else { "completed" },
                        service,
                        1,
                    );
                    let duration = e
                        .duration_s
                        .or_else(|| started.filter(|s| e.ts >= *s).map(|s| e.ts - s));
                    if let Some(d) = duration {
                        observe(&mut t.duration, service, d);
                    }
                    if failed {
                        add2(&mut t.errors, &e.error_type, service, 1);
                    }
                    if let Some(size) = e.output_size {
                        add(&mut t.output_bytes, service, size as i64);
                    }
                }
            }
        }
    }

    /// The shared-state script's ARGV for `events`: done prefix, keep seconds, then (op, job,
    /// service, time) per operation. None without shared state or without operations.
    pub fn state_argv(&self, events: &[JobEvent<'_>]) -> Option<Vec<Vec<u8>>> {
        let State::Shared { done_prefix, keep_s } = &self.state else {
            return None;
        };
        let ops = events.iter().filter(|e| e.job.is_some()).count();
        if ops == 0 {
            return None;
        }
        let mut argv = Vec::with_capacity(2 + 4 * ops);
        argv.push(done_prefix.as_bytes().to_vec());
        argv.push(keep_s.to_string().into_bytes());
        for e in events {
            let Some(job) = &e.job else { continue };
            argv.push(op_letter(e.kind).to_vec());
            argv.push(job.as_bytes().to_vec());
            argv.push(e.service.as_bytes().to_vec());
            // Shortest text that reads back as the same f64 (Python's repr, Lua's tonumber).
            argv.push(format!("{:?}", e.ts).into_bytes());
        }
        Some(argv)
    }

    /// Jobs timed out (their services): each counted as `status="timeout"`, no longer active.
    pub fn timed_out(&mut self, services: &[String]) {
        for service in services {
            add(&mut self.totals.active, service, -1);
            add2(&mut self.totals.processed, "timeout", service, 1);
        }
    }

    /// Ends the local state's jobs started before `before` (Unix s); how many.
    pub fn expire_local(&mut self, before: f64) -> usize {
        let State::Local(state) = &mut self.state else { return 0 };
        let services = state.expired(before);
        self.timed_out(&services);
        services.len()
    }

    /// The metrics as an OTLP/JSON `ExportMetricsServiceRequest` at `now_ns` (None: no series
    /// yet). Cumulative: every series, from the process start. Delta: counters and histograms
    /// carry what changed since the last export that was queued (`exported`), from that export's
    /// time; `jobs_active`, an up/down counter, stays cumulative.
    pub fn export(&mut self, now_ns: u64) -> Option<Vec<u8>> {
        let snapshot = self.totals.clone();
        let t = if self.delta {
            snapshot.minus(&self.reported)
        } else {
            snapshot.clone()
        };
        self.pending_export = Some((snapshot, now_ns));
        let start = if self.delta { self.reported_ns } else { self.start_ns };
        let temporality = if self.delta { DELTA } else { CUMULATIVE };
        let now = now_ns.to_string();
        let attrs = |kv: &[(&str, &str)]| -> Value {
            kv.iter()
                .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
                .collect()
        };
        let point = |attributes: Value, value: i64, since: u64| {
            json!({
                "attributes": attributes,
                "startTimeUnixNano": since.to_string(),
                "timeUnixNano": now,
                "asInt": value.to_string(),
            })
        };
        let sum = |name: &str, unit: &str, monotonic: bool, points: Vec<Value>, kind: u8| {
            json!({
                "name": name,
                "unit": unit,
                "sum": {"aggregationTemporality": kind, "isMonotonic": monotonic, "dataPoints": points},
            })
        };
        let hist = |name: &str, hists: &BTreeMap<String, Histogram>| {
            let points: Vec<Value> = hists
                .iter()
                .map(|(svc, h)| {
                    json!({
                        "attributes": attrs(&[("service", svc)]),
                        "startTimeUnixNano": start.to_string(),
                        "timeUnixNano": now,
                        "count": h.count.to_string(),
                        "sum": h.sum,
                        "bucketCounts": h.counts.iter().map(u64::to_string).collect::<Vec<_>>(),
                        "explicitBounds": DURATION_BOUNDS,
                    })
                })
                .collect();
            json!({
                "name": name,
                "unit": "s",
                "histogram": {"aggregationTemporality": temporality, "dataPoints": points},
            })
        };
        let mut metrics = Vec::new();
        for (name, series, label) in [
            ("jobs_processed_total", &t.processed, "status"),
            ("errors_total", &t.errors, "error_type"),
        ] {
            if !series.is_empty() {
                let points = series
                    .iter()
                    .flat_map(|(a, inner)| inner.iter().map(move |(svc, n)| (a, svc, *n)))
                    .map(|(a, svc, n)| point(attrs(&[(label, a), ("service", svc)]), n, start))
                    .collect();
                metrics.push(sum(name, "1", true, points, temporality));
            }
        }
        if !t.active.is_empty() {
            // Always cumulative (a gauge-like sum): the current count, from the process start.
            let points = t
                .active
                .iter()
                .map(|(svc, n)| point(attrs(&[("service", svc)]), *n, self.start_ns))
                .collect();
            metrics.push(sum("jobs_active", "1", false, points, CUMULATIVE));
        }
        for (name, series) in [
            ("job_input_bytes_total", &t.input_bytes),
            ("job_output_bytes_total", &t.output_bytes),
        ] {
            if !series.is_empty() {
                let points = series
                    .iter()
                    .map(|(svc, n)| point(attrs(&[("service", svc)]), *n, start))
                    .collect();
                metrics.push(sum(name, "By", true, points, temporality));
            }
        }
        if !t.duration.is_empty() {
            metrics.push(hist("job_duration_seconds", &t.duration));
        }
        if !t.queue_wait.is_empty() {
            metrics.push(hist("job_queue_wait_seconds", &t.queue_wait));
        }
        if metrics.is_empty() {
            return None;
        }
        let resource: Vec<(&str, &str)> = self.resource.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let doc = json!({
            "resourceMetrics": [{
                "resource": {"attributes": attrs(&resource)},
                "scopeMetrics": [{"scope": {"name": "trackgate.jobmetrics"}, "metrics": metrics}],
            }]
        });
        Some(serde_json::to_vec(&doc).expect("a Value serializes"))
    }

    /// The last `export` reached the queue (or had nothing to send): a delta export starts from it.
    pub fn exported(&mut self) {
        if let Some((totals, now_ns)) = self.pending_export.take() {
            if self.delta {
                self.reported = totals;
                self.reported_ns = now_ns;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000_000_000;

    fn line(kind: &str, job: &str, service: &str, t_ns: u64, data: &str) -> String {
        format!(
            r#"{{"event_id":"e","event_type":"{kind}","time_unix_nano":{t_ns},"service":"{service}","job_id":"{job}","data":{data}}}"#
        ) + "\n"
    }

    fn local() -> JobMetrics {
        JobMetrics::new(
            T,
            false,
            vec![("service.name".into(), "trackgate".into())],
            State::Local(LocalState::default()),
        )
    }

    fn count(m: &mut JobMetrics, ndjson: &str) {
        let events = read_events(ndjson.as_bytes());
        m.apply(&events, None);
    }

    fn buckets(values: &[f64]) -> Histogram {
        let mut h = Histogram::default();
        for v in values {
            h.observe(*v);
        }
        h
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let h = buckets(&[0.05, 0.1, 0.11, 300.0, 300.5, 1.0]);
        assert_eq!(h.counts, [2, 1, 1, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(h.count, 6);
        assert!((h.sum - 601.76).abs() < 1e-9);
    }

    #[test]
    fn reads_only_lifecycle_events_and_their_data() {
        let nd = line("job_received", "j1", "ocr", T, r#"{"input_size":100}"#)
            + &line("job_progress", "j1", "ocr", T, r#"{"progress":0.5}"#)
            + &line(
                "job_failed",
                "j1",
                "ocr",
                T,
                r#"{"duration_ms":-1,"duration":1500,"error_type":"OOM"}"#,
            )
            + r#"{"event_id":"x","event_type":"job_completed","time_unix_nano":5,"data":{"output_size":7.9,"duration_ms":true}}"#
            + "\n";
        let events = read_events(nd.as_bytes());
        assert_eq!(events.len(), 3);
        assert_eq!((events[0].kind, events[0].input_size), (Kind::Received, Some(100.0)));
        assert_eq!(
            events[1].duration_s,
            Some(1.5),
            "a negative duration_ms falls to the next key"
        );
        assert_eq!(events[1].error_type, "OOM");
        assert_eq!(events[2].job, None);
        assert_eq!(events[2].service, "unknown_service");
        assert_eq!(events[2].duration_s, None, "a bool is not a duration");
        assert_eq!(events[2].output_size, Some(7.9));
        assert_eq!(events[2].ts, 5e-9);
    }

    #[test]
    fn decoded_events_read_as_their_ndjson() {
        let body = br#"[{"event_type":"jobReceived","jobId":"j1","service":"ocr","timestamp":1714564800123,"data":{"input_size":5}},
            {"event_type":"job_progress","job_id":"j1"},{"event_type":"job_started","job_id":"j1"},
            {"event_type":"job_failed","job_id":"j1","error_type":"OOM","duration":"x","duration_s":2.5,"service":"a\"b"},
            {"event_type":"job_completed","data":{"output_size":9,"duration_ms":12}}]"#;
        let decoded = super::super::decode(body, T).unwrap();
        let nd = super::super::to_ndjson(&decoded.events);
        let direct = from_events(&decoded.events);
        assert_eq!(direct.len(), 4);
        assert_eq!(direct, read_events(&nd));
        assert_eq!(direct[0].ts, 1_714_564_800_123_000_000u64 as f64 / 1e9);
        assert_eq!(
            (direct[2].error_type.as_ref(), direct[2].duration_s),
            ("OOM", Some(2.5))
        );
        assert_eq!(direct[2].service, "a\"b");
    }

    #[test]
    fn error_types_as_python_str_of_the_value() {
        for (data, want) in [
            (r#"{}"#, "unknown"),
            (r#"{"error_type":""}"#, "unknown"),
            (r#"{"error_type":null}"#, "unknown"),
            (r#"{"error_type":0}"#, "unknown"),
            (r#"{"error_type":"Time\"out"}"#, "Time\"out"),
            (r#"{"error_type":42}"#, "42"),
        ] {
            let nd = line("job_failed", "j", "s", T, data);
            let events = read_events(nd.as_bytes());
            assert_eq!(events[0].error_type, want, "{data}");
        }
    }

    #[test]
    fn counts_a_lifecycle_with_local_state() {
        let mut m = local();
        let s = 1_000_000_000;
        let nd = line("job_received", "j1", "ocr", T, r#"{"input_size":100}"#)
            + &line("job_started", "j1", "ocr", T + 3 * s / 2, "{}")
            + &line("job_completed", "j1", "ocr", T + 4 * s, r#"{"output_size":50}"#)
            + &line("job_started", "j2", "ocr", T, "{}")
            + &line(
                "job_failed",
                "j2",
                "ocr",
                T,
                r#"{"duration_ms":200000,"error_type":"OOM"}"#,
            )
            + &line("job_started", "j3", "asr", T, "{}");
        count(&mut m, &nd);
        let t = &m.totals;
        assert_eq!(t.processed["completed"]["ocr"], 1);
        assert_eq!(t.processed["failed"]["ocr"], 1);
        assert_eq!(t.errors["OOM"]["ocr"], 1);
        assert_eq!(t.active["ocr"], 0);
        assert_eq!(t.active["asr"], 1);
        assert_eq!(t.input_bytes["ocr"], 100);
        assert_eq!(t.output_bytes["ocr"], 50);
        assert_eq!(t.queue_wait["ocr"], buckets(&[1.5]));
        assert_eq!(
            t.duration["ocr"],
            buckets(&[2.5, 200.0]),
            "end - start without a duration"
        );
        // j3 started at T: timed out by a sweep after it.
        assert_eq!(m.expire_local(T as f64 / 1e9 + 1.0), 1);
        assert_eq!(m.totals.active["asr"], 0);
        assert_eq!(m.totals.processed["timeout"]["asr"], 1);
    }

    #[test]
    fn an_end_before_its_start_never_makes_the_job_active() {
        let mut m = local();
        count(
            &mut m,
            &(line("job_completed", "x", "s", T, "{}") + &line("job_started", "x", "s", T, "{}")),
        );
        assert_eq!(m.totals.active.get("s"), None);
        assert_eq!(m.totals.processed["completed"]["s"], 1);
    }

    #[test]
    fn local_state_is_capped_oldest_first() {
        let mut state = LocalState::default();
        for n in 0..MAX_LOCAL_JOBS + 10 {
            state.received(&format!("j{n}"), n as f64);
            if n < 5 {
                state.received("j0", 0.5); // again: keeps its place
            }
        }
        assert_eq!(state.received.len(), MAX_LOCAL_JOBS);
        assert!(!state.received.contains_key("j0") && !state.received.contains_key("j9"));
        assert!(state.received.contains_key("j10"));
        assert!(state.received_order.len() <= 2 * MAX_LOCAL_JOBS + 1024);
        for n in 0..MAX_LOCAL_JOBS + 5 {
            state.finish(&format!("d{n}"));
        }
        assert_eq!(state.done.len(), MAX_LOCAL_JOBS);
        assert!(!state.done.contains("d4") && state.done.contains("d5"));
    }

    #[test]
    fn shared_state_argv_and_reply() {
        let mut m = JobMetrics::new(
            T,
            false,
            vec![],
            State::Shared {
                done_prefix: "{p}:jobs:done:".into(),
                keep_s: 7200,
            },
        );
        let nd = line("job_received", "j1", "ocr", T, "{}")
            + &line("job_started", "j1", "ocr", T + 2_000_000_000, "{}")
            + r#"{"event_id":"x","event_type":"job_completed","time_unix_nano":5,"data":{}}"#
            + "\n";
        let events = read_events(nd.as_bytes());
        let argv = m.state_argv(&events).unwrap();
        let text: Vec<&str> = argv.iter().map(|a| std::str::from_utf8(a).unwrap()).collect();
        assert_eq!(
            text,
            [
                "{p}:jobs:done:",
                "7200",
                "r",
                "j1",
                "ocr",
                "1700000000.0",
                "s",
                "j1",
                "ocr",
                "1700000002.0"
            ]
        );
        let results = parse_reply(b"0|,1|1700000000", 2).unwrap();
        assert_eq!(results, [(false, None), (true, Some(1_700_000_000.0))]);
        m.apply(&events, Some(&results));
        assert_eq!(m.totals.active["ocr"], 1);
        assert_eq!(m.totals.queue_wait["ocr"], buckets(&[2.0]));
        assert_eq!(m.totals.processed["completed"]["unknown_service"], 1);
        // Without the state (Redis unreachable): counted, no queue wait, nobody active.
        m.apply(&events, None);
        assert_eq!(m.totals.active["ocr"], 1);
        assert_eq!(m.totals.queue_wait["ocr"].count, 1);
        assert_eq!(m.totals.processed["completed"]["unknown_service"], 2);
        // No job ids: no round trip.
        assert!(m
            .state_argv(&read_events(line("job_progress", "j", "s", T, "{}").as_bytes()))
            .is_none());
    }

    #[test]
    fn replies_that_do_not_read_are_refused() {
        assert_eq!(parse_reply(b"", 0).unwrap(), []);
        assert_eq!(parse_reply(b"1|0.25", 1).unwrap(), [(true, Some(0.25))]);
        assert!(parse_reply(b"1|", 2).unwrap_err().contains("1 results for 2"));
        assert!(parse_reply(b"1", 1).unwrap_err().contains("no '|'"));
        assert!(parse_reply(b"1|soon", 1).unwrap_err().contains("not a number"));
        assert_eq!(parse_expired(b"").unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_expired(b"3:ocr0:5:a:b,c").unwrap(),
            ["ocr", "unknown_service", "a:b,c"]
        );
        assert!(parse_expired(b"9:ocr").is_err());
        assert!(parse_expired(b"x:ocr").is_err());
        assert!(parse_expired(b"18446744073709551615:ocr").is_err());
    }

    fn doc(m: &mut JobMetrics, now: u64) -> Value {
        serde_json::from_slice(&m.export(now).unwrap()).unwrap()
    }

    fn metric<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
        doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
    }

    fn lifecycle(job: &str, duration_ms: u64) -> String {
        line("job_started", job, "s", T, "{}")
            + &line(
                "job_completed",
                job,
                "s",
                T,
                &format!(r#"{{"duration_ms":{duration_ms}}}"#),
            )
    }

    #[test]
    fn cumulative_export_from_the_process_start() {
        let mut m = local();
        assert!(m.export(T).is_none(), "no series yet");
        count(&mut m, &lifecycle("a", 300));
        count(&mut m, &lifecycle("b", 3000));
        let d = doc(&mut m, T + 5);
        let p = &metric(&d, "jobs_processed_total").unwrap()["sum"];
        assert_eq!(p["aggregationTemporality"], 2);
        assert_eq!(p["isMonotonic"], true);
        assert_eq!(p["dataPoints"][0]["asInt"], "2");
        assert_eq!(p["dataPoints"][0]["startTimeUnixNano"], T.to_string());
        assert_eq!(p["dataPoints"][0]["timeUnixNano"], (T + 5).to_string());
        let attrs = &p["dataPoints"][0]["attributes"];
        assert_eq!(
            attrs[0],
            json!({"key": "status", "value": {"stringValue": "completed"}})
        );
        assert_eq!(attrs[1], json!({"key": "service", "value": {"stringValue": "s"}}));
        let h = &metric(&d, "job_duration_seconds").unwrap()["histogram"]["dataPoints"][0];
        assert_eq!(h["count"], "2");
        assert_eq!(
            h["bucketCounts"],
            json!(["0", "1", "0", "0", "1", "0", "0", "0", "0", "0"])
        );
        assert_eq!(h["explicitBounds"], json!(DURATION_BOUNDS));
        assert_eq!(metric(&d, "jobs_active").unwrap()["sum"]["isMonotonic"], false);
        assert!(metric(&d, "errors_total").is_none());
        assert_eq!(
            d["resourceMetrics"][0]["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "trackgate"}})
        );
    }

    #[test]
    fn delta_export_carries_changes_and_survives_a_refused_export() {
        let mut m = JobMetrics::new(T, true, vec![], State::Local(LocalState::default()));
        count(
            &mut m,
            &(lifecycle("a", 300) + &lifecycle("b", 400) + &line("job_started", "c", "s", T, "{}")),
        );
        let d1 = doc(&mut m, T + 10);
        m.exported();
        let p = &metric(&d1, "jobs_processed_total").unwrap()["sum"];
        assert_eq!(
            (p["aggregationTemporality"].as_u64(), &p["dataPoints"][0]["asInt"]),
            (Some(1), &json!("2"))
        );
        assert_eq!(p["dataPoints"][0]["startTimeUnixNano"], T.to_string());
        let a = &metric(&d1, "jobs_active").unwrap()["sum"];
        assert_eq!(a["aggregationTemporality"], 2, "jobs_active stays cumulative");
        assert_eq!(a["dataPoints"][0]["asInt"], "1");

        count(&mut m, &lifecycle("d", 70_000));
        let _refused = doc(&mut m, T + 20); // not queued: no `exported`
        count(&mut m, &lifecycle("e", 100));
        let d2 = doc(&mut m, T + 30);
        m.exported();
        let p = &metric(&d2, "jobs_processed_total").unwrap()["sum"]["dataPoints"][0];
        assert_eq!(p["asInt"], "2", "the refused export's change is carried");
        assert_eq!(
            p["startTimeUnixNano"],
            (T + 10).to_string(),
            "starts where the last queued one ended"
        );
        let h = &metric(&d2, "job_duration_seconds").unwrap()["histogram"]["dataPoints"][0];
        assert_eq!(h["count"], "2");
        assert!((h["sum"].as_f64().unwrap() - 70.1).abs() < 1e-9);
        let a = &metric(&d2, "jobs_active").unwrap()["sum"]["dataPoints"][0];
        assert_eq!(a["startTimeUnixNano"], T.to_string());

        // No change: only the active jobs.
        let d3 = doc(&mut m, T + 40);
        let names: Vec<&Value> = d3["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["name"])
            .collect();
        assert_eq!(names, [&json!("jobs_active")]);
    }
}
