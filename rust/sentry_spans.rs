//! Sentry transactions as OTLP spans: each (scrubbed, sampled-in) `transaction` item becomes a
//! root span and one child span per entry of its `spans[]`, written as an
//! `ExportTraceServiceRequest` for the traces signal of the main pipeline.
//!
//! | Sentry | OTLP span |
//! |---|---|
//! | `contexts.trace.trace_id` (else the envelope header's `trace.trace_id`) | `trace_id` (every span) |
//! | `contexts.trace.span_id` / `spans[].span_id` | `span_id` |
//! | `contexts.trace.parent_span_id` / `spans[].parent_span_id` (else the root) | `parent_span_id` |
//! | `transaction` (root); `description`, else `op` (children) | `name` |
//! | `start_timestamp`, `timestamp` (float seconds or RFC 3339) | `start_time_unix_nano`, `end_time_unix_nano` |
//! | `op`, `description`, `status`, `origin` | `sentry.op`, `sentry.description`, `sentry.status`, `sentry.origin` |
//! | `status` `ok` / absent / other | status OK / UNSET / ERROR with the status as message |
//! | `op` `http.server` / `http.client`, `db*`, `cache*`, `queue.publish` / other | kind SERVER / CLIENT / PRODUCER / INTERNAL |
//! | tags; `contexts.trace.data` (root), `spans[].data` | attributes (typed; objects and arrays as JSON text) |
//! | `job.id`, `worker.id`, `machine.id`, `session.id`, `request.id` (as for errors; children inherit the root's) | attributes |
//! | `event_id` | `sentry.event_id` (every span) |
//! | `transaction_info.source` | `sentry.transaction.source` (root) |
//! | tag `service.name`, else `server_name`, else `unknown_service` | resource `service.name` |
//! | `release`; `environment`; `server_name`; the route's project id | resource `service.version`; `deployment.environment.name`; `host.name`; `sentry.project_id` |
//! | `sdk.name`, `sdk.version` | instrumentation scope |
//!
//! A transaction without a valid trace id or root span id yields no spans (nothing could link
//! them); a child without a valid `span_id` is skipped. A missing end time is the start time.

use serde_json::Value;

use crate::sentry::{
    correlation_id, hex_id, put_fixed64, put_kv, scalar, scalar_at, sdk_scope, str_at, tag, timestamp_nanos, Attr,
    Grouped, ResourceKey, CORRELATION,
};
use crate::wire;

/// `Span.SpanKind` values.
const KIND_INTERNAL: u64 = 1;
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const KIND_PRODUCER: u64 = 4;
/// `Status.StatusCode` values.
const STATUS_OK: u64 = 1;
const STATUS_ERROR: u64 = 2;

/// One span, ready to encode.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: String,
    kind: u64,
    start: u64,
    end: u64,
    attributes: Vec<(String, Attr)>,
    /// (code, message)
    status: Option<(u64, String)>,
}

impl Span {
    fn attr(&mut self, key: &str, value: Attr) {
        if !self.attributes.iter().any(|(k, _)| k == key) {
            self.attributes.push((key.to_owned(), value));
        }
    }

    fn attr_str(&mut self, key: &str, value: Option<String>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.attr(key, Attr::Str(v));
        }
    }

    /// Span fields in field-number order.
    fn encode(&self, out: &mut Vec<u8>) {
        wire::put_bytes(out, 1, &self.trace_id);
        wire::put_bytes(out, 2, &self.span_id);
        if let Some(parent) = &self.parent {
            wire::put_bytes(out, 4, parent);
        }
        wire::put_bytes(out, 5, self.name.as_bytes());
        wire::put_uint(out, 6, self.kind);
        put_fixed64(out, 7, self.start);
        put_fixed64(out, 8, self.end);
        for (key, value) in &self.attributes {
            put_kv(out, 9, key, value);
        }
        if let Some((code, message)) = &self.status {
            wire::put_message(out, 15, |st| {
                if !message.is_empty() {
                    wire::put_bytes(st, 2, message.as_bytes());
                }
                wire::put_uint(st, 3, *code);
            });
        }
    }
}

/// Groups spans by resource, then scope, and writes an `ExportTraceServiceRequest`.
#[derive(Default)]
pub(crate) struct TracesBuilder {
    groups: Grouped<Span>,
    spans: usize,
}

impl TracesBuilder {
    /// Spans added so far.
    pub(crate) fn len(&self) -> usize {
        self.spans
    }

    /// Adds the spans of one (scrubbed) transaction event; returns how many.
    pub(crate) fn add_transaction(
        &mut self,
        event: &Value,
        header_trace_id: Option<&str>,
        envelope_event_id: Option<&str>,
        project_id: &str,
    ) -> usize {
        let spans = transaction_spans(event, header_trace_id, envelope_event_id);
        if spans.is_empty() {
            return 0;
        }
        let n = spans.len();
        self.spans += n;
        let resource = transaction_resource(event, project_id);
        let scope = sdk_scope(str_at(event, &["sdk", "name"]), str_at(event, &["sdk", "version"]));
        self.groups.extend(resource, scope, spans);
        n
    }

    /// The request (protobuf); empty when there are no spans.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.groups.encode(Span::encode)
    }
}

fn transaction_resource(event: &Value, project_id: &str) -> ResourceKey {
    let server = scalar_at(event, &["server_name"]).filter(|s| !s.is_empty());
    let service = tag(event, "service.name")
        .or_else(|| server.clone())
        .unwrap_or_else(|| "unknown_service".to_owned());
    let mut resource = vec![("service.name", service)];
    let mut put = |key: &'static str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            resource.push((key, v));
        }
    };
    put("service.version", scalar_at(event, &["release"]));
    put("deployment.environment.name", scalar_at(event, &["environment"]));
    put("host.name", server);
    put("sentry.project_id", Some(project_id.to_owned()));
    resource
}

/// The root span and its children; empty when the transaction has no valid trace or span id.
fn transaction_spans(event: &Value, header_trace_id: Option<&str>, envelope_event_id: Option<&str>) -> Vec<Span> {
    let trace = event.get("contexts").and_then(|c| c.get("trace"));
    let trace_id = trace
        .and_then(|t| str_at(t, &["trace_id"]))
        .and_then(hex_id::<16>)
        .or_else(|| header_trace_id.and_then(hex_id::<16>));
    let root_id = trace.and_then(|t| str_at(t, &["span_id"])).and_then(hex_id::<8>);
    let (Some(trace_id), Some(root_id)) = (trace_id, root_id) else {
        return Vec::new();
    };
    let empty = Value::Null;
    let trace = trace.unwrap_or(&empty);
    let start = event.get("start_timestamp").and_then(timestamp_nanos);
    let end = event.get("timestamp").and_then(timestamp_nanos);
    let (start, end) = times(start, end, None);
    let event_id = str_at(event, &["event_id"])
        .and_then(crate::envelope::normalize_event_id)
        .or_else(|| envelope_event_id.map(str::to_owned));
    let op = str_at(trace, &["op"]).unwrap_or_default();
    let mut root = Span {
        trace_id,
        span_id: root_id,
        parent: str_at(trace, &["parent_span_id"]).and_then(hex_id::<8>),
        name: scalar_at(event, &["transaction"])
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                if op.is_empty() {
                    "<unlabeled transaction>".to_owned()
                } else {
                    op.to_owned()
                }
            }),
        kind: kind(op),
        start,
        end,
        attributes: Vec::new(),
        status: status(trace.get("status")),
    };
    common_attrs(&mut root, trace);
    root.attr_str(
        "sentry.transaction.source",
        scalar_at(event, &["transaction_info", "source"]),
    );
    root.attr_str("sentry.event_id", event_id.clone());
    let correlation: Vec<(String, Option<String>)> = CORRELATION
        .iter()
        .map(|base| (format!("{base}.id"), correlation_id(event, base)))
        .collect();
    for (key, value) in &correlation {
        root.attr_str(key, value.clone());
    }
    map_attrs(&mut root, event.get("tags"));
    map_attrs(&mut root, trace.get("data"));
    let mut spans = vec![root];
    let children = event
        .get("spans")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for child in children.iter().filter(|c| c.is_object()) {
        let Some(span_id) = str_at(child, &["span_id"]).and_then(hex_id::<8>) else {
            continue;
        };
        let op = str_at(child, &["op"]).unwrap_or_default();
        let description = scalar_at(child, &["description"]).filter(|d| !d.is_empty());
        let (s, e) = times(
            child.get("start_timestamp").and_then(timestamp_nanos),
            child.get("timestamp").and_then(timestamp_nanos),
            Some(start),
        );
        let mut span = Span {
            trace_id: str_at(child, &["trace_id"]).and_then(hex_id::<16>).unwrap_or(trace_id),
            span_id,
            parent: Some(
                str_at(child, &["parent_span_id"])
                    .and_then(hex_id::<8>)
                    .unwrap_or(root_id),
            ),
            name: description.clone().unwrap_or_else(|| {
                if op.is_empty() {
                    "<unlabeled span>".to_owned()
                } else {
                    op.to_owned()
                }
            }),
            kind: kind(op),
            start: s,
            end: e,
            attributes: Vec::new(),
            status: status(child.get("status")),
        };
        common_attrs(&mut span, child);
        span.attr_str("sentry.event_id", event_id.clone());
        for (base, (key, inherited)) in CORRELATION.iter().zip(&correlation) {
            span.attr_str(key, correlation_id(child, base).or_else(|| inherited.clone()));
        }
        map_attrs(&mut span, child.get("tags"));
        map_attrs(&mut span, child.get("data"));
        spans.push(span);
    }
    spans
}

/// `sentry.op`, `sentry.description`, `sentry.status`, `sentry.origin` of a span or trace context.
fn common_attrs(span: &mut Span, source: &Value) {
    span.attr_str("sentry.op", scalar_at(source, &["op"]));
    span.attr_str("sentry.description", scalar_at(source, &["description"]));
    span.attr_str("sentry.status", scalar_at(source, &["status"]));
    span.attr_str("sentry.origin", scalar_at(source, &["origin"]));
}

/// Start and end; a missing start is `fallback` (the root's) or the end, a missing end the start.
fn times(start: Option<u64>, end: Option<u64>, fallback: Option<u64>) -> (u64, u64) {
    let start = start.or(fallback).or(end).unwrap_or(0);
    (start, end.unwrap_or(start))
}

fn kind(op: &str) -> u64 {
    match op {
        "http.server" | "websocket.server" | "rpc.server" | "grpc.server" => KIND_SERVER,
        "queue.publish" | "queue.submit" => KIND_PRODUCER,
        op if op.starts_with("http.client") || op.starts_with("db") || op.starts_with("cache") => KIND_CLIENT,
        op if op.starts_with("rpc") || op.starts_with("grpc") => KIND_CLIENT,
        _ => KIND_INTERNAL,
    }
}

/// `ok` → OK; absent → unset; anything else → ERROR with the Sentry status as message.
fn status(status: Option<&Value>) -> Option<(u64, String)> {
    let status = status.and_then(scalar).filter(|s| !s.is_empty())?;
    Some(if status == "ok" {
        (STATUS_OK, String::new())
    } else {
        (STATUS_ERROR, status)
    })
}

/// Tags (an object or `[key, value]` pairs) or data (an object) as attributes; the first value
/// of a key wins, so the fields mapped above are never overwritten.
fn map_attrs(span: &mut Span, source: Option<&Value>) {
    match source {
        Some(Value::Object(map)) => {
            for (key, value) in map {
                if let Some(attr) = json_attr(value) {
                    span.attr(key, attr);
                }
            }
        }
        Some(Value::Array(pairs)) => {
            for pair in pairs {
                if let Some([Value::String(key), value]) = pair.as_array().map(Vec::as_slice) {
                    if let Some(attr) = json_attr(value) {
                        span.attr(key, attr);
                    }
                }
            }
        }
        _ => {}
    }
}

fn json_attr(value: &Value) -> Option<Attr> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => Attr::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Attr::Int(i),
            None => Attr::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Attr::Str(s.clone()),
        other => Attr::Str(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Signal;
    use serde_json::json;

    const TRACE: &str = "771a43a4192642f0b136d5159a501700";

    fn transaction() -> Value {
        json!({
            "event_id": "9ec79c33ec9942ab8353589fcb2e04dc",
            "type": "transaction",
            "transaction": "GET /jobs/{id}",
            "transaction_info": {"source": "route"},
            "start_timestamp": 1714564800.5,
            "timestamp": "2024-05-01T12:00:01.5Z",
            "release": "api@2.0.0",
            "environment": "prod",
            "server_name": "api-1",
            "sdk": {"name": "sentry.python", "version": "2.19.0"},
            "tags": {"job.id": "j-42", "region": "eu"},
            "contexts": {"trace": {
                "trace_id": TRACE, "span_id": "b0e6f15b45c36b12", "parent_span_id": "1111111111111111",
                "op": "http.server", "status": "ok", "origin": "auto.http", "data": {"http.route": "/jobs/{id}", "n": 3}
            }},
            "spans": [
                {"span_id": "aaaaaaaaaaaaaaaa", "parent_span_id": "b0e6f15b45c36b12", "trace_id": TRACE,
                 "op": "db.query", "description": "SELECT 1", "start_timestamp": 1714564800.75,
                 "timestamp": 1714564801.0, "status": "internal_error", "data": {"db.system": "postgresql", "rows": 1.5}},
                {"span_id": "bbbbbbbbbbbbbbbb", "parent_span_id": "aaaaaaaaaaaaaaaa", "op": "cache.get",
                 "start_timestamp": 1714564800.8, "tags": {"job.id": "j-43"}},
                {"span_id": "zz", "op": "skipped"},
            ],
        })
    }

    fn to_json(payload: &[u8]) -> Value {
        crate::validate::validate(Signal::Traces, payload).unwrap();
        serde_json::from_slice(&crate::json_encode::protobuf_to_json(Signal::Traces, payload).unwrap()).unwrap()
    }

    fn attr<'v>(span: &'v Value, key: &str) -> Option<&'v Value> {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == key)
            .map(|kv| &kv["value"])
    }

    #[test]
    fn transaction_becomes_root_and_children() {
        let mut b = TracesBuilder::default();
        assert_eq!(b.add_transaction(&transaction(), None, None, "7"), 3);
        let doc = to_json(&b.finish());
        let rs = &doc["resourceSpans"][0];
        let resource: Vec<(String, String)> = rs["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv["key"].as_str().unwrap().into(),
                    kv["value"]["stringValue"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("service.name", "api-1"),
            ("service.version", "api@2.0.0"),
            ("deployment.environment.name", "prod"),
            ("host.name", "api-1"),
            ("sentry.project_id", "7"),
        ]
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
        assert_eq!(resource, want);
        let ss = &rs["scopeSpans"][0];
        assert_eq!(ss["scope"], json!({"name": "sentry.python", "version": "2.19.0"}));
        let spans = ss["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 3);
        let (root, db, cache) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!(root["traceId"], TRACE);
        assert_eq!(root["spanId"], "b0e6f15b45c36b12");
        assert_eq!(root["parentSpanId"], "1111111111111111");
        assert_eq!(root["name"], "GET /jobs/{id}");
        assert_eq!(root["kind"], 2);
        assert_eq!(root["startTimeUnixNano"], "1714564800500000000");
        assert_eq!(root["endTimeUnixNano"], "1714564801500000000");
        assert_eq!(root["status"], json!({"code": 1}));
        assert_eq!(attr(root, "sentry.op").unwrap()["stringValue"], "http.server");
        assert_eq!(attr(root, "job.id").unwrap()["stringValue"], "j-42");
        assert_eq!(attr(root, "region").unwrap()["stringValue"], "eu");
        assert_eq!(attr(root, "http.route").unwrap()["stringValue"], "/jobs/{id}");
        assert_eq!(attr(root, "n").unwrap()["intValue"], "3");
        assert_eq!(attr(root, "sentry.transaction.source").unwrap()["stringValue"], "route");
        assert_eq!(
            attr(root, "sentry.event_id").unwrap()["stringValue"],
            "9ec79c33ec9942ab8353589fcb2e04dc"
        );
        assert_eq!(db["traceId"], TRACE);
        assert_eq!(db["parentSpanId"], "b0e6f15b45c36b12");
        assert_eq!(db["name"], "SELECT 1");
        assert_eq!(db["kind"], 3);
        assert_eq!(db["startTimeUnixNano"], "1714564800750000000");
        assert_eq!(db["endTimeUnixNano"], "1714564801000000000");
        assert_eq!(db["status"], json!({"code": 2, "message": "internal_error"}));
        assert_eq!(attr(db, "sentry.description").unwrap()["stringValue"], "SELECT 1");
        assert_eq!(attr(db, "db.system").unwrap()["stringValue"], "postgresql");
        assert_eq!(attr(db, "rows").unwrap()["doubleValue"], 1.5);
        assert_eq!(attr(db, "job.id").unwrap()["stringValue"], "j-42");
        // No description: named by op; no trace id: the transaction's; no end: its start; no status: unset.
        assert_eq!(cache["name"], "cache.get");
        assert_eq!(cache["traceId"], TRACE);
        assert_eq!(cache["parentSpanId"], "aaaaaaaaaaaaaaaa");
        assert_eq!(cache["endTimeUnixNano"], cache["startTimeUnixNano"]);
        assert!(cache.get("status").is_none());
        assert_eq!(attr(cache, "job.id").unwrap()["stringValue"], "j-43");
    }

    #[test]
    fn process_converts_the_scrubbed_transaction_and_forwards_the_envelope() {
        use crate::sentry::{process, SentryOptions};
        let mut t = transaction();
        t["spans"][0]["data"]["db.password"] = json!("hunter2");
        let payload = serde_json::to_vec(&t).unwrap();
        let mut body = br#"{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}"#.to_vec();
        body.extend_from_slice(format!("\n{{\"type\":\"transaction\",\"length\":{}}}\n", payload.len()).as_bytes());
        body.extend_from_slice(&payload);
        let p = process(&body, "7", &SentryOptions::default()).unwrap();
        assert_eq!((p.transactions_converted, p.spans, p.items_scrubbed), (1, 3, 1));
        let doc = to_json(&p.otlp_traces);
        let db = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1];
        assert_eq!(attr(db, "db.password").unwrap()["stringValue"], "[Filtered]");
        assert!(!String::from_utf8_lossy(&p.otlp_traces).contains("hunter2"));
        // Nothing to scrub: the envelope is forwarded byte for byte, and still converted.
        let clean = serde_json::to_vec(&transaction()).unwrap();
        let mut body = br#"{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}"#.to_vec();
        body.extend_from_slice(format!("\n{{\"type\":\"transaction\",\"length\":{}}}\n", clean.len()).as_bytes());
        body.extend_from_slice(&clean);
        let p = process(&body, "7", &SentryOptions::default()).unwrap();
        assert_eq!((p.envelope.as_slice(), p.spans), (body.as_slice(), 3));
        // Not converted when OTLP output is off, or when sampled out.
        let off = SentryOptions {
            to_otlp: false,
            ..SentryOptions::default()
        };
        assert!(process(&body, "7", &off).unwrap().otlp_traces.is_empty());
        let none = SentryOptions {
            transaction_sample_rate: 0.0,
            ..SentryOptions::default()
        };
        assert_eq!(process(&body, "7", &none).unwrap().spans, 0);
    }

    #[test]
    fn statuses_kinds_and_missing_ids() {
        assert_eq!(status(Some(&json!("ok"))), Some((STATUS_OK, String::new())));
        assert_eq!(
            status(Some(&json!("deadline_exceeded"))),
            Some((STATUS_ERROR, "deadline_exceeded".into()))
        );
        assert_eq!(status(None), None);
        assert_eq!(
            (
                kind("http.client"),
                kind("db.sql.query"),
                kind("queue.publish"),
                kind("function")
            ),
            (KIND_CLIENT, KIND_CLIENT, KIND_PRODUCER, KIND_INTERNAL)
        );
        // The header's trace id serves when the context has none; no span id, no spans.
        let mut t = transaction();
        t["contexts"]["trace"]["trace_id"] = json!("nope");
        let spans = transaction_spans(&t, Some("0123456789abcdef0123456789abcdef"), None);
        assert_eq!(spans[0].trace_id[0], 0x01);
        assert!(transaction_spans(&t, None, None).is_empty());
        t["contexts"]["trace"]["span_id"] = json!(null);
        assert!(transaction_spans(&t, Some(TRACE), None).is_empty());
        // Odd shapes never panic.
        for odd in [
            json!({}),
            json!({"spans": 5, "contexts": {"trace": 1}}),
            json!({"spans": [1, null, {}]}),
        ] {
            let mut b = TracesBuilder::default();
            b.add_transaction(&odd, Some(TRACE), None, "");
            let _ = b.finish();
        }
    }
}
