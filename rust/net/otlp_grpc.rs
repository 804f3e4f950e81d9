//! OTLP/gRPC receiver: `opentelemetry.proto.collector.{logs,trace,metrics}.v1.*Service/Export`
//! served with h2, feeding the same [`Pipeline`] as the OTLP/HTTP receiver (no Python per call).
//!
//! Statuses follow the OTLP specification: INVALID_ARGUMENT for undecodable data,
//! RESOURCE_EXHAUSTED for a message over `max_body_bytes`, UNAUTHENTICATED without a valid bearer
//! token, UNAVAILABLE with `google.rpc.RetryInfo` while the queue is full, the gateway is
//! shutting down or its disk fails — success only once the records are durably queued, exactly
//! as over HTTP — and `partial_success` in the response when some records were refused.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Ping, PingPong, RecvStream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::grpc::{self, Code, Status};
use super::{accept_loop, race, Either, Shutdown};
use crate::encode;
use crate::error::{shorten, shorten_bytes, CoreError};
use crate::ingest::Format;
use crate::pipeline::Pipeline;
use crate::signal::Signal;

pub const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
pub const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub const METRICS_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// How long a client may take to open HTTP/2 (preface and settings) before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
/// The retry delays sent in RetryInfo, as the HTTP receiver's Retry-After.
pub const RETRY_FULL: Duration = Duration::from_secs(1);
pub const RETRY_CLOSED: Duration = Duration::from_secs(5);

pub struct Config {
    /// Accepted bearer tokens; empty: no authentication.
    pub tokens: Vec<Vec<u8>>,
    /// The largest message, as it arrives and after decompression (`server.max_body_bytes`).
    pub max_body_bytes: usize,
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING every interval; a connection that does not answer within the timeout is closed.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    /// A request whose message has not fully arrived within this is answered DEADLINE_EXCEEDED.
    pub body_timeout: Duration,
    /// Bytes of messages buffered at once across every connection (`server.max_inflight_bytes`):
    /// beyond it a call is answered UNAVAILABLE with RetryInfo, so memory stays bounded however
    /// many connections and streams arrive.
    pub max_inflight_bytes: usize,
}

/// Bytes of one call's message counted against the listener's budget, given back on drop.
struct Reservation<'a> {
    used: &'a AtomicUsize,
    bytes: usize,
}

impl Reservation<'_> {
    /// Adds `more` bytes if the budget has room for them.
    fn grow(&mut self, more: usize, limit: usize) -> bool {
        let grown = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(more).filter(|total| *total <= limit)
        });
        if grown.is_ok() {
            self.bytes += more;
        }
        grown.is_ok()
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

pub struct Service {
    pipeline: Arc<Pipeline>,
    config: Config,
    pub stats: Arc<Stats>,
    inflight: AtomicUsize,
}

/// Calls by method (logs, traces, metrics, other) and status code.
#[derive(Default)]
pub struct Stats {
    calls: [[AtomicU64; 17]; 4],
}

const METHODS: [&str; 4] = ["logs", "traces", "metrics", "other"];
const CODES: [Code; 10] = [
    Code::Ok,
    Code::Cancelled,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::ResourceExhausted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::Unauthenticated,
];

impl Stats {
    fn count(&self, signal: Option<Signal>, code: Code) {
        let method = signal.map_or(3, Signal::index);
        self.calls[method][code as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// (method, code, calls) for every pair seen.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (m, row) in self.calls.iter().enumerate() {
            for code in CODES {
                let n = row[code as usize].load(Ordering::Relaxed);
                if n > 0 {
                    out.push((METHODS[m], code.as_str(), n));
                }
            }
        }
        out
    }
}

pub fn method_signal(path: &str) -> Option<Signal> {
    match path {
        LOGS_PATH => Some(Signal::Logs),
        TRACES_PATH => Some(Signal::Traces),
        METRICS_PATH => Some(Signal::Metrics),
        _ => None,
    }
}

/// The status an ingest error answers with.
pub fn ingest_status(signal: Signal, err: &CoreError) -> Status {
    match err {
        CoreError::Decode(_) => Status::new(
            Code::InvalidArgument,
            format!("cannot decode OTLP protobuf {}: {err}", signal.as_str()),
        ),
        CoreError::TooLarge { .. } | CoreError::ItemTooLarge { .. } | CoreError::LineTooLong { .. } => {
            Status::new(Code::ResourceExhausted, err.to_string())
        }
        CoreError::Unsupported(_) => Status::new(Code::Unimplemented, err.to_string()),
        CoreError::QueueFull { .. } => {
            Status::new(Code::Unavailable, format!("{err}; retry later")).with_retry(RETRY_FULL)
        }
        CoreError::Closed => Status::new(Code::Unavailable, "gateway is shutting down").with_retry(RETRY_CLOSED),
        CoreError::Storage(_) => {
            Status::new(Code::Unavailable, "queue storage unavailable; retry later").with_retry(RETRY_CLOSED)
        }
        CoreError::Usage(_) | CoreError::Locked(_) => Status::new(Code::Internal, err.to_string()),
    }
}

/// `grpc-encoding` as the pipeline's content encoding: `None` for identity.
pub fn request_encoding(value: Option<&[u8]>) -> Result<Option<&'static str>, Status> {
    match value {
        None | Some(b"identity") => Ok(None),
        Some(b"gzip") => Ok(Some("gzip")),
        Some(b"deflate") => Ok(Some("deflate")),
        Some(b"zstd") => Ok(Some("zstd")),
        Some(other) => Err(Status::new(
            Code::Unimplemented,
            format!(
                "unsupported grpc-encoding {:?} (supported: identity, gzip, deflate, zstd)",
                shorten_bytes(other)
            ),
        )),
    }
}

/// UNIMPLEMENTED for a path that is none of the three OTLP methods; the path, client input read
/// before any token check, is cut short.
fn unknown_method(path: &str) -> Status {
    Status::new(Code::Unimplemented, format!("unknown method {}", shorten(path)))
}

impl Service {
    pub fn new(pipeline: Arc<Pipeline>, config: Config) -> Self {
        Service {
            pipeline,
            config,
            stats: Arc::default(),
            inflight: AtomicUsize::new(0),
        }
    }

    /// Checks the call's metadata: (signal, content encoding) or the status to answer with.
    fn check(&self, req: &Request<RecvStream>) -> Result<(Signal, Option<&'static str>), Status> {
        let signal = method_signal(req.uri().path()).ok_or_else(|| unknown_method(req.uri().path()))?;
        if req.method() != Method::POST {
            return Err(Status::new(Code::Unimplemented, "gRPC calls are POST requests"));
        }
        if !self.config.tokens.is_empty() {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| grpc::bearer(v.as_bytes()));
            if !given.is_some_and(|t| grpc::token_accepted(t, &self.config.tokens)) {
                return Err(Status::new(Code::Unauthenticated, "missing or invalid bearer token"));
            }
        }
        let encoding = request_encoding(req.headers().get("grpc-encoding").map(HeaderValue::as_bytes))?;
        Ok((signal, encoding))
    }

    /// Reads the request body: at most one length prefix plus `max_body_bytes`.
    async fn read_body(&self, body: &mut RecvStream, reserved: &mut Reservation<'_>) -> Result<Bytes, Status> {
        let limit = grpc::PREFIX + self.config.max_body_bytes;
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| Status::new(Code::Cancelled, format!("request stream failed: {e}")))?;
            if !reserved.grow(chunk.len(), self.config.max_inflight_bytes) {
                let message = format!(
                    "messages in flight use the listener's budget of {} bytes (server.max_inflight_bytes); retry later",
                    self.config.max_inflight_bytes
                );
                return Err(Status::new(Code::Unavailable, message).with_retry(RETRY_FULL));
            }
            let _ = body.flow_control().release_capacity(chunk.len());
            if buf.len() + chunk.len() > limit {
                return Err(Status::new(
                    Code::ResourceExhausted,
                    format!("message exceeds the limit of {} bytes", self.config.max_body_bytes),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// One Export call: the response message, or the status to answer with.
    async fn export(
        &self,
        signal: Signal,
        encoding: Option<&'static str>,
        body: &mut RecvStream,
    ) -> Result<Bytes, Status> {
        // Held until the message is ingested: the buffered bytes live that long.
        let mut reserved = Reservation {
            used: &self.inflight,
            bytes: 0,
        };
        let body = match tokio::time::timeout(self.config.body_timeout, self.read_body(body, &mut reserved)).await {
            Ok(read) => read?,
            Err(_) => {
                return Err(Status::new(
                    Code::DeadlineExceeded,
                    format!("request not received within {:?}", self.config.body_timeout),
                ))
            }
        };
        let (compressed, message) = grpc::decode_unary(&body, self.config.max_body_bytes)?;
        if compressed && encoding.is_none() {
            return Err(Status::new(
                Code::Internal,
                "compressed message without a grpc-encoding",
            ));
        }
        let encoding = if compressed { encoding } else { None };
        let message = body.slice_ref(message);
        let pipeline = self.pipeline.clone();
        // Decoding blocks: off the network threads. The fsync is awaited (group commit).
        let ingested = tokio::task::spawn_blocking(move || {
            catch_unwind(AssertUnwindSafe(|| {
                pipeline.ingest_deferred(signal, &message, Format::Protobuf, encoding, true)
            }))
        })
        .await;
        let ingested = match ingested {
            Ok(Ok(Ok((out, point)))) => super::durable(&self.pipeline, point).await.map(|()| out),
            Ok(Ok(Err(err))) => Err(err),
            Ok(Err(_)) | Err(_) => return Err(Status::new(Code::Internal, "internal error while ingesting")),
        };
        match ingested {
            Ok(out) => Ok(Bytes::from(encode::export_response(
                signal,
                out.rejected,
                &out.error_message,
                Format::Protobuf,
            ))),
            Err(err) => Err(ingest_status(signal, &err)),
        }
    }

    async fn handle(&self, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let content_type = req.headers().get(http::header::CONTENT_TYPE).map(HeaderValue::as_bytes);
        if !content_type.is_some_and(|ct| ct.starts_with(b"application/grpc")) {
            // Not a gRPC client: plain HTTP 415, as the gRPC over HTTP/2 spec says.
            let mut resp = Response::new(());
            *resp.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            let _ = respond.send_response(resp, true);
            self.stats.count(None, Code::Unimplemented);
            return;
        }
        let checked = self.check(&req);
        let signal = checked.as_ref().ok().map(|(s, _)| *s);
        let result = match checked {
            Ok((signal, encoding)) => {
                let mut body = req.into_body();
                self.export(signal, encoding, &mut body).await
            }
            Err(status) => Err(status),
        };
        let code = match result {
            Ok(message) => {
                respond_message(&mut respond, message);
                Code::Ok
            }
            Err(status) => {
                respond_status(&mut respond, &status);
                status.code
            }
        };
        self.stats.count(signal, code);
    }
}

fn grpc_response() -> Response<()> {
    let mut resp = Response::new(());
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

fn respond_message(respond: &mut SendResponse<Bytes>, message: Bytes) {
    let Ok(mut stream) = respond.send_response(grpc_response(), false) else {
        return; // the client is gone
    };
    if stream.send_data(grpc::encode_frame(&message), false).is_ok() {
        let mut trailers = HeaderMap::new();
        Status::ok().to_headers(&mut trailers);
        let _ = stream.send_trailers(trailers);
    }
}

/// A trailers-only response: the status in the headers, no message.
fn respond_status(respond: &mut SendResponse<Bytes>, status: &Status) {
    let mut resp = grpc_response();
    status.to_headers(resp.headers_mut());
    if status.code == Code::Unimplemented && status.message.contains("grpc-encoding") {
        resp.headers_mut().insert(
            "grpc-accept-encoding",
            HeaderValue::from_static("identity,gzip,deflate,zstd"),
        );
    }
    let _ = respond.send_response(resp, true);
}

/// Accepts connections on `listener` until shutdown.
pub async fn serve(listener: TcpListener, service: Arc<Service>, shutdown: Shutdown) {
    accept_loop(listener, shutdown, move |stream, shutdown| {
        serve_connection(stream, service.clone(), shutdown)
    })
    .await;
}

async fn serve_connection(stream: TcpStream, service: Arc<Service>, shutdown: Shutdown) {
    let mut builder = h2::server::Builder::new();
    // Windows of 1 MiB per stream, 4 MiB per connection (h2's default is 64 KiB): a message of a
    // few MiB arrives without a round trip per 64 KiB. Bodies are read as they come, so memory is
    // bounded by streams × max_body_bytes either way.
    builder
        .max_concurrent_streams(service.config.max_concurrent_streams)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(64 * 1024);
    let Ok(Ok(mut conn)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, builder.handshake::<_, Bytes>(stream)).await else {
        return;
    };
    let dead = Arc::new(Notify::new());
    if let (Some(interval), Some(pings)) = (service.config.keepalive_interval, conn.ping_pong()) {
        tokio::spawn(keepalive(
            pings,
            interval,
            service.config.keepalive_timeout,
            dead.clone(),
        ));
    }
    let mut draining = false;
    loop {
        let next = if draining {
            Either::Left(conn.accept().await)
        } else {
            match race(conn.accept(), race(shutdown.wait(), dead.notified())).await {
                Either::Left(next) => Either::Left(next),
                Either::Right(Either::Left(())) => Either::Right(true),
                Either::Right(Either::Right(())) => Either::Right(false),
            }
        };
        match next {
            Either::Left(Some(Ok((req, respond)))) => {
                let service = service.clone();
                let guard = shutdown.guard();
                tokio::spawn(async move {
                    service.handle(req, respond).await;
                    drop(guard);
                });
            }
            Either::Left(Some(Err(_)) | None) => return,
            // Shutdown: GOAWAY, let the calls in flight finish, then the connection closes.
            Either::Right(true) => {
                conn.graceful_shutdown();
                draining = true;
            }
            Either::Right(false) => return, // keep-alive timed out: drop the connection
        }
    }
}

/// Pings every `interval`; signals `dead` when a pong does not come back within `timeout`.
async fn keepalive(mut pings: PingPong, interval: Duration, timeout: Duration, dead: Arc<Notify>) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pings.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) => return, // the connection is closed
            Err(_) => {
                dead.notify_one();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Limits;
    use crate::ingest::IngestOptions;
    use crate::net::Listeners;
    use crate::pipeline::PipelineOptions;
    use crate::wire;
    use h2::client::SendRequest;
    use std::net::SocketAddr;

    fn logs_request(text: &str) -> Vec<u8> {
        let mut record = Vec::new();
        wire::put_message(&mut record, 5, |v| wire::put_bytes(v, 1, text.as_bytes()));
        let mut scope = Vec::new();
        wire::put_bytes(&mut scope, 2, &record);
        let mut resource = Vec::new();
        wire::put_bytes(&mut resource, 2, &scope);
        let mut request = Vec::new();
        wire::put_bytes(&mut request, 1, &resource);
        request
    }

    fn serve(queue_max_bytes: usize) -> (Arc<Pipeline>, Listeners, SocketAddr) {
        serve_with(queue_max_bytes, 1 << 20)
    }

    fn serve_with(queue_max_bytes: usize, max_inflight_bytes: usize) -> (Arc<Pipeline>, Listeners, SocketAddr) {
        let pipeline = Arc::new(
            Pipeline::new(PipelineOptions {
                exporters: vec!["a".into()],
                ingest: IngestOptions {
                    sampling_traces: 1.0,
                    sampling_logs: 1.0,
                    keep_errors: true,
                    resource_attributes: Vec::new(),
                    max_body_bytes: 4096,
                    scrub: None,
                    content_counts: true,
                },
                queue_max_bytes,
                batch: Limits::new(100, 1 << 20, Duration::from_secs(60)).unwrap(),
            })
            .unwrap(),
        );
        let config = Config {
            tokens: vec![b"tok".to_vec()],
            max_body_bytes: 4096,
            max_concurrent_streams: 8,
            keepalive_interval: Some(Duration::from_millis(50)),
            keepalive_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            max_inflight_bytes,
        };
        let listeners = Listeners::new(1).unwrap();
        let addr = listeners
            .add_otlp_grpc("127.0.0.1", 0, false, Service::new(pipeline.clone(), config))
            .unwrap();
        (pipeline, listeners, addr)
    }

    /// One unary call: (headers and trailers merged, response message bytes with prefix).
    async fn call(client: &mut SendRequest<Bytes>, path: &str, token: Option<&str>, body: Bytes) -> (HeaderMap, Bytes) {
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
        send.send_data(body, true).unwrap();
        let (parts, mut recv) = resp.await.unwrap().into_parts();
        assert_eq!(parts.status, StatusCode::OK);
        let mut data = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let mut headers = parts.headers;
        if let Some(trailers) = recv.trailers().await.unwrap() {
            headers.extend(trailers);
        }
        (headers, data.freeze())
    }

    fn code(headers: &HeaderMap) -> &str {
        headers["grpc-status"].to_str().unwrap()
    }

    #[test]
    fn export_calls_over_h2() {
        let (pipeline, listeners, addr) = serve(1 << 20);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let ok = grpc::encode_frame(&logs_request("hello"));

            let (h, data) = call(&mut client, LOGS_PATH, Some("tok"), ok.clone()).await;
            assert_eq!(code(&h), "0");
            // An empty ExportLogsServiceResponse, length-prefixed.
            assert_eq!(&data[..], b"\x00\x00\x00\x00\x00");
            assert_eq!(
                pipeline
                    .stats()
                    .iter()
                    .find(|(k, _)| k == "logs_accepted_records")
                    .unwrap()
                    .1,
                1
            );

            let (h, _) = call(&mut client, LOGS_PATH, None, ok.clone()).await;
            assert_eq!(code(&h), "16");
            let (h, _) = call(&mut client, LOGS_PATH, Some("tok"), grpc::encode_frame(b"\xff\xff")).await;
            assert_eq!(code(&h), "3");
            let (h, _) = call(&mut client, LOGS_PATH, Some("tok"), grpc::encode_frame(&[0u8; 5000])).await;
            assert_eq!(code(&h), "8");
            let (h, _) = call(&mut client, "/x.Y/Export", Some("tok"), ok.clone()).await;
            assert_eq!(code(&h), "12");
            // Keep-alive PINGs (every 50 ms here) are answered by the client: the connection stays.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (h, _) = call(&mut client, LOGS_PATH, Some("tok"), ok).await;
            assert_eq!(code(&h), "0");
        });
        listeners.close(Duration::from_secs(1));
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "closed listeners release the port"
        );
    }

    #[test]
    fn full_queue_and_closed_pipeline_answer_unavailable_with_retry_info() {
        let message = logs_request("0123456789");
        let (pipeline, listeners, addr) = serve(message.len() * 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let frame = grpc::encode_frame(&message);
            let mut codes = Vec::new();
            for _ in 0..4 {
                let (h, _) = call(&mut client, LOGS_PATH, Some("tok"), frame.clone()).await;
                codes.push(code(&h).to_string());
                if code(&h) == "14" {
                    let details = h["grpc-status-details-bin"].to_str().unwrap();
                    let details =
                        base64::Engine::decode(&base64::engine::general_purpose::STANDARD_NO_PAD, details).unwrap();
                    assert_eq!(grpc::retry_delay(&details), Ok(Some(RETRY_FULL)));
                }
            }
            assert_eq!(codes[0], "0");
            assert!(codes.contains(&"14".to_string()), "{codes:?}");
            pipeline.close();
            let (h, _) = call(&mut client, LOGS_PATH, Some("tok"), frame).await;
            assert_eq!(code(&h), "14");
            assert!(h["grpc-message"].to_str().unwrap().contains("shutting down"));
        });
        listeners.close(Duration::from_secs(1));
    }

    #[test]
    fn messages_beyond_the_inflight_budget_answer_unavailable_and_give_it_back() {
        let (pipeline, listeners, addr) = serve_with(1 << 20, 200);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let big = grpc::encode_frame(&logs_request(&"x".repeat(400)));
            let (h, _) = call(&mut client, LOGS_PATH, Some("tok"), big).await;
            assert_eq!(code(&h), "14");
            assert!(h["grpc-message"].to_str().unwrap().contains("max_inflight_bytes"));
            let details = h["grpc-status-details-bin"].to_str().unwrap();
            let details = base64::Engine::decode(&base64::engine::general_purpose::STANDARD_NO_PAD, details).unwrap();
            assert_eq!(grpc::retry_delay(&details), Ok(Some(RETRY_FULL)));
            // The refused call gave its bytes back: small calls keep fitting, one after another.
            for _ in 0..3 {
                let (h, _) = call(
                    &mut client,
                    LOGS_PATH,
                    Some("tok"),
                    grpc::encode_frame(&logs_request("ok")),
                )
                .await;
                assert_eq!(code(&h), "0");
            }
        });
        let accepted = pipeline.stats().into_iter().find(|(k, _)| k == "logs_accepted_records");
        assert_eq!(accepted.map(|(_, v)| v), Some(3));
        listeners.close(Duration::from_secs(1));
    }

    #[test]
    fn methods() {
        assert_eq!(method_signal(LOGS_PATH), Some(Signal::Logs));
        assert_eq!(method_signal(TRACES_PATH), Some(Signal::Traces));
        assert_eq!(method_signal(METRICS_PATH), Some(Signal::Metrics));
        assert_eq!(
            method_signal("/opentelemetry.proto.collector.logs.v1.LogsService/Other"),
            None
        );
    }

    #[test]
    fn an_unknown_method_is_echoed_cut_short() {
        let path = format!("/{}", "x".repeat(60_000));
        let status = unknown_method(&path);
        assert_eq!(status.code, Code::Unimplemented);
        assert!(status.message.starts_with("unknown method /xxx"));
        assert!(status.message.chars().count() < 100, "{}", status.message.len());
        assert_eq!(unknown_method("/a.B/C").message, "unknown method /a.B/C");
    }

    #[test]
    fn encodings() {
        assert_eq!(request_encoding(None), Ok(None));
        assert_eq!(request_encoding(Some(b"identity")), Ok(None));
        assert_eq!(request_encoding(Some(b"gzip")), Ok(Some("gzip")));
        assert_eq!(request_encoding(Some(b"snappy")).unwrap_err().code, Code::Unimplemented);
    }

    #[test]
    fn error_statuses() {
        let s = |e: CoreError| ingest_status(Signal::Logs, &e);
        assert_eq!(s(CoreError::decode("x")).code, Code::InvalidArgument);
        assert_eq!(s(CoreError::TooLarge { limit: 1 }).code, Code::ResourceExhausted);
        let full = s(CoreError::QueueFull { used: 2, limit: 1 });
        assert_eq!((full.code, full.retry_after), (Code::Unavailable, Some(RETRY_FULL)));
        let closed = s(CoreError::Closed);
        assert_eq!(
            (closed.code, closed.retry_after),
            (Code::Unavailable, Some(RETRY_CLOSED))
        );
        let disk = s(CoreError::Storage("disk full".into()));
        assert_eq!((disk.code, disk.retry_after), (Code::Unavailable, Some(RETRY_CLOSED)));
        assert_eq!(s(CoreError::Unsupported("br".into())).code, Code::Unimplemented);
    }

    #[test]
    fn stats_by_method_and_code() {
        let stats = Stats::default();
        stats.count(Some(Signal::Traces), Code::Ok);
        stats.count(Some(Signal::Traces), Code::Ok);
        stats.count(None, Code::Unimplemented);
        assert_eq!(
            stats.snapshot(),
            vec![("traces", "OK", 2), ("other", "UNIMPLEMENTED", 1)]
        );
    }
}
