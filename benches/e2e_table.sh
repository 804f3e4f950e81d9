#!/usr/bin/env bash
# The issue 11 table, redone with `trackgate bench` as the load: 2 gateway workers, an upstream
# that answers 200 to everything (the null app, 1 worker) as the OTLP exporter, 100-record OTLP
# protobuf logs, 64 connections, the null app with 2 workers as the ceiling (interleaved, ROUNDS
# rounds); then, at defaults, 1,000 gzipped spans and the other tracks (Fluent json_lines,
# forward PackedForward, events).
#   bash benches/e2e_table.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-2}
py=.venv/bin/python
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
free() { $py -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
wait_healthy() { for _ in $(seq 300); do curl -fs "$1" > /dev/null && return 0; sleep 0.1; done; echo "not healthy: $1" >&2; return 1; }
null_app() { # workers -> sets $null_url
  local port; port=$(free)
  setsid $py -m granian --interface asgi --workers "$1" --host 127.0.0.1 --port "$port" --no-ws \
    --log-level warning trackgate.nullapp:app > /dev/null 2>&1 &
  pids+=($!)
  null_url=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -s -o /dev/null "$null_url/" && break; sleep 0.1; done
}
gateway() { # name, [storage] lines -> sets $url $fwd
  local name=$1 storage=$2 port fport
  port=$(free); fport=$(free)
  mkdir -p "$tmp/$name"
  cat > "$tmp/$name/trackgate.toml" <<TOML
[storage]
dir = "$tmp/$name/data"
$storage
[exporters.otlp]
endpoint = "$upstream"
[receivers.forward]
listen = "127.0.0.1:$fport"
TOML
  setsid $py -m trackgate serve --config "$tmp/$name/trackgate.toml" --listen "127.0.0.1:$port" \
    --grpc-listen "127.0.0.1:$(free)" --workers 2 > "$tmp/$name/gateway.log" 2>&1 &
  pids+=($!)
  url=http://127.0.0.1:$port
  fwd=127.0.0.1:$fport
  wait_healthy "$url/healthz"
}
# One table row per run: name, then bench's JSON report of the run.
bench() {
  local name=$1; shift
  $py -m trackgate bench --no-progress --duration "$secs" --json "$@" | $py benches/bench_row.py "$name"
}

null_app 1; upstream=$null_url
null_app 2; ceiling=$null_url
gateway always ''; always=$url; always_fwd=$fwd
gateway never 'fsync = "never"'; never=$url
gateway memory 'queue = "memory"'; memory=$url
echo "# $(date -u +%FT%TZ), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| what answers | requests/s | records/s | p50 ms | p99 ms | server CPU | server RSS peak | statuses |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for r in $(seq "$rounds"); do
  bench "null app, 2 workers (round $r)" --url "$ceiling" --signal logs --records 100 --connections 64
  bench "defaults: disk, fsync always (round $r)" --url "$always" --signal logs --records 100 --connections 64
  bench "fsync never (round $r)" --url "$never" --signal logs --records 100 --connections 64
  bench "queue memory (round $r)" --url "$memory" --signal logs --records 100 --connections 64
done
echo "# defaults, other payloads and tracks, 64 connections (load average $(cut -d' ' -f1-3 /proc/loadavg))"
bench "1,000 spans, gzip" --url "$always" --signal traces --records 1000 --gzip --connections 64
bench "Fluent json_lines, 100 records" --url "$always" --track fluent --records 100 --connections 64
bench "forward PackedForward, 100 entries" --url "$always" --track forward --forward "$always_fwd" --records 100 --connections 64
bench "events NDJSON, 100 events" --url "$always" --signal events --track events --records 100 --connections 64
