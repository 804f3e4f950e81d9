"""A failing queue disk as the kernel reports it: `fdatasync` and `pread64` on queue segment files
fail with EIO while a flag file exists, through an LD_PRELOAD shim compiled here. (The Rust tests
inject the same faults inside the queue, including concurrent writers sharing one fsync.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import dash0_config
from http_client import call
from test_durability import names, numbered, post, status_of
from upstream import Reply, Upstream

pytestmark = pytest.mark.slow

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* True while $TG_FAULTS/<call> exists and fd is a queue segment (seg-*.tgq). */
static int faulty(int fd, const char *call) {
    const char *dir = getenv("TG_FAULTS");
    char link[64], path[PATH_MAX], flag[PATH_MAX];
    if (!dir) return 0;
    snprintf(flag, sizeof flag, "%s/%s", dir, call);
    if (access(flag, F_OK) != 0) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    const char *base = strrchr(path, '/');
    return base && strncmp(base + 1, "seg-", 4) == 0;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (faulty(fd, "fdatasync")) { errno = EIO; return -1; }
    return real(fd);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    /* Recovery reads each segment whole from offset 0; payloads are read back at theirs. */
    if (offset > 0 && faulty(fd, "pread64")) { errno = EIO; return -1; }
    return real(fd, buf, count, offset);
}
"""


@pytest.fixture(scope="session")
def fault_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the fault-injection shim")
    out = tmp_path_factory.mktemp("shim")
    (out / "faults.c").write_text(SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out / "faults.so"), str(out / "faults.c"), "-ldl"],
                   check=True)  # fmt: skip
    return out / "faults.so"


@pytest.fixture
def faults(tmp_path: Path, fault_shim: Path) -> tuple[Path, dict[str, str]]:
    """The flag directory (touch `fdatasync` or `pread64` there) and the gateway's environment."""
    flags = tmp_path / "faults"
    flags.mkdir()
    return flags, {"LD_PRELOAD": str(fault_shim), "TG_FAULTS": str(flags)}


def metric(url: str, name: str) -> float:
    text = call(url + "/metrics", timeout=5)[2].decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0] == name]
    return values[0] if values else 0.0


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_unreadable_entries_hold_delivery_and_readiness_until_they_read(
    gateway_factory, upstream: Upstream, faults: tuple[Path, dict[str, str]]
) -> None:
    flags, env = faults
    upstream.default = Reply(503)
    gw = gateway_factory(dash0_config(upstream, "[server]\nshutdown_grace_s = 0.5\n"), env=env)
    for i in range(0, 50, 10):
        assert post(gw.url, numbered(i, 10))[0] == 200
    assert gw.stop() == 0  # nothing was delivered: it all waits on disk
    (flags / "pread64").touch()
    upstream.default = Reply(200)
    gw.start()  # recovery reads the segments whole, from offset 0: not affected

    assert eventually(lambda: metric(gw.url, "trackgate_queue_read_errors_total") > 0)
    assert status_of(gw.url + "/readyz") == 503
    assert status_of(gw.url + "/healthz") == 200
    assert not upstream.delivered(), "an entry that was not read was handed out"
    assert "reading the queue failed" in gw.log()

    (flags / "pread64").unlink()
    expected = {f"rec-{i}" for i in range(50)}
    assert upstream.wait_for(lambda u: set(names(u)) >= expected, timeout=20), sorted(expected - set(names(upstream)))
    assert eventually(lambda: status_of(gw.url + "/readyz") == 200)
    assert "delivery resumed" in gw.log()


def test_a_failed_fsync_answers_503_and_a_new_segment_takes_over(
    gateway_factory, upstream: Upstream, faults: tuple[Path, dict[str, str]]
) -> None:
    flags, env = faults
    gw = gateway_factory(dash0_config(upstream), env=env)
    assert post(gw.url, numbered(0, 10))[0] == 200
    (flags / "fdatasync").touch()
    for i in (10, 20):  # the append's fsync fails, then the new segment's header fsync does
        status, headers = post(gw.url, numbered(i, 10))
        assert status == 503 and headers["retry-after"] == "5"
    assert metric(gw.url, "trackgate_queue_storage_errors_total") >= 2
    (flags / "fdatasync").unlink()
    assert post(gw.url, numbered(30, 10))[0] == 200
    acked = {f"rec-{i}" for i in (*range(10), *range(30, 40))}
    # The refused requests may arrive too (they were written, never acknowledged): at least once.
    assert upstream.wait_for(lambda u: set(names(u)) >= acked, timeout=20), sorted(acked - set(names(upstream)))
    assert "queue storage failed" in gw.log()


def test_events_a_failed_fsync_refuses_answers_503_and_is_logged(
    gateway_factory, upstream: Upstream, faults: tuple[Path, dict[str, str]]
) -> None:
    """`/v1/events` (answered by the front): no 200 for events whose fsync failed."""
    flags, env = faults
    gw = gateway_factory(dash0_config(upstream), env=env)
    url, headers = gw.url + "/v1/events", {"Content-Type": "application/json"}

    def send(i: int) -> tuple[int, dict[str, str], bytes]:
        event = {"event_type": "job_started", "event_id": f"ev-{i}", "job_id": f"j-{i}"}
        return call(url, json.dumps(event).encode(), headers)

    assert send(0)[0] == 200
    (flags / "fdatasync").touch()
    status, answer_headers, body = send(1)
    assert (status, answer_headers.get("retry-after")) == (503, "5")
    assert json.loads(body) == {"error": "queue storage unavailable; retry later"}
    (flags / "fdatasync").unlink()
    assert send(2)[0] == 200
    failed = [json.loads(line) for line in gw.log().splitlines() if '"queue storage failed"' in line]
    assert "trackgate.receiver.events" in [line["logger"] for line in failed], failed


def test_sentry_a_failed_fsync_refuses_answers_503_and_is_logged(
    gateway_factory, upstream: Upstream, faults: tuple[Path, dict[str, str]]
) -> None:
    """A Sentry envelope (answered by the front, key in X-Sentry-Auth): no 200 for one whose
    fsync failed, and the envelope refused is not counted as accepted."""
    flags, env = faults
    gw = gateway_factory(dash0_config(upstream), env=env)
    url = gw.url + "/api/7/envelope/"
    headers = {
        "Content-Type": "application/x-sentry-envelope",
        "X-Sentry-Auth": "Sentry sentry_version=7, sentry_key=anykey",  # a loopback listener takes any key
    }

    def send(i: int) -> tuple[int, dict[str, str], bytes]:
        event_id = f"{i:032x}"
        event = json.dumps({"event_id": event_id, "message": f"error {i}", "level": "error"}).encode()
        item = json.dumps({"type": "event", "length": len(event)}).encode()
        body = json.dumps({"event_id": event_id}).encode() + b"\n" + item + b"\n" + event + b"\n"
        return call(url, body, headers)

    accepted = 'trackgate_sentry_envelopes_total{outcome="accepted"}'
    status, answer_headers, body = send(0)
    assert status == 200 and answer_headers.get("server") != "granian", body
    (flags / "fdatasync").touch()
    status, answer_headers, body = send(1)
    assert (status, answer_headers.get("retry-after")) == (503, "5")
    assert json.loads(body) == {"detail": "queue storage unavailable; retry later"}
    assert metric(gw.url, accepted) == 1
    (flags / "fdatasync").unlink()
    assert send(2)[0] == 200
    assert metric(gw.url, accepted) == 2
    failed = [json.loads(line) for line in gw.log().splitlines() if '"queue storage failed"' in line]
    assert "trackgate.receiver.sentry" in [line["logger"] for line in failed], failed
