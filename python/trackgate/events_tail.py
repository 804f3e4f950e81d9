"""`trackgate events tail`: watch the event bus (the Redis stream) live.

Without `group` it reads with XREAD from the end of the stream (or its start with `from_start`):
a pure observer, invisible to consumers. With `group` G it reads as a member of consumer group G
(created at the stream's end if missing) and acknowledges what it printed: give it a group of its
own, since entries read this way are not delivered to the group's other members. For the same
reason `job` (a filter) and `group` do not go together: the other jobs' entries it skipped would
be taken from the group all the same.

With `per_type` (`[exporters.redis] per_type = true`), `stream` is the prefix and every stream
`<prefix>:<event_type>` is read: found with SCAN at the start and again every `rescan_s` seconds,
so a type's first event is seen too. Each read's entries are printed in id order (the order they
arrived in, to the millisecond).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from typing import IO, Any

import orjson
import redis
from redis.typing import KeyT, StreamIdT

GROUP_WITH_JOB = (
    "--job cannot be combined with --group: a group member takes every entry it reads away from the group's "
    "other members, so the other jobs' entries it skipped would be lost to them; use --job without --group"
)


def entry_json(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": entry_id, **fields}
    if "data" in doc:
        with contextlib.suppress(orjson.JSONDecodeError):
            doc["data"] = orjson.loads(doc["data"])
    return doc


def per_type_streams(client: redis.Redis, prefix: str) -> list[str]:
    """The streams `<prefix>:*` (SCAN ... TYPE stream), the prefix's glob characters escaped."""
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + ":*"
    return sorted(str(key) for key in client.scan_iter(match=pattern, count=1000, _type="stream"))


def _last_id(client: redis.Redis, stream: str) -> str:
    """The stream's last id (XREAD from there reads only newer entries); 0-0 if it does not exist yet."""
    try:
        info: Any = client.xinfo_stream(stream)
    except redis.exceptions.ResponseError:  # no such key
        return "0-0"
    return str(info["last-generated-id"])


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def tail(
    client: redis.Redis,
    stream: str,
    *,
    per_type: bool = False,
    group: str | None = None,
    job: str | None = None,
    from_start: bool = False,
    count: int = 0,
    block_ms: int = 1000,
    rescan_s: float = 10.0,
    out: IO[str] | None = None,
) -> int:
    """Prints matching entries as JSON lines to `out` (default: stdout, as it is at the call); returns after
    `count` of them (0: never)."""
    if group and job is not None:
        raise ValueError(GROUP_WITH_JOB)
    out = out or sys.stdout
    consumer = f"tail-{socket.gethostname()}-{os.getpid()}"
    # Stream -> the id XREAD continues after (with a group, XREADGROUP's ">" is used instead).
    positions: dict[KeyT, StreamIdT] = {}

    def follow(name: str, at_start: bool) -> None:
        # A stream found after the start holds only entries written since: read it from its start.
        if group:
            try:
                client.xgroup_create(name, group, id="0" if at_start else "$", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        positions[name] = "0-0" if at_start else _last_id(client, name)

    for name in per_type_streams(client, stream) if per_type else [stream]:
        follow(name, from_start)
    next_scan = time.monotonic() + rescan_s
    printed = 0
    reply: Any  # redis-py's reply types are a union of every protocol's shapes
    while True:
        if per_type and time.monotonic() >= next_scan:
            for name in per_type_streams(client, stream):
                if name not in positions:
                    follow(name, True)
            next_scan = time.monotonic() + rescan_s
        if not positions:
            time.sleep(block_ms / 1000)
            continue
        if group and count and len(positions) > 1:
            # An entry read and not acknowledged stays pending with this consumer after it exits,
            # and XREADGROUP's COUNT is per stream: one stream at a time, never more than is left
            # to print in all (polled, not blocking).
            reply, left = [], count - printed
            for key in list(positions):
                got: Any = client.xreadgroup(group, consumer, {key: ">"}, count=left) if left > 0 else None
                for stream_name, stream_entries in got or []:
                    reply.append((stream_name, stream_entries))
                    left -= len(stream_entries)
            if not reply:
                time.sleep(min(block_ms or 200, 200) / 1000)
        elif group:
            # Read no more than is left to print (from its one stream): see above.
            batch = min(100, count - printed) if count else 100
            reply = client.xreadgroup(group, consumer, dict.fromkeys(positions, ">"), count=batch, block=block_ms)
        else:
            reply = client.xread(positions, count=100, block=block_ms)
        entries = [
            (name, entry_id, fields) for name, batch_entries in reply or [] for entry_id, fields in batch_entries
        ]
        entries.sort(key=lambda e: _id_key(e[1]))
        for name, entry_id, fields in entries:
            assert isinstance(fields, dict)
            positions[name] = entry_id
            if job is not None and fields.get("job_id") != job:
                continue
            out.write(orjson.dumps(entry_json(entry_id, fields)).decode() + "\n")
            out.flush()
            if group:
                client.xack(name, group, entry_id)
            printed += 1
            if count and printed >= count:
                return printed
