//! The three OTLP signals. Every stage is keyed by one of these.

use std::fmt;
use std::str::FromStr;

use crate::error::CoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Logs,
    Traces,
    Metrics,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Logs, Signal::Traces, Signal::Metrics];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Signal::Logs => 0,
            Signal::Traces => 1,
            Signal::Metrics => 2,
        }
    }

    /// The JSON key of the top-level repeated field of `Export*ServiceRequest`.
    pub fn json_resource_key(self) -> &'static str {
        match self {
            Signal::Logs => "resourceLogs",
            Signal::Traces => "resourceSpans",
            Signal::Metrics => "resourceMetrics",
        }
    }

    /// The name OTLP uses for the unit counted in `partial_success` (`rejected_<unit>`).
    pub fn record_unit(self) -> &'static str {
        match self {
            Signal::Logs => "log records",
            Signal::Traces => "spans",
            Signal::Metrics => "data points",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Signal {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "logs" => Ok(Signal::Logs),
            "traces" => Ok(Signal::Traces),
            "metrics" => Ok(Signal::Metrics),
            other => Err(CoreError::Usage(format!(
                "unknown signal {other:?} (expected logs, traces or metrics)"
            ))),
        }
    }
}
