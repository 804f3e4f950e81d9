"""Errors raised by the pipeline; each maps to one HTTP status in the receivers."""

from trackgate._core import DecodeError, PayloadTooLarge, PipelineClosed, QueueFull, QueueLocked, UnsupportedMedia
from trackgate.config import ConfigError

__all__ = [
    "ConfigError",
    "DecodeError",
    "PayloadTooLarge",
    "PipelineClosed",
    "QueueFull",
    "QueueLocked",
    "UnsupportedMedia",
]
