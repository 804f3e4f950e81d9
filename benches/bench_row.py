"""One Markdown table row from `trackgate bench --json` on stdin: `bench_row.py NAME [BASE.json ...]`;
each BASE (another run's saved JSON, e.g. a null app's) adds a column: this run's requests/s as a
share of that run's."""

import json
import sys

run = json.load(sys.stdin)[0]
track = run["tracks"][0]
server = run.get("server") or {}
latency = track["latency_ms"]
cells = [
    sys.argv[1],
    f"{run['requests_per_s']:,.0f}",
    f"{run['records_per_s']:,.0f}",
    f"{latency['p50']:.1f}",
    f"{latency['p99']:.1f}",
    f"{server.get('cpu_percent', 0):.0f}%",
    f"{server.get('rss_peak_bytes', 0) / 2**20:.0f} MiB",
    ", ".join(f"{k}: {n:,}" for k, n in track["statuses"].items()),
]
for base in sys.argv[2:]:
    with open(base) as fh:
        cells.append(f"{run['requests_per_s'] / (json.load(fh)[0]['requests_per_s'] or 1.0):.2f}")
print("| " + " | ".join(cells) + " |")
