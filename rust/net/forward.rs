//! The Fluentd forward protocol over TCP (Fluent Bit's `forward` output), on the shared listener
//! runtime. Each connection is a stream of msgpack messages; each message is converted to OTLP logs
//! and queued like an OTLP request, and only then is its `chunk` acknowledged, so Fluent Bit's
//! `require_ack_response` gives at-least-once delivery.
//!
//! Queue full: the message is retried until it fits and nothing more is read from that connection
//! meanwhile (TCP backpressure; the ack waits too). Nothing is dropped. A malformed frame, or a
//! message over `max_message_bytes`, closes that connection only.
//!
//! With a shared key, every connection starts with the handshake ([`crate::fluent::handshake`]):
//! nothing is decoded or ingested before a PING with the right digest, and a wrong one gets PONG
//! false with the reason, then the connection is closed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{accept_loop, race, Either, Shutdown};
use crate::error::CoreError;
use crate::fluent::forward::{ack, next_frame, Frame};
use crate::fluent::handshake::{Answer, Auth, Challenge};
use crate::fluent::msgpack::{ReadError, Reader, Skipping};
use crate::fluent::Converted;
use crate::pipeline::Pipeline;
use crate::sentry::now_nanos;

/// How long a full queue is waited on between tries.
const FULL_RETRY: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 64 * 1024;
/// A client that has not authenticated within this is disconnected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a refusal, how long the rest of what the client sent is read and discarded, so that
/// closing does not reset the connection before the client has read its PONG.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Config {
    /// Largest message (one msgpack value on the wire, and a compressed chunk once inflated).
    pub max_message_bytes: usize,
    /// The shared-key handshake, required on every connection when set.
    pub auth: Option<Auth>,
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages: AtomicU64,
    pub records: AtomicU64,
    pub rejected: AtomicU64,
    pub acks: AtomicU64,
    pub malformed: AtomicU64,
    pub queue_full_waits: AtomicU64,
    pub auth_failed: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [
            ("messages", &self.messages),
            ("records", &self.records),
            ("rejected", &self.rejected),
            ("acks", &self.acks),
            ("malformed", &self.malformed),
            ("queue_full_waits", &self.queue_full_waits),
            ("auth_failed", &self.auth_failed),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect()
    }
}

pub struct Service {
    pub pipeline: Arc<Pipeline>,
    pub config: Config,
    pub stats: Arc<Stats>,
}

pub async fn serve(listener: TcpListener, service: Arc<Service>, shutdown: Shutdown) {
    accept_loop(listener, shutdown, move |stream, shutdown| {
        let service = service.clone();
        async move {
            match connection(stream, &service, &shutdown).await {
                Ok(()) => {}
                Err(Closed::Malformed(reason)) => {
                    service.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("trackgate forward: connection closed: {reason}");
                }
                Err(Closed::Unauthenticated(reason)) => {
                    service.stats.auth_failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("trackgate forward: client not authenticated: {reason}");
                }
            }
        }
    })
    .await;
}

/// Why a connection was closed early (the reason is logged; never holds a secret).
enum Closed {
    Malformed(String),
    Unauthenticated(String),
}

impl From<String> for Closed {
    fn from(reason: String) -> Self {
        Closed::Malformed(reason)
    }
}

/// Serves one connection until EOF, shutdown, or an error (the reason it is closed).
async fn connection(mut stream: TcpStream, service: &Service, shutdown: &Shutdown) -> Result<(), Closed> {
    let max = service.config.max_message_bytes;
    let mut buf: Vec<u8> = Vec::new();
    if let Some(auth) = &service.config.auth {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, authenticate(&mut stream, auth, &mut buf, shutdown)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Ok(()), // EOF or shutdown before authenticating
            Ok(Err(closed)) => return Err(closed),
            Err(_) => {
                return Err(Closed::Unauthenticated(format!(
                    "no PING within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )))
            }
        }
    }
    // Nothing new in `buf` since the last look.
    let mut checked = buf.is_empty();
    // How far the completeness check got into the message at the head of `buf`: each read
    // resumes it, so a large message trickling in is scanned once, not once per read.
    let mut scan = Skipping::default();
    loop {
        while !checked {
            // Cheap completeness check first: no allocation while a large message trickles in.
            match Reader::skip_more(&buf, &mut scan) {
                Err(ReadError::Truncated) => {
                    checked = true;
                    continue;
                }
                Err(ReadError::Invalid(why)) => return Err(format!("malformed msgpack: {why}").into()),
                Ok(()) => {}
            }
            // The whole message leaves `buf` (what follows it stays), and the next look starts
            // at the next one.
            let rest = buf.split_off(std::mem::take(&mut scan).pos);
            let message = std::mem::replace(&mut buf, rest);
            match decode(message, max).await? {
                Decoded::Heartbeat => {}
                Decoded::Message { converted, chunk, used } => {
                    service.stats.messages.fetch_add(1, Ordering::Relaxed);
                    service.stats.rejected.fetch_add(converted.rejected, Ordering::Relaxed);
                    let mut events;
                    loop {
                        let pipeline = service.pipeline.clone();
                        let c = converted.clone();
                        let out = tokio::task::spawn_blocking(move || {
                            catch_unwind(AssertUnwindSafe(|| {
                                let (done, point) = pipeline.queue_converted(&c, used, used)?;
                                Ok((done, point, pipeline.tap_events(&c.payload)))
                            }))
                        })
                        .await;
                        // The fsync is awaited (group commit) before the ack.
                        let out = match out {
                            Ok(Ok(Ok((done, point, tapped)))) => Ok(Ok(super::durable(&service.pipeline, point)
                                .await
                                .map(|()| (done, tapped)))),
                            Ok(Ok(Err(e))) => Ok(Ok(Err(e))),
                            Ok(Err(panic)) => Ok(Err(panic)),
                            Err(join) => Err(join),
                        };
                        match out {
                            Ok(Ok(Ok((done, tapped)))) => {
                                service.stats.records.fetch_add(done.accepted, Ordering::Relaxed);
                                events = tapped;
                                break;
                            }
                            Ok(Ok(Err(CoreError::QueueFull { .. }))) => {
                                service.stats.queue_full_waits.fetch_add(1, Ordering::Relaxed);
                                if let Either::Right(()) = race(tokio::time::sleep(FULL_RETRY), shutdown.wait()).await {
                                    return Ok(()); // unacked: the client resends to the next gateway
                                }
                            }
                            Ok(Ok(Err(CoreError::Closed))) => return Ok(()),
                            Ok(Ok(Err(e))) => return Err(format!("cannot queue message: {e}").into()),
                            Ok(Err(_)) | Err(_) => return Err(String::from("internal error while ingesting").into()),
                        }
                    }
                    // The events the records carry (`[events] from_logs`) are queued before the
                    // ack too; a full events queue is waited on without queueing the records again.
                    while let Err(err) = events {
                        match err {
                            CoreError::QueueFull { .. } => {
                                service.stats.queue_full_waits.fetch_add(1, Ordering::Relaxed);
                                if let Either::Right(()) = race(tokio::time::sleep(FULL_RETRY), shutdown.wait()).await {
                                    return Ok(());
                                }
                            }
                            CoreError::Closed => return Ok(()),
                            e => return Err(format!("cannot queue the events: {e}").into()),
                        }
                        let pipeline = service.pipeline.clone();
                        let c = converted.clone();
                        let out = tokio::task::spawn_blocking(move || {
                            catch_unwind(AssertUnwindSafe(|| pipeline.tap_events(&c.payload)))
                        })
                        .await;
                        events = match out {
                            Ok(Ok(tapped)) => tapped,
                            Ok(Err(_)) | Err(_) => return Err(String::from("internal error while ingesting").into()),
                        };
                    }
                    if let Some(chunk) = chunk {
                        stream
                            .write_all(&ack(&chunk))
                            .await
                            .map_err(|e| format!("writing ack: {e}"))?;
                        service.stats.acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if buf.is_empty() {
                checked = true;
            }
        }
        if buf.len() > max {
            return Err(format!("message over the limit of {max} bytes").into());
        }
        let start = buf.len();
        buf.resize(start + READ_CHUNK, 0);
        let read = race(stream.read(&mut buf[start..]), shutdown.wait()).await;
        match read {
            Either::Left(Ok(0)) => {
                buf.truncate(start);
                return if buf.is_empty() {
                    Ok(())
                } else {
                    Err(String::from("connection ended inside a message").into())
                };
            }
            Either::Left(Ok(n)) => {
                buf.truncate(start + n);
                checked = false;
            }
            Either::Left(Err(e)) => return Err(format!("read failed: {e}").into()),
            Either::Right(()) => return Ok(()),
        }
    }
}

/// A whole forward message, decoded and converted.
enum Decoded {
    Heartbeat,
    Message {
        converted: Converted,
        /// The `chunk` option, to ack once the entries are queued.
        chunk: Option<String>,
        /// Bytes it took on the wire.
        used: usize,
    },
}

/// Decodes and converts one whole message (as `Reader::skip` found it) on a blocking thread: a
/// compressed chunk may inflate to `max` bytes, and the network threads serve every other
/// connection (the OTLP front and gRPC too) meanwhile. A heartbeat needs no thread.
async fn decode(message: Vec<u8>, max: usize) -> Result<Decoded, Closed> {
    if message == [0xc0] {
        return Ok(Decoded::Heartbeat);
    }
    let decoded = tokio::task::spawn_blocking(move || {
        catch_unwind(AssertUnwindSafe(|| match next_frame(&message, max, now_nanos())? {
            Frame::Heartbeat(_) => Ok(Decoded::Heartbeat),
            Frame::Message(m) => Ok(Decoded::Message {
                used: m.wire_bytes,
                chunk: m.chunk,
                converted: m.builder.finish(),
            }),
            // The skip found it whole: a value the two readers disagree on is malformed.
            Frame::Incomplete => Err(CoreError::decode("a message cut short")),
        }))
    })
    .await;
    match decoded {
        Ok(Ok(Ok(decoded))) => Ok(decoded),
        Ok(Ok(Err(e))) => Err(Closed::Malformed(e.to_string())),
        Ok(Err(_)) | Err(_) => Err(Closed::Malformed(String::from("internal error while decoding"))),
    }
}

/// Sends HELO and reads the PING. `Ok(true)`: authenticated, and what the client sent after its
/// PING is left in `buf`. `Ok(false)`: EOF or shutdown first.
async fn authenticate(
    stream: &mut TcpStream,
    auth: &Auth,
    buf: &mut Vec<u8>,
    shutdown: &Shutdown,
) -> Result<bool, Closed> {
    let challenge = Challenge::new().map_err(|e| format!("no random source for the handshake: {e}"))?;
    stream
        .write_all(&challenge.helo(auth))
        .await
        .map_err(|e| format!("writing HELO: {e}"))?;
    loop {
        match challenge.answer(auth, buf) {
            Answer::Incomplete => {}
            Answer::Accepted { used, pong } => {
                stream
                    .write_all(&pong)
                    .await
                    .map_err(|e| format!("writing PONG: {e}"))?;
                buf.drain(..used);
                return Ok(true);
            }
            Answer::Refused { reason, pong } => {
                if stream.write_all(&pong).await.is_ok() && stream.shutdown().await.is_ok() {
                    linger(stream).await;
                }
                return Err(Closed::Unauthenticated(reason.to_string()));
            }
        }
        let start = buf.len();
        buf.resize(start + READ_CHUNK, 0);
        match race(stream.read(&mut buf[start..]), shutdown.wait()).await {
            Either::Left(Ok(0)) | Either::Right(()) => return Ok(false),
            Either::Left(Ok(n)) => buf.truncate(start + n),
            Either::Left(Err(e)) => return Err(format!("read failed: {e}").into()),
        }
    }
}

/// Reads and discards until EOF (bounded in time and bytes), after our side is shut down.
async fn linger(stream: &mut TcpStream) {
    let mut scratch = [0u8; 4096];
    let mut budget: usize = 1 << 20;
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while let Ok(n @ 1..) = stream.read(&mut scratch).await {
            budget = budget.saturating_sub(n);
            if budget == 0 {
                return;
            }
        }
    })
    .await;
}
