"""trackgate: one ingest endpoint for logs, traces, metrics, errors and job events."""

from trackgate._core import __version__
from trackgate.config import Config, ConfigError
from trackgate.pipeline import Pipeline
from trackgate.replay import ReplayReport, replay

__all__ = ["Config", "ConfigError", "Pipeline", "ReplayReport", "__version__", "replay"]
