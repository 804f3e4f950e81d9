"""Operational events: POST /v1/events → durable queue → Redis Streams (and OTLP logs)."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from typing import Any

import orjson
import pytest
import zstandard

from conftest import Gateway, dash0_config
from http_client import call
from redis_server import RedisServer
from trackgate._core import decode_events
from trackgate.asgi import Request
from trackgate.config import load
from trackgate.pipeline import Pipeline
from trackgate.receivers.events import EventsReceiver
from upstream import Upstream

STREAM = "trackgate:events"


def redis_config(server: RedisServer, extra: str = "", batch: str = "") -> str:
    return f"""
[batch]
max_delay_ms = 20
{batch}

[exporters.redis]
url = "{server.url}"
retry = {{ initial_interval_s = 0.1, max_interval_s = 0.3 }}
{extra}
"""


def post(url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    status, _, raw = call(url + "/v1/events", body, {"Content-Type": "application/json", **(headers or {})}, timeout)
    return status, orjson.loads(raw) if raw.startswith((b"{", b"[")) else raw


def stream_entries(server: RedisServer, stream: str = STREAM) -> list[dict[str, str]]:
    return [fields for _id, fields in server.client().xrange(stream)]


def wait_until(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


# -- validation (the data plane, no server) -------------------------------------------------------

VALIDATION = [
    ("[1]", "an event must be a JSON object"),
    ('{"job_id": "j"}', "event_type is missing"),
    ('{"event_type": 7}', "event_type must be a string"),
    ('{"event_type": ""}', "event_type is empty"),
    ('{"event_type": "job done"}', "has a character other than"),
    ('{"event_type": "x", "timestamp": "next tuesday"}', "neither RFC 3339 nor epoch"),
    ('{"event_type": "x", "timestamp": true}', "timestamp must be a string"),
    ('{"event_type": "x", "timestamp": -5}', "not a valid epoch time"),
    ('{"event_type": "x", "job_id": [1]}', "job_id must be a string"),
    ('{"event_type": "x", "event_id": {}}', "event_id must be a string"),
    ('{"event_type": "x", "trace_id": "abc"}', "not 32 hex digits"),
    ('{"event_type": "x", "trace_id": "00000000000000000000000000000000"}', "not 32 hex digits"),
    ('{"event_type": "x", "data": "text"}', "data must be a JSON object"),
    (f'{{"event_type": "{"a" * 200}"}}', "longer than 128"),
]


@pytest.mark.parametrize(("event", "reason"), VALIDATION)
def test_each_malformed_event_is_refused_with_its_reason(event: str, reason: str) -> None:
    body = event if event.startswith("[") else f"[{event}]"
    result = decode_events(body.encode())
    assert (result.accepted, result.rejected) == (0, 1)
    [(index, why)] = result.errors
    assert index == 0
    assert reason in why, why


def test_event_forms_and_normalization() -> None:
    one = decode_events(b'{"event_type": "jobCompleted", "jobId": "j1", "timestamp": 1714564800123}')
    [event] = [orjson.loads(line) for line in one.ndjson.splitlines()]
    assert event["event_type"] == "job_completed"
    assert event["job_id"] == "j1"
    assert event["time_unix_nano"] == 1714564800123 * 1_000_000
    assert event["event_id"] == one.event_ids[0] and len(event["event_id"]) == 36
    nd = decode_events(b'{"event_type":"a","timestamp":"2024-05-01T12:00:00Z"}\n{"event_type":"b"}\n')
    assert nd.accepted == 2
    assert orjson.loads(nd.ndjson.splitlines()[0])["time_unix_nano"] == 1714564800 * 10**9
    assert decode_events(gzip.compress(b'[{"event_type":"a"}]'), "gzip").accepted == 1
    assert decode_events(zstandard.compress(b'[{"event_type":"a"}]'), "zstd").accepted == 1


# -- over HTTP, with a real redis-server ----------------------------------------------------------


@pytest.mark.slow
def test_events_reach_the_stream_and_a_consumer_group(
    gateway_factory: type[Gateway], redis_server: RedisServer, upstream: Upstream
) -> None:
    gw = gateway_factory(redis_config(redis_server) + dash0_config(upstream).replace("[batch]\nmax_delay_ms = 50", ""))
    client = redis_server.client()
    client.xgroup_create(STREAM, "workflow", id="0", mkstream=True)
    events = [
        {"event_type": "job_received", "job_id": "j1", "service": "ocr", "data": {"input_size": 10}},
        {"event_type": "jobStarted", "job_id": "j1", "service": "ocr", "worker_id": "w1", "machine_id": "m1"},
        {
            "event_type": "job_completed",
            "job_id": "j1",
            "service": "ocr",
            "session_id": "s1",
            "request_id": "r1",
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "data": {"duration_ms": 1500, "output_size": 99},
        },
    ]
    status, answer = post(gw.url, orjson.dumps(events))
    assert status == 200, answer
    assert answer["accepted"] == 3 and "partialSuccess" not in answer
    ids = answer["event_ids"]
    # NDJSON, gzip, with its own event_id.
    status, answer = post(
        gw.url,
        gzip.compress(b'{"event_type":"job_progress","job_id":"j1","event_id":"mine-1","data":{"progress":0.5}}\n'),
        {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
    )
    assert status == 200 and answer["event_ids"] == ["mine-1"]

    got: list[dict[str, str]] = []

    def read() -> bool:
        for _stream, entries in client.xreadgroup("workflow", "c1", {STREAM: ">"}, count=100, block=100) or []:
            for entry_id, fields in entries:
                got.append(fields)
                client.xack(STREAM, "workflow", entry_id)
        return len(got) >= 4

    assert wait_until(read), got
    assert [g["event_id"] for g in got] == [*ids, "mine-1"]
    assert [g["event_type"] for g in got] == ["job_received", "job_started", "job_completed", "job_progress"]
    assert got[1]["worker_id"] == "w1" and got[1]["machine_id"] == "m1" and got[1]["service"] == "ocr"
    assert orjson.loads(got[2]["data"]) == {"duration_ms": 1500, "output_size": 99}
    assert got[2]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert client.xpending(STREAM, "workflow")["pending"] == 0

    # The same events as OTLP log records, with the ids under the shared attribute names.
    assert upstream.wait_for(lambda up: len(up.log_records()) >= 4)
    records = {r.event_name: r for r in upstream.log_records()}
    done = records["job_completed"]
    attrs = {kv.key: kv.value.string_value or kv.value.int_value for kv in done.attributes}
    assert attrs["event.name"] == "job_completed"
    assert attrs["job.id"] == "j1"
    assert attrs["session.id"] == "s1" and attrs["request.id"] == "r1"
    assert attrs["event.data.duration_ms"] == 1500
    assert done.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert {r.event_name for r in upstream.log_records()} == {
        "job_received",
        "job_started",
        "job_completed",
        "job_progress",
    }


def test_per_type_streams_and_maxlen_trimming(gateway_factory: type[Gateway], redis_server: RedisServer) -> None:
    """One script call per batch appends each entry to its type's stream; `maxlen` trims (`~`)."""
    gw = gateway_factory(redis_config(redis_server, 'stream_prefix = "bus"\nper_type = true\nmaxlen = 10'))
    events: list[dict[str, Any]] = [
        {"event_type": "job_progress", "job_id": "j1", "data": {"progress": i}} for i in range(300)
    ]
    events.insert(150, {"event_type": "job_completed", "job_id": "j1", "data": {"duration_ms": 5}})
    status, answer = post(gw.url, orjson.dumps(events))
    assert status == 200, answer

    def last_progress() -> Any:
        entries = stream_entries(redis_server, "bus:job_progress")
        return orjson.loads(entries[-1]["data"]) if entries else None

    assert wait_until(lambda: last_progress() == {"progress": 299}), last_progress()
    # Approximate trimming keeps at least `maxlen` entries and far fewer than were appended.
    assert 10 <= len(stream_entries(redis_server, "bus:job_progress")) < 300
    done = stream_entries(redis_server, "bus:job_completed")
    assert [d["event_id"] for d in done] == [answer["event_ids"][150]]
    assert orjson.loads(done[0]["data"]) == {"duration_ms": 5}
    assert not redis_server.client().exists("bus"), "per_type: nothing in the prefix stream itself"


def test_a_batch_redis_refuses_is_dropped_and_counted(
    gateway_factory: type[Gateway], redis_server: RedisServer
) -> None:
    """The stream key holds another type: the script's XADD fails (WRONGTYPE), so the batch is
    dropped with its reason and counted, not retried forever; the next batch goes through."""
    client = redis_server.client()
    client.set(STREAM, "not a stream")
    gw = gateway_factory(redis_config(redis_server))

    def failed() -> float:
        text = call(gw.url + "/metrics", timeout=5)[2].decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("trackgate_exporter_failed_records_total{") and 'exporter="redis"' in line
        )

    status, answer = post(gw.url, orjson.dumps({"event_type": "job_started", "job_id": "j1"}))
    assert status == 200, answer
    assert wait_until(lambda: failed() >= 1), failed()
    assert client.get(STREAM) == "not a stream"
    client.delete(STREAM)
    status, answer = post(gw.url, orjson.dumps({"event_type": "job_completed", "job_id": "j1"}))
    assert status == 200, answer
    assert wait_until(lambda: [e["event_type"] for e in stream_entries(redis_server)] == ["job_completed"])


@pytest.mark.parametrize("refusal", ["oom", "readonly"])
def test_a_batch_redis_refuses_for_a_while_is_retried_not_dropped(
    gateway_factory: type[Gateway], redis_server: RedisServer, refusal: str
) -> None:
    """A full Redis (maxmemory, noeviction) or a node demoted to replica in a failover refuses the
    script's XADD with OOM or READONLY: the batch waits on disk and goes out once Redis takes writes
    again, nothing dropped."""
    client = redis_server.client()
    gw = gateway_factory(redis_config(redis_server))

    def metric(name: str) -> float:
        text = call(gw.url + "/metrics", timeout=5)[2].decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") and 'exporter="redis"' in line
        )

    if refusal == "oom":
        client.config_set("maxmemory", "1")
    else:
        client.replicaof("127.0.0.1", "1")  # a primary that is not there: it stays a replica
    try:
        status, answer = post(gw.url, orjson.dumps(numbered_events("jr", 0, 5)))
        assert status == 200, answer
        assert wait_until(lambda: metric("trackgate_exporter_retries_total") >= 2), metric(
            "trackgate_exporter_retries_total"
        )
        assert stream_entries(redis_server) == []
    finally:
        if refusal == "oom":
            client.config_set("maxmemory", "0")
        else:
            client.replicaof("NO", "ONE")
    assert wait_until(lambda: len(stream_entries(redis_server)) == 5), stream_entries(redis_server)
    assert [e["event_id"] for e in stream_entries(redis_server)] == [f"jr-{i}" for i in range(5)]
    assert metric("trackgate_exporter_failed_records_total") == 0


@pytest.mark.slow
def test_mixed_batch_accepts_the_valid_and_names_the_invalid(
    gateway_factory: type[Gateway], redis_server: RedisServer
) -> None:
    gw = gateway_factory(redis_config(redis_server))
    body = orjson.dumps(
        [
            {"event_type": "job_started", "job_id": "a"},
            {"job_id": "b"},
            {"event_type": "job_failed", "job_id": "c", "data": {"error": "boom"}},
            {"event_type": "x", "timestamp": "never"},
        ]
    )
    status, answer = post(gw.url, body)
    assert status == 200, answer
    assert answer["accepted"] == 2
    partial = answer["partialSuccess"]
    assert partial["rejectedEvents"] == 2
    assert [(e["index"], e["reason"]) for e in partial["errors"]] == [
        (1, "event_type is missing"),
        (3, 'timestamp "never" is neither RFC 3339 nor epoch s/ms/us/ns'),
    ]
    assert wait_until(lambda: len(stream_entries(redis_server)) == 2)
    assert [e["job_id"] for e in stream_entries(redis_server)] == ["a", "c"]
    # Nothing valid: 400, every reason listed, nothing queued.
    status, answer = post(gw.url, b'[{"job_id": "z"}]')
    assert status == 400 and answer["partialSuccess"]["errors"][0]["index"] == 0
    status, answer = post(gw.url, b"{not json")
    assert status == 400
    status, _ = post(gw.url, b"[]", {"Content-Type": "image/png"})
    assert status == 415
    time.sleep(0.3)  # the batch delay: a wrongly queued event would show by now
    assert len(stream_entries(redis_server)) == 2


@pytest.mark.slow
def test_events_need_the_bearer_token(gateway_factory: type[Gateway], redis_server: RedisServer) -> None:
    gw = gateway_factory('[server]\ntokens = ["s3cret"]\n' + redis_config(redis_server))
    status, _ = post(gw.url, b'{"event_type": "job_started"}')
    assert status == 401
    status, _ = post(gw.url, b'{"event_type": "job_started"}', {"Authorization": "Bearer nope"})
    assert status == 401
    status, answer = post(gw.url, b'{"event_type": "job_started"}', {"Authorization": "Bearer s3cret"})
    assert status == 200 and answer["accepted"] == 1


@pytest.mark.slow
def test_without_redis_events_go_to_the_otlp_exporters(gateway_factory: type[Gateway], upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream) + "\n[sampling]\nlogs = 0.0\nkeep_errors = false\n")
    status, answer = post(gw.url, orjson.dumps([{"event_type": "job_started", "job_id": f"j{i}"} for i in range(20)]))
    assert status == 200 and answer["accepted"] == 20
    # Never sampled, even with logs sampled out entirely.
    assert upstream.wait_for(lambda up: len(up.log_records()) >= 20)
    assert sorted(r.event_name for r in upstream.log_records()) == ["job_started"] * 20


def numbered_events(job: str, start: int, n: int) -> list[dict[str, Any]]:
    return [
        {"event_type": "job_progress", "job_id": job, "event_id": f"{job}-{i}", "data": {"seq": i}}
        for i in range(start, start + n)
    ]


def in_order_per_job(entries: list[dict[str, str]]) -> bool:
    """Each job's events in increasing seq, duplicates (a redelivered batch) aside."""
    last: dict[str, int] = {}
    seen: set[str] = set()
    for e in entries:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        seq = orjson.loads(e["data"])["seq"]
        if seq <= last.get(e["job_id"], -1):
            return False
        last[e["job_id"]] = seq
    return True


@pytest.mark.slow
def test_redis_outage_buffers_on_disk_and_delivers_in_order(
    gateway_factory: type[Gateway], redis_server: RedisServer
) -> None:
    gw = gateway_factory(redis_config(redis_server, batch="max_records = 7"))
    jobs = ["ja", "jb", "jc"]
    for i in range(0, 30, 5):
        for job in jobs:
            assert post(gw.url, orjson.dumps(numbered_events(job, i, 5)))[0] == 200
    assert wait_until(lambda: len(stream_entries(redis_server)) >= 90)
    before = stream_entries(redis_server)
    redis_server.stop()
    # Redis is down: events are still accepted (they wait in the disk queue).
    for i in range(30, 60, 5):
        for job in jobs:
            status, answer = post(gw.url, orjson.dumps(numbered_events(job, i, 5)))
            assert status == 200, answer
    time.sleep(0.5)  # a few failed attempts
    redis_server.start()
    assert wait_until(lambda: len(stream_entries(redis_server)) >= 90), len(stream_entries(redis_server))
    after = stream_entries(redis_server)
    delivered = {e["event_id"] for e in before + after}
    assert delivered == {f"{job}-{i}" for job in jobs for i in range(60)}
    assert in_order_per_job(before + after)


@pytest.mark.slow
def test_kill_9_delivers_every_acknowledged_event(gateway_factory: type[Gateway], redis_server: RedisServer) -> None:
    gw = gateway_factory(redis_config(redis_server, batch="max_records = 20"))
    acked: list[str] = []
    stop = threading.Event()

    def load(job: str) -> None:
        i = 0
        while not stop.is_set() and i < 50_000:
            try:
                status, _ = post(gw.url, orjson.dumps(numbered_events(job, i, 10)), timeout=2)
            except OSError:
                return  # the gateway is gone
            if status == 200:
                acked.extend(f"{job}-{j}" for j in range(i, i + 10))
            i += 10

    threads = [threading.Thread(target=load, args=(job,)) for job in ("k1", "k2")]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(acked) >= 300)
    gw.kill()
    stop.set()
    for t in threads:
        t.join()
    gw.start()
    wanted = set(acked)
    assert wait_until(lambda: wanted <= {e["event_id"] for e in stream_entries(redis_server)}), len(
        wanted - {e["event_id"] for e in stream_entries(redis_server)}
    )
    assert in_order_per_job(stream_entries(redis_server))


@pytest.mark.slow
def test_an_otlp_log_with_event_type_reaches_the_stream(
    gateway_factory: type[Gateway], redis_server: RedisServer
) -> None:
    gw = gateway_factory(redis_config(redis_server))
    logs = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "ocr"}}]},
                "scopeLogs": [
                    {
                        "logRecords": [
                            {"body": {"stringValue": "an ordinary line"}},
                            {
                                "timeUnixNano": "1714564800000000000",
                                "body": {"stringValue": "job done"},
                                "attributes": [
                                    {"key": "event_type", "value": {"stringValue": "jobCompleted"}},
                                    {"key": "job.id", "value": {"stringValue": "j-77"}},
                                    {"key": "duration_ms", "value": {"intValue": "900"}},
                                ],
                            },
                            {"body": {"stringValue": '{"event_type": "job_failed", "jobId": "j-78", "error": "oom"}'}},
                            {"attributes": [{"key": "event_type", "value": {"stringValue": "not_a_lifecycle_type"}}]},
                        ]
                    }
                ],
            }
        ]
    }
    status, _, _ = call(gw.url + "/v1/logs", orjson.dumps(logs), {"Content-Type": "application/json"})
    assert status == 200
    assert wait_until(lambda: len(stream_entries(redis_server)) >= 2)
    time.sleep(0.2)
    entries = stream_entries(redis_server)
    assert [(e["event_type"], e["job_id"]) for e in entries] == [("job_completed", "j-77"), ("job_failed", "j-78")]
    assert entries[0]["service"] == "ocr"
    assert entries[0]["time_unix_nano"] == "1714564800000000000"
    assert orjson.loads(entries[0]["data"]) == {"duration_ms": 900}
    assert orjson.loads(entries[1]["data"]) == {"error": "oom"}


def test_events_tail_filters_by_job_and_reads_as_a_group(redis_server: RedisServer, capsys) -> None:
    from trackgate.cli import main

    client = redis_server.client()
    for job, seq in [("a", 1), ("b", 1), ("a", 2)]:
        client.xadd(STREAM, {"event_id": f"{job}{seq}", "event_type": "job_progress", "job_id": job, "data": "{}"})
    argv = ["events", "tail", "--url", redis_server.url, "--from-start", "--job", "a", "--count", "2"]
    assert main(argv) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event_id"], e["data"]) for e in lines] == [("a1", {}), ("a2", {})]
    assert main(["events", "tail", "--url", redis_server.url, "--group", "ops", "--from-start", "--count", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert client.xpending(STREAM, "ops")["pending"] == 0


def test_events_tail_reads_every_per_type_stream(redis_server: RedisServer, tmp_path, capsys) -> None:
    from trackgate.cli import main

    client = redis_server.client()
    # Explicit ids: within one millisecond, entries of different streams cannot be ordered.
    for ms, (stream, event_id) in enumerate(
        [("bus:job_started", "s1"), ("bus:job_progress", "p1"), ("bus:job_completed", "c1")]
    ):
        fields = {"event_id": event_id, "event_type": stream.split(":")[1], "job_id": "j", "data": "{}"}
        client.xadd(stream, fields, id=f"{1000 + ms}-0")
    client.hset("bus:jobs", "j", "1")  # not a stream: SCAN's TYPE filter leaves it out
    client.xadd("busy:job_started", {"event_id": "other-prefix"})
    config = tmp_path / "tail.toml"
    config.write_text(redis_config(redis_server, 'stream_prefix = "bus"\nper_type = true'))
    assert main(["events", "tail", "--config", str(config), "--from-start", "--count", "3"]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event_id"] for e in lines] == ["s1", "p1", "c1"], "every type's stream, in arrival order"
    argv = ["events", "tail", "--config", str(config), "--stream", "bus:job_completed", "--from-start", "--count", "1"]
    assert main(argv) == 0
    assert [orjson.loads(line)["event_id"] for line in capsys.readouterr().out.splitlines()] == ["c1"]


def test_events_tail_per_type_sees_new_entries_and_new_types(redis_server: RedisServer) -> None:
    import io

    from trackgate.events_tail import tail

    client = redis_server.client()
    client.xadd("bus:job_started", {"event_id": "before", "job_id": "j"})
    out = io.StringIO()
    tailing = threading.Thread(
        target=tail,
        args=(redis_server.client(), "bus"),
        kwargs={"per_type": True, "count": 2, "block_ms": 100, "rescan_s": 0.1, "out": out},
        daemon=True,
    )
    tailing.start()
    assert wait_until(lambda: any(c["cmd"] == "xread" for c in client.client_list()), timeout=10)
    client.xadd("bus:job_started", {"event_id": "after", "job_id": "j"})
    client.xadd("bus:job_failed", {"event_id": "first-failure", "job_id": "j"})  # a type not seen before
    tailing.join(10)
    assert not tailing.is_alive()
    assert sorted(orjson.loads(line)["event_id"] for line in out.getvalue().splitlines()) == ["after", "first-failure"]


def test_events_tail_refuses_job_with_group(redis_server: RedisServer, capsys) -> None:
    from trackgate.cli import main
    from trackgate.events_tail import tail

    client = redis_server.client()
    client.xadd(STREAM, {"event_id": "b1", "job_id": "b"})
    argv = ["events", "tail", "--url", redis_server.url, "--group", "ops", "--job", "a", "--from-start", "--count", "1"]
    assert main(argv) == 2
    assert "--job cannot be combined with --group" in capsys.readouterr().err
    with pytest.raises(ValueError, match="lost to them"):
        tail(client, STREAM, group="ops", job="a", count=1)
    assert client.xinfo_groups(STREAM) == [], "refused before joining (or creating) the group"


def test_events_tail_in_a_group_takes_only_what_it_prints(redis_server: RedisServer, capsys) -> None:
    from trackgate.cli import main

    client = redis_server.client()
    for n in range(5):
        client.xadd(STREAM, {"event_id": f"e{n}", "job_id": "j"})
    assert main(["events", "tail", "--url", redis_server.url, "--group", "ops", "--from-start", "--count", "2"]) == 0
    assert [orjson.loads(line)["event_id"] for line in capsys.readouterr().out.splitlines()] == ["e0", "e1"]
    assert client.xpending(STREAM, "ops")["pending"] == 0
    rest = client.xreadgroup("ops", "worker-1", {STREAM: ">"}, count=10)
    assert [fields["event_id"] for _s, entries in rest for _id, fields in entries] == ["e2", "e3", "e4"]


def test_events_tail_in_a_group_over_per_type_streams_takes_only_what_it_prints(redis_server: RedisServer) -> None:
    import io

    from trackgate.events_tail import tail

    client = redis_server.client()
    streams = ["bus:job_started", "bus:job_progress", "bus:job_completed"]
    for n in range(3):
        for stream in streams:
            client.xadd(stream, {"event_id": f"{stream.split(':')[1]}-{n}", "job_id": "j"})
    out = io.StringIO()
    assert tail(redis_server.client(), "bus", per_type=True, group="ops", from_start=True, count=4, out=out) == 4
    assert len(out.getvalue().splitlines()) == 4
    assert sum(client.xpending(stream, "ops")["pending"] for stream in streams) == 0
    rest = client.xreadgroup("ops", "worker-1", dict.fromkeys(streams, ">"), count=10)
    assert sum(len(entries) for _s, entries in rest) == 5, "the other members get the rest"


@pytest.mark.slow
def test_bench_signal_events_fills_the_stream(gateway_factory: type[Gateway], redis_server: RedisServer) -> None:
    import subprocess
    import sys

    gw = gateway_factory(redis_config(redis_server))
    argv = [sys.executable, "-m", "trackgate", "bench", "--url", gw.url, "--signal", "events"]
    run = subprocess.run([*argv, "--duration", "1", "--records", "10"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "records/s" in run.stdout
    assert wait_until(lambda: len(stream_entries(redis_server)) >= 10)
    refused = subprocess.run([*argv, "--protocol", "grpc"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "HTTP only" in refused.stderr


def test_the_apps_answer_stands_when_the_job_count_fails(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """The app's path (`server.otlp_front = false`, or relayed): events already durable are
    answered 200 though the job metrics' intake raises, as the front answers them."""
    config = tmp_path / "trackgate.toml"
    config.write_text(f'[storage]\ndir = "{tmp_path / "data"}"\n')
    body = orjson.dumps({"event_type": "job_started", "event_id": "ev-1", "job_id": "j-1"})
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    def count(_: object) -> None:
        raise RuntimeError("shared state gone")

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    with Pipeline(load(config), register_metrics=False) as pipeline:
        receiver = EventsReceiver(pipeline, None, 1 << 20)
        receiver.on_accepted, receiver.on_accepted_blocks = count, False
        response = asyncio.run(
            receiver.handle(Request({"method": "POST", "path": "/v1/events", "headers": headers}, receive))
        )
        assert (response.status, orjson.loads(response.body)) == (200, {"accepted": 1, "event_ids": ["ev-1"]})
        assert pipeline.core.stats()["logs_accepted_records"] == 1
    assert "job metrics intake failed" in caplog.text
