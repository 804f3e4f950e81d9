"""Sentry DSNs: `http(s)://<public_key>[:<secret>]@<host>[:<port>][/<path>]/<project_id>`."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass


class DsnError(ValueError):
    pass


@dataclass(frozen=True)
class Dsn:
    scheme: str
    public_key: str
    host: str  # with port
    path: str  # prefix before the project id, "" or "/prefix"
    project_id: str

    @property
    def envelope_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}/api/{self.project_id}/envelope/"

    @property
    def masked(self) -> str:
        """The DSN with its key hidden, for logs and messages."""
        return f"{self.scheme}://****@{self.host}{self.path}/{self.project_id}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.public_key}@{self.host}{self.path}/{self.project_id}"


def parse_dsn(value: str) -> Dsn:
    """Raises DsnError, whose message never repeats the DSN (it holds a key)."""
    try:
        parts = urllib.parse.urlsplit(value.strip())
        port = parts.port  # raises for a port that is not a number in range
    except ValueError:
        raise DsnError("DSN is not a valid URL (its host or port)") from None
    if parts.scheme not in ("http", "https"):
        raise DsnError("DSN must start with http:// or https://")
    if not parts.username:
        raise DsnError("DSN has no public key (expected <scheme>://<key>@<host>/<project_id>)")
    path, _, project = parts.path.rstrip("/").rpartition("/")
    if not project.isdigit():
        raise DsnError("DSN must end with a numeric project id")
    host = parts.hostname or ""
    if not host:
        raise DsnError("DSN has no host")
    if ":" in host:  # IPv6: brackets again, as in the URL
        host = f"[{host}]"
    if port:
        host = f"{host}:{port}"
    return Dsn(parts.scheme, parts.username, host, path, project)
