"""CPU seconds of `trackgate serve --workers 2` by thread over one `trackgate bench` run.

Usage: `.venv/bin/python benches/thread_cpu.py NAME [serve options, e.g. --config FILE]`. Loads the
gateway with 100-record OTLP logs from 64 connections for 8 s and prints one line: requests/s,
the gateway's CPU seconds, and its threads' (summed over the workers) from /proc/<pid>/task.
Python threads all show as "python" there: a worker's main thread is its event loop, and the
busiest other Python thread of each worker is the file sink's logs runner (only logs are sent).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_thread(root: int) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    children = subprocess.run(["pgrep", "-P", str(root)], capture_output=True, text=True).stdout.split()
    for pid in [root, *map(int, children)]:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                    stat = fh.read()
            except FileNotFoundError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            if pid == root:
                key = "main"
            elif int(tid) == pid:
                key = "event loop"
            else:
                key = comm if comm != "python" else f"py-thread {tid}"
            out[key] += (int(fields[11]) + int(fields[12])) / TICK
    return out


def main() -> None:
    name, serve_args = sys.argv[1], sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        port = 18000 + os.getpid() % 1000
        argv = [sys.executable, "-m", "trackgate", "serve", "--listen", f"127.0.0.1:{port}",
                "--grpc-listen", f"127.0.0.1:{port + 1}", "--workers", "2", *serve_args]  # fmt: skip
        proc = subprocess.Popen(
            argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            for _ in range(300):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    time.sleep(0.1)
            before = cpu_by_thread(proc.pid)
            url = f"http://127.0.0.1:{port}"
            load = [sys.executable, "-m", "trackgate", "bench", "--url", url, "--signal", "logs", "--records", "100",
                    "--connections", "64", "--duration", "8", "--no-progress", "--json"]  # fmt: skip
            bench = subprocess.run(load, capture_output=True, text=True, check=True)
            after = cpu_by_thread(proc.pid)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
    diff = {k: v - before.get(k, 0.0) for k, v in after.items()}
    sink = sum(sorted((v for k, v in diff.items() if k.startswith("py-thread")), reverse=True)[:2])
    diff = {k: v for k, v in diff.items() if not k.startswith("py-thread")} | {"file sink": sink}
    total = sum(diff.values())
    rate = json.loads(bench.stdout)[0]["requests_per_s"]
    top = sorted(diff.items(), key=lambda kv: -kv[1])[:5]
    print(
        f"{name}: {rate:,.0f} req/s, gateway CPU {total:.1f} s; "
        + ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in top)
        + f"; file sink {sink / (rate * 8) * 1e6:.0f} µs per request"
    )


if __name__ == "__main__":
    main()
