"""Client input repeated in an error message is cut to a short prefix (the data plane's
`error::shorten` does the same in Rust): a hostile 5 MB path or header never comes back whole."""

from __future__ import annotations

ECHO_CHARS = 64


def shorten(text: str) -> str:
    """`text`'s first `ECHO_CHARS` characters, with "…" when something was cut."""
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"
