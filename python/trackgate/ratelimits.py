"""Sentry rate limits: which data categories an upstream has asked us to hold back, until when.

Both sides use one instance per worker: the Sentry exporter stops sending limited categories
until the limit expires, and the Sentry receiver (the app's, and the OTLP/HTTP front's in the
core, which holds the same state) answers clients that send those categories with 429 and the
same limits, so the SDKs back off instead of the gateway queuing without bound. The state lives
in the core (`rust/sentry_limits.rs`) so that the front reads it without Python.
"""

from __future__ import annotations

from trackgate._core import SentryRateLimits as RateLimits

__all__ = ["RateLimits"]
