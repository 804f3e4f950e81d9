#!/usr/bin/env bash
# The latency tail at a paced load: an upstream answering 200 (the null app), one gateway
# (2 workers, defaults plus STORAGE lines under [storage]), then paced runs back to back on it
# (RUNS, default "1 2"; RATE requests/s, default 1750; SECS, default 8). Per run: bench's row,
# then the gateway's CPU ms and context switches (all threads) per request. HOOK=script runs
# `script DIR RUN` beside each run (a profiler); the gateway's files and /metrics scrapes stay
# in OUT (default a temp dir). For a before/after, run it twice with PYTHONPATH pointing the
# second at a copy of the other build's python/ (extension included).
#   bash benches/tail_runs.sh TAG [STORAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=$1; storage=${2:-}
OUT=${OUT:-$(mktemp -d)}  # kept: the gateway's files and /metrics scrapes
source benches/lib.sh
null_app 1
port=$(free)
cat > "$tmp/trackgate.toml" <<TOML
[storage]
dir = "$tmp/data"
$storage
[exporters.otlp]
endpoint = "$null_url"
TOML
setsid $py -m trackgate serve --config "$tmp/trackgate.toml" --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$(free)" --workers 2 > "$tmp/gateway.log" 2>&1 &
pids+=($!)
echo $! > "$tmp/gw.pid"
url=http://127.0.0.1:$port
echo "$url" > "$tmp/url"
wait_healthy "$url/healthz"
sleep 1
snap() { # cpu ticks and context switches of the gateway's processes (all threads)
  local gw; gw=$(cat "$tmp/gw.pid"); local t=0 c=0
  for p in $gw $(pgrep -P $gw); do
    t=$((t + $(awk '{print $14+$15}' /proc/$p/stat)))
    for f in /proc/$p/task/*/status; do c=$((c + $(awk '/ctxt_switches/{s+=$2} END{print s}' $f 2>/dev/null || echo 0))); done
  done
  echo "$t $c"
}
for r in ${RUNS:-1 2}; do
  s0=$(snap)
  echo "# run $r load $(cut -d' ' -f1-3 /proc/loadavg)"
  hp=""; if [ -n "${HOOK:-}" ]; then bash "$HOOK" "$tmp" "$r" & hp=$!; fi
  $py -m trackgate bench --no-progress --duration ${SECS:-8} --json --url "$url" --signal logs --records 100 --connections 64 --rate ${RATE:-1750} ${BENCH_ARGS:-} | $py benches/bench_row.py "$tag run $r"
  s1=$(snap)
  echo "$s0 $s1" | awk -v n=$(( ${RATE:-1750} * ${SECS:-8} )) -v tag="$tag run $r" '{printf "## %s: cpu ms/request %.3f, context switches/request %.2f\n", tag, ($3-$1)*10/n, ($4-$2)/n}'
  curl -s "$url/metrics" > "$tmp/metrics.$r"
  [ -n "$hp" ] && { wait $hp || true; }
done
