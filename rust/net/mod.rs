//! The non-ASGI listeners: one tokio runtime and one shutdown path for every protocol granian
//! cannot serve (OTLP/gRPC today; the Fluent forward and Fluent-http-input listeners later).
//!
//! [`Listeners`] owns the runtime. Each `add_*` binds a socket (errors surface at once, in the
//! caller) and spawns its accept loop; [`Listeners::close`] stops every accept loop, asks each
//! connection to finish its in-flight requests, waits up to a grace period, then drops the rest.

pub mod events_route;
pub mod fluent_http;
pub mod fluent_route;
pub mod forward;
pub mod grpc;
pub mod otlp_grpc;
pub mod otlp_http;
pub mod relay;
pub mod sentry_route;

use std::future::{poll_fn, Future};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch, Notify};

use crate::error::{CoreError, Result};
use crate::pipeline::Pipeline;
use crate::queue::{DurableSink, SyncPoint};

/// Tells one request of the network runtime the outcome of the group sync that covers it.
struct OneShot(Mutex<Option<oneshot::Sender<Result<()>>>>);

impl DurableSink for OneShot {
    fn deliver(&self, results: Vec<(u64, Result<()>)>) {
        let sender = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(sender) = sender {
            let _ = sender.send(results.into_iter().next().map_or(Ok(()), |(_, r)| r));
        }
    }
}

/// Waits, without holding a thread, until a deferred ingest is durable: the queue's sync thread
/// fsyncs every waiting append at once and wakes this task.
pub async fn durable(pipeline: &Pipeline, point: Option<SyncPoint>) -> Result<()> {
    let Some(point) = point else { return Ok(()) };
    let (sender, receiver) = oneshot::channel();
    pipeline.when_durable(point, Arc::new(OneShot(Mutex::new(Some(sender)))), 0);
    receiver.await.unwrap_or(Err(CoreError::Closed))
}

/// A string as orjson writes it (what the app's JSON bodies use): `"` and `\` escaped, control
/// characters as `\n`-style or `\u00xx` escapes, everything else as UTF-8. serde_json escapes
/// exactly that set, the same way (`events::raw::push_json_str`, for the bus, writes `\b` and
/// `\f` as `\u00xx`).
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"<key>": message}` as the app's receivers write their errors (orjson, no spaces).
pub fn json_message(key: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + key.len() + 8);
    out.push(b'{');
    push_json_string(&mut out, key);
    out.push(b':');
    push_json_string(&mut out, message);
    out.push(b'}');
    out
}

/// The app's status and message for a failure to queue (or fsync) what a request carried; None:
/// one it does not expect (its 500).
pub fn queue_error_status(err: &CoreError) -> Option<(u16, String)> {
    Some(match err {
        CoreError::QueueFull { .. } => (429, format!("{err}; retry later")),
        CoreError::Closed => (503, "gateway is shutting down".into()),
        CoreError::Storage(_) => (503, "queue storage unavailable; retry later".into()),
        _ => return None,
    })
}

pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Whichever of two futures finishes first (the other is dropped): `select!` without tokio's
/// proc-macro feature.
pub async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(y) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(y));
        }
        Poll::Pending
    })
    .await
}

/// What every listener task shares: the shutdown signal and the count of live tasks.
#[derive(Clone)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
    tasks: Arc<Tasks>,
}

#[derive(Default)]
struct Tasks {
    live: AtomicUsize,
    idle: Notify,
}

/// Held by a task while it runs: `close` waits for every guard to drop.
pub struct TaskGuard(Arc<Tasks>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shutdown {
    pub fn is_set(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves once shutdown has begun.
    pub async fn wait(&self) {
        let mut rx = self.signal.clone();
        // An error means the sender is gone: that is shutdown too.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    pub fn guard(&self) -> TaskGuard {
        self.tasks.live.fetch_add(1, Ordering::AcqRel);
        TaskGuard(self.tasks.clone())
    }
}

/// Binds a TCP listener. With `reuse_port`, several processes (the gateway's workers) bind the
/// same port and the kernel spreads connections over them.
pub fn bind(host: &str, port: u16, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, format!("{host} resolves to nothing")))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts connections until shutdown and hands each to `serve` in a task of its own.
pub async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: Shutdown, serve: F)
where
    F: Fn(TcpStream, Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _guard = shutdown.guard();
    loop {
        match race(listener.accept(), shutdown.wait()).await {
            Either::Left(Ok((stream, _peer))) => {
                let _ = stream.set_nodelay(true);
                let guard = shutdown.guard();
                let task = serve(stream, shutdown.clone());
                tokio::spawn(async move {
                    task.await;
                    drop(guard);
                });
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Either::Left(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Either::Right(()) => return, // dropping the listener closes the port
        }
    }
}

/// The runtime and every listener running on it.
pub struct Listeners {
    runtime: Mutex<Option<Runtime>>,
    stop: watch::Sender<bool>,
    shutdown: Shutdown,
    grpc: Mutex<Vec<Arc<otlp_grpc::Stats>>>,
    forward: Mutex<Vec<Arc<forward::Stats>>>,
    http: Mutex<Vec<Arc<otlp_http::Stats>>>,
    events: Mutex<Vec<Arc<events_route::EventsRoute>>>,
    sentry: Mutex<Vec<Arc<sentry_route::SentryRoute>>>,
}

impl Listeners {
    pub fn new(threads: usize) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            // Ingests of large or encoded bodies run on blocking threads, each with its own
            // inflate scratch and allocator arena: a few suffice on the cores there are, and
            // bound the memory that 64 concurrent 1,000-span requests would otherwise take.
            .max_blocking_threads(2 * threads.max(1))
            .thread_name("trackgate-net")
            .enable_io()
            .enable_time()
            .build()?;
        let (stop, signal) = watch::channel(false);
        Ok(Listeners {
            runtime: Mutex::new(Some(runtime)),
            stop,
            shutdown: Shutdown {
                signal,
                tasks: Arc::default(),
            },
            grpc: Mutex::default(),
            forward: Mutex::default(),
            http: Mutex::default(),
            events: Mutex::default(),
            sentry: Mutex::default(),
        })
    }

    /// Runs `f` inside the runtime's context (to register sockets, spawn tasks).
    fn with_runtime<T>(&self, f: impl FnOnce(&Runtime) -> io::Result<T>) -> io::Result<T> {
        let guard = self.runtime.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(rt) if !self.shutdown.is_set() => f(rt),
            _ => Err(io::Error::other("listeners are closed")),
        }
    }

    /// Binds host:port and runs `serve` on the listener in the runtime; returns the bound address.
    fn start<F, Fut>(&self, host: &str, port: u16, reuse_port: bool, serve: F) -> io::Result<SocketAddr>
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let std_listener = bind(host, port, reuse_port)?;
        let addr = std_listener.local_addr()?;
        self.with_runtime(|rt| {
            let _enter = rt.enter();
            let listener = TcpListener::from_std(std_listener)?;
            rt.spawn(serve(listener, self.shutdown.clone()));
            Ok(())
        })?;
        Ok(addr)
    }

    /// Starts an OTLP/gRPC listener; returns the address it is bound to.
    pub fn add_otlp_grpc(
        &self,
        host: &str,
        port: u16,
        reuse_port: bool,
        service: otlp_grpc::Service,
    ) -> io::Result<SocketAddr> {
        let stats = service.stats.clone();
        let service = Arc::new(service);
        let addr = self.start(host, port, reuse_port, |l, shutdown| {
            otlp_grpc::serve(l, service, shutdown)
        })?;
        self.grpc.lock().unwrap_or_else(PoisonError::into_inner).push(stats);
        Ok(addr)
    }

    /// Starts a Fluentd forward-protocol listener; returns the address it is bound to.
    pub fn add_forward(
        &self,
        host: &str,
        port: u16,
        reuse_port: bool,
        service: forward::Service,
    ) -> io::Result<SocketAddr> {
        let stats = service.stats.clone();
        let service = Arc::new(service);
        let addr = self.start(host, port, reuse_port, |l, shutdown| {
            forward::serve(l, service, shutdown)
        })?;
        self.forward.lock().unwrap_or_else(PoisonError::into_inner).push(stats);
        Ok(addr)
    }

    /// Starts a drop-in for Fluent Bit's `http` input; returns the address it is bound to.
    pub fn add_fluent_http(
        &self,
        host: &str,
        port: u16,
        reuse_port: bool,
        service: fluent_http::Service,
    ) -> io::Result<SocketAddr> {
        let service = Arc::new(service);
        self.start(host, port, reuse_port, |l, shutdown| {
            fluent_http::serve(l, service, shutdown)
        })
    }

    /// Starts the OTLP/HTTP front on the gateway's main port; returns the address it is bound to.
    pub fn add_otlp_http(
        &self,
        host: &str,
        port: u16,
        reuse_port: bool,
        service: otlp_http::Service,
    ) -> io::Result<SocketAddr> {
        let stats = service.stats.clone();
        let events = service.config.events.clone();
        let sentry = service.config.sentry.clone();
        let service = Arc::new(service);
        let addr = self.start(host, port, reuse_port, |l, shutdown| {
            otlp_http::serve(l, service, shutdown)
        })?;
        self.http.lock().unwrap_or_else(PoisonError::into_inner).push(stats);
        if let Some(events) = events {
            self.events.lock().unwrap_or_else(PoisonError::into_inner).push(events);
        }
        if let Some(sentry) = sentry {
            self.sentry.lock().unwrap_or_else(PoisonError::into_inner).push(sentry);
        }
        Ok(addr)
    }

    /// The OTLP/HTTP fronts' counters (one front per process in practice).
    pub fn http_stats(&self) -> Vec<Arc<otlp_http::Stats>> {
        self.http.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Events the fronts answered on `/v1/events`: (accepted, rejected, scrubbed).
    pub fn events_counts(&self) -> (u64, u64, u64) {
        let routes = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        routes.iter().fold((0, 0, 0), |(a, r, s), route| {
            let c = &route.counts;
            (
                a + c.accepted.load(Ordering::Relaxed),
                r + c.rejected.load(Ordering::Relaxed),
                s + c.scrubbed.load(Ordering::Relaxed),
            )
        })
    }

    /// Sentry envelopes and items the fronts answered, by outcome (`sentry_route::Counts`'s
    /// field names), summed over the fronts.
    pub fn sentry_counts(&self) -> Vec<(&'static str, u64)> {
        let routes = self.sentry.lock().unwrap_or_else(PoisonError::into_inner);
        let sum = |field: fn(&sentry_route::Counts) -> &AtomicU64| {
            routes
                .iter()
                .map(|r| field(&r.counts).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        vec![
            ("accepted", sum(|c| &c.accepted)),
            ("rate_limited", sum(|c| &c.rate_limited)),
            ("rejected", sum(|c| &c.rejected)),
            ("items_received", sum(|c| &c.items_received)),
            ("items_forwarded", sum(|c| &c.items_forwarded)),
            ("items_scrubbed", sum(|c| &c.items_scrubbed)),
            ("items_sampled_out", sum(|c| &c.items_sampled_out)),
            ("items_rate_limited", sum(|c| &c.items_rate_limited)),
        ]
    }

    /// Forward-protocol counters summed over the forward listeners.
    pub fn forward_stats(&self) -> Vec<(&'static str, u64)> {
        let all = self.forward.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for (name, n) in all.iter().flat_map(|s| s.snapshot()) {
            match out.iter_mut().find(|(k, _)| *k == name) {
                Some(entry) => entry.1 += n,
                None => out.push((name, n)),
            }
        }
        out
    }

    /// Calls served by the gRPC listeners: (method, code, count).
    pub fn stats(&self) -> Vec<(&'static str, &'static str, u64)> {
        let all = self.grpc.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(&'static str, &'static str, u64)> = Vec::new();
        for (method, code, n) in all.iter().flat_map(|s| s.snapshot()) {
            match out.iter_mut().find(|(m, c, _)| (*m, *c) == (method, code)) {
                Some(entry) => entry.2 += n,
                None => out.push((method, code, n)),
            }
        }
        out
    }

    /// Stops accepting, lets in-flight requests finish within `grace`, then stops the runtime.
    /// Idempotent.
    pub fn close(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let Some(runtime) = self.runtime.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return;
        };
        let tasks = self.shutdown.tasks.clone();
        runtime.block_on(async move {
            let drained = async {
                loop {
                    let idle = tasks.idle.notified();
                    if tasks.live.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    idle.await;
                }
            };
            let _ = tokio::time::timeout(grace, drained).await;
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.close(Duration::ZERO);
    }
}
