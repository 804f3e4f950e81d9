#!/usr/bin/env bash
# How fast delivery empties the queue with no load beside it: one gateway at defaults (2 workers,
# STORE lines under [storage]), SECS seconds of 1,000 gzipped spans at saturation (64
# connections), then the spans delivered in each of the next 12 seconds
# (trackgate_exporter_sent_records_total).
#   bash benches/drain_rate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
null_app 1
gateway_of g "${STORE:-}"
sent() { curl -s "$url/metrics" | awk '/^trackgate_exporter_sent_records_total/ {s += $2} END {printf "%d\n", s}'; }
$py -m trackgate bench --no-progress --duration "${SECS:-8}" --json --url "$url" --signal traces --records 1000 --gzip \
  --connections 64 | $py benches/bench_row.py "ingest"
prev=$(sent)
for i in $(seq 12); do sleep 1; now=$(sent); echo "delivered in second $i after the load: $((now - prev)) spans"; prev=$now; done
