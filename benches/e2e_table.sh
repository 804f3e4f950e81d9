#!/usr/bin/env bash
# The issue 11 table, redone with `trackgate bench` as the load: 2 gateway workers, an upstream
# that answers 200 to everything (the null app, 1 worker) as the OTLP exporter, 100-record OTLP
# protobuf logs, 64 connections, the null apps with 2 workers as the ceilings (interleaved, ROUNDS
# rounds): over ASGI (the issue's ceiling) and over RSGI (granian's own, the interface
# `trackgate serve` uses); each row's requests/s as a share of that round's two; then, at
# defaults, 1,000 gzipped spans and the other tracks (Fluent json_lines, forward PackedForward,
# events, Sentry envelopes forwarded to the null app as their upstream Sentry); and the defaults
# with `server.otlp_front = false` (granian serving every request).
# BASE=/copy/of/other/python runs the gateways from another build (the null apps and the
# load stay this tree's).
#   [BASE=...] bash benches/e2e_table.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-2}
source benches/lib.sh
gateway() { # name, [storage] lines, [server] lines -> sets $url $fwd
  local name=$1 storage=$2 server=${3:-} port fport
  port=$(free); fport=$(free)
  mkdir -p "$tmp/$name"
  cat > "$tmp/$name/trackgate.toml" <<TOML
[server]
$server
[storage]
dir = "$tmp/$name/data"
$storage
[exporters.otlp]
endpoint = "$upstream"
[exporters.sentry]
dsn = "http://upstream@${upstream#http://}/1"
[receivers.forward]
listen = "127.0.0.1:$fport"
TOML
  PYTHONPATH=${BASE:-} setsid $py -m trackgate serve --config "$tmp/$name/trackgate.toml" --listen "127.0.0.1:$port" \
    --grpc-listen "127.0.0.1:$(free)" --workers 2 > "$tmp/$name/gateway.log" 2>&1 &
  pids+=($!)
  url=http://127.0.0.1:$port
  fwd=127.0.0.1:$fport
  wait_healthy "$url/healthz"
}
# One table row per run: name, then bench's JSON report of the run (kept as $tmp/last.json);
# with $asgi_json and $rsgi_json set, the shares of those runs.
# Then waits until that gateway delivered what it queued, so its exporters do not load the next run.
bench() {
  local name=$1 target="" prev=""; shift
  $py -m trackgate bench --no-progress --duration "$secs" --json "$@" > "$tmp/last.json"
  $py benches/bench_row.py "$name" ${asgi_json:-} ${rsgi_json:-} < "$tmp/last.json"
  for a in "$@"; do [ "$prev" = --url ] && target=$a; prev=$a; done
  drained "$target"
}

null_app 1; upstream=$null_url
null_app 2; ceiling=$null_url
null_app 2 rsgi; rsgi_ceiling=$null_url
gateway always ''; always=$url; always_fwd=$fwd
gateway never 'fsync = "never"'; never=$url
gateway memory 'queue = "memory"'; memory=$url
# The defaults with granian serving every request (no OTLP/HTTP front); not in a BASE build.
[ -n "${BASE:-}" ] || { gateway nofront '' 'otlp_front = false'; nofront=$url; }
echo "# $(date -u +%FT%TZ), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| what answers | requests/s | records/s | p50 ms | p99 ms | server CPU | server RSS peak | statuses | ÷ null ASGI | ÷ null RSGI |"
echo "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"
for r in $(seq "$rounds"); do
  $py -m trackgate bench --no-progress --duration "$secs" --json --url "$ceiling" --signal logs --records 100 \
    --connections 64 > "$tmp/asgi-$r.json"
  $py -m trackgate bench --no-progress --duration "$secs" --json --url "$rsgi_ceiling" --signal logs --records 100 \
    --connections 64 > "$tmp/rsgi-$r.json"
  asgi_json=$tmp/asgi-$r.json rsgi_json=$tmp/rsgi-$r.json
  $py benches/bench_row.py "null ASGI app, 2 workers (round $r)" "$asgi_json" "$rsgi_json" < "$asgi_json"
  $py benches/bench_row.py "null RSGI app, 2 workers (round $r)" "$asgi_json" "$rsgi_json" < "$rsgi_json"
  bench "defaults: disk, fsync always (round $r)" --url "$always" --signal logs --records 100 --connections 64
  bench "fsync never (round $r)" --url "$never" --signal logs --records 100 --connections 64
  bench "queue memory (round $r)" --url "$memory" --signal logs --records 100 --connections 64
  [ -z "${nofront:-}" ] || bench "defaults, server.otlp_front = false (round $r)" --url "$nofront" --signal logs \
    --records 100 --connections 64
done
echo "# defaults, other payloads and tracks, 64 connections (load average $(cut -d' ' -f1-3 /proc/loadavg))"
asgi_json= rsgi_json=
bench "1,000 spans, gzip" --url "$always" --signal traces --records 1000 --gzip --connections 64
bench "Fluent json_lines, 100 records" --url "$always" --track fluent --records 100 --connections 64
bench "forward PackedForward, 100 entries" --url "$always" --track forward --forward "$always_fwd" --records 100 --connections 64
bench "events NDJSON, 100 events" --url "$always" --signal events --track events --records 100 --connections 64
bench "Sentry envelopes, one error event each" --url "$always" --track sentry --connections 64
