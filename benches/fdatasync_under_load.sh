#!/usr/bin/env bash
# What the machine's CPU load does to fdatasync: benches/fdatasync_writers.py (WRITERS, default
# "1 2") on an idle machine, then again while a gateway with fsync = "never" (no disk I/O of its
# own) is saturated by `trackgate bench` (64 connections, 100-record OTLP logs).
#   bash benches/fdatasync_under_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
null_app 1
gateway_of never 'fsync = "never"'
echo "# idle machine"
$py benches/fdatasync_writers.py --writers ${WRITERS:-1 2} --seconds 3
$py -m trackgate bench --no-progress --duration 12 --json --url "$url" --signal logs --records 100 \
  --connections 64 > "$tmp/run.json" &
bench_pid=$!
sleep 2
echo "# while the fsync = \"never\" gateway is saturated"
$py benches/fdatasync_writers.py --writers ${WRITERS:-1 2} --seconds 3
wait $bench_pid
$py benches/bench_row.py "the load" < "$tmp/run.json"
