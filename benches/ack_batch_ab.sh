#!/usr/bin/env bash
# How much the per-batch acks cost under fsync "always" (each ack rewrites and fsyncs the queue
# ledger): defaults against batches 8x larger (65,536 records, 16 MiB: 8x fewer acks), with
# fsync "never" as the reference. Three gateways (2 workers each) of this tree exporting to one
# upstream answering 200, loaded in turn at saturation (64 connections, 100-record OTLP logs).
#   [SECS=8] [ROUNDS=2] bash benches/ack_batch_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECS:-8}; rounds=${ROUNDS:-2}
source benches/lib.sh
null_app 1
declare -A url
for k in defaults big-batches never; do
  port=$(free); d=$tmp/$k; mkdir -p "$d"
  case $k in
    defaults) extra='' ;;
    big-batches) extra=$'[batch]\nmax_records = 65536\nmax_bytes = 16777216' ;;
    never) extra=$'[storage]\nfsync = "never"' ;;
  esac
  # [storage] dir first: `never` adds its fsync line to that table.
  printf '[storage]\ndir = "%s/data"\n%s\n[exporters.otlp]\nendpoint = "%s"\n' "$d" "${extra#\[storage\]$'\n'}" "$null_url" > "$d/trackgate.toml"
  setsid $py -m trackgate serve --config "$d/trackgate.toml" --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$(free)" \
    --workers 2 > "$d/gateway.log" 2>&1 &
  pids+=($!)
  url[$k]=http://127.0.0.1:$port
done
for k in "${!url[@]}"; do wait_healthy "${url[$k]}/healthz"; done
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| what answers | requests/s | records/s | p50 ms | p99 ms | server CPU | server RSS peak | statuses |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for r in $(seq "$rounds"); do for k in defaults big-batches never; do
  $py -m trackgate bench --no-progress --duration "$secs" --json --url "${url[$k]}" --signal logs --records 100 \
    --connections 64 | $py benches/bench_row.py "$k (round $r)"
done; done
