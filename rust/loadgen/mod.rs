//! `trackgate bench`'s load generator: keep-alive connections on a tokio runtime of its own, each
//! making one call at a time (no pipelining) with a body built once, until the duration passes.
//!
//! [`start`] opens the connections and returns a [`Run`] the caller polls (for a progress bar)
//! and waits on; each [`Target`] gets its own [`Outcome`]: status counts, a latency histogram,
//! bytes both ways. With a target rate, each connection sends on a fixed schedule and latency is
//! measured from the scheduled time, so a stalled server shows in the percentiles instead of
//! slowing the schedule (no coordinated omission).

pub mod client;
pub mod histogram;
pub mod http1;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Uri};

use client::{Conn, Reply};
use histogram::Histogram;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 POST of `body` to `path`.
    Http,
    /// gRPC unary call of the message `body` to the method `path`.
    Grpc,
    /// Fluent forward PackedForward message of the entries `body` with tag `path`.
    Forward,
}

/// What a call's outcome is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Label {
    Http(u16),
    Grpc(u8),
    Ack,
    Failed(&'static str),
}

impl Label {
    pub fn accepted(self) -> bool {
        match self {
            Label::Http(s) => (200..300).contains(&s),
            Label::Grpc(code) => code == 0,
            Label::Ack => true,
            Label::Failed(_) => false,
        }
    }

    pub fn name(self) -> String {
        match self {
            Label::Http(s) => s.to_string(),
            Label::Grpc(code) => format!("grpc {}", grpc_code_name(code)),
            Label::Ack => "ack".into(),
            Label::Failed(why) => format!("error: {why}"),
        }
    }
}

fn grpc_code_name(code: u8) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(usize::from(code)).copied().unwrap_or("UNKNOWN_CODE")
}

/// One endpoint and the load it gets.
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub connections: usize,
    /// Records one call carries (for records/s).
    pub records: u64,
    /// What is written per call: the whole HTTP request, the gRPC message with its prefix, or
    /// the forward message (its chunk id rewritten per call).
    pub wire: Bytes,
    pub uri: Uri,
    pub grpc_headers: HeaderMap,
}

/// How a target is described by the caller.
pub struct TargetSpec {
    pub kind: Kind,
    pub host: String,
    pub port: u16,
    /// URL path (HTTP), method path (gRPC) or tag (forward).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub records: u64,
    pub connections: usize,
    /// gRPC: `body` is gzipped (sets the compressed flag and `grpc-encoding`).
    pub gzip: bool,
}

impl TargetSpec {
    pub fn build(self) -> Result<Target, String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.host))?;
        if self.connections == 0 {
            return Err("connections must be at least 1".into());
        }
        let mut uri = Uri::default();
        let mut grpc_headers = HeaderMap::new();
        let wire = match self.kind {
            Kind::Http => {
                let mut wire = http1::request_head(&self.host, self.port, &self.path, &self.headers, self.body.len());
                if wire.iter().any(|&b| b == 0 || b >= 0x80) {
                    return Err("request headers hold non-ASCII bytes".into());
                }
                wire.extend_from_slice(&self.body);
                Bytes::from(wire)
            }
            Kind::Grpc => {
                uri = client::grpc_uri(&self.host, self.port, &self.path)?;
                grpc_headers = client::grpc_headers(&self.headers, self.gzip)?;
                let mut frame = Vec::with_capacity(self.body.len() + 5);
                frame.push(u8::from(self.gzip));
                frame.extend_from_slice(
                    &u32::try_from(self.body.len())
                        .map_err(|_| "message over 4 GiB")?
                        .to_be_bytes(),
                );
                frame.extend_from_slice(&self.body);
                Bytes::from(frame)
            }
            Kind::Forward => Bytes::from(client::forward_message(&self.path, &self.body, self.records)),
        };
        Ok(Target {
            kind: self.kind,
            addr,
            connections: self.connections,
            records: self.records,
            wire,
            uri,
            grpc_headers,
        })
    }
}

pub struct Options {
    pub duration: Duration,
    /// Calls per second over all connections; 0 for as fast as the server answers.
    pub rate: f64,
    pub threads: usize,
    /// A call unanswered this long counts as `error: timeout` and its connection is replaced.
    pub timeout: Duration,
    /// After a 429 or 503 with `Retry-After` (seconds), the connection waits that long before
    /// its next call, as OpenTelemetry SDKs and Fluent Bit do; paced slots missed meanwhile are
    /// skipped, not caught up.
    pub honor_retry_after: bool,
}

/// Counters the caller reads while the run goes on.
#[derive(Default)]
pub struct Live {
    pub calls: AtomicU64,
    pub accepted: AtomicU64,
    pub failed: AtomicU64,
    stop: AtomicBool,
}

/// What one target's connections did, merged.
#[derive(Default, Clone)]
pub struct Outcome {
    pub statuses: Vec<(Label, u64)>,
    pub latency_us: Histogram,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub accepted: u64,
    pub records: u64,
    /// Waits the server asked for (`honor_retry_after`), and their total length.
    pub retry_waits: u64,
    pub retry_wait: Duration,
}

impl Outcome {
    fn count(&mut self, label: Label) {
        match self.statuses.iter_mut().find(|(l, _)| *l == label) {
            Some(entry) => entry.1 += 1,
            None => self.statuses.push((label, 1)),
        }
    }

    fn merge(&mut self, other: &Outcome) {
        for &(label, n) in &other.statuses {
            match self.statuses.iter_mut().find(|(l, _)| *l == label) {
                Some(entry) => entry.1 += n,
                None => self.statuses.push((label, n)),
            }
        }
        self.latency_us.merge(&other.latency_us);
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.accepted += other.accepted;
        self.records += other.records;
        self.retry_waits += other.retry_waits;
        self.retry_wait += other.retry_wait;
    }

    pub fn calls(&self) -> u64 {
        self.statuses.iter().map(|(_, n)| n).sum()
    }
}

/// A load run in progress.
pub struct Run {
    done: mpsc::Receiver<Vec<Outcome>>,
    pub live: Arc<Live>,
    started: Instant,
}

impl Run {
    /// Waits up to `wait` for the run to end: Some((outcomes per target, seconds it took)).
    pub fn wait(&mut self, wait: Duration) -> Option<(Vec<Outcome>, f64)> {
        let outcomes = self.done.recv_timeout(wait).ok()?;
        Some((outcomes, self.started.elapsed().as_secs_f64()))
    }

    /// Asks every connection to stop after its call in flight.
    pub fn stop(&self) {
        self.live.stop.store(true, Ordering::Relaxed);
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// One connection's job: which target it loads (by index), and when it sends.
struct Job {
    target: usize,
    slot: usize,
    pace: Pace,
}

/// Starts the run: the connections dealt round-robin over `options.threads` threads, each with a
/// single-threaded runtime of its own (as wrk runs an event loop per thread: no work stealing,
/// no cross-thread wake-ups on the hot path).
pub fn start(targets: Vec<Target>, options: Options) -> io::Result<Run> {
    let threads = options.threads.max(1);
    let live = Arc::new(Live::default());
    let started = Instant::now();
    let deadline = started + options.duration;
    let total: usize = targets.iter().map(|t| t.connections).sum();
    // Each connection's share of the rate; slots spread evenly over one interval.
    let interval = (options.rate > 0.0).then(|| Duration::from_secs_f64(total as f64 / options.rate));
    let mut jobs: Vec<Vec<Job>> = (0..threads).map(|_| Vec::new()).collect();
    let mut slot = 0;
    for (t, target) in targets.iter().enumerate() {
        for _ in 0..target.connections {
            let first = started + interval.map_or(Duration::ZERO, |i| i.mul_f64(slot as f64 / total as f64));
            let pace = Pace {
                next: first,
                interval,
                deadline,
            };
            jobs[slot % threads].push(Job { target: t, slot, pace });
            slot += 1;
        }
    }
    let targets: Arc<Vec<Arc<Target>>> = Arc::new(targets.into_iter().map(Arc::new).collect());
    let (timeout, honor) = (options.timeout, options.honor_retry_after);
    let mut handles = Vec::with_capacity(threads);
    for share in jobs {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (targets, live) = (targets.clone(), live.clone());
        let handle = std::thread::Builder::new()
            .name("trackgate-bench".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let tasks: Vec<_> = share
                        .into_iter()
                        .map(|job| {
                            let target = targets[job.target].clone();
                            (
                                job.target,
                                tokio::spawn(drive(target, job.slot, job.pace, (timeout, honor), live.clone())),
                            )
                        })
                        .collect();
                    let mut outcomes = vec![Outcome::default(); targets.len()];
                    for (t, task) in tasks {
                        if let Ok(outcome) = task.await {
                            outcomes[t].merge(&outcome);
                        }
                    }
                    outcomes
                })
            })?;
        handles.push(handle);
    }
    let (tx, done) = mpsc::channel();
    let n_targets = targets.len();
    std::thread::Builder::new()
        .name("trackgate-bench".into())
        .spawn(move || {
            let mut outcomes = vec![Outcome::default(); n_targets];
            for handle in handles {
                if let Ok(part) = handle.join() {
                    for (total, o) in outcomes.iter_mut().zip(&part) {
                        total.merge(o);
                    }
                }
            }
            let _ = tx.send(outcomes);
        })?;
    Ok(Run { done, live, started })
}

/// When a connection sends next.
struct Pace {
    next: Instant,
    interval: Option<Duration>,
    deadline: Instant,
}

impl Pace {
    /// Waits for the next slot; returns when the call counts as begun, or None once past the end.
    async fn next(&mut self) -> Option<Instant> {
        let Some(interval) = self.interval else {
            let now = Instant::now();
            return (now < self.deadline).then_some(now);
        };
        let at = self.next;
        if at >= self.deadline {
            return None;
        }
        self.next += interval;
        tokio::time::sleep_until(at.into()).await;
        Some(at)
    }

    /// Waits `wait` (up to the end of the run), then drops the slots that went by meanwhile.
    async fn hold(&mut self, wait: Duration) -> Duration {
        let now = Instant::now();
        let until = (now + wait).min(self.deadline.max(now));
        tokio::time::sleep_until(until.into()).await;
        if let Some(interval) = self.interval {
            while self.next < until {
                self.next += interval;
            }
        }
        until - now
    }
}

/// One connection's calls until the end of the run. `conduct`: the call timeout, and whether a
/// `Retry-After` is honoured.
async fn drive(
    target: Arc<Target>,
    slot: usize,
    mut pace: Pace,
    conduct: (Duration, bool),
    live: Arc<Live>,
) -> Outcome {
    let (timeout, honor) = conduct;
    let mut out = Outcome::default();
    let mut conn: Option<Conn> = None;
    while !live.stop.load(Ordering::Relaxed) {
        let Some(begun) = pace.next().await else { break };
        if conn.is_none() {
            match tokio::time::timeout(timeout, Conn::open(&target, target.addr, slot)).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(why)) => {
                    failed(&mut out, &live, why);
                    // A refused connect returns at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => {
                    failed(&mut out, &live, "connect timeout");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let reply = tokio::time::timeout(timeout, c.call(&target)).await;
        out.bytes_sent += target.wire.len() as u64;
        match reply {
            Ok(Ok(Reply {
                label,
                reuse,
                received,
                retry_after,
            })) => {
                out.latency_us.record(begun.elapsed().as_micros() as u64);
                out.bytes_received += received as u64;
                out.count(label);
                live.calls.fetch_add(1, Ordering::Relaxed);
                if label.accepted() {
                    out.accepted += 1;
                    out.records += target.records;
                    live.accepted.fetch_add(1, Ordering::Relaxed);
                }
                if !reuse {
                    conn = None;
                }
                if let Some(wait) = retry_after.filter(|_| honor) {
                    out.retry_waits += 1;
                    out.retry_wait += pace.hold(wait).await;
                }
            }
            Ok(Err(why)) => {
                failed(&mut out, &live, why);
                conn = None;
            }
            Err(_) => {
                failed(&mut out, &live, "timeout");
                conn = None;
            }
        }
    }
    out
}

fn failed(out: &mut Outcome, live: &Live, why: &'static str) {
    out.count(Label::Failed(why));
    live.calls.fetch_add(1, Ordering::Relaxed);
    live.failed.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request on a connection with `answer`, reading whatever
    /// arrives (the requests are small enough to come in one read).
    fn serve(answer: &'static [u8]) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            rt.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (mut s, _) = listener.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut buf = vec![0; 65536];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(answer).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        });
        addr
    }

    fn spec(port: u16, connections: usize) -> TargetSpec {
        TargetSpec {
            kind: Kind::Http,
            host: "127.0.0.1".into(),
            port,
            path: "/v1/logs".into(),
            headers: vec![],
            body: b"x".to_vec(),
            records: 10,
            connections,
            gzip: false,
        }
    }

    fn run(targets: Vec<Target>, duration_ms: u64, rate: f64) -> (Vec<Outcome>, f64) {
        run_with(targets, duration_ms, rate, false)
    }

    fn run_with(targets: Vec<Target>, duration_ms: u64, rate: f64, honor_retry_after: bool) -> (Vec<Outcome>, f64) {
        let options = Options {
            duration: Duration::from_millis(duration_ms),
            rate,
            threads: 1,
            timeout: Duration::from_secs(5),
            honor_retry_after,
        };
        let mut run = start(targets, options).unwrap();
        loop {
            if let Some(done) = run.wait(Duration::from_millis(50)) {
                return done;
            }
        }
    }

    #[test]
    fn counts_chunked_answers_as_accepted() {
        let addr = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
        let (outcomes, elapsed) = run(vec![spec(addr.port(), 2).build().unwrap()], 200, 0.0);
        let o = &outcomes[0];
        assert!(o.accepted > 0 && elapsed >= 0.2);
        assert_eq!(o.statuses, vec![(Label::Http(200), o.accepted)]);
        assert_eq!(o.records, o.accepted * 10);
        assert_eq!(o.latency_us.count(), o.accepted);
    }

    #[test]
    fn a_paced_run_sends_about_the_rate() {
        let addr = serve(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n");
        let (outcomes, _) = run(vec![spec(addr.port(), 2).build().unwrap()], 500, 40.0);
        let o = &outcomes[0];
        // 40/s for 0.5 s: 20 slots, none skipped (the server answers at once).
        assert_eq!(o.statuses, vec![(Label::Http(429), 20)]);
        assert_eq!(o.accepted, 0);
    }

    #[test]
    fn a_retry_after_holds_the_connection_when_honoured() {
        let addr = serve(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n");
        let target = || vec![spec(addr.port(), 2).build().unwrap()];
        // 1.5 s: each connection calls, waits 1 s, calls again, waits out the run.
        let (outcomes, elapsed) = run_with(target(), 1500, 0.0, true);
        let o = &outcomes[0];
        assert_eq!(o.statuses, vec![(Label::Http(503), 4)]);
        assert_eq!(o.retry_waits, 4);
        assert!(
            o.retry_wait >= Duration::from_millis(2500) && elapsed < 3.0,
            "{:?}",
            o.retry_wait
        );
        // Paced at 40/s for 0.5 s, every slot after the first of each connection falls in a wait.
        let (outcomes, _) = run_with(target(), 500, 40.0, true);
        assert_eq!(outcomes[0].statuses, vec![(Label::Http(503), 2)]);
        // Not honoured: as fast as the server answers.
        let (outcomes, _) = run(target(), 300, 0.0);
        assert!(outcomes[0].calls() > 10 && outcomes[0].retry_waits == 0);
    }

    #[test]
    fn refused_connections_are_counted_as_errors() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (outcomes, _) = run(vec![spec(port, 1).build().unwrap()], 100, 0.0);
        let o = &outcomes[0];
        assert!(o.calls() > 0);
        assert!(o
            .statuses
            .iter()
            .all(|(l, _)| *l == Label::Failed("connection refused")));
        assert!(spec(1, 0).build().is_err());
    }

    #[test]
    fn labels_name_statuses() {
        assert_eq!(Label::Grpc(8).name(), "grpc RESOURCE_EXHAUSTED");
        assert_eq!(Label::Http(503).name(), "503");
        assert!(Label::Grpc(0).accepted() && Label::Http(204).accepted() && !Label::Http(429).accepted());
    }
}
