"""Sentry rate limits: which data categories an upstream has asked us to hold back, until when.

Both sides use it: the Sentry exporter stops sending limited categories until the limit expires,
and the Sentry receiver answers clients that send those categories with 429 and the same limits,
so the SDKs back off instead of the gateway queuing without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from trackgate._core import parse_rate_limits

# Categories an empty category list in X-Sentry-Rate-Limits stands for ("all").
ALL = "*"
DEFAULT_RETRY_AFTER_S = 60.0  # what sentry-sdk assumes for a 429 without headers


class RateLimits:
    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def update(self, header: str | None, retry_after: float | None, status: int) -> None:
        """Records the limits of one upstream answer (429, or 200 carrying limits)."""
        now = time.monotonic()
        limits = [(float(s), cats or [ALL]) for s, cats in parse_rate_limits(header)] if header else []
        if not limits and status == 429:
            limits = [(retry_after if retry_after is not None else DEFAULT_RETRY_AFTER_S, [ALL])]
        with self._lock:
            for seconds, categories in limits:
                for category in categories:
                    self._until[category] = max(self._until.get(category, 0.0), now + seconds)

    def limited(self, categories: Iterable[str]) -> dict[str, float]:
        """The categories among `categories` still limited, with the seconds left."""
        now = time.monotonic()
        with self._lock:
            every = self._until.get(ALL, 0.0) - now
            out = {}
            for category in categories:
                left = max(self._until.get(category, 0.0) - now, every)
                if left > 0:
                    out[category] = left
            return out

    def header(self, limited: dict[str, float]) -> tuple[str, str]:
        """(X-Sentry-Rate-Limits, Retry-After) values describing `limited` to a client."""
        parts = [f"{int(seconds) + 1}:{category}:key" for category, seconds in sorted(limited.items())]
        return ", ".join(parts), str(int(max(limited.values(), default=0)) + 1)
