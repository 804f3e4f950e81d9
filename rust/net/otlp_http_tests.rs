//! The OTLP/HTTP front over real sockets: blocking std clients against the front on its own
//! runtime, with a small stand-in for the app behind it.

use super::*;
use crate::batch::Limits;
use crate::ingest::IngestOptions;
use crate::net::relay::{head_end, H2_PREFACE, MAX_HEAD};
use crate::net::Listeners;
use crate::pipeline::PipelineOptions;
use crate::wire;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);
/// What the app stand-in answers to every request it gets.
const APP_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nx-app: relayed\r\ncontent-length: 3\r\n\r\napp";

/// An `ExportLogsServiceRequest` with one record whose body is `text`.
fn logs_body(text: &str) -> Vec<u8> {
    let mut request = Vec::new();
    wire::put_message(&mut request, 1, |rl| {
        wire::put_message(rl, 2, |sl| {
            wire::put_message(sl, 2, |lr| {
                wire::put_message(lr, 5, |v| wire::put_bytes(v, 1, text.as_bytes()))
            })
        })
    });
    request
}

/// `head` (request line and header lines, no blank line) and `body` as one write.
fn request(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{head}\r\n\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// A protobuf `POST /v1/logs` with its length and `extra` header lines (each "\r\nname: value").
fn logs_post(extra: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST /v1/logs HTTP/1.1\r\nhost: front\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}{extra}",
        body.len()
    );
    request(&head, body)
}

fn config(backend: Backend) -> Config {
    Config {
        tokens: Vec::new(),
        max_body_bytes: 4096,
        body_timeout: WAIT,
        idle_timeout: None,
        max_inflight_bytes: 1 << 20,
        max_connections: 8,
        blocking: false,
        backend,
        latency_buckets: vec![0.01, 0.1],
        log: None,
        fluent: Routes::default(),
        events: None,
        sentry: None,
    }
}

/// A backend nothing listens on.
fn closed_port() -> Backend {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Backend::Tcp(addr.to_string())
}

struct Front {
    pipeline: Arc<Pipeline>,
    listeners: Listeners,
    addr: SocketAddr,
}

fn pipeline(queue_max_bytes: usize) -> Arc<Pipeline> {
    Arc::new(
        Pipeline::new(PipelineOptions {
            exporters: vec!["a".into()],
            ingest: IngestOptions {
                max_body_bytes: 4096,
                ..IngestOptions::default()
            },
            queue_max_bytes,
            batch: Limits::new(100, 1 << 20, Duration::from_secs(60)).unwrap(),
        })
        .unwrap(),
    )
}

fn front(config: Config, queue_max_bytes: usize) -> Front {
    let pipeline = pipeline(queue_max_bytes);
    let listeners = Listeners::new(1).unwrap();
    let addr = listeners
        .add_otlp_http("127.0.0.1", 0, false, Service::new(pipeline.clone(), config))
        .unwrap();
    Front {
        pipeline,
        listeners,
        addr,
    }
}

impl Front {
    fn connect(&self) -> Client {
        let stream = std::net::TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn accepted_logs(&self) -> u64 {
        let stats = self.pipeline.stats();
        stats.iter().find(|(k, _)| k == "logs_accepted_records").unwrap().1
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the front answered this itself (the app stand-in marks its answers).
    fn by_front(&self) -> bool {
        self.header("x-app").is_none()
    }
}

struct Client {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads more into `buf`; false at EOF.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).expect("read within the timeout");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response: its body by `content-length`, or to EOF without one.
    fn response(&mut self) -> Response {
        let end = loop {
            if let Some(end) = head_end(&self.buf) {
                break end;
            }
            assert!(self.fill(), "connection closed before a response head: {:?}", self.buf);
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| l.split_once(':').unwrap())
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap());
        match length {
            Some(length) => {
                while self.buf.len() < length {
                    assert!(self.fill(), "connection closed inside a response body");
                }
            }
            None => while self.fill() {},
        }
        let rest = self.buf.split_off(length.unwrap_or(self.buf.len()));
        let body = std::mem::replace(&mut self.buf, rest);
        Response { status, headers, body }
    }

    /// Whether the peer closed the connection with nothing more to read.
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }
}

/// A request as the app stand-in received it.
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// A stand-in for the app behind the front: reads the requests of each connection in turn (a
/// declared or chunked body included), reports each and answers [`APP_ANSWER`]; closes after a
/// request that asks it to (or its chunked body, which it does not parse further).
fn app() -> (Backend, mpsc::Receiver<Seen>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let sender = sender.clone();
            std::thread::spawn(move || app_connection(stream.unwrap(), &sender));
        }
    });
    (Backend::Tcp(addr.to_string()), receiver)
}

/// One connection of the app stand-in.
fn app_connection(stream: std::net::TcpStream, sender: &mpsc::Sender<Seen>) {
    let mut client = Client {
        stream,
        buf: Vec::new(),
    };
    client.stream.set_read_timeout(Some(WAIT)).unwrap();
    // A kept connection the front never uses again ends the read with a timeout: that is its end.
    let fill = |client: &mut Client| {
        let mut chunk = [0u8; 16 * 1024];
        match client.stream.read(&mut chunk) {
            Ok(n) if n > 0 => {
                client.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    };
    loop {
        while head_end(&client.buf).is_none() && fill(&mut client) {}
        let Some(end) = head_end(&client.buf) else { return };
        let head = String::from_utf8_lossy(&client.buf[..end]).to_ascii_lowercase();
        let mut body = client.buf.split_off(end + 4);
        client.buf = Vec::new();
        let length = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length: ")?.parse().ok());
        let chunked = head.contains("\r\ntransfer-encoding: chunked");
        while length.is_some_and(|n| body.len() < n) || (chunked && !body.ends_with(b"0\r\n\r\n")) {
            if !fill(&mut client) {
                break;
            }
            body.append(&mut client.buf);
        }
        // What follows the body (or a bodyless head) is the next request's.
        if !chunked {
            client.buf = body.split_off(length.unwrap_or(0).min(body.len()));
        }
        let close = chunked || head.contains("\r\nconnection: close");
        // `x-slow: <ms>`: a slow answer.
        let slow = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("x-slow: ")?.parse().ok());
        if sender.send(Seen { head, body }).is_err() {
            return;
        }
        if let Some(ms) = slow {
            std::thread::sleep(Duration::from_millis(ms));
            // As granian (hyper, half-close off) does: a request whose connection was closed
            // for reading meanwhile is dropped, unanswered.
            client.stream.set_nonblocking(true).unwrap();
            let closed = matches!(client.stream.peek(&mut [0u8; 1]), Ok(0));
            client.stream.set_nonblocking(false).unwrap();
            if closed {
                return;
            }
        }
        if client.stream.write_all(APP_ANSWER).is_err() || close {
            return;
        }
    }
}

fn seen(app: &mpsc::Receiver<Seen>) -> Seen {
    app.recv_timeout(WAIT).expect("the app got the request")
}

/// Keep-alive and pipelined OTLP posts are answered by the front, in order, and ingested.
#[test]
fn otlp_posts_are_answered_on_one_keep_alive_connection() {
    let (backend, app) = app();
    let front = front(config(backend), 1 << 20);
    let mut client = front.connect();
    for text in ["one", "two"] {
        client.send(&logs_post("", &logs_body(text)));
        let r = client.response();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(r.header("connection"), None);
        assert!(r.by_front());
    }
    assert_eq!(front.accepted_logs(), 2);
    // Two requests in one write: a good one, then a bad one, answered in that order.
    let mut both = logs_post("", &logs_body("three"));
    both.extend(logs_post("", b"\xff\xff\xff"));
    client.send(&both);
    assert_eq!([client.response().status, client.response().status], [200, 400]);
    assert_eq!(front.accepted_logs(), 3);
    assert!(app.try_recv().is_err(), "nothing went to the app");
}

/// Requests for the app, after an OTLP post on the same connection, reach it one by one on one
/// kept connection, each naming the client in x-trackgate-peer (never the client's own).
#[test]
fn other_requests_are_relayed_with_the_peer_on_a_kept_connection() {
    let (backend, app) = app();
    let front = front(config(backend), 1 << 20);
    let mut client = front.connect();
    client.send(&logs_post("", &logs_body("one")));
    assert!(client.response().by_front());
    let get = request(
        "GET /healthz HTTP/1.1\r\nhost: front\r\nX-Trackgate-Peer: 6.6.6.6\r\nConnection: keep-alive",
        b"",
    );
    let post = request(
        "POST /api/1/envelope/ HTTP/1.1\r\nhost: front\r\ncontent-length: 5",
        b"hello",
    );
    // One at a time, then two in one write; an OTLP post after them goes to the app too (its
    // answer must follow theirs), and the app sees its body.
    client.send(&get);
    let mut pair = post.clone();
    pair.extend(&get);
    for bytes in [post.clone(), pair, logs_post("", &logs_body("late"))] {
        client.send(&bytes);
    }
    for _ in 0..5 {
        let r = client.response();
        assert_eq!(
            (r.status, r.header("x-app"), r.text().as_str()),
            (200, Some("relayed"), "app")
        );
    }
    let heads: Vec<Seen> = (0..5).map(|_| seen(&app)).collect();
    for s in &heads {
        assert!(s.head.contains("\r\nx-trackgate-peer: 127.0.0.1"), "{}", s.head);
        assert!(
            !s.head.contains("6.6.6.6") && !s.head.contains("connection: close"),
            "{}",
            s.head
        );
        assert_eq!(s.head.matches("x-trackgate-peer").count(), 1, "{}", s.head);
    }
    assert!(heads[0]
        .head
        .starts_with("get /healthz http/1.1\r\nhost: front\r\nconnection: keep-alive\r\n"));
    assert_eq!(
        (heads[1].body.as_slice(), heads[2].body.as_slice()),
        (&b"hello"[..], &b"hello"[..])
    );
    assert_eq!(heads[4].body, logs_body("late"));
    assert_eq!(front.accepted_logs(), 1);
    assert_eq!(
        front.listeners.http_stats()[0].relayed(),
        1,
        "one connection handed over"
    );
}

/// Chunked and `Expect: 100-continue` posts go to the app, with the body bytes that came with the head.
#[test]
fn chunked_and_expect_continue_posts_are_relayed_with_their_bodies() {
    let (backend, app) = app();
    let front = front(config(backend), 1 << 20);
    let chunked = request(
        "POST /v1/logs HTTP/1.1\r\nhost: front\r\ncontent-type: application/x-protobuf\r\ntransfer-encoding: chunked",
        b"5\r\nhello\r\n0\r\n\r\n",
    );
    let expect = logs_post("\r\nexpect: 100-continue", b"hello");
    for (sent, header, body) in [
        (chunked, "transfer-encoding: chunked", &b"5\r\nhello\r\n0\r\n\r\n"[..]),
        (expect, "expect: 100-continue", b"hello"),
    ] {
        let mut client = front.connect();
        client.send(&sent);
        assert_eq!(client.response().header("x-app"), Some("relayed"));
        let seen = seen(&app);
        assert!(seen.head.starts_with("post /v1/logs http/1.1\r\n"), "{}", seen.head);
        assert!(seen.head.contains(header), "{}", seen.head);
        assert_eq!(seen.body, body);
    }
    assert_eq!(front.accepted_logs(), 0);
}

/// With the app unreachable, a relayed request is answered 503 with Retry-After.
#[test]
fn an_unreachable_app_answers_503_retry_after() {
    let front = front(config(closed_port()), 1 << 20);
    let mut client = front.connect();
    client.send(&request("GET /healthz HTTP/1.1\r\nhost: front", b""));
    let r = client.response();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        (r.header("retry-after"), r.header("connection")),
        (Some("1"), Some("close"))
    );
    assert!(r.text().contains("not reachable"), "{}", r.text());
    assert!(client.closed());
}

/// With tokens set, only a post with a valid bearer token is answered by the front; the others
/// go to the app (for its 401).
#[test]
fn posts_without_a_valid_token_are_relayed() {
    let (backend, app) = app();
    let front = front(
        Config {
            tokens: vec![b"s3cret".to_vec()],
            ..config(backend)
        },
        1 << 20,
    );
    let body = logs_body("one");
    let mut client = front.connect();
    client.send(&logs_post("\r\nauthorization: Bearer s3cret", &body));
    let r = client.response();
    assert_eq!((r.status, r.by_front()), (200, true));
    client.send(&logs_post("", &body));
    assert_eq!(client.response().header("x-app"), Some("relayed"));
    assert!(!seen(&app).head.contains("authorization"));
    let mut client = front.connect();
    client.send(&logs_post("\r\nauthorization: Bearer wrong", &body));
    assert_eq!(client.response().header("x-app"), Some("relayed"));
    let seen = seen(&app);
    assert!(
        seen.head.contains("\r\nauthorization: bearer wrong\r\n"),
        "{}",
        seen.head
    );
    assert_eq!(seen.body, body);
    assert_eq!(front.accepted_logs(), 1);
}

/// A body that does not arrive within body_timeout is answered 408 and the connection closed.
#[test]
fn a_slow_body_answers_408_and_closes() {
    let front = front(
        Config {
            body_timeout: Duration::from_millis(200),
            ..config(closed_port())
        },
        1 << 20,
    );
    let mut client = front.connect();
    client.send(&request(
        "POST /v1/logs HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 100",
        &[b'{'; 10],
    ));
    let r = client.response();
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(
        (r.header("connection"), r.header("content-type")),
        (Some("close"), Some("application/json"))
    );
    assert!(
        r.text().contains("request body not received within 0.2s"),
        "{}",
        r.text()
    );
    assert!(client.closed());
}

/// A full queue answers 429 with Retry-After and keeps the connection.
#[test]
fn a_full_queue_answers_429_retry_after() {
    let body = logs_body("0123456789");
    let front = front(config(closed_port()), body.len() * 2);
    let mut client = front.connect();
    let statuses: Vec<u16> = (0..4)
        .map(|_| {
            client.send(&logs_post("", &body));
            let r = client.response();
            if r.status == 429 {
                assert_eq!((r.header("retry-after"), r.header("connection")), (Some("1"), None));
                assert!(r.text().contains("retry later"), "{}", r.text());
            }
            r.status
        })
        .collect();
    assert_eq!(statuses[0], 200);
    assert_eq!(statuses[3], 429, "{statuses:?}");
    assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
}

/// A body that is not protobuf answers 400 with the app's words.
#[test]
fn a_bad_protobuf_body_answers_400() {
    let front = front(config(closed_port()), 1 << 20);
    let mut client = front.connect();
    client.send(&logs_post("", b"\xff\xff\xff"));
    let r = client.response();
    assert_eq!((r.status, r.by_front()), (400, true));
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert!(r.text().contains("cannot decode OTLP protobuf logs"), "{}", r.text());
    assert_eq!(front.accepted_logs(), 0);
}

/// The front counts what it answers by (route, status), and what it relays.
#[test]
fn answered_requests_are_counted_by_route_and_status() {
    let (backend, app) = app();
    let front = front(config(backend), 1 << 20);
    let mut client = front.connect();
    for body in [logs_body("one"), b"\xff".to_vec(), logs_body("two")] {
        client.send(&logs_post("", &body));
        client.response();
    }
    client.send(&request("GET /metrics HTTP/1.1", b""));
    assert_eq!(client.response().header("x-app"), Some("relayed"));
    seen(&app);
    drop(client);
    // Closing waits for the connection tasks, which count after writing the answer.
    front.listeners.close(WAIT);
    let stats = front.listeners.http_stats();
    let mut answered = stats[0].answered();
    answered.sort();
    assert_eq!(answered, vec![("/v1/logs", 200, 2), ("/v1/logs", 400, 1)]);
    assert_eq!(stats[0].relayed(), 1);
    assert_eq!(stats[0].latency()[0].1.iter().sum::<u64>(), 3);
}

/// A bare LF in a head could end it early for the app: such heads are refused (400), never passed
/// on, so no request reaches the app without the front's peer header.
#[test]
fn heads_with_a_bare_lf_are_refused_not_relayed() {
    let (backend, app) = app();
    let front = front(config(backend), 1 << 20);
    let smuggle = "POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 56\n\nXXXX\r\n\r\nGET /b HTTP/1.1\r\nX-Trackgate-Peer: 6.6.6.6\r\n\r\n";
    for head in [
        smuggle,
        "GET /healthz HTTP/1.1\nhost: x\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nhost: x\r\r\n\r\n",
    ] {
        let mut client = front.connect();
        client.send(head.as_bytes());
        let r = client.response();
        assert_eq!(r.status, 400, "{head:?}");
        assert!(r.by_front() && r.text().contains("CRLF"), "{}", r.text());
    }
    assert!(
        app.recv_timeout(Duration::from_millis(200)).is_err(),
        "nothing reached the app"
    );
}

/// A head over granian's limits (size, or more than 100 fields), in one read or trickled in two,
/// is answered 431 and not passed on; one within them is relayed.
#[test]
fn oversized_heads_are_refused() {
    let (backend, app) = app();
    let front = front(config(backend), 1 << 20);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nx-pad: {}\r\nX-Trackgate-Peer: 6.6.6.6\r\n\r\n",
        "a".repeat(MAX_HEAD)
    );
    let mut client = front.connect();
    client.send(big.as_bytes());
    assert_eq!(client.response().status, 431);
    let mut client = front.connect();
    client.send(&big.as_bytes()[..9000]);
    std::thread::sleep(Duration::from_millis(50));
    client.send(&big.as_bytes()[9000..]);
    assert_eq!(client.response().status, 431);
    assert!(
        app.recv_timeout(Duration::from_millis(200)).is_err(),
        "nothing reached the app"
    );
    let many: String = (0..101).map(|i| format!("\r\nx-{i}: {i}")).collect();
    let mut client = front.connect();
    client.send(format!("GET /healthz HTTP/1.1{many}\r\n\r\n").as_bytes());
    assert_eq!(client.response().status, 431);
    let mut client = front.connect();
    client.send(format!("GET /healthz HTTP/1.1{}\r\n\r\n", &many[..many.rfind("\r\n").unwrap()]).as_bytes());
    assert_eq!(client.response().header("x-app"), Some("relayed"));
    let _ = seen(&app);
    let mut client = front.connect();
    let long = format!("GET /healthz HTTP/1.1\r\nx-pad: {}\r\n\r\n", "a".repeat(60_000));
    client.send(long.as_bytes());
    assert_eq!(client.response().header("x-app"), Some("relayed"));
    assert_eq!(
        seen(&app).head.len(),
        long.len() - 4 + "\r\nx-trackgate-peer: 127.0.0.1".len()
    );
}

/// Once a head has begun it must be whole within the body timeout, however it trickles in.
#[test]
fn a_trickled_head_is_cut_off_at_the_body_timeout() {
    let (backend, _app) = app();
    let front = front(
        Config {
            body_timeout: Duration::from_millis(300),
            ..config(backend)
        },
        1 << 20,
    );
    let mut client = front.connect();
    let started = Instant::now();
    let post = logs_post("", &logs_body("slow"));
    let mut closed_at = None;
    for byte in &post[..60] {
        if client.stream.write_all(std::slice::from_ref(byte)).is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed_at = closed_at.unwrap_or_else(|| {
        assert!(client.closed(), "the front kept a head trickling for 1.2 s");
        started.elapsed()
    });
    assert!(closed_at < Duration::from_secs(2), "{closed_at:?}");
}

/// An HTTP/1.0 client asking to keep the connection is told it is kept, and can use it again.
#[test]
fn http10_keep_alive_is_answered_as_kept() {
    let (backend, _app) = app();
    let front = front(config(backend), 1 << 20);
    let mut client = front.connect();
    let body = logs_body("ten");
    let head = format!(
        "POST /v1/logs HTTP/1.0\r\ncontent-type: application/x-protobuf\r\nconnection: keep-alive\r\ncontent-length: {}",
        body.len()
    );
    for _ in 0..2 {
        client.send(&request(&head, &body));
        let r = client.response();
        assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    }
}

/// The HTTP/2 cleartext preface goes to the app as it came (the app does not trust a peer
/// header over HTTP/2).
#[test]
fn http2_prior_knowledge_goes_to_the_app_as_it_came() {
    let (backend, app) = app();
    let front = front(config(backend), 1 << 20);
    let mut client = front.connect();
    client.send(H2_PREFACE);
    let seen = seen(&app);
    assert_eq!(seen.head, "pri * http/2.0");
    assert!(!seen.head.contains("x-trackgate-peer"));
}

/// A body over what is left of the budget gets 503 + Retry-After before it is read, and a refusal
/// leaves the budget as it was: the next request fits, and every byte is given back after.
#[test]
fn a_spent_budget_answers_503_and_refusals_take_nothing() {
    let (backend, _app) = app();
    let budget = Arc::new(Budget::new(1000));
    let pipeline_front = front(config(backend.clone()), 1 << 20);
    let service = Service::with_budget(pipeline_front.pipeline.clone(), config(backend), budget.clone());
    let addr = pipeline_front
        .listeners
        .add_otlp_http("127.0.0.1", 0, false, service)
        .unwrap();
    let big = logs_body(&"x".repeat(1200));
    let mut client = Client {
        stream: std::net::TcpStream::connect(addr).unwrap(),
        buf: Vec::new(),
    };
    client.stream.set_read_timeout(Some(WAIT)).unwrap();
    // The refused bodies are small (at most 64 KiB): read and dropped, and the connection kept,
    // here with the next request sent behind each in one write.
    for _ in 0..3 {
        client.send(&[logs_post("", &big), logs_post("", &big)].concat());
        for _ in 0..2 {
            let r = client.response();
            assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
            assert_eq!(r.header("connection"), None, "kept");
            assert!(r.text().contains("max_inflight_bytes"), "{}", r.text());
            assert_eq!(budget.used(), 0);
        }
    }
    client.send(&logs_post("", &logs_body("small")));
    assert_eq!(client.response().status, 200);
    assert_eq!(budget.used(), 0);
    assert!(!budget.reserve(1001) && budget.used() == 0);
    assert!(budget.reserve(1000) && !budget.reserve(1));
    budget.release(1000);
    assert_eq!(budget.used(), 0);
}

/// Connections past the cap are answered 503 + Retry-After and closed; one closing frees a place.
#[test]
fn connections_past_the_cap_get_503() {
    let (backend, _app) = app();
    let front = front(
        Config {
            max_connections: 2,
            ..config(backend)
        },
        1 << 20,
    );
    let mut open: Vec<Client> = (0..2).map(|_| front.connect()).collect();
    for client in &mut open {
        client.send(&logs_post("", &logs_body("kept")));
        assert_eq!(client.response().status, 200);
    }
    let mut third = front.connect();
    let r = third.response();
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    assert!(r.text().contains("server.backpressure"), "{}", r.text());
    // A refused client sending a body larger than the socket buffers can still send it all and
    // read the 503: the front reads and drops it for a moment instead of resetting the connection.
    let mut eager = front.connect();
    eager.send(&logs_post("", &vec![b'x'; 4 << 20]));
    assert_eq!(eager.response().status, 503);
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut client = front.connect();
        client.send(&logs_post("", &logs_body("again")));
        if client.response().status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's place was never freed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection that sends nothing (before its first request, between two, or after a request
/// relayed to the app) is closed after `idle_timeout`, so clients that vanish without closing do
/// not keep the connection places for ever.
#[test]
fn idle_connections_are_closed_and_free_their_place() {
    let (backend, _app) = app();
    let front = front(
        Config {
            max_connections: 2,
            idle_timeout: Some(Duration::from_millis(300)),
            ..config(backend)
        },
        1 << 20,
    );
    let silent = front.connect();
    let mut kept = front.connect();
    kept.send(&logs_post("", &logs_body("one")));
    assert_eq!(kept.response().status, 200);
    // Both places are taken: a third is refused.
    assert_eq!(front.connect().response().status, 503);
    // Without the timeout, the reads below would give up after WAIT with nothing read.
    let mut silent = silent;
    assert!(silent.closed() && kept.closed());
    let mut relayed = front.connect();
    relayed.send(&request("GET /healthz HTTP/1.1\r\nhost: front", b""));
    assert_eq!(relayed.response().header("x-app"), Some("relayed"));
    let mut next = front.connect();
    next.send(&logs_post("", &logs_body("two")));
    assert_eq!(next.response().status, 200);
    assert!(relayed.closed() && next.closed());
    // A relayed request the app takes longer than the idle timeout to answer is answered: the
    // client is waiting, not idle.
    let mut waiting = front.connect();
    waiting.send(&request("GET /slow HTTP/1.1\r\nhost: front\r\nx-slow: 900", b""));
    assert_eq!(waiting.response().header("x-app"), Some("relayed"));
}

/// On a relayed connection, a head begun and left unfinished keeps its own deadline
/// (`body_timeout`), even when the idle timeout is shorter.
#[test]
fn a_head_begun_on_a_relayed_connection_keeps_its_deadline() {
    let (backend, _app) = app();
    let front = front(
        Config {
            body_timeout: Duration::from_millis(600),
            idle_timeout: Some(Duration::from_millis(200)),
            ..config(backend)
        },
        1 << 20,
    );
    let mut client = front.connect();
    client.send(&request("GET /healthz HTTP/1.1\r\nhost: front", b""));
    assert_eq!(client.response().header("x-app"), Some("relayed"));
    client.send(b"G"); // and nothing more
                       // Without the deadline, the read below would give up after WAIT with nothing read.
    assert!(client.closed());
}

/// Fluent Bit's `http` output posts are answered by the front, with the app's JSON, on a kept
/// connection; their records are queued as logs.
#[test]
fn fluent_posts_are_answered_by_the_front() {
    let (backend, _app) = app();
    let front = front(
        Config {
            fluent: Routes::new(vec!["/logs/ingest".into()], "Fluent-Tag"),
            events: None,
            ..config(backend)
        },
        1 << 20,
    );
    let mut client = front.connect();
    let body = b"{\"log\":\"one\"}\n{\"log\":\"two\"}\n";
    let head = format!(
        "POST /v1/fluent/app.web HTTP/1.1\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}",
        body.len()
    );
    client.send(&request(&head, body));
    let r = client.response();
    assert_eq!((r.status, r.by_front()), (200, true), "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "{\"accepted\": 2, \"rejected\": 0}\n");
    let body = b"[{\"log\":\"three\"}]";
    let head = format!(
        "POST /logs/ingest HTTP/1.1\r\nfluent-tag: k8s\r\ncontent-length: {}",
        body.len()
    );
    client.send(&request(&head, body));
    let r = client.response();
    assert_eq!((r.status, r.by_front()), (200, true), "{}", r.text());
    client.send(&request("POST /logs/ingest HTTP/1.1\r\ncontent-length: 5", b"[{]]]"));
    let r = client.response();
    assert_eq!((r.status, r.by_front()), (400, true));
    assert!(
        r.text().starts_with("{\"error\": \"cannot decode Fluent logs: "),
        "{}",
        r.text()
    );
    // An unknown content type is the app's to refuse.
    client.send(&request(
        "POST /v1/fluent HTTP/1.1\r\ncontent-type: image/png\r\ncontent-length: 1",
        b"x",
    ));
    assert_eq!(client.response().header("x-app"), Some("relayed"));
    assert_eq!(front.accepted_logs(), 3);
}

/// Sentry envelopes with an accepted key are answered by the front: queued upstream and as OTLP
/// logs; under the upstream's rate limits (recorded by the exporter) the limited items are left
/// out of what goes upstream, and an envelope of which nothing is left is turned away with 429;
/// an unknown key is the app's to refuse.
#[test]
fn sentry_envelopes_are_answered_by_the_front_under_the_upstreams_limits() {
    let (backend, _app) = app();
    let upstream = pipeline(1 << 20);
    let limits = Arc::new(crate::sentry_limits::RateLimits::default());
    let route = Arc::new(SentryRoute {
        options: crate::sentry::SentryOptions::default(),
        max_bytes: 4096,
        keys: vec![b"k1".to_vec()],
        any_key: false,
        forward: Some(upstream.clone()),
        limits: limits.clone(),
        counts: sentry_route::Counts::default(),
    });
    let front = front(
        Config {
            sentry: Some(route.clone()),
            ..config(backend)
        },
        1 << 20,
    );
    let envelope = |id: char| {
        let id = id.to_string().repeat(32);
        let event = format!("{{\"event_id\":\"{id}\",\"message\":\"boom\",\"level\":\"error\"}}");
        format!(
            "{{\"event_id\":\"{id}\"}}\n{{\"type\":\"event\",\"length\":{}}}\n{event}\n",
            event.len()
        )
    };
    let post = |client: &mut Client, key: &str, body: &str| {
        let head = format!(
            "POST /api/3/envelope/ HTTP/1.1\r\nx-sentry-auth: Sentry sentry_version=7, sentry_key={key}\r\ncontent-length: {}",
            body.len()
        );
        client.send(&request(&head, body.as_bytes()));
        client.response()
    };
    let mut client = front.connect();
    let r = post(&mut client, "k1", &envelope('a'));
    assert_eq!((r.status, r.by_front()), (200, true), "{}", r.text());
    assert_eq!(r.text(), format!("{{\"id\":\"{}\"}}", "a".repeat(32)));
    let forwarded = |p: &Pipeline| p.stats().iter().find(|(k, _)| k == "logs_accepted_records").unwrap().1;
    assert_eq!((forwarded(&upstream), front.accepted_logs()), (1, 1));

    limits.update(Some("60:error;attachment:key"), None, 429);
    // The error is not sent upstream, but its log record is queued: 200, and the limits said.
    let r = post(&mut client, "k1", &envelope('b'));
    assert_eq!((r.status, r.by_front()), (200, true), "{}", r.text());
    assert_eq!(r.header("x-sentry-rate-limits"), Some("60:error:key"));
    assert_eq!(r.header("retry-after"), None);
    assert_eq!((forwarded(&upstream), front.accepted_logs()), (1, 2));
    // Nothing of an attachment alone is left: 429.
    let id = "d".repeat(32);
    let attachment = format!("{{\"event_id\":\"{id}\"}}\n{{\"type\":\"attachment\",\"length\":4}}\ntail\n");
    let r = post(&mut client, "k1", &attachment);
    assert_eq!((r.status, r.by_front()), (429, true), "{}", r.text());
    assert_eq!(r.header("x-sentry-rate-limits"), Some("60:attachment:key"));
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(r.text(), "{\"detail\":\"rate limited upstream: attachment\"}");
    assert_eq!((forwarded(&upstream), front.accepted_logs()), (1, 2), "nothing queued");

    let r = post(&mut client, "k2", &envelope('c'));
    assert_eq!(r.header("x-app"), Some("relayed"));
    let c = &route.counts;
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(
        (
            count(&c.accepted),
            count(&c.rate_limited),
            count(&c.items_forwarded),
            count(&c.items_rate_limited)
        ),
        (2, 1, 1, 1)
    );
}

/// A panic (or an error no status is meant for) answers 500 and is logged, where the app would
/// log its own unhandled errors: nothing else would show it.
#[test]
fn unhandled_errors_are_logged_with_the_route() {
    type Line = (&'static str, &'static str, Vec<(&'static str, LogValue)>);
    let lines: Arc<Mutex<Vec<Line>>> = Arc::default();
    let seen = lines.clone();
    let log: Log = Arc::new(move |level, message, fields| seen.lock().unwrap().push((level, message, fields)));
    let service = Service::new(
        pipeline(1 << 20),
        Config {
            log: Some(log),
            ..config(closed_port())
        },
    );
    let head = b"POST /v1/fluent/app HTTP/1.1\r\ncontent-length: 1";
    let export = export_of(head, &service.config).unwrap();
    let panic = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
    let answer = unhandled(&export, &service, failure_text(Ok(panic)));
    assert_eq!((answer.status, answer.close), (500, true));
    let lines = lines.lock().unwrap();
    assert_eq!(lines.len(), 1);
    let (level, message, fields) = &lines[0];
    assert_eq!((*level, *message), ("error", "unhandled error"));
    assert_eq!(
        fields,
        &vec![
            ("receiver", LogValue::from("fluent")),
            ("path", LogValue::from("/v1/fluent/:tag")),
            ("error", LogValue::from("panic: boom")),
        ]
    );
}
