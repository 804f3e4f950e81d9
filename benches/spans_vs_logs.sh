#!/usr/bin/env bash
# Issue 11's ratio: 1,000 gzipped spans per request against 100-record logs, interleaved, each
# build's gateway at defaults (2 workers, disk queue, fsync always, the null app as
# [exporters.otlp]). BASE=dir runs a second gateway with that copy of the package first on
# PYTHONPATH (e.g. a copy of python/trackgate holding the base build's extension), alternated
# with this tree's. PERF=1: `perf record -g` of one worker of each gateway during its spans row,
# top symbols printed.
#   [BASE=/tmp/base] [PERF=1] bash benches/spans_vs_logs.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-2}
source benches/lib.sh
gateway() { # name, PYTHONPATH -> sets $url $gw_pid
  local name=$1 path=$2 port
  port=$(free)
  mkdir -p "$tmp/$name"
  printf '[storage]\ndir = "%s"\n[exporters.otlp]\nendpoint = "%s"\n' "$tmp/$name/data" "$upstream" \
    > "$tmp/$name/trackgate.toml"
  PYTHONPATH=$path setsid $py -m trackgate serve --config "$tmp/$name/trackgate.toml" \
    --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$(free)" --workers 2 > "$tmp/$name/gateway.log" 2>&1 &
  pids+=($!)
  gw_pid=$!
  url=http://127.0.0.1:$port
  wait_healthy "$url/healthz"
}
bench() { # name, url, args...
  local name=$1 url=$2; shift 2
  $py -m trackgate bench --no-progress --duration "$secs" --json --url "$url" "$@" | $py benches/bench_row.py "$name"
}
spans() { # name, url, gateway pid: the spans row, profiled with PERF=1
  local name=$1 url=$2 gw=$3 worker perf_pid
  if [ "${PERF:-}" = 1 ]; then
    # A worker: the serve process's session's newest process (workers start after it).
    worker=$(pgrep -s "$(ps -o sid= -p "$gw" | tr -d ' ')" | sort -n | tail -1)
    (sleep 2; perf record -q -F 499 -g -p "$worker" -o "$tmp/$name.perf" -- sleep $((secs - 3)) > /dev/null 2>&1) &
    perf_pid=$!
  fi
  bench "$name: 1,000 spans gzip" "$url" --signal traces --records 1000 --gzip --connections 64
  if [ "${PERF:-}" = 1 ]; then
    wait "$perf_pid" || true
    echo "# perf, $name, worker $worker: top symbols (self %)"
    { perf report -i "$tmp/$name.perf" --no-children --stdio --percent-limit 1.5 2> /dev/null \
      | grep -E '^ +[0-9.]+%' | head -20; } || true
  fi
}

null_app 1; upstream=$null_url
names=(new); urls=(); gws=()
gateway new ""; urls+=("$url"); gws+=("$gw_pid")
if [ -n "${BASE:-}" ]; then
  names=(base new)
  gateway base "$BASE"; urls=("$url" "${urls[0]}"); gws=("$gw_pid" "${gws[0]}")
fi
echo "# $(date -u +%FT%TZ), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| what | requests/s | records/s | p50 ms | p99 ms | server CPU | server RSS peak | statuses |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for r in $(seq "$rounds"); do
  for i in "${!names[@]}"; do
    bench "${names[$i]}: logs 100 (round $r)" "${urls[$i]}" --signal logs --records 100 --connections 64
    spans "${names[$i]} (round $r)" "${urls[$i]}" "${gws[$i]}"
  done
done
echo "# end: load average $(cut -d' ' -f1-3 /proc/loadavg)"
