"""Preallocated queue segments (opt-in: `storage.preallocate = true`) end to end: they take their
full size at once, a kill -9 loses nothing in them, their zero tails are not reported as damage,
and a full disk still answers 503; with it off, segments grow as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Gateway, dash0_config
from test_durability import assert_full_disk_answers_503, names, numbered, post
from upstream import Reply, Upstream

pytestmark = pytest.mark.slow

SEGMENT = 65536
# Frames stored as sent, so that these posts fill segments of a known size.
RAW = 'compression = "none"\n'


def queue_opened(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if '"queue opened"' in line]


def test_kill_9_with_preallocated_segments_loses_nothing(gateway_factory, upstream: Upstream, tmp_path: Path) -> None:
    upstream.default = Reply(503, {"Retry-After": "1"})  # nothing drains: the segments stay
    storage = f"[storage]\nsegment_bytes = {SEGMENT}\npreallocate = true\n{RAW}"
    gw: Gateway = gateway_factory(dash0_config(upstream, storage))
    acked = set()
    for i in range(0, 6000, 50):
        assert post(gw.url, numbered(i, 50))[0] == 200
        acked |= {f"rec-{j}" for j in range(i, i + 50)}
    shard = tmp_path / "trackgate-data" / "queue" / "0"
    sizes = sorted(p.stat().st_size for p in shard.glob("seg-*.tgq"))
    # The first segment grew as written; the ones after it were made whole ahead of time.
    assert sizes.count(SEGMENT) >= 2, sizes
    gw.kill()

    upstream.default = Reply(200)
    gw.start()
    assert upstream.wait_for(lambda u: acked <= set(names(u)), timeout=60), (
        f"missing {len(acked - set(names(upstream)))} of {len(acked)} acknowledged records"
    )
    opened = queue_opened(gw.log())
    assert opened and opened[-1]["level"] == "info", opened[-1:]  # zero tails are no damage


def test_full_disk_with_preallocation_answers_503(gateway_factory, tmp_path: Path) -> None:
    # Segments of 256 KiB: spares are made until the disk has no room for one, then appends run
    # into the full disk.
    storage = f"segment_bytes = 262144\npreallocate = true\n{RAW}"
    assert_full_disk_answers_503(gateway_factory, tmp_path, "2m", storage, per_post=500)


def metric(gw: Gateway, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(gw.url + "/metrics", timeout=10).read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


@pytest.mark.parametrize("preallocate", [True, False])
def test_preallocate_switch(gateway_factory, upstream: Upstream, tmp_path: Path, preallocate: bool) -> None:
    """`storage.preallocate = false`: segments grow as written (no spare, none counted)."""
    upstream.default = Reply(503, {"Retry-After": "1"})  # nothing drains: the segments stay
    storage = f"[storage]\nsegment_bytes = {SEGMENT}\npreallocate = {str(preallocate).lower()}\n{RAW}"
    gw: Gateway = gateway_factory(dash0_config(upstream, storage))
    for i in range(0, 6000, 50):
        assert post(gw.url, numbered(i, 50))[0] == 200
    shard = tmp_path / "trackgate-data" / "queue" / "0"
    sizes = sorted(p.stat().st_size for p in shard.glob("seg-*.tgq"))
    assert len(sizes) >= 3, sizes
    if preallocate:
        assert metric(gw, "trackgate_queue_segments_preallocated_total") >= 1
        assert sizes.count(SEGMENT) >= 1, sizes
    else:
        assert metric(gw, "trackgate_queue_segments_preallocated_total") == 0
        assert not (shard / "spare.tmp").exists()
        assert all(size < SEGMENT for size in sizes), sizes  # each rolled before it was full
