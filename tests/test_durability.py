"""A 200 means the data is on disk and will be delivered: kill -9, outages, a full queue, restarts."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import Gateway, dash0_config
from http_client import call
from upstream import Reply, Upstream

pytestmark = pytest.mark.slow


def numbered(start: int, n: int) -> bytes:
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i in range(start, start + n):
        span = spans.spans.add()
        span.trace_id = (i + 1).to_bytes(16, "big")
        span.span_id = (i + 1).to_bytes(8, "big")
        span.name = f"rec-{i}"
    return msg.SerializeToString()


def post(url: str, body: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
    status, headers, _ = call(url + "/v1/traces", body, {"Content-Type": "application/x-protobuf"}, timeout)
    return status, headers


def status_of(url: str) -> int:
    return call(url, timeout=5)[0]


def names(up: Upstream) -> Counter[str]:
    return Counter(s.name for s in up.spans())


def test_kill_9_loses_nothing_that_got_a_200(gateway_factory, upstream: Upstream, capsys) -> None:
    # The upstream is slow, so plenty is still queued when the gateway dies.
    upstream.default = Reply(200, delay_s=0.05)
    gw: Gateway = gateway_factory(dash0_config(upstream, batch="max_records = 50"))
    acked: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set() and i < 200_000:
            try:
                status, _ = post(gw.url, numbered(i, 10), timeout=2)
            except OSError:
                return  # the gateway is gone
            if status == 200:
                acked.extend(f"rec-{j}" for j in range(i, i + 10))
            i += 10

    client = threading.Thread(target=load)
    client.start()
    deadline = time.monotonic() + 30
    while len(acked) < 3000 and time.monotonic() < deadline:  # kill it mid-run, under load
        time.sleep(0.01)
    gw.kill()
    stop.set()
    client.join(10)
    assert len(acked) >= 100, "the load did not get going"
    delivered_before = sum(names(upstream).values())

    upstream.default = Reply(200)
    gw.start()
    assert upstream.wait_for(lambda u: set(acked) <= set(names(u)), timeout=60), (
        f"missing {len(set(acked) - set(names(upstream)))} of {len(acked)} acknowledged records"
    )
    got = names(upstream)
    duplicates = sum(c - 1 for c in got.values() if c > 1)
    with capsys.disabled():  # reported in the test output, whatever the capture mode
        print(f"\nkill test: {len(acked)} acknowledged, {delivered_before} delivered before the kill, "
              f"{duplicates} delivered twice")  # fmt: skip


def test_outage_of_one_destination_does_not_hold_back_the_other(gateway_factory) -> None:
    down, healthy = Upstream(), Upstream()
    try:
        down.default = Reply(503, {"Retry-After": "1"})
        config = dash0_config(down) + f'\n[exporters.otlp]\nendpoint = "{healthy.url}"\n'
        config += "retry = { initial_interval_s = 0.2, max_interval_s = 1.0 }\n"
        gw = gateway_factory(config)
        for i in range(0, 50, 10):
            assert post(gw.url, numbered(i, 10))[0] == 200
        assert healthy.wait_for(lambda u: len(names(u)) == 50, timeout=10)
        assert not down.delivered()
        down.default = Reply(200)  # the outage ends
        assert down.wait_for(lambda u: set(names(u)) == {f"rec-{i}" for i in range(50)}, timeout=20)
    finally:
        down.close()
        healthy.close()


def test_full_queue_answers_429_then_recovers(gateway_factory, upstream: Upstream) -> None:
    upstream.default = Reply(503, {"Retry-After": "1"})
    config = dash0_config(upstream, "[storage]\nmax_bytes = 4000\n")
    gw = gateway_factory(config)
    results = []
    for i in range(60):  # until the queue is full (how soon depends on storage.compression)
        results.append(post(gw.url, numbered(i * 20, 20)))
        if results[-1][0] == 429:
            break
    statuses = [s for s, _ in results]
    assert statuses[0] == 200 and 429 in statuses
    refused = next(h for s, h in results if s == 429)
    assert int(refused["retry-after"]) >= 1
    assert status_of(gw.url + "/readyz") == 503
    accepted = {f"rec-{i * 20 + j}" for i, s in enumerate(statuses) if s == 200 for j in range(20)}

    upstream.default = Reply(200)  # the destination comes back: the queue drains
    assert upstream.wait_for(lambda u: accepted <= set(names(u)), timeout=20)
    deadline = time.monotonic() + 10
    while status_of(gw.url + "/readyz") != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status_of(gw.url + "/readyz") == 200
    assert post(gw.url, numbered(1000, 5))[0] == 200


def test_a_full_queue_refuses_before_reading_bodies_until_room_is_freed(gateway_factory, upstream: Upstream) -> None:
    # 64 KiB: once a small request is refused, less than 1/64 of the bound is left, and the next
    # requests are refused before they are decoded (a damaged body gets the 429, not its 400).
    upstream.default = Reply(503, {"Retry-After": "1"})
    gw = gateway_factory(dash0_config(upstream, '[storage]\nmax_bytes = 65536\ncompression = "none"\n'))
    accepted: set[str] = set()
    for i in range(2000):
        status, _ = post(gw.url, numbered(i * 5, 5))
        if status == 429:
            break
        assert status == 200
        accepted |= {f"rec-{i * 5 + j}" for j in range(5)}
    else:
        pytest.fail("the queue never filled")
    status, headers = post(gw.url, b"\xff\xff\xff")
    assert status == 429 and int(headers["retry-after"]) >= 1
    upstream.default = Reply(200)  # the queue drains: bodies are read and checked again
    assert upstream.wait_for(lambda u: accepted <= set(names(u)), timeout=20)

    def answered(body: bytes, want: int) -> bool:
        deadline = time.monotonic() + 10
        while (status := post(gw.url, body)[0]) == 429 and time.monotonic() < deadline:
            time.sleep(0.1)
        return status == want

    assert answered(b"\xff\xff\xff", 400)
    assert answered(numbered(100_000, 5), 200)


def test_sigterm_leaves_undelivered_data_for_the_next_start(gateway_factory, upstream: Upstream) -> None:
    upstream.default = Reply(503)
    config = dash0_config(upstream, "[server]\nshutdown_grace_s = 1\n")
    gw = gateway_factory(config)
    assert post(gw.url, numbered(0, 30))[0] == 200
    started = time.monotonic()
    assert gw.stop() == 0
    assert time.monotonic() - started < 15
    assert "stay on disk" in gw.log()
    upstream.default = Reply(200)
    gw.start()
    assert upstream.wait_for(lambda u: set(names(u)) == {f"rec-{i}" for i in range(30)}, timeout=20)


def test_workers_share_nothing_and_orphaned_shards_are_adopted(gateway_factory, upstream: Upstream) -> None:
    upstream.default = Reply(503)
    gw = gateway_factory(dash0_config(upstream, "[storage]\norphan_scan_s = 1\n"), workers=2)
    for i in range(0, 100, 10):
        assert post(gw.url, numbered(i, 10))[0] == 200
    gw.kill()
    shards = sorted(p.name for p in (gw.tmp / "trackgate-data" / "queue").iterdir())
    assert len(shards) >= 1
    upstream.default = Reply(200)
    gw.start(workers=1)  # fewer workers than shards: the spare shards are adopted and drained
    assert upstream.wait_for(lambda u: set(names(u)) == {f"rec-{i}" for i in range(100)}, timeout=40)


def test_non_loopback_listen_without_tokens_is_refused(tmp_path) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "serve", "--listen", "0.0.0.0:4999"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    assert "allow_unauthenticated" in run.stderr and "tokens" in run.stderr


def test_corrupt_segment_is_cut_and_the_rest_delivered(gateway_factory, upstream: Upstream) -> None:
    upstream.default = Reply(503)
    gw = gateway_factory(dash0_config(upstream, "[server]\nshutdown_grace_s = 0.5\n"))
    for i in range(0, 200, 10):  # 20 requests: 20 frames of 10 records each
        assert post(gw.url, numbered(i, 10))[0] == 200
    assert gw.stop() == 0
    (segment,) = [p for p in (gw.tmp / "trackgate-data" / "queue" / "0").glob("seg-*") if p.stat().st_size > 100]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x40  # a bit flip in the middle: one frame fails its checksum
    segment.write_bytes(bytes(data[:-7]))  # and a torn tail: the last frame is cut short

    upstream.default = Reply(200)
    gw.start()
    expected = {f"rec-{i}" for i in range(200)}
    upstream.wait_for(lambda u: len(set(names(u))) >= 180, timeout=20)
    time.sleep(1.0)  # let anything else that would (wrongly) arrive, arrive
    got = set(names(upstream))
    assert got <= expected
    lost = expected - got
    # Exactly the two damaged frames are gone: whole requests of 10, nothing else.
    assert len(lost) == 20, sorted(lost)
    assert "rec-199" in lost  # the torn tail
    log = gw.log()
    assert '"queue opened"' in log and '"level":"warning"' in log


def test_full_disk_answers_503_and_keeps_serving(gateway_factory, tmp_path) -> None:
    assert_full_disk_answers_503(gateway_factory, tmp_path, "1m", "max_bytes = 67108864\n", per_post=1000)


def assert_full_disk_answers_503(gateway_factory, tmp_path: Path, size: str, storage: str, per_post: int) -> None:
    """A queue on a tmpfs of `size` that nothing drains (the destination refuses connections)
    outgrows the disk: the gateway answers 503 with Retry-After, logs why, and keeps serving."""
    import subprocess

    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        config = (
            f'[server]\nshutdown_grace_s = 0.5\n[storage]\ndir = "{disk}"\n{storage}'
            '[exporters.otlp]\nendpoint = "http://127.0.0.1:9"\n'
        )
        gw = gateway_factory(config)
        statuses = []
        for i in range(0, 100_000, per_post):
            status, headers = post(gw.url, numbered(i, per_post))
            statuses.append(status)
            if status != 200:
                break
        assert statuses[0] == 200 and statuses[-1] == 503, statuses
        assert headers["retry-after"] == "5"
        assert status_of(gw.url + "/healthz") == 200
        assert "queue storage failed" in gw.log()
        gw.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_unopenable_orphan_shard_is_skipped_and_the_others_adopted(
    gateway_factory, upstream: Upstream, tmp_path: Path
) -> None:
    import gc

    from trackgate import Pipeline
    from trackgate.config import load

    config = dash0_config(upstream, "[storage]\norphan_scan_s = 1\n")
    root = tmp_path / "trackgate-data" / "queue"
    # Shard 0 cannot be opened (its segment is a directory: EISDIR), shard 2 is a healthy orphan.
    (root / "0" / "seg-00000000000000000001.tgq").mkdir(parents=True)
    (tmp_path / "orphan.toml").write_text(config)
    orphan = Pipeline(load(tmp_path / "orphan.toml"), queue_dir=root / "2", register_metrics=False)
    orphan.ingest("traces", numbered(0, 30))
    orphan.close(0)
    del orphan  # a process that is gone: its lock goes with the core
    gc.collect()
    assert not upstream.delivered()

    gw: Gateway = gateway_factory(config)  # a new worker starts (it skips shard 0)
    assert upstream.wait_for(lambda u: set(names(u)) == {f"rec-{i}" for i in range(30)}, timeout=30)
    deadline = time.monotonic() + 20
    while '"adopted shard drained"' not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = gw.log()
    assert '"adopted shard drained"' in log  # scanned again since: shard 0 was retried
    assert log.count('"queue shard cannot be opened') == 1
    assert post(gw.url, numbered(100, 5))[0] == 200
    assert upstream.wait_for(lambda u: {f"rec-{i}" for i in range(100, 105)} <= set(names(u)))
    assert sorted(p.name for p in root.iterdir()) == ["0", "1", "2"]


def test_a_torn_ledger_slot_is_reported_and_the_older_update_used(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream))
    for i in range(0, 30, 10):
        assert post(gw.url, numbered(i, 10))[0] == 200
    sent = {f"rec-{i}" for i in range(30)}
    assert upstream.wait_for(lambda u: set(names(u)) == sent, timeout=20)
    assert gw.stop() == 0
    # The ledger is two slots (magic, seq u64, ...): tear the newer one, as a crash mid-update does.
    ledger = gw.tmp / "trackgate-data" / "queue" / "0" / "ledger"
    data = bytearray(ledger.read_bytes())
    half = len(data) // 2
    seqs = [
        int.from_bytes(data[at + 8 : at + 16], "little") if data[at : at + 8] == b"TGQLSLT1" else 0 for at in (0, half)
    ]
    newer = 0 if seqs[0] > seqs[1] else half
    data[newer + 24] ^= 0x40
    ledger.write_bytes(bytes(data))

    gw.start()
    assert post(gw.url, numbered(30, 10))[0] == 200
    after = {f"rec-{i}" for i in range(30, 40)}
    assert upstream.wait_for(lambda u: after <= set(names(u)), timeout=20)
    # What the older update had not acked may be delivered again; nothing else arrives.
    assert set(names(upstream)) == sent | after
    opened = [json.loads(line) for line in gw.log().splitlines() if '"queue opened"' in line]
    assert opened[-1]["ledger_torn"] == 1 and opened[-1]["ledger_corrupt"] == 0, opened[-1]
    assert opened[-1]["level"] == "warning", opened[-1]
