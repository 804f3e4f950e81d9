//! The Fluentd forward protocol over TCP (Fluent Bit's `forward` output), on the shared listener
//! runtime. Each connection is a stream of msgpack messages; each message is converted to OTLP logs
//! and queued like an OTLP request, and only then is its `chunk` acknowledged, so Fluent Bit's
//! `require_ack_response` gives at-least-once delivery.
//!
//! Queue full: the message is retried until it fits and nothing more is read from that connection
//! meanwhile (TCP backpressure; the ack waits too). Nothing is dropped. A malformed frame, or a
//! message over `max_message_bytes`, closes that connection only.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{accept_loop, race, Either, Shutdown};
use crate::error::CoreError;
use crate::fluent::forward::{ack, next_frame, Frame};
use crate::fluent::msgpack::{ReadError, Reader};
use crate::pipeline::Pipeline;
use crate::sentry::now_nanos;

/// How long a full queue is waited on between tries.
const FULL_RETRY: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    /// Largest message (one msgpack value on the wire, and a compressed chunk once inflated).
    pub max_message_bytes: usize,
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
            if let Err(reason) = connection(stream, &service, &shutdown).await {
                service.stats.malformed.fetch_add(1, Ordering::Relaxed);
                eprintln!("trackgate forward: connection closed: {reason}");
            }
        }
    })
    .await;
}

/// Serves one connection until EOF, shutdown, or an error (the reason it is closed).
async fn connection(mut stream: TcpStream, service: &Service, shutdown: &Shutdown) -> Result<(), String> {
    let max = service.config.max_message_bytes;
    let mut buf: Vec<u8> = Vec::new();
    let mut checked = true; // nothing new in `buf` since the last look
    loop {
        while !checked {
            // Cheap completeness check first: no allocation while a large message trickles in.
            match Reader::new(&buf).skip() {
                Err(ReadError::Truncated) => {
                    checked = true;
                    continue;
                }
                Err(ReadError::Invalid(why)) => return Err(format!("malformed msgpack: {why}")),
                Ok(()) => {}
            }
            let frame = next_frame(&buf, max, now_nanos()).map_err(|e| e.to_string())?;
            match frame {
                Frame::Incomplete => checked = true,
                Frame::Heartbeat(n) => {
                    buf.drain(..n);
                }
                Frame::Message(m) => {
                    let used = m.wire_bytes;
                    let converted = m.builder.finish();
                    service.stats.messages.fetch_add(1, Ordering::Relaxed);
                    service.stats.rejected.fetch_add(converted.rejected, Ordering::Relaxed);
                    loop {
                        let pipeline = service.pipeline.clone();
                        let c = converted.clone();
                        let out = tokio::task::spawn_blocking(move || {
                            catch_unwind(AssertUnwindSafe(|| pipeline.ingest_converted_deferred(c, used, used)))
                        })
                        .await;
                        // The fsync is awaited (group commit) before the ack.
                        let out = match out {
                            Ok(Ok(Ok((done, point)))) => {
                                Ok(Ok(super::durable(&service.pipeline, point).await.map(|()| done)))
                            }
                            other => other.map(|r| r.map(|r| r.map(|(done, _)| done))),
                        };
                        match out {
                            Ok(Ok(Ok(done))) => {
                                service.stats.records.fetch_add(done.accepted, Ordering::Relaxed);
                                break;
                            }
                            Ok(Ok(Err(CoreError::QueueFull { .. }))) => {
                                service.stats.queue_full_waits.fetch_add(1, Ordering::Relaxed);
                                if let Either::Right(()) = race(tokio::time::sleep(FULL_RETRY), shutdown.wait()).await {
                                    return Ok(()); // unacked: the client resends to the next gateway
                                }
                            }
                            Ok(Ok(Err(CoreError::Closed))) => return Ok(()),
                            Ok(Ok(Err(e))) => return Err(format!("cannot queue message: {e}")),
                            Ok(Err(_)) | Err(_) => return Err("internal error while ingesting".into()),
                        }
                    }
                    if let Some(chunk) = m.chunk {
                        stream
                            .write_all(&ack(&chunk))
                            .await
                            .map_err(|e| format!("writing ack: {e}"))?;
                        service.stats.acks.fetch_add(1, Ordering::Relaxed);
                    }
                    buf.drain(..used);
                }
            }
            if buf.is_empty() {
                checked = true;
            }
        }
        if buf.len() > max {
            return Err(format!("message over the limit of {max} bytes"));
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
                    Err("connection ended inside a message".into())
                };
            }
            Either::Left(Ok(n)) => {
                buf.truncate(start + n);
                checked = false;
            }
            Either::Left(Err(e)) => return Err(format!("read failed: {e}")),
            Either::Right(()) => return Ok(()),
        }
    }
}
