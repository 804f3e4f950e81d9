#!/usr/bin/env bash
# `storage.preallocate` on and off under fsync "always", with fsync "never" as the reference: three
# gateways (2 workers each) of this tree exporting to one upstream answering 200, loaded in turn at
# saturation (64 connections, 100-record OTLP logs, SECS seconds), ROUNDS interleaved rounds.
#   [SECS=8] [ROUNDS=3] bash benches/prealloc_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECS:-8}; rounds=${ROUNDS:-3}
source benches/lib.sh
null_app 1
declare -A url
for k in always-prealloc always-growing never; do
  port=$(free); d=$tmp/$k; mkdir -p "$d"
  case $k in
    always-prealloc) storage='fsync = "always"' ;;
    always-growing) storage=$'fsync = "always"\npreallocate = false' ;;
    never) storage='fsync = "never"' ;;
  esac
  printf '[storage]\ndir = "%s/data"\n%s\n[exporters.otlp]\nendpoint = "%s"\n' "$d" "$storage" "$null_url" > "$d/trackgate.toml"
  setsid $py -m trackgate serve --config "$d/trackgate.toml" --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$(free)" \
    --workers 2 > "$d/gateway.log" 2>&1 &
  pids+=($!)
  url[$k]=http://127.0.0.1:$port
done
for k in "${!url[@]}"; do wait_healthy "${url[$k]}/healthz"; done
sleep 1
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| what answers | requests/s | records/s | p50 ms | p99 ms | server CPU | server RSS peak | statuses |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for r in $(seq "$rounds"); do for k in always-prealloc always-growing never; do
  $py -m trackgate bench --no-progress --duration "$secs" --json --url "${url[$k]}" --signal logs --records 100 \
    --connections 64 | $py benches/bench_row.py "$k (round $r)"
done; done
echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
