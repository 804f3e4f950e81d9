//! HTTP/1.x request heads as the OTLP/HTTP front reads them, and the relay that hands a
//! connection to the app behind the front.
//!
//! A head is read within limits (granian's size limit, one deadline once begun) and must end every
//! line in CRLF: a bare LF could make the app see a different head than the front (a request
//! smuggled past the peer header). A relayed connection stays a connection: the relay forwards
//! requests one by one, each head naming the client in `x-trackgate-peer` (any the client sent is
//! dropped), each body by its declared length, and copies the app's answers back as they come.
//! A request whose body is not delimited by a length (chunked, an `Upgrade`) asks the app to
//! close after it, and the rest of the connection is copied as it comes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::{race, Either, Shutdown};

/// The header that tells the app behind the front who the client is.
pub const PEER_HEADER: &str = "x-trackgate-peer";
/// A request head longer than this is refused (431): granian's own limit (its default
/// `max_buffer_size`), so a head the app would take is never refused by the front.
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Header fields a head may have (granian's, hyper's default, likewise).
pub const MAX_HEADERS: usize = 100;
/// The HTTP/2 cleartext preface (prior knowledge): such a connection goes to the app as it came.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where requests the front does not answer go: the app on granian.
#[derive(Debug, Clone)]
pub enum Backend {
    Unix(PathBuf),
    Tcp(String),
}

pub enum Read {
    Data,
    /// EOF or a read error.
    Gone,
    /// The gateway is shutting down.
    Closing,
    TimedOut,
}

/// Reads what is there into `buf`'s spare room (no zero-filling), waiting at most `timeout`.
pub async fn read_some<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    timeout: Option<Duration>,
    shutdown: &Shutdown,
) -> Read {
    if buf.capacity() - buf.len() < 4 * 1024 {
        buf.reserve(16 * 1024);
    }
    let read = async {
        match timeout {
            Some(t) => tokio::time::timeout(t, stream.read_buf(buf)).await.ok(),
            None => Some(stream.read_buf(buf).await),
        }
    };
    match race(read, shutdown.wait()).await {
        Either::Left(Some(Ok(n))) if n > 0 => Read::Data,
        Either::Left(Some(_)) => Read::Gone,
        Either::Left(None) => Read::TimedOut,
        Either::Right(()) => Read::Closing,
    }
}

/// What reading a request head gave.
pub enum Head {
    /// A whole head: it ends at this offset (before its blank line).
    At(usize),
    /// An HTTP/2 connection preface.
    H2,
    /// A head to refuse with this status and text.
    Refuse(u16, &'static str),
    /// The client left (or stalled, or the gateway is closing): nothing to answer.
    Done,
}

pub fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n")
}

/// Whether every line of the head ends in CRLF.
pub fn crlf_only(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).all(|i| i > 0 && head[i - 1] == b'\r')
        && memchr::memchr_iter(b'\r', head).all(|i| head.get(i + 1) == Some(&b'\n'))
}

/// Reads until `buf` starts with a whole request head. An idle connection waits as long as the
/// client likes, up to `idle` (None: no limit); once a head has begun, all of it must arrive
/// within `timeout`.
pub async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
    idle: Option<Duration>,
    shutdown: &Shutdown,
) -> Head {
    let mut deadline = None;
    // Where the search for the blank line resumes: a head trickled in byte by byte is scanned
    // once, not once per read.
    let mut scanned = 0;
    loop {
        if buf.starts_with(H2_PREFACE) {
            return Head::H2;
        }
        match head_end(&buf[scanned..]).map(|i| i + scanned) {
            Some(end) if end > MAX_HEAD => return Head::Refuse(431, TOO_LONG),
            Some(end) if !crlf_only(&buf[..end]) => {
                return Head::Refuse(400, "request head lines must end with CRLF\n")
            }
            Some(end) if memchr::memchr_iter(b'\n', &buf[..end]).count() > MAX_HEADERS => {
                return Head::Refuse(431, "more than 100 header fields\n")
            }
            Some(end) => return Head::At(end),
            None if buf.len() > MAX_HEAD => return Head::Refuse(431, TOO_LONG),
            None => scanned = buf.len().saturating_sub(3),
        }
        let wait = if buf.is_empty() {
            idle
        } else {
            let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
            Some(until.saturating_duration_since(tokio::time::Instant::now()))
        };
        match read_some(stream, buf, wait, shutdown).await {
            Read::Data => {}
            Read::Gone | Read::Closing | Read::TimedOut => return Head::Done,
        }
    }
}

const TOO_LONG: &str = "request head over 417792 bytes\n";

/// `bytes` without ASCII whitespace at either end.
pub fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// How a relayed request's body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    /// By `Content-Length` (0 without one): the relay forwards exactly that and reads the next head.
    Length(u64),
    /// Otherwise (chunked, an upgrade, a length the app must judge): the app is asked to close
    /// after this request and the rest is copied as it comes.
    ToClose,
}

/// The head for the app: the client named in `x-trackgate-peer` (one the client sent is dropped),
/// and with `Body::ToClose` its connection headers replaced by `connection: close`. `None`: not
/// an HTTP/1.x request line.
fn rewrite(head: &[u8], peer: Option<IpAddr>) -> Option<(Vec<u8>, Body)> {
    // Lines end in CRLF (`crlf_only` was checked).
    let mut lines = head.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next()?;
    if !(request_line.ends_with(b" HTTP/1.1") || request_line.ends_with(b" HTTP/1.0")) {
        return None;
    }
    let lines: Vec<&[u8]> = lines.collect();
    let (mut lengths, mut length, mut to_close) = (0, None, false);
    for line in &lines {
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => (trim(&line[..colon]), trim(&line[colon + 1..])),
            None => (trim(line), &b""[..]),
        };
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") || name.eq_ignore_ascii_case(b"upgrade") {
            to_close = true;
        }
    }
    let body = match (lengths, length) {
        _ if to_close || lengths > 1 => Body::ToClose,
        (0, _) => Body::Length(0),
        (_, Some(n)) => Body::Length(n),
        (_, None) => Body::ToClose,
    };
    let mut out = Vec::with_capacity(head.len() + 96);
    out.extend_from_slice(request_line);
    out.extend_from_slice(b"\r\n");
    for line in lines {
        let name = line.split(|b| *b == b':').next().map(trim).unwrap_or_default();
        let mut dropped = name.eq_ignore_ascii_case(PEER_HEADER.as_bytes());
        if body == Body::ToClose {
            dropped |= name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive");
        }
        if !dropped {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(ip) = peer {
        out.extend_from_slice(format!("{PEER_HEADER}: {ip}\r\n").as_bytes());
    }
    if body == Body::ToClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some((out, body))
}

/// Hands `client` to the app from the request at the start of `buf` on (a whole head, or an
/// HTTP/2 preface). `Err(client)` when the app could not be reached: nothing was sent to it.
pub async fn relay(
    client: TcpStream,
    buf: Vec<u8>,
    backend: &Backend,
    timeout: Duration,
    idle: Option<Duration>,
    shutdown: &Shutdown,
) -> Result<(), TcpStream> {
    match backend {
        Backend::Unix(path) => match UnixStream::connect(path).await {
            Ok(app) => pipe(client, app, buf, timeout, idle, shutdown).await,
            Err(_) => return Err(client),
        },
        Backend::Tcp(addr) => match TcpStream::connect(addr.as_str()).await {
            Ok(app) => pipe(client, app, buf, timeout, idle, shutdown).await,
            Err(_) => return Err(client),
        },
    }
    Ok(())
}

/// Requests from the client to the app, the app's answers back, until either side is done.
async fn pipe<A: AsyncRead + AsyncWrite + Unpin>(
    client: TcpStream,
    app: A,
    buf: Vec<u8>,
    timeout: Duration,
    idle: Option<Duration>,
    shutdown: &Shutdown,
) {
    let peer = client.peer_addr().ok().map(|a| a.ip());
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_app, mut to_app) = tokio::io::split(app);
    // When the app last sent answer bytes (ms after `start`): a client waiting for a slow
    // answer is not idle.
    let start = Instant::now();
    let (requested, answered) = (AtomicU64::new(0), AtomicU64::new(0));
    // The app's answers need no parsing: HTTP/1.1 answers come back in request order.
    let mut answers = pin!(async {
        let mut chunk = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from_app.read(&mut chunk).await {
            answered.store(millis_since(start) + 1, Ordering::Relaxed);
            if to_client.write_all(&chunk[..n]).await.is_err() {
                break;
            }
        }
    });
    let activity = Activity {
        start,
        requested: &requested,
        answered: &answered,
    };
    let requests = async {
        forward(
            &mut from_client,
            &mut to_app,
            buf,
            peer,
            timeout,
            idle,
            &activity,
            shutdown,
        )
        .await;
        let _ = to_app.shutdown().await;
    };
    // The client is done (or misbehaved): the app still answers what it got, then closes.
    if let Either::Right(()) = race(answers.as_mut(), requests).await {
        let _ = answers.await;
    }
}

/// When a relayed connection last passed a request to the app, and when the app last sent
/// answer bytes (1 + ms after `start`; 0: never).
struct Activity<'a> {
    start: Instant,
    requested: &'a AtomicU64,
    answered: &'a AtomicU64,
}

impl Activity<'_> {
    fn requested_now(&self) {
        self.requested.store(millis_since(self.start) + 1, Ordering::Relaxed);
    }

    /// Whether the connection has been idle for `idle`: no answer awaited (a request passed
    /// on after the last answer bytes is one), and none of it sent for that long.
    fn idle_for(&self, idle: Duration) -> bool {
        let answered = self.answered.load(Ordering::Relaxed);
        if self.requested.load(Ordering::Relaxed) > answered {
            return false;
        }
        Duration::from_millis(millis_since(self.start).saturating_sub(answered)) >= idle
    }
}

fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Forwards the client's requests to the app, rewriting each head; returns when the client is
/// done, the connection was handed over whole, or a head was refused (the app is told nothing
/// more, so it closes once it answered the requests before). Waiting for the next head, the
/// client is idle once neither it nor the app sent anything for `idle`.
#[allow(clippy::too_many_arguments)]
async fn forward<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    client: &mut R,
    app: &mut W,
    mut buf: Vec<u8>,
    peer: Option<IpAddr>,
    timeout: Duration,
    idle: Option<Duration>,
    activity: &Activity<'_>,
    shutdown: &Shutdown,
) {
    loop {
        let head = match idle {
            Some(idle) if buf.is_empty() => loop {
                if !buf.is_empty() {
                    // A head begun: it has its own deadline in `read_head`, whatever the idle one.
                    break read_head(client, &mut buf, timeout, None, shutdown).await;
                }
                match tokio::time::timeout(idle, read_head(client, &mut buf, timeout, None, shutdown)).await {
                    Ok(head) => break head,
                    // An answer awaited or still coming: not idle.
                    Err(_) if !buf.is_empty() || !activity.idle_for(idle) => {}
                    Err(_) => break Head::Done,
                }
            },
            _ => read_head(client, &mut buf, timeout, None, shutdown).await,
        };
        let end = match head {
            Head::At(end) => end,
            Head::H2 => {
                // Passed on as it came (the app does not trust the peer header over HTTP/2).
                if app.write_all(&buf).await.is_ok() {
                    let _ = tokio::io::copy(client, app).await;
                }
                return;
            }
            Head::Refuse(..) | Head::Done => return,
        };
        let Some((head, body)) = rewrite(&buf[..end], peer) else {
            return;
        };
        buf.drain(..end + 4);
        activity.requested_now();
        if app.write_all(&head).await.is_err() {
            return;
        }
        match body {
            Body::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let first = n.min(buf.len());
                if app.write_all(&buf[..first]).await.is_err() {
                    return;
                }
                buf.drain(..first);
                let rest = (n - first) as u64;
                if rest > 0 {
                    let mut body = client.take(rest);
                    match tokio::io::copy(&mut body, app).await {
                        Ok(copied) if copied == rest => {}
                        _ => return,
                    }
                }
                // Stamped again once the body is through: an interim answer (`100 Continue`)
                // is not the answer awaited.
                activity.requested_now();
                buf.shrink_to(16 * 1024);
            }
            Body::ToClose => {
                if app.write_all(&buf).await.is_ok() {
                    let _ = tokio::io::copy(client, app).await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(head: &str) -> Option<(String, Body)> {
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        rewrite(head.as_bytes(), Some(peer)).map(|(h, b)| (String::from_utf8(h).unwrap(), b))
    }

    #[test]
    fn heads_name_the_peer_and_keep_the_connection() {
        let (head, body) = rewritten(
            "POST /api/1/envelope/ HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nX-Trackgate-Peer: 6.6.6.6\r\nContent-Length: 12",
        )
        .unwrap();
        assert_eq!(
            head,
            "POST /api/1/envelope/ HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 12\r\nx-trackgate-peer: 10.1.2.3\r\n\r\n"
        );
        assert_eq!(body, Body::Length(12));
        assert_eq!(
            rewritten("GET /healthz HTTP/1.0\r\nHost: x").unwrap().1,
            Body::Length(0)
        );
        assert!(rewritten("PRI * HTTP/2.0").is_none());
        assert!(rewritten("GET / HTTP/0.9").is_none());
    }

    #[test]
    fn bodies_without_one_length_close_after_them() {
        for head in [
            "POST /v1/logs HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: 5",
            "POST /v1/logs HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6",
            "POST /v1/logs HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5",
            "POST /v1/logs HTTP/1.1\r\nContent-Length: -1",
            "POST /v1/logs HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade",
        ] {
            let (out, body) = rewritten(head).unwrap();
            assert_eq!(body, Body::ToClose, "{head}");
            assert!(
                out.ends_with("x-trackgate-peer: 10.1.2.3\r\nconnection: close\r\n\r\n"),
                "{out}"
            );
            assert_eq!(out.to_ascii_lowercase().matches("connection:").count(), 1, "{out}");
            assert!(!out.to_ascii_lowercase().contains("keep-alive"), "{out}");
        }
    }

    #[test]
    fn heads_must_end_lines_in_crlf() {
        assert!(crlf_only(b"GET / HTTP/1.1\r\nHost: x"));
        assert!(!crlf_only(b"GET / HTTP/1.1\nHost: x"));
        assert!(!crlf_only(b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!crlf_only(b"GET / HTTP/1.1\r\r\nHost: x"));
    }
}
