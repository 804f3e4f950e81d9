//! trackgate's data plane. One module per stage; `bindings` is the only module that knows Python.
//!
//! decompress → decode (`validate` for protobuf, `json_decode` for JSON) → `ingest` (slice
//! records, reject malformed ones, `sample`, `enrich`) → `queue` (in memory, or `disk_queue`) →
//! `batch` → `encode`.

pub mod batch;
pub mod decompress;
pub mod disk_queue;
pub mod encode;
pub mod enrich;
pub mod envelope;
pub mod error;
pub mod events;
pub mod fluent;
mod inflate;
pub mod ingest;
pub mod json_decode;
pub mod json_encode;
mod ledger_file;
pub mod limits;
pub mod loadgen;
pub mod net;
pub mod pipeline;
pub mod queue;
pub mod sample;
pub mod schema;
pub mod scrub;
pub mod scrub_otlp;
pub mod sentry;
pub mod sentry_limits;
pub mod sentry_spans;
pub mod signal;
pub mod validate;
pub mod wire;

mod bindings;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod test_support;

pub use error::{CoreError, Result};
pub use signal::Signal;
