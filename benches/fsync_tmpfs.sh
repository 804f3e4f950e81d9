#!/usr/bin/env bash
# What `fsync = "always"` costs against `"never"`: the gateway's own group commit, or the disk?
# Four gateways of this tree (2 workers, the null app as the OTLP exporter): always and never
# with the queue on this machine's disk, and again on a tmpfs (/dev/shm: fdatasync returns at
# once), loaded in turn at saturation (64 connections, 100-record OTLP logs, SECS seconds, ROUNDS
# interleaved rounds). After each run, the machine's CPU shares (/proc/stat, the load generator
# included); after each disk "always" run, the fdatasyncs per worker per second, their mean
# latency (trackgate_queue_fsync_seconds_total / trackgate_queue_fsyncs_total) and the group size
# (appends per fsync).
#   bash benches/fsync_tmpfs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECS:-8}; rounds=${ROUNDS:-2}
source benches/lib.sh
shm=$(mktemp -d /dev/shm/trackgate-bench.XXXXXX)
trap 'cleanup; rm -rf "$shm"' EXIT
null_app 1
declare -A url
gateway_of disk-always ""; url[disk-always]=$url
gateway_of disk-never 'fsync = "never"'; url[disk-never]=$url
for f in always never; do
  QUEUE_DIR=$shm/$f gateway_of "tmpfs-$f" "fsync = \"$f\""; url[tmpfs-$f]=$url
done
group() { curl -s "$1/metrics" | awk '/^trackgate_queue_(fsyncs|fsync_seconds|synced_appends)_total/ {print $1, $2}'; }
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| what answers | requests/s | records/s | p50 ms | p99 ms | server CPU | server RSS peak | statuses |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for r in $(seq "$rounds"); do for name in disk-always disk-never tmpfs-always tmpfs-never; do
  u=${url[$name]}
  [ "$name" = disk-always ] && group "$u" > "$tmp/g0"
  $py -m trackgate bench --no-progress --duration "$secs" --json --url "$u" --signal logs --records 100 \
    --connections 64 > "$tmp/run.json" &
  bench_pid=$!
  # The machine's CPU over the middle of the run (/proc/stat), the load generator included.
  sleep 2; head -1 /proc/stat > "$tmp/s0"; sleep $((secs - 4)); head -1 /proc/stat > "$tmp/s1"
  wait $bench_pid
  $py benches/bench_row.py "$name (round $r)" < "$tmp/run.json"
  paste -d' ' "$tmp/s0" "$tmp/s1" | awk '{n = (NF - 2) / 2; for (i = 2; i <= 9; i++) { d[i] = $(i + n + 1) - $i; t += d[i] }
    printf "|   machine CPU: user %.0f%%, system %.0f%%, softirq %.0f%%, steal %.0f%%, iowait %.0f%%, idle %.0f%% | | | | | | | |\n",
      (d[2] + d[3]) * 100 / t, d[4] * 100 / t, d[8] * 100 / t, d[9] * 100 / t, d[6] * 100 / t, d[5] * 100 / t }'
  if [ "$name" = disk-always ]; then
    group "$u" > "$tmp/g1"
    paste "$tmp/g0" "$tmp/g1" | awk -v secs="$secs" '{d[$1] = $4 - $2} END {
      f = d["trackgate_queue_fsyncs_total"]; if (f == 0) exit
      printf "|   fdatasyncs: %.0f per worker per second, mean %.2f ms, %.1f appends each | | | | | | | |\n",
        f / 2 / secs, d["trackgate_queue_fsync_seconds_total"] / f * 1000, d["trackgate_queue_synced_appends_total"] / f }'
  fi
  drained "$u"
done; done
echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
