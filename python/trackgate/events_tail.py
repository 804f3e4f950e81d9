"""`trackgate events tail`: watch the event bus (the Redis stream) live.

Without `--group` it reads with XREAD from the end of the stream (or its start with
`--from-start`): a pure observer, invisible to consumers. With `--group G` it reads as a member of
consumer group G (created at the stream's end if missing) and acknowledges what it printed:
give it a group of its own, since entries read this way are not delivered to the group's other
members.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import IO, Any

import orjson
import redis


def entry_json(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": entry_id, **fields}
    if "data" in doc:
        with contextlib.suppress(orjson.JSONDecodeError):
            doc["data"] = orjson.loads(doc["data"])
    return doc


def tail(
    client: redis.Redis,
    stream: str,
    *,
    group: str | None = None,
    job: str | None = None,
    from_start: bool = False,
    count: int = 0,
    block_ms: int = 1000,
    out: IO[str] = sys.stdout,
) -> int:
    """Prints matching entries as JSON lines; returns after `count` of them (0: never)."""
    consumer = f"tail-{socket.gethostname()}-{os.getpid()}"
    if group:
        try:
            client.xgroup_create(stream, group, id="0" if from_start else "$", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    last = "0" if from_start else "$"
    printed = 0
    reply: Any  # redis-py's reply types are a union of every protocol's shapes
    while True:
        if group:
            reply = client.xreadgroup(group, consumer, {stream: ">"}, count=100, block=block_ms)
        else:
            reply = client.xread({stream: last}, count=100, block=block_ms)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                assert isinstance(fields, dict)
                last = entry_id
                if group:
                    client.xack(stream, group, entry_id)
                if job is not None and fields.get("job_id") != job:
                    continue
                out.write(orjson.dumps(entry_json(entry_id, fields)).decode() + "\n")
                out.flush()
                printed += 1
                if count and printed >= count:
                    return printed
