//! One connection of each kind the load generator drives, each making one call at a time:
//! HTTP/1.1 keep-alive POSTs, OTLP/gRPC unary calls over h2, and Fluent forward PackedForward
//! messages answered by `ack`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http1::{parse_response, retry_after, Parsed};
use super::{Kind, Label, Target};
use crate::fluent::msgpack::{self, Mp, ReadError, Reader};

/// What one call came back with.
pub struct Reply {
    pub label: Label,
    /// False when the connection cannot carry another call.
    pub reuse: bool,
    pub received: usize,
    /// The server's `Retry-After` on a 429 or 503 (HTTP only).
    pub retry_after: Option<Duration>,
}

pub enum Conn {
    Http {
        stream: TcpStream,
        buf: BytesMut,
    },
    Grpc(h2::client::SendRequest<Bytes>),
    Forward {
        stream: TcpStream,
        buf: BytesMut,
        message: Vec<u8>,
        seq: u64,
    },
}

/// What a call failed on, as it appears in the status counts.
pub type Failure = &'static str;

/// The bytes of one forward message: `[tag, bin(entries), {"size": n, "chunk": "<24 hex>"}]`,
/// the chunk id last so each call rewrites only its final 24 bytes.
pub fn forward_message(tag: &str, entries: &[u8], records: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() + tag.len() + 64);
    out.push(0x93);
    msgpack::put_str(&mut out, tag.as_bytes());
    out.push(0xc6); // bin 32
    out.extend_from_slice(&u32::try_from(entries.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(entries);
    msgpack::put_map_header(&mut out, 2);
    msgpack::put_str(&mut out, b"size");
    out.push(0xcf); // uint 64
    out.extend_from_slice(&records.to_be_bytes());
    msgpack::put_str(&mut out, b"chunk");
    msgpack::put_str(&mut out, &[b'0'; CHUNK_ID]);
    out
}

const CHUNK_ID: usize = 24;

fn io_failure(e: &std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused",
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => "connection reset",
        _ => "io error",
    }
}

impl Conn {
    pub async fn open(target: &Target, addr: SocketAddr, slot: usize) -> Result<Conn, Failure> {
        let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused",
            _ => "connect failed",
        })?;
        let _ = stream.set_nodelay(true);
        Ok(match target.kind {
            Kind::Http => Conn::Http {
                stream,
                buf: BytesMut::with_capacity(4096),
            },
            Kind::Grpc => {
                let mut builder = h2::client::Builder::new();
                builder.initial_window_size(1 << 20);
                let (client, connection) = builder
                    .handshake::<_, Bytes>(stream)
                    .await
                    .map_err(|_| "h2 handshake failed")?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Conn::Grpc(client)
            }
            Kind::Forward => Conn::Forward {
                stream,
                buf: BytesMut::with_capacity(256),
                message: target.wire.to_vec(),
                seq: (slot as u64) << 40,
            },
        })
    }

    pub async fn call(&mut self, target: &Target) -> Result<Reply, Failure> {
        match self {
            Conn::Http { stream, buf } => http_call(stream, buf, &target.wire).await,
            Conn::Grpc(client) => grpc_call(client, target).await,
            Conn::Forward {
                stream,
                buf,
                message,
                seq,
            } => {
                *seq += 1;
                let n = message.len();
                let id = format!("{:0width$x}", *seq, width = CHUNK_ID);
                message[n - CHUNK_ID..].copy_from_slice(id.as_bytes());
                let message: &[u8] = message;
                forward_call(stream, buf, message, &message[n - CHUNK_ID..]).await
            }
        }
    }
}

async fn http_call(stream: &mut TcpStream, buf: &mut BytesMut, wire: &[u8]) -> Result<Reply, Failure> {
    stream.write_all(wire).await.map_err(|e| io_failure(&e))?;
    buf.clear();
    loop {
        match parse_response(buf) {
            Ok(Parsed::Done {
                status,
                len,
                keep_alive,
            }) => {
                let retry_after = matches!(status, 429 | 503)
                    .then(|| retry_after(buf))
                    .flatten()
                    .map(|s| Duration::from_secs(s.into()));
                return Ok(Reply {
                    label: Label::Http(status),
                    // Bytes beyond the response would be an answer to nothing: start afresh.
                    reuse: keep_alive && len == buf.len(),
                    received: len,
                    retry_after,
                });
            }
            Ok(Parsed::UntilClose { status }) => {
                while stream.read_buf(buf).await.map_err(|e| io_failure(&e))? > 0 {}
                return Ok(Reply {
                    label: Label::Http(status),
                    reuse: false,
                    received: buf.len(),
                    retry_after: None,
                });
            }
            Ok(Parsed::Incomplete) => {}
            Err(_) => return Err("bad HTTP response"),
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await.map_err(|e| io_failure(&e))? == 0 {
            return Err("connection closed");
        }
    }
}

async fn grpc_call(client: &mut h2::client::SendRequest<Bytes>, target: &Target) -> Result<Reply, Failure> {
    let mut ready = client.clone().ready().await.map_err(|_| "h2 connection lost")?;
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target.uri.clone();
    *request.headers_mut() = target.grpc_headers.clone();
    let (response, mut send) = ready.send_request(request, false).map_err(|_| "h2 stream refused")?;
    send.send_data(target.wire.clone(), true)
        .map_err(|_| "h2 send failed")?;
    let response = response.await.map_err(|_| "h2 stream reset")?;
    let (parts, mut body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        return Ok(Reply {
            label: Label::Http(parts.status.as_u16()),
            reuse: true,
            received: 0,
            retry_after: None,
        });
    }
    let mut received = 0;
    let mut code = grpc_status(&parts.headers);
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| "h2 stream reset")?;
        received += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if code.is_none() {
        let trailers = body.trailers().await.map_err(|_| "h2 stream reset")?;
        code = trailers.as_ref().and_then(grpc_status);
    }
    Ok(Reply {
        label: code.map_or(Label::Failed("grpc-status missing"), Label::Grpc),
        reuse: true,
        received,
        retry_after: None,
    })
}

fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The fixed headers of every gRPC call to `target`.
pub fn grpc_headers(extra: &[(String, String)], gzip: bool) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("te", HeaderValue::from_static("trailers"));
    if gzip {
        headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
    }
    for (name, value) in extra {
        let name = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

pub fn grpc_uri(host: &str, port: u16, path: &str) -> Result<Uri, String> {
    format!("http://{host}:{port}{path}")
        .parse()
        .map_err(|_| format!("invalid gRPC target {host}:{port}{path}"))
}

async fn forward_call(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    message: &[u8],
    chunk: &[u8],
) -> Result<Reply, Failure> {
    stream.write_all(message).await.map_err(|e| io_failure(&e))?;
    buf.clear();
    loop {
        let mut reader = Reader::new(buf);
        match reader.value() {
            Ok(value) => {
                let acked = matches!(&value, Mp::Map(_)) && value.get("ack").and_then(Mp::as_str) == Some(chunk);
                let used = reader.position();
                return if acked {
                    Ok(Reply {
                        label: Label::Ack,
                        reuse: used == buf.len(),
                        received: used,
                        retry_after: None,
                    })
                } else {
                    Err("ack for another chunk")
                };
            }
            Err(ReadError::Truncated) => {}
            Err(_) => return Err("bad forward ack"),
        }
        buf.reserve(256);
        if stream.read_buf(buf).await.map_err(|e| io_failure(&e))? == 0 {
            return Err("connection closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fluent::forward::{next_frame, Frame};

    #[test]
    fn forward_message_is_packed_forward_with_a_chunk() {
        // Two entries of [time, {"k": "v"}], packed back to back.
        let entry: &[u8] = &[0x92, 0x01, 0x81, 0xa1, b'k', 0xa1, b'v'];
        let entries = [entry, entry].concat();
        let mut message = forward_message("app.bench", &entries, 2);
        let n = message.len();
        message[n - CHUNK_ID..].copy_from_slice(b"000000000000000000000abc");
        let Frame::Message(m) = next_frame(&message, 1 << 20, 0).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(m.tag, "app.bench");
        assert_eq!(m.chunk.as_deref(), Some("000000000000000000000abc"));
        assert_eq!(m.wire_bytes, n);
    }

    #[test]
    fn grpc_headers_carry_metadata() {
        let h = grpc_headers(&[("Authorization".into(), "Bearer t".into())], true).unwrap();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-encoding"], "gzip");
        assert_eq!(h["authorization"], "Bearer t");
        assert!(grpc_headers(&[("bad name".into(), "x".into())], false).is_err());
    }
}
