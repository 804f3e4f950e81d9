"""trackgate: one ingest endpoint for logs, traces, metrics, errors and job events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trackgate._core import __version__

if TYPE_CHECKING:
    from trackgate.config import Config, ConfigError
    from trackgate.pipeline import Pipeline
    from trackgate.replay import ReplayReport, replay

__all__ = ["Config", "ConfigError", "Pipeline", "ReplayReport", "__version__", "replay"]

# Imported on first use, so that `trackgate agent` (the collector alone) does not load the
# pipeline, its exporters and gRPC: the agent's RSS stays small.
_LAZY = {
    "Config": "trackgate.config",
    "ConfigError": "trackgate.config",
    "Pipeline": "trackgate.pipeline",
    "ReplayReport": "trackgate.replay",
    "replay": "trackgate.replay",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trackgate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
