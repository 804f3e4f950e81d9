//! A drop-in for Fluent Bit's `http` input (port 9880): `POST /<tag>` with a JSON object, an array
//! of objects, or NDJSON (also form, msgpack, text), answered `201 Created` as Fluent Bit does.
//!
//! A small hand-rolled HTTP/1.1 server instead of a `hyper` dependency: one request shape (POST
//! with Content-Length), strict limits (request head 16 KiB, body `max_body_bytes`, a read timeout),
//! keep-alive. Chunked bodies are refused with 411, which curl and Fluent Bit never need here.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::grpc::{bearer, token_accepted};
use super::relay::{read_some, Read};
use super::{accept_loop, Shutdown};
use crate::error::{shorten, CoreError};
use crate::fluent::BodyFormat;
use crate::pipeline::Pipeline;

const MAX_HEAD: usize = 16 * 1024;
/// Fluent Bit's tag when the path is `/`.
const DEFAULT_TAG: &str = "http.0";

#[derive(Debug, Clone)]
pub struct Config {
    pub tokens: Vec<Vec<u8>>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// How long a connection waits for its next request (None: for ever).
    pub idle_timeout: Option<Duration>,
}

pub struct Service {
    pub pipeline: Arc<Pipeline>,
    pub config: Config,
}

pub async fn serve(listener: TcpListener, service: Arc<Service>, shutdown: Shutdown) {
    accept_loop(listener, shutdown, move |stream, shutdown| {
        let service = service.clone();
        async move { connection(stream, &service, &shutdown).await }
    })
    .await;
}

struct Head {
    method: String,
    path: String,
    keep_alive: bool,
    content_length: Option<usize>,
    chunked: bool,
    content_type: String,
    content_encoding: Option<String>,
    authorization: Option<Vec<u8>>,
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad request line {:?}", shorten(request_line)));
    };
    let mut head = Head {
        method: method.to_owned(),
        path: target.split('?').next().unwrap_or_default().to_owned(),
        keep_alive: version == "HTTP/1.1",
        content_length: None,
        chunked: false,
        content_type: String::new(),
        content_encoding: None,
        authorization: None,
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {:?}", shorten(line)));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length = Some(
                    value
                        .parse()
                        .map_err(|_| format!("bad Content-Length {:?}", shorten(value)))?,
                )
            }
            "transfer-encoding" => head.chunked = !value.eq_ignore_ascii_case("identity"),
            "connection" if value.eq_ignore_ascii_case("close") => head.keep_alive = false,
            "connection" if value.eq_ignore_ascii_case("keep-alive") => head.keep_alive = true,
            "content-type" => {
                head.content_type = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
            }
            "content-encoding" => head.content_encoding = Some(value.to_owned()),
            "authorization" => head.authorization = Some(value.as_bytes().to_vec()),
            _ => {}
        }
    }
    Ok(head)
}

/// Fluent Bit's rule: the path without its leading `/`; characters other than alphanumerics,
/// `_` and `.` become `_`; `/` alone is the default tag.
pub fn tag_of(path: &str) -> String {
    let raw = path.strip_prefix('/').unwrap_or(path);
    if raw.is_empty() {
        return DEFAULT_TAG.to_owned();
    }
    raw.chars()
        .take(256)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn response(status: u16, reason: &str, extra: &[(&str, &str)], body: &str, keep_alive: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

async fn connection(mut stream: TcpStream, service: &Service, shutdown: &Shutdown) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // A request, head and body, must arrive within `body_timeout` of its first byte (a
        // pipelined one's may be here already): one deadline, not one per read, so that a byte
        // now and then does not hold the connection. Before its first byte, a connection waits
        // `idle_timeout` (None: for ever).
        let config = &service.config;
        let mut deadline = (!buf.is_empty()).then(|| Instant::now() + config.body_timeout);
        // The request head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD {
                let _ = stream
                    .write_all(&response(
                        431,
                        "Request Header Fields Too Large",
                        &[],
                        "request head over 16 KiB\n",
                        false,
                    ))
                    .await;
                return;
            }
            let wait = deadline.or_else(|| config.idle_timeout.map(|t| Instant::now() + t));
            if !read_more(&mut stream, &mut buf, wait, shutdown).await {
                return;
            }
            deadline.get_or_insert_with(|| Instant::now() + config.body_timeout);
            // its first byte
        };
        let deadline = deadline.unwrap_or_else(|| Instant::now() + config.body_timeout);
        let head = match parse_head(&buf[..head_end]) {
            Ok(h) => h,
            Err(why) => {
                let _ = stream
                    .write_all(&response(400, "Bad Request", &[], &format!("{why}\n"), false))
                    .await;
                return;
            }
        };
        buf.drain(..head_end + 4);
        let (status, reason, extra, body, keep) =
            handle(&head, &mut stream, &mut buf, deadline, service, shutdown).await;
        let keep = keep && head.keep_alive && !shutdown.is_set();
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if stream
            .write_all(&response(status, reason, &extra, &body, keep))
            .await
            .is_err()
            || !keep
        {
            return;
        }
    }
}

/// Reads more bytes into `buf`; false on EOF, error, the deadline (None: none) or shutdown.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Option<Instant>, shutdown: &Shutdown) -> bool {
    let wait = deadline.map(|at| at.saturating_duration_since(Instant::now()));
    matches!(read_some(stream, buf, wait, shutdown).await, Read::Data)
}

type Answer = (u16, &'static str, Vec<(&'static str, String)>, String, bool);

async fn handle(
    head: &Head,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    service: &Service,
    shutdown: &Shutdown,
) -> Answer {
    let config = &service.config;
    if head.method != "POST" {
        return (
            405,
            "Method Not Allowed",
            vec![("Allow", "POST".into())],
            "POST only\n".into(),
            false,
        );
    }
    if !config.tokens.is_empty() {
        let ok = head
            .authorization
            .as_deref()
            .and_then(bearer)
            .is_some_and(|t| token_accepted(t, &config.tokens));
        if !ok {
            let auth = vec![("WWW-Authenticate", "Bearer realm=\"trackgate\"".to_string())];
            return (
                401,
                "Unauthorized",
                auth,
                "missing or invalid bearer token\n".into(),
                false,
            );
        }
    }
    if head.chunked {
        return (
            411,
            "Length Required",
            vec![],
            "chunked bodies are not accepted; send Content-Length\n".into(),
            false,
        );
    }
    let length = head.content_length.unwrap_or(0);
    if length > config.max_body_bytes {
        let msg = format!("body exceeds the limit of {} bytes\n", config.max_body_bytes);
        return (413, "Payload Too Large", vec![], msg, false);
    }
    while buf.len() < length {
        if !read_more(stream, buf, Some(deadline), shutdown).await {
            return (
                408,
                "Request Timeout",
                vec![],
                "body not received in time\n".into(),
                false,
            );
        }
    }
    let body: Vec<u8> = buf.drain(..length).collect();
    let format = match BodyFormat::from_media_type(&head.content_type) {
        Ok(f) => f,
        Err(e) => return (415, "Unsupported Media Type", vec![], format!("{e}\n"), true),
    };
    let pipeline = service.pipeline.clone();
    let tag = tag_of(&head.path);
    let encoding = head.content_encoding.clone();
    let out = tokio::task::spawn_blocking(move || {
        catch_unwind(AssertUnwindSafe(|| {
            pipeline.ingest_fluent_deferred(&body, format, encoding.as_deref(), &tag)
        }))
    })
    .await;
    // The fsync is awaited (group commit), not waited for on a blocking thread.
    let out = match out {
        Ok(Ok(Ok((done, point)))) => Ok(Ok(super::durable(&service.pipeline, point).await.map(|()| done))),
        other => other.map(|r| r.map(|r| r.map(|(done, _)| done))),
    };
    match out {
        Ok(Ok(Ok(done))) if done.rejected > 0 && done.accepted == 0 && done.sampled_out == 0 => {
            (400, "Bad Request", vec![], format!("{}\n", done.error_message), true)
        }
        Ok(Ok(Ok(_))) => (201, "Created", vec![], String::new(), true),
        Ok(Ok(Err(e))) => match e {
            CoreError::Decode(m) => (
                400,
                "Bad Request",
                vec![],
                format!("cannot decode Fluent logs: {m}\n"),
                true,
            ),
            CoreError::TooLarge { .. } => (413, "Payload Too Large", vec![], format!("{e}\n"), false),
            CoreError::Unsupported(m) => (415, "Unsupported Media Type", vec![], format!("{m}\n"), true),
            CoreError::QueueFull { .. } => (
                429,
                "Too Many Requests",
                vec![("Retry-After", "1".into())],
                format!("{e}; retry later\n"),
                true,
            ),
            CoreError::Closed => (
                503,
                "Service Unavailable",
                vec![("Retry-After", "5".into())],
                "gateway is shutting down\n".into(),
                false,
            ),
            other => (
                503,
                "Service Unavailable",
                vec![("Retry-After", "5".into())],
                format!("{other}\n"),
                true,
            ),
        },
        Ok(Err(_)) | Err(_) => (500, "Internal Server Error", vec![], "internal error\n".into(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_fluent_bit() {
        assert_eq!(tag_of("/logs"), "logs");
        assert_eq!(tag_of("/"), DEFAULT_TAG);
        assert_eq!(tag_of("/app.v1/x-y"), "app.v1_x_y");
    }

    #[test]
    fn head_parsing() {
        let h = parse_head(b"POST /logs?x=1 HTTP/1.1\r\nContent-Length: 5\r\ncontent-type: application/json; charset=utf-8\r\nAuthorization: Bearer t").unwrap();
        assert_eq!(
            (h.method.as_str(), h.path.as_str(), h.content_length),
            ("POST", "/logs", Some(5))
        );
        assert_eq!(h.content_type, "application/json");
        assert!(h.keep_alive);
        assert!(parse_head(b"GARBAGE").is_err());
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: x").is_err());
        let h = parse_head(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked").unwrap();
        assert!(h.chunked && !h.keep_alive);
    }
}
