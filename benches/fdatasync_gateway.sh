#!/usr/bin/env bash
# The queue segments' fdatasync latency inside the gateway under load, "base" against "new" (as in
# fsync_ab.sh): one gateway each (fsync "always", 2 workers, upstream answering 200), loaded in
# turn at saturation (64 connections, 100-record OTLP logs, SECS seconds) while strace times every
# fdatasync of a seg-*.tgq file (spare.tmp and the ledger are left out), ROUNDS rounds. strace stops
# every syscall of the traced workers, so the throughput rows are far below fsync_ab.sh: read only
# the fdatasync lines.
#   BASE=/path/to/base/python bash benches/fdatasync_gateway.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECS:-8}; rounds=${ROUNDS:-2}
source benches/lib.sh
null_app 1
declare -A url gpid
for b in base new; do
  port=$(free); d=$tmp/$b; mkdir -p $d
  printf '[storage]\ndir = "%s/data"\nfsync = "always"\n[exporters.otlp]\nendpoint = "%s"\n' $d $null_url > $d/trackgate.toml
  if [ $b = base ]; then pp=${BASE:?set BASE to a copy of the other build python dir}; else pp=; fi
  PYTHONPATH=$pp setsid $py -m trackgate serve --config $d/trackgate.toml --listen 127.0.0.1:$port --grpc-listen 127.0.0.1:$(free) --workers 2 > $d/gateway.log 2>&1 &
  pids+=($!); gpid[$b]=$!
  url[$b]=http://127.0.0.1:$port
done
for k in "${!url[@]}"; do wait_healthy "${url[$k]}/healthz"; done
sleep 1
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq $rounds); do for k in base new; do
  workers=$(pgrep -g "${gpid[$k]}" | tr '\n' ' ')
  trace=$tmp/$k-$r.strace
  strace -f -qq -e trace=fdatasync -T -y $(printf -- '-p %s ' $workers) -o $trace &
  st=$!; sleep 0.5
  $py -m trackgate bench --no-progress --duration $secs --json --url ${url[$k]} --signal logs --records 100 --connections 64 | $py benches/bench_row.py "$k (round $r)"
  kill -INT $st; wait $st 2>/dev/null || true
  $py - "$trace" "$k (round $r)" <<'PY'
import re, statistics, sys
ms = sorted(float(m.group(1)) * 1000 for line in open(sys.argv[1])
            if "seg-" in line and (m := re.search(r"<(\d+\.\d+)>\s*$", line)))
if ms:
    pick = lambda p: ms[min(len(ms) - 1, int(p / 100 * len(ms)))]
    print(f"#   {sys.argv[2]}: {len(ms)} segment fdatasyncs, p50 {statistics.median(ms):.2f} ms, p90 {pick(90):.2f} ms, p99 {pick(99):.2f} ms")
PY
done; echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"; done
