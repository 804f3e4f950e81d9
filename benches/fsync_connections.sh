#!/usr/bin/env bash
# fsync "always" against "never" as the load's concurrency grows: under "always" a request waits
# for the group fdatasync that covers it, so at a fixed number of connections that wait caps the
# rate, and more connections make larger groups. Two gateways (2 workers, the null app as the
# OTLP exporter), 100-record OTLP logs, CONNS connection counts (default "64 128 256 512"),
# SECS seconds each, ROUNDS rounds.
#   [CONNS="64 512"] bash benches/fsync_connections.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
null_app 1
gateway_of always ""; always=$url
gateway_of never 'fsync = "never"'; never=$url
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| what answers | requests/s | records/s | p50 ms | p99 ms | server CPU | server RSS peak | statuses |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for r in $(seq "${ROUNDS:-2}"); do for c in ${CONNS:-64 128 256 512}; do for kv in "always=$always" "never=$never"; do
  $py -m trackgate bench --no-progress --duration "${SECS:-8}" --json --url "${kv#*=}" --signal logs --records 100 \
    --connections "$c" | $py benches/bench_row.py "${kv%%=*}, $c connections (round $r)"
  drained "${kv#*=}"
done; done; done
echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
