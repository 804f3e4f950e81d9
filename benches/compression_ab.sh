#!/usr/bin/env bash
# `storage.compression` lz4 against none, under fsync "always" and "never": four gateways (2 workers
# each) of this tree exporting to one upstream answering 200, loaded in turn at saturation (64
# connections, 100-record OTLP logs, SECS seconds), ROUNDS interleaved rounds. After each gateway's
# runs: the bytes its processes wrote (/proc/PID/io write_bytes, what reached the block layer) and
# its fsyncs, per request. LOAD="--signal traces --records 1000 --gzip" loads 1,000 gzipped spans.
#   [SECS=8] [ROUNDS=2] [LOAD=...] bash benches/compression_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
null_app 1
names=(always-lz4 always-none never-lz4 never-none)
storage=($'fsync = "always"\ncompression = "lz4"' $'fsync = "always"\ncompression = "none"'
  $'fsync = "never"\ncompression = "lz4"' $'fsync = "never"\ncompression = "none"')
urls=()
for i in "${!names[@]}"; do gateway_of "${names[$i]}" "${storage[$i]}"; urls+=("${names[$i]}=$url"); done
written() { # bytes written to storage by the gateway serving NAME (all its processes)
  local total=0 p
  for p in $(pgrep -f "$tmp/$1/trackgate.toml"); do
    total=$((total + $(awk '/^write_bytes/{print $2}' /proc/$p/io 2>/dev/null || echo 0)))
  done
  echo $total
}
declare -A before
for n in "${names[@]}"; do before[$n]=$(written "$n"); done
interleave "${ROUNDS:-2}" "${SECS:-8}" "${urls[@]}"
echo
echo "| gateway | requests answered | bytes written per request | fsyncs per request |"
echo "|---|---:|---:|---:|"
for kv in "${urls[@]}"; do
  n=${kv%%=*}
  m=$(curl -s "${kv#*=}/metrics")
  reqs=$(echo "$m" | awk '/^trackgate_http_requests_total/ && /code="200"/ {s+=$2} END{print s+0}')
  syncs=$(echo "$m" | awk '/^trackgate_queue_fsyncs_total/ {s+=$2} END{print s+0}')
  w=$(( $(written "$n") - ${before[$n]} ))
  awk -v n="$n" -v r="$reqs" -v w="$w" -v s="$syncs" 'BEGIN{printf "| %s | %d | %.0f | %.3f |\n", n, r, (r ? w/r : 0), (r ? s/r : 0)}'
done
