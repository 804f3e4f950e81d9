//! Static descriptors of the OTLP messages the gateway reads and writes (opentelemetry-proto v1.x).
//!
//! One table drives the three walkers: `validate` (protobuf structure), `json_encode`
//! (protobuf → OTLP/JSON) and `json_decode` (OTLP/JSON → protobuf). Fields are listed in
//! field-number order; every number is below 64 so a walker can track seen fields in a `u64`.

use std::fmt;

use crate::error::CoreError;
use crate::signal::Signal;
use crate::wire;

/// Messages nested deeper than this (the request itself is level 0) are rejected by every
/// walker, so untrusted input cannot exhaust the stack. AnyValue arrays nest two levels each.
pub const MAX_DEPTH: usize = 100;

/// How a field is encoded on the wire and in JSON.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Double,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Fixed32,
    Fixed64,
    Sfixed64,
    Bool,
    String,
    /// `bytes`, base64 in JSON.
    Bytes,
    /// `bytes` holding a trace or span id: hex in OTLP/JSON (the one deviation from protobuf JSON).
    Hex,
    Enum(&'static Enum),
    Message(&'static Msg),
}

impl Kind {
    /// The wire type of one value (a packed repeated field arrives as LEN instead).
    pub const fn wire_type(self) -> u8 {
        match self {
            Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => wire::I64,
            Kind::Fixed32 => wire::I32,
            Kind::String | Kind::Bytes | Kind::Hex | Kind::Message(_) => wire::LEN,
            Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Sint32 | Kind::Bool | Kind::Enum(_) => {
                wire::VARINT
            }
        }
    }

    /// Scalar numeric kinds, the ones proto3 packs when repeated.
    pub const fn packable(self) -> bool {
        !matches!(self.wire_type(), wire::LEN)
    }
}

#[derive(Debug)]
pub struct Field {
    pub number: u32,
    /// The name in the .proto file (also accepted as a JSON key).
    pub name: &'static str,
    /// The lowerCamelCase JSON name.
    pub json: &'static str,
    pub kind: Kind,
    /// `kind.wire_type()`, kept so the hot checks compare a byte instead of matching on `kind`
    /// (perf: that match's jump table was the costliest line of the walk's check).
    pub wire_type: u8,
    pub repeated: bool,
    /// Repeated scalar written packed (proto3 default); both forms are accepted when reading.
    pub packed: bool,
    /// Explicit presence (message fields, oneof members, proto3 `optional`): written even
    /// when it holds the default value.
    pub presence: bool,
    /// The oneof this field belongs to, if any.
    pub oneof: Option<&'static str>,
}

pub struct Msg {
    /// The protobuf message name, as in error messages ("Span.Event").
    pub name: &'static str,
    /// Sorted by field number.
    pub fields: &'static [Field],
}

impl fmt::Debug for Msg {
    // Only the name: descriptors are cyclic (AnyValue ↔ ArrayValue).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Msg({})", self.name)
    }
}

impl Msg {
    #[inline]
    pub fn field(&'static self, number: u32) -> Option<&'static Field> {
        // Most messages number their fields densely: try the slot first.
        let first = self.fields.first()?.number;
        match self.fields.get(number.wrapping_sub(first) as usize) {
            Some(f) if f.number == number => Some(f),
            _ => self.fields.iter().find(|f| f.number == number),
        }
    }

    /// Looks a JSON key up by lowerCamelCase name or by the original .proto name.
    #[inline]
    pub fn field_by_key(&'static self, key: &[u8]) -> Option<&'static Field> {
        self.fields
            .iter()
            .find(|f| f.json.as_bytes() == key || f.name.as_bytes() == key)
    }
}

#[derive(Debug)]
pub struct Enum {
    pub name: &'static str,
    pub values: &'static [(&'static str, i32)],
}

impl Enum {
    pub fn value(&self, name: &str) -> Option<i32> {
        self.values.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

const fn field(number: u32, name: &'static str, json: &'static str, kind: Kind) -> Field {
    let presence = matches!(kind, Kind::Message(_));
    Field {
        number,
        name,
        json,
        kind,
        wire_type: kind.wire_type(),
        repeated: false,
        packed: false,
        presence,
        oneof: None,
    }
}

const fn repeated(number: u32, name: &'static str, json: &'static str, kind: Kind) -> Field {
    Field {
        repeated: true,
        packed: kind.packable(),
        presence: false,
        ..field(number, name, json, kind)
    }
}

/// proto3 `optional`.
const fn optional(number: u32, name: &'static str, json: &'static str, kind: Kind) -> Field {
    Field {
        presence: true,
        ..field(number, name, json, kind)
    }
}

const fn oneof(group: &'static str, number: u32, name: &'static str, json: &'static str, kind: Kind) -> Field {
    Field {
        presence: true,
        oneof: Some(group),
        ..field(number, name, json, kind)
    }
}

const fn message(number: u32, name: &'static str, json: &'static str, msg: &'static Msg) -> Field {
    field(number, name, json, Kind::Message(msg))
}

const fn messages(number: u32, name: &'static str, json: &'static str, msg: &'static Msg) -> Field {
    repeated(number, name, json, Kind::Message(msg))
}

// ---- enums ----

pub static SPAN_KIND: Enum = Enum {
    name: "SpanKind",
    values: &[
        ("SPAN_KIND_UNSPECIFIED", 0),
        ("SPAN_KIND_INTERNAL", 1),
        ("SPAN_KIND_SERVER", 2),
        ("SPAN_KIND_CLIENT", 3),
        ("SPAN_KIND_PRODUCER", 4),
        ("SPAN_KIND_CONSUMER", 5),
    ],
};

pub static STATUS_CODE: Enum = Enum {
    name: "StatusCode",
    values: &[
        ("STATUS_CODE_UNSET", 0),
        ("STATUS_CODE_OK", 1),
        ("STATUS_CODE_ERROR", 2),
    ],
};

pub static SEVERITY_NUMBER: Enum = Enum {
    name: "SeverityNumber",
    values: &[
        ("SEVERITY_NUMBER_UNSPECIFIED", 0),
        ("SEVERITY_NUMBER_TRACE", 1),
        ("SEVERITY_NUMBER_TRACE2", 2),
        ("SEVERITY_NUMBER_TRACE3", 3),
        ("SEVERITY_NUMBER_TRACE4", 4),
        ("SEVERITY_NUMBER_DEBUG", 5),
        ("SEVERITY_NUMBER_DEBUG2", 6),
        ("SEVERITY_NUMBER_DEBUG3", 7),
        ("SEVERITY_NUMBER_DEBUG4", 8),
        ("SEVERITY_NUMBER_INFO", 9),
        ("SEVERITY_NUMBER_INFO2", 10),
        ("SEVERITY_NUMBER_INFO3", 11),
        ("SEVERITY_NUMBER_INFO4", 12),
        ("SEVERITY_NUMBER_WARN", 13),
        ("SEVERITY_NUMBER_WARN2", 14),
        ("SEVERITY_NUMBER_WARN3", 15),
        ("SEVERITY_NUMBER_WARN4", 16),
        ("SEVERITY_NUMBER_ERROR", 17),
        ("SEVERITY_NUMBER_ERROR2", 18),
        ("SEVERITY_NUMBER_ERROR3", 19),
        ("SEVERITY_NUMBER_ERROR4", 20),
        ("SEVERITY_NUMBER_FATAL", 21),
        ("SEVERITY_NUMBER_FATAL2", 22),
        ("SEVERITY_NUMBER_FATAL3", 23),
        ("SEVERITY_NUMBER_FATAL4", 24),
    ],
};

pub static AGGREGATION_TEMPORALITY: Enum = Enum {
    name: "AggregationTemporality",
    values: &[
        ("AGGREGATION_TEMPORALITY_UNSPECIFIED", 0),
        ("AGGREGATION_TEMPORALITY_DELTA", 1),
        ("AGGREGATION_TEMPORALITY_CUMULATIVE", 2),
    ],
};

// ---- common ----

pub static ANY_VALUE: Msg = Msg {
    name: "AnyValue",
    fields: &[
        oneof("value", 1, "string_value", "stringValue", Kind::String),
        oneof("value", 2, "bool_value", "boolValue", Kind::Bool),
        oneof("value", 3, "int_value", "intValue", Kind::Int64),
        oneof("value", 4, "double_value", "doubleValue", Kind::Double),
        oneof("value", 5, "array_value", "arrayValue", Kind::Message(&ARRAY_VALUE)),
        oneof(
            "value",
            6,
            "kvlist_value",
            "kvlistValue",
            Kind::Message(&KEY_VALUE_LIST),
        ),
        oneof("value", 7, "bytes_value", "bytesValue", Kind::Bytes),
        // Since opentelemetry-proto v1.9: an index into a profiles string table.
        oneof("value", 8, "string_value_strindex", "stringValueStrindex", Kind::Int32),
    ],
};

pub static ARRAY_VALUE: Msg = Msg {
    name: "ArrayValue",
    fields: &[messages(1, "values", "values", &ANY_VALUE)],
};

pub static KEY_VALUE_LIST: Msg = Msg {
    name: "KeyValueList",
    fields: &[messages(1, "values", "values", &KEY_VALUE)],
};

pub static KEY_VALUE: Msg = Msg {
    name: "KeyValue",
    fields: &[
        field(1, "key", "key", Kind::String),
        message(2, "value", "value", &ANY_VALUE),
        // Since opentelemetry-proto v1.9: an index into a profiles string table.
        field(3, "key_strindex", "keyStrindex", Kind::Int32),
    ],
};

pub static INSTRUMENTATION_SCOPE: Msg = Msg {
    name: "InstrumentationScope",
    fields: &[
        field(1, "name", "name", Kind::String),
        field(2, "version", "version", Kind::String),
        messages(3, "attributes", "attributes", &KEY_VALUE),
        field(4, "dropped_attributes_count", "droppedAttributesCount", Kind::Uint32),
    ],
};

pub static ENTITY_REF: Msg = Msg {
    name: "EntityRef",
    fields: &[
        field(1, "schema_url", "schemaUrl", Kind::String),
        field(2, "type", "type", Kind::String),
        repeated(3, "id_keys", "idKeys", Kind::String),
        repeated(4, "description_keys", "descriptionKeys", Kind::String),
    ],
};

pub static RESOURCE: Msg = Msg {
    name: "Resource",
    fields: &[
        messages(1, "attributes", "attributes", &KEY_VALUE),
        field(2, "dropped_attributes_count", "droppedAttributesCount", Kind::Uint32),
        messages(3, "entity_refs", "entityRefs", &ENTITY_REF),
    ],
};

// ---- traces ----

pub static EXPORT_TRACE_SERVICE_REQUEST: Msg = Msg {
    name: "ExportTraceServiceRequest",
    fields: &[messages(1, "resource_spans", "resourceSpans", &RESOURCE_SPANS)],
};

pub static RESOURCE_SPANS: Msg = Msg {
    name: "ResourceSpans",
    fields: &[
        message(1, "resource", "resource", &RESOURCE),
        messages(2, "scope_spans", "scopeSpans", &SCOPE_SPANS),
        field(3, "schema_url", "schemaUrl", Kind::String),
    ],
};

pub static SCOPE_SPANS: Msg = Msg {
    name: "ScopeSpans",
    fields: &[
        message(1, "scope", "scope", &INSTRUMENTATION_SCOPE),
        messages(2, "spans", "spans", &SPAN),
        field(3, "schema_url", "schemaUrl", Kind::String),
    ],
};

pub static SPAN: Msg = Msg {
    name: "Span",
    fields: &[
        field(1, "trace_id", "traceId", Kind::Hex),
        field(2, "span_id", "spanId", Kind::Hex),
        field(3, "trace_state", "traceState", Kind::String),
        field(4, "parent_span_id", "parentSpanId", Kind::Hex),
        field(5, "name", "name", Kind::String),
        field(6, "kind", "kind", Kind::Enum(&SPAN_KIND)),
        field(7, "start_time_unix_nano", "startTimeUnixNano", Kind::Fixed64),
        field(8, "end_time_unix_nano", "endTimeUnixNano", Kind::Fixed64),
        messages(9, "attributes", "attributes", &KEY_VALUE),
        field(10, "dropped_attributes_count", "droppedAttributesCount", Kind::Uint32),
        messages(11, "events", "events", &SPAN_EVENT),
        field(12, "dropped_events_count", "droppedEventsCount", Kind::Uint32),
        messages(13, "links", "links", &SPAN_LINK),
        field(14, "dropped_links_count", "droppedLinksCount", Kind::Uint32),
        message(15, "status", "status", &STATUS),
        field(16, "flags", "flags", Kind::Fixed32),
    ],
};

pub static SPAN_EVENT: Msg = Msg {
    name: "Span.Event",
    fields: &[
        field(1, "time_unix_nano", "timeUnixNano", Kind::Fixed64),
        field(2, "name", "name", Kind::String),
        messages(3, "attributes", "attributes", &KEY_VALUE),
        field(4, "dropped_attributes_count", "droppedAttributesCount", Kind::Uint32),
    ],
};

pub static SPAN_LINK: Msg = Msg {
    name: "Span.Link",
    fields: &[
        field(1, "trace_id", "traceId", Kind::Hex),
        field(2, "span_id", "spanId", Kind::Hex),
        field(3, "trace_state", "traceState", Kind::String),
        messages(4, "attributes", "attributes", &KEY_VALUE),
        field(5, "dropped_attributes_count", "droppedAttributesCount", Kind::Uint32),
        field(6, "flags", "flags", Kind::Fixed32),
    ],
};

pub static STATUS: Msg = Msg {
    name: "Status",
    fields: &[
        field(2, "message", "message", Kind::String),
        field(3, "code", "code", Kind::Enum(&STATUS_CODE)),
    ],
};

// ---- logs ----

pub static EXPORT_LOGS_SERVICE_REQUEST: Msg = Msg {
    name: "ExportLogsServiceRequest",
    fields: &[messages(1, "resource_logs", "resourceLogs", &RESOURCE_LOGS)],
};

pub static RESOURCE_LOGS: Msg = Msg {
    name: "ResourceLogs",
    fields: &[
        message(1, "resource", "resource", &RESOURCE),
        messages(2, "scope_logs", "scopeLogs", &SCOPE_LOGS),
        field(3, "schema_url", "schemaUrl", Kind::String),
    ],
};

pub static SCOPE_LOGS: Msg = Msg {
    name: "ScopeLogs",
    fields: &[
        message(1, "scope", "scope", &INSTRUMENTATION_SCOPE),
        messages(2, "log_records", "logRecords", &LOG_RECORD),
        field(3, "schema_url", "schemaUrl", Kind::String),
    ],
};

pub static LOG_RECORD: Msg = Msg {
    name: "LogRecord",
    fields: &[
        field(1, "time_unix_nano", "timeUnixNano", Kind::Fixed64),
        field(2, "severity_number", "severityNumber", Kind::Enum(&SEVERITY_NUMBER)),
        field(3, "severity_text", "severityText", Kind::String),
        message(5, "body", "body", &ANY_VALUE),
        messages(6, "attributes", "attributes", &KEY_VALUE),
        field(7, "dropped_attributes_count", "droppedAttributesCount", Kind::Uint32),
        field(8, "flags", "flags", Kind::Fixed32),
        field(9, "trace_id", "traceId", Kind::Hex),
        field(10, "span_id", "spanId", Kind::Hex),
        field(11, "observed_time_unix_nano", "observedTimeUnixNano", Kind::Fixed64),
        field(12, "event_name", "eventName", Kind::String),
    ],
};

// ---- metrics ----

pub static EXPORT_METRICS_SERVICE_REQUEST: Msg = Msg {
    name: "ExportMetricsServiceRequest",
    fields: &[messages(1, "resource_metrics", "resourceMetrics", &RESOURCE_METRICS)],
};

pub static RESOURCE_METRICS: Msg = Msg {
    name: "ResourceMetrics",
    fields: &[
        message(1, "resource", "resource", &RESOURCE),
        messages(2, "scope_metrics", "scopeMetrics", &SCOPE_METRICS),
        field(3, "schema_url", "schemaUrl", Kind::String),
    ],
};

pub static SCOPE_METRICS: Msg = Msg {
    name: "ScopeMetrics",
    fields: &[
        message(1, "scope", "scope", &INSTRUMENTATION_SCOPE),
        messages(2, "metrics", "metrics", &METRIC),
        field(3, "schema_url", "schemaUrl", Kind::String),
    ],
};

pub static METRIC: Msg = Msg {
    name: "Metric",
    fields: &[
        field(1, "name", "name", Kind::String),
        field(2, "description", "description", Kind::String),
        field(3, "unit", "unit", Kind::String),
        oneof("data", 5, "gauge", "gauge", Kind::Message(&GAUGE)),
        oneof("data", 7, "sum", "sum", Kind::Message(&SUM)),
        oneof("data", 9, "histogram", "histogram", Kind::Message(&HISTOGRAM)),
        oneof(
            "data",
            10,
            "exponential_histogram",
            "exponentialHistogram",
            Kind::Message(&EXPONENTIAL_HISTOGRAM),
        ),
        oneof("data", 11, "summary", "summary", Kind::Message(&SUMMARY)),
        messages(12, "metadata", "metadata", &KEY_VALUE),
    ],
};

pub static GAUGE: Msg = Msg {
    name: "Gauge",
    fields: &[messages(1, "data_points", "dataPoints", &NUMBER_DATA_POINT)],
};

pub static SUM: Msg = Msg {
    name: "Sum",
    fields: &[
        messages(1, "data_points", "dataPoints", &NUMBER_DATA_POINT),
        field(
            2,
            "aggregation_temporality",
            "aggregationTemporality",
            Kind::Enum(&AGGREGATION_TEMPORALITY),
        ),
        field(3, "is_monotonic", "isMonotonic", Kind::Bool),
    ],
};

pub static HISTOGRAM: Msg = Msg {
    name: "Histogram",
    fields: &[
        messages(1, "data_points", "dataPoints", &HISTOGRAM_DATA_POINT),
        field(
            2,
            "aggregation_temporality",
            "aggregationTemporality",
            Kind::Enum(&AGGREGATION_TEMPORALITY),
        ),
    ],
};

pub static EXPONENTIAL_HISTOGRAM: Msg = Msg {
    name: "ExponentialHistogram",
    fields: &[
        messages(1, "data_points", "dataPoints", &EXPONENTIAL_HISTOGRAM_DATA_POINT),
        field(
            2,
            "aggregation_temporality",
            "aggregationTemporality",
            Kind::Enum(&AGGREGATION_TEMPORALITY),
        ),
    ],
};

pub static SUMMARY: Msg = Msg {
    name: "Summary",
    fields: &[messages(1, "data_points", "dataPoints", &SUMMARY_DATA_POINT)],
};

pub static NUMBER_DATA_POINT: Msg = Msg {
    name: "NumberDataPoint",
    fields: &[
        field(2, "start_time_unix_nano", "startTimeUnixNano", Kind::Fixed64),
        field(3, "time_unix_nano", "timeUnixNano", Kind::Fixed64),
        oneof("value", 4, "as_double", "asDouble", Kind::Double),
        messages(5, "exemplars", "exemplars", &EXEMPLAR),
        oneof("value", 6, "as_int", "asInt", Kind::Sfixed64),
        messages(7, "attributes", "attributes", &KEY_VALUE),
        field(8, "flags", "flags", Kind::Uint32),
    ],
};

pub static HISTOGRAM_DATA_POINT: Msg = Msg {
    name: "HistogramDataPoint",
    fields: &[
        field(2, "start_time_unix_nano", "startTimeUnixNano", Kind::Fixed64),
        field(3, "time_unix_nano", "timeUnixNano", Kind::Fixed64),
        field(4, "count", "count", Kind::Fixed64),
        optional(5, "sum", "sum", Kind::Double),
        repeated(6, "bucket_counts", "bucketCounts", Kind::Fixed64),
        repeated(7, "explicit_bounds", "explicitBounds", Kind::Double),
        messages(8, "exemplars", "exemplars", &EXEMPLAR),
        messages(9, "attributes", "attributes", &KEY_VALUE),
        field(10, "flags", "flags", Kind::Uint32),
        optional(11, "min", "min", Kind::Double),
        optional(12, "max", "max", Kind::Double),
    ],
};

pub static EXPONENTIAL_HISTOGRAM_DATA_POINT: Msg = Msg {
    name: "ExponentialHistogramDataPoint",
    fields: &[
        messages(1, "attributes", "attributes", &KEY_VALUE),
        field(2, "start_time_unix_nano", "startTimeUnixNano", Kind::Fixed64),
        field(3, "time_unix_nano", "timeUnixNano", Kind::Fixed64),
        field(4, "count", "count", Kind::Fixed64),
        optional(5, "sum", "sum", Kind::Double),
        field(6, "scale", "scale", Kind::Sint32),
        field(7, "zero_count", "zeroCount", Kind::Fixed64),
        message(8, "positive", "positive", &BUCKETS),
        message(9, "negative", "negative", &BUCKETS),
        field(10, "flags", "flags", Kind::Uint32),
        messages(11, "exemplars", "exemplars", &EXEMPLAR),
        optional(12, "min", "min", Kind::Double),
        optional(13, "max", "max", Kind::Double),
        field(14, "zero_threshold", "zeroThreshold", Kind::Double),
    ],
};

pub static BUCKETS: Msg = Msg {
    name: "ExponentialHistogramDataPoint.Buckets",
    fields: &[
        field(1, "offset", "offset", Kind::Sint32),
        repeated(2, "bucket_counts", "bucketCounts", Kind::Uint64),
    ],
};

pub static SUMMARY_DATA_POINT: Msg = Msg {
    name: "SummaryDataPoint",
    fields: &[
        field(2, "start_time_unix_nano", "startTimeUnixNano", Kind::Fixed64),
        field(3, "time_unix_nano", "timeUnixNano", Kind::Fixed64),
        field(4, "count", "count", Kind::Fixed64),
        field(5, "sum", "sum", Kind::Double),
        messages(6, "quantile_values", "quantileValues", &VALUE_AT_QUANTILE),
        messages(7, "attributes", "attributes", &KEY_VALUE),
        field(8, "flags", "flags", Kind::Uint32),
    ],
};

pub static VALUE_AT_QUANTILE: Msg = Msg {
    name: "SummaryDataPoint.ValueAtQuantile",
    fields: &[
        field(1, "quantile", "quantile", Kind::Double),
        field(2, "value", "value", Kind::Double),
    ],
};

pub static EXEMPLAR: Msg = Msg {
    name: "Exemplar",
    fields: &[
        field(2, "time_unix_nano", "timeUnixNano", Kind::Fixed64),
        oneof("value", 3, "as_double", "asDouble", Kind::Double),
        field(4, "span_id", "spanId", Kind::Hex),
        field(5, "trace_id", "traceId", Kind::Hex),
        oneof("value", 6, "as_int", "asInt", Kind::Sfixed64),
        messages(7, "filtered_attributes", "filteredAttributes", &KEY_VALUE),
    ],
};

// ---- responses ----

pub static EXPORT_TRACE_SERVICE_RESPONSE: Msg = Msg {
    name: "ExportTraceServiceResponse",
    fields: &[message(
        1,
        "partial_success",
        "partialSuccess",
        &EXPORT_TRACE_PARTIAL_SUCCESS,
    )],
};

pub static EXPORT_TRACE_PARTIAL_SUCCESS: Msg = Msg {
    name: "ExportTracePartialSuccess",
    fields: &[
        field(1, "rejected_spans", "rejectedSpans", Kind::Int64),
        field(2, "error_message", "errorMessage", Kind::String),
    ],
};

pub static EXPORT_LOGS_SERVICE_RESPONSE: Msg = Msg {
    name: "ExportLogsServiceResponse",
    fields: &[message(
        1,
        "partial_success",
        "partialSuccess",
        &EXPORT_LOGS_PARTIAL_SUCCESS,
    )],
};

pub static EXPORT_LOGS_PARTIAL_SUCCESS: Msg = Msg {
    name: "ExportLogsPartialSuccess",
    fields: &[
        field(1, "rejected_log_records", "rejectedLogRecords", Kind::Int64),
        field(2, "error_message", "errorMessage", Kind::String),
    ],
};

pub static EXPORT_METRICS_SERVICE_RESPONSE: Msg = Msg {
    name: "ExportMetricsServiceResponse",
    fields: &[message(
        1,
        "partial_success",
        "partialSuccess",
        &EXPORT_METRICS_PARTIAL_SUCCESS,
    )],
};

pub static EXPORT_METRICS_PARTIAL_SUCCESS: Msg = Msg {
    name: "ExportMetricsPartialSuccess",
    fields: &[
        field(1, "rejected_data_points", "rejectedDataPoints", Kind::Int64),
        field(2, "error_message", "errorMessage", Kind::String),
    ],
};

/// `google.rpc.Status`, the body of an OTLP/HTTP error response. `details` are `Any` messages,
/// kept as plain `{typeUrl, value}` here: the gateway never writes any.
pub static RPC_STATUS: Msg = Msg {
    name: "google.rpc.Status",
    fields: &[
        field(1, "code", "code", Kind::Int32),
        field(2, "message", "message", Kind::String),
        messages(3, "details", "details", &ANY),
    ],
};

pub static ANY: Msg = Msg {
    name: "google.protobuf.Any",
    fields: &[
        field(1, "type_url", "typeUrl", Kind::String),
        field(2, "value", "value", Kind::Bytes),
    ],
};

/// The `Export*ServiceRequest` message of a signal.
pub fn request(signal: Signal) -> &'static Msg {
    match signal {
        Signal::Traces => &EXPORT_TRACE_SERVICE_REQUEST,
        Signal::Logs => &EXPORT_LOGS_SERVICE_REQUEST,
        Signal::Metrics => &EXPORT_METRICS_SERVICE_REQUEST,
    }
}

/// The `Export*ServiceResponse` message of a signal.
pub fn response(signal: Signal) -> &'static Msg {
    match signal {
        Signal::Traces => &EXPORT_TRACE_SERVICE_RESPONSE,
        Signal::Logs => &EXPORT_LOGS_SERVICE_RESPONSE,
        Signal::Metrics => &EXPORT_METRICS_SERVICE_RESPONSE,
    }
}

// ---- shared by the walkers ----

/// A decode error on its way out of a recursive walk. Path segments are pushed as the stack
/// unwinds, so a successful walk never pays for them.
#[derive(Debug)]
pub(crate) struct Trail {
    reason: String,
    /// Innermost first: (JSON field name, index in a repeated field).
    path: Vec<(&'static str, Option<usize>)>,
}

impl Trail {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Trail {
            reason: reason.into(),
            path: Vec::new(),
        }
    }

    pub(crate) fn at(mut self, field: &'static Field, index: Option<usize>) -> Self {
        self.path.push((field.json, index));
        self
    }

    /// The JSON path, outermost first: `resourceSpans[0].scopeSpans[0].spans[3].name`.
    pub(crate) fn path(&self) -> String {
        let mut out = String::new();
        for (i, (name, index)) in self.path.iter().rev().enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push_str(name);
            if let Some(index) = index {
                out.push_str(&format!("[{index}]"));
            }
        }
        out
    }

    /// "invalid protobuf: Span.name (field 5) is not valid UTF-8 (at resourceSpans[0]….name)".
    pub(crate) fn into_protobuf_error(self) -> CoreError {
        if self.path.is_empty() {
            return CoreError::Decode(self.reason);
        }
        CoreError::Decode(format!("{} (at {})", self.reason, self.path()))
    }

    /// "resourceSpans[0].scopeSpans[0].spans[3].startTimeUnixNano: expected an integer, got true".
    pub(crate) fn into_json_error(self, root: &Msg) -> CoreError {
        if self.path.is_empty() {
            return CoreError::Decode(format!("{}: {}", root.name, self.reason));
        }
        CoreError::Decode(format!("{}: {}", self.path(), self.reason))
    }
}

/// "Span.name (field 5)", for error messages.
pub(crate) fn describe(msg: &Msg, field: &Field) -> String {
    format!("{}.{} (field {})", msg.name, field.name, field.number)
}

/// Byte offset of `inner` within `outer` (`inner` must be a subslice, as wire fields are).
#[inline]
pub(crate) fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize)
}

/// Position of `field` among the fields of `data` with the same number (for error paths only).
pub(crate) fn index_of(data: &[u8], field: &wire::Field<'_>) -> usize {
    let at = offset_in(data, field.raw);
    wire::Fields::new(data)
        .map_while(|f| f.ok())
        .take_while(|f| offset_in(data, f.raw) < at)
        .filter(|f| f.number == field.number)
        .count()
}

/// Adds the field (and its index when repeated) to an error's path.
pub(crate) fn locate(trail: Trail, data: &[u8], desc: &'static Field, field: &wire::Field<'_>) -> Trail {
    let index = desc.repeated.then(|| index_of(data, field));
    trail.at(desc, index)
}

/// Rewrites an error from `wire::Fields` so it names the message and, when the tag could be
/// read, the field. `ok_end` is where the last well-formed field ended.
pub(crate) fn wire_error(msg: &'static Msg, data: &[u8], ok_end: usize, err: CoreError) -> Trail {
    let text = err.to_string();
    let mut pos = 0;
    let rest = data.get(ok_end..).unwrap_or_default();
    let number = wire::read_varint(rest, &mut pos).ok().map(|key| key >> 3);
    let desc = number.and_then(|n| u32::try_from(n).ok()).and_then(|n| msg.field(n));
    match (number, desc) {
        (Some(n), Some(desc)) => {
            let needle = format!("field {n} ");
            let reason = if text.contains(&needle) {
                text.replacen(&needle, &format!("{} ", describe(msg, desc)), 1)
            } else {
                format!("{text}, in {}", describe(msg, desc))
            };
            let trail = Trail::new(reason);
            // The field's index: the well-formed fields before it with the same number.
            let index = desc.repeated.then(|| {
                wire::Fields::new(data.get(..ok_end).unwrap_or_default())
                    .map_while(|f| f.ok())
                    .filter(|f| u64::from(f.number) == n)
                    .count()
            });
            trail.at(desc, index)
        }
        _ => Trail::new(format!("{text}, in {}", msg.name)),
    }
}

/// The field's wire type must be the kind's, or LEN for a packed repeated scalar.
#[inline]
pub(crate) fn check_wire(msg: &Msg, desc: &Field, field: &wire::Field<'_>) -> Result<(), Trail> {
    // The common case inline, the rest (packed runs, errors) out of line.
    if field.wire_type == desc.wire_type {
        return Ok(());
    }
    check_other_wire(msg, desc, field)
}

fn check_other_wire(msg: &Msg, desc: &Field, field: &wire::Field<'_>) -> Result<(), Trail> {
    let expected = desc.kind.wire_type();
    if desc.packed && field.wire_type == wire::LEN {
        let width = match expected {
            wire::I64 => 8,
            wire::I32 => 4,
            _ => return Ok(()),
        };
        if !field.data.len().is_multiple_of(width) {
            return Err(Trail::new(format!(
                "invalid protobuf: {} is packed with {} bytes, not a multiple of {width}",
                describe(msg, desc),
                field.data.len()
            )));
        }
        return Ok(());
    }
    let also = if desc.packed { " or 2 (packed)" } else { "" };
    Err(Trail::new(format!(
        "invalid protobuf: {} has wire type {} ({}), expected {expected} ({}){also}",
        describe(msg, desc),
        field.wire_type,
        wire_type_name(field.wire_type),
        wire_type_name(expected),
    )))
}

fn wire_type_name(wire_type: u8) -> &'static str {
    match wire_type {
        wire::VARINT => "varint",
        wire::I64 => "64-bit",
        wire::I32 => "32-bit",
        wire::LEN => "length-delimited",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<&'static Msg> {
        // Every message reachable from the requests and responses.
        let mut seen: Vec<&'static Msg> = Vec::new();
        let mut stack: Vec<&'static Msg> = Signal::ALL.iter().flat_map(|&s| [request(s), response(s)]).collect();
        stack.push(&RPC_STATUS);
        while let Some(msg) = stack.pop() {
            if seen.iter().any(|m| std::ptr::eq(*m, msg)) {
                continue;
            }
            seen.push(msg);
            for f in msg.fields {
                if let Kind::Message(m) = f.kind {
                    stack.push(m);
                }
            }
        }
        seen
    }

    #[test]
    fn descriptors_are_well_formed() {
        let msgs = all();
        assert!(msgs.len() >= 40, "{}", msgs.len());
        for msg in msgs {
            let mut last = 0;
            for f in msg.fields {
                assert!(f.number > last && f.number < 64, "{}.{} out of order", msg.name, f.name);
                last = f.number;
                // lowerCamelCase of the .proto name.
                let mut camel = String::new();
                let mut upper = false;
                for c in f.name.chars() {
                    if c == '_' {
                        upper = true;
                    } else if upper {
                        camel.push(c.to_ascii_uppercase());
                        upper = false;
                    } else {
                        camel.push(c);
                    }
                }
                assert_eq!(camel, f.json, "{}.{}", msg.name, f.name);
                assert_eq!(f.packed, f.repeated && f.kind.packable());
                assert!(!(f.repeated && f.presence));
                assert!(f.oneof.is_none() || f.presence);
            }
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(request(Signal::Traces).name, "ExportTraceServiceRequest");
        assert_eq!(response(Signal::Metrics).fields[0].json, "partialSuccess");
        assert_eq!(SPAN.field(16).map(|f| f.name), Some("flags"));
        assert!(SPAN.field(17).is_none());
        assert_eq!(SPAN.field_by_key(b"parentSpanId").map(|f| f.number), Some(4));
        assert_eq!(SPAN.field_by_key(b"parent_span_id").map(|f| f.number), Some(4));
        assert!(SPAN.field_by_key(b"ParentSpanId").is_none());
        assert_eq!(SEVERITY_NUMBER.value("SEVERITY_NUMBER_ERROR"), Some(17));
        assert_eq!(SEVERITY_NUMBER.values.len(), 25);
        assert!(format!("{:?}", ANY_VALUE).contains("AnyValue"));
    }

    #[test]
    fn trail_formats_paths() {
        let t = Trail::new("boom")
            .at(&SPAN.fields[4], None)
            .at(&SCOPE_SPANS.fields[1], Some(3))
            .at(&RESOURCE_SPANS.fields[1], Some(0))
            .at(&EXPORT_TRACE_SERVICE_REQUEST.fields[0], Some(1));
        assert_eq!(t.path(), "resourceSpans[1].scopeSpans[0].spans[3].name");
        assert_eq!(
            t.into_protobuf_error().to_string(),
            "boom (at resourceSpans[1].scopeSpans[0].spans[3].name)"
        );
        assert_eq!(
            Trail::new("expected an object")
                .into_json_error(&EXPORT_LOGS_SERVICE_REQUEST)
                .to_string(),
            "ExportLogsServiceRequest: expected an object"
        );
    }
}

/// Test support shared by the walkers' tests: a seeded generator of random, canonically
/// encoded messages (fields in number order, proto3 defaults left out, repeated scalars packed).
#[cfg(test)]
pub(crate) mod testgen {
    use super::{Kind, Msg};
    use crate::wire;

    /// xorshift64*: deterministic, no dependency.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        pub(crate) fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    use crate::test_support::STRING_PIECES;

    fn string(rng: &mut Rng) -> String {
        (0..1 + rng.below(6))
            .map(|_| STRING_PIECES[rng.below(STRING_PIECES.len() as u64) as usize])
            .collect()
    }

    fn bytes(rng: &mut Rng, max: u64) -> Vec<u8> {
        (0..rng.below(max + 1)).map(|_| rng.next() as u8).collect()
    }

    fn double(rng: &mut Rng) -> f64 {
        let specials = [
            0.0,
            -0.0,
            1.0,
            -2.5,
            0.1,
            1e21,
            1e-7,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
        ];
        let v = match rng.below(4) {
            0 => specials[rng.below(specials.len() as u64) as usize],
            1 => [f64::INFINITY, f64::NEG_INFINITY][rng.below(2) as usize],
            2 => (rng.next() as i32) as f64 / 8.0,
            _ => f64::from_bits(rng.next()),
        };
        // Only the canonical NaN survives JSON (it has no payload).
        if v.is_nan() {
            f64::NAN
        } else {
            v
        }
    }

    /// A random wire value for a scalar kind: the varint to write or a fixed-width value's bits.
    fn scalar(rng: &mut Rng, kind: Kind) -> u64 {
        let extreme = rng.chance(20);
        match kind {
            Kind::Bool => rng.below(2),
            Kind::Double => double(rng).to_bits(),
            Kind::Int32 | Kind::Enum(_) => {
                let v = if extreme {
                    [i32::MIN, i32::MAX, -1][rng.below(3) as usize]
                } else {
                    rng.below(30) as i32 - 5
                };
                i64::from(v) as u64
            }
            Kind::Sint32 => {
                let v = if extreme {
                    [i32::MIN, i32::MAX][rng.below(2) as usize]
                } else {
                    rng.below(100) as i32 - 50
                };
                u64::from(((v << 1) ^ (v >> 31)) as u32)
            }
            Kind::Uint32 | Kind::Fixed32 => {
                if extreme {
                    u64::from(u32::MAX)
                } else {
                    rng.below(1000)
                }
            }
            Kind::Int64 | Kind::Sfixed64 => {
                if extreme {
                    [i64::MIN, i64::MAX, -1][rng.below(3) as usize] as u64
                } else {
                    rng.next() >> rng.below(64)
                }
            }
            _ => {
                if extreme {
                    u64::MAX
                } else {
                    rng.next() >> rng.below(64)
                }
            }
        }
    }

    fn put_scalar(out: &mut Vec<u8>, kind: Kind, bits: u64) {
        match kind.wire_type() {
            wire::I64 => out.extend_from_slice(&bits.to_le_bytes()),
            wire::I32 => out.extend_from_slice(&(bits as u32).to_le_bytes()),
            _ => wire::put_varint(out, bits),
        }
    }

    /// Writes a random canonical `msg` to `out`. Deeper than `max_depth`, message fields are
    /// left out so recursion ends.
    pub(crate) fn message(rng: &mut Rng, msg: &'static Msg, out: &mut Vec<u8>, depth: usize, max_depth: usize) {
        let members: Vec<_> = msg.fields.iter().filter(|f| f.oneof.is_some()).collect();
        let chosen = if members.is_empty() || rng.chance(15) {
            None
        } else {
            Some(members[rng.below(members.len() as u64) as usize].number)
        };
        for f in msg.fields {
            if f.oneof.is_some() && chosen != Some(f.number) {
                continue;
            }
            if f.oneof.is_none() && rng.chance(35) {
                continue;
            }
            if matches!(f.kind, Kind::Message(_)) && depth >= max_depth {
                continue;
            }
            let count = if f.repeated { rng.below(4) } else { 1 };
            if f.packed {
                if count > 0 {
                    wire::put_message(out, f.number, |o| {
                        for _ in 0..count {
                            let bits = scalar(rng, f.kind);
                            put_scalar(o, f.kind, bits);
                        }
                    });
                }
                continue;
            }
            for _ in 0..count {
                match f.kind {
                    Kind::Message(child) => {
                        wire::put_message(out, f.number, |o| message(rng, child, o, depth + 1, max_depth))
                    }
                    Kind::String | Kind::Bytes | Kind::Hex => {
                        let data = match f.kind {
                            Kind::String => string(rng).into_bytes(),
                            Kind::Hex => bytes(rng, 16),
                            _ => bytes(rng, 10),
                        };
                        if !data.is_empty() || f.presence || f.repeated {
                            wire::put_bytes(out, f.number, &data);
                        }
                    }
                    kind => {
                        let bits = scalar(rng, kind);
                        if bits != 0 || f.presence || f.repeated {
                            wire::put_tag(out, f.number, kind.wire_type());
                            put_scalar(out, kind, bits);
                        }
                    }
                }
            }
        }
    }
}
