"""Queue frames stored as LZ4 blocks (`storage.compression`, default "lz4") end to end: fewer bytes
on disk for the same records, nothing lost to a kill -9 whichever setting wrote the queue and
whichever reads it, and the group-commit counters in /metrics."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from conftest import Gateway, dash0_config
from test_durability import names, numbered, post
from upstream import Reply, Upstream

pytestmark = pytest.mark.slow


def metric(gw: Gateway, name: str) -> float:
    text = urllib.request.urlopen(gw.url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)


def queued_bytes(tmp_path: Path) -> int:
    return sum(p.stat().st_size for p in (tmp_path / "trackgate-data" / "queue").glob("*/seg-*.tgq"))


@pytest.mark.parametrize(("first", "then"), [("lz4", "none"), ("none", "lz4")])
def test_kill_9_loses_nothing_across_a_change_of_compression(
    gateway_factory, upstream: Upstream, tmp_path: Path, first: str, then: str
) -> None:
    upstream.default = Reply(503, {"Retry-After": "1"})  # nothing drains: everything stays queued
    gw: Gateway = gateway_factory(dash0_config(upstream, f'[storage]\ncompression = "{first}"\n'))
    acked: set[str] = set()
    sent = 0
    for i in range(0, 2000, 50):
        body = numbered(i, 50)
        assert post(gw.url, body)[0] == 200
        sent += len(body)
        acked |= {f"rec-{j}" for j in range(i, i + 50)}
    on_disk = queued_bytes(tmp_path)
    if first == "lz4":
        assert on_disk < sent / 2, (on_disk, sent)
    else:
        assert on_disk > sent * 0.8, (on_disk, sent)
    # Under fsync "always" every 200 waited for a group fsync that covered it.
    assert metric(gw, "trackgate_queue_synced_appends_total") >= 40
    assert 1 <= metric(gw, "trackgate_queue_fsyncs_total") <= metric(gw, "trackgate_queue_synced_appends_total") + 2
    assert metric(gw, "trackgate_queue_fsync_seconds_total") > 0
    gw.kill()

    gw.config_path.write_text(dash0_config(upstream, f'[storage]\ncompression = "{then}"\n'))
    upstream.default = Reply(200)
    gw.start()
    assert upstream.wait_for(lambda u: acked <= set(names(u)), timeout=60), (
        f"missing {len(acked - set(names(upstream)))} of {len(acked)} acknowledged records"
    )
    assert metric(gw, "trackgate_queue_damaged_entries_total") == 0
