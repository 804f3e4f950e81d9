"""Overload: offer far more than the destination takes and watch the gateway's memory.

Starts `trackgate serve` with a disk queue bounded at --queue-mib, a stand-in destination that
answers 503 (so nothing drains), and --clients threads posting OTLP traces as fast as they can for
--seconds. Reports answers by status and the gateway's peak RSS (all its processes, from /proc).

    .venv/bin/python benches/overload.py --seconds 20 --clients 8 --queue-mib 64
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import free_port
from upstream import Reply, Upstream


def body(n: int = 500) -> bytes:
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i in range(n):
        s = spans.spans.add()
        s.trace_id, s.span_id, s.name = os.urandom(16), os.urandom(8), f"op-{i % 50}"
        s.attributes.add(key="job.id").value.string_value = f"job-{i}"
    return msg.SerializeToString()


def rss_kib(pgid: int) -> int:
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError):
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--queue-mib", type=int, default=64)
    ap.add_argument("--fsync", choices=["always", "interval", "never"], default="always")
    args = ap.parse_args()

    up = Upstream()
    up.default = Reply(503, {"Retry-After": "30"})
    tmp = Path(tempfile.mkdtemp(prefix="trackgate-overload-"))
    port = free_port()
    (tmp / "c.toml").write_text(
        f'[storage]\nmax_bytes = {args.queue_mib << 20}\nfsync = "{args.fsync}"\n'
        f'[exporters.otlp]\nendpoint = "{up.url}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "trackgate", "serve", "--config", str(tmp / "c.toml"), "--listen", f"127.0.0.1:{port}"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1/traces"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    payload = body()
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def client() -> None:
        while time.monotonic() < deadline:
            req = urllib.request.Request(url, data=payload, headers={"Content-Type": "application/x-protobuf"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    code = resp.status
            except urllib.error.HTTPError as err:
                code = err.code
            except OSError:
                code = 0
            with lock:
                statuses[code] += 1

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    baseline = rss_kib(proc.pid)
    for t in threads:
        t.start()
    peak = baseline
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_kib(proc.pid))
        time.sleep(0.2)
    queue_bytes = sum(f.stat().st_size for f in (tmp / "trackgate-data" / "queue").rglob("*") if f.is_file())
    os.killpg(proc.pid, signal.SIGKILL)
    up.close()
    print(
        f"offered for {args.seconds:.0f}s by {args.clients} clients, {len(payload)} B requests of 500 spans, "
        f"fsync={args.fsync}"
    )
    print(f"answers: {dict(sorted(statuses.items()))}")
    print(
        f"RSS: {baseline / 1024:.1f} MiB idle, {peak / 1024:.1f} MiB peak; queue on disk {queue_bytes / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
