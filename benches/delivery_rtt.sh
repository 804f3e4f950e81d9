#!/usr/bin/env bash
# Delivery to a destination DELAY seconds away (benches/slow_upstream.py): a gateway at defaults
# (2 workers) takes SECS seconds of load at RATE requests/s. TRACK=sentry (default: one envelope per
# request, forwarded by [exporters.sentry]) or otlp (100-record logs, [exporters.otlp]); the
# destination's answers are counted during the load and in each of the WATCH seconds after. With
# BASE=dir, a gateway of that copy of the package (first on PYTHONPATH) runs the same before this
# tree's. EXPORTER="concurrency = N" adds that line to the exporter's section.
#   [BASE=/tmp/base/python] [DELAY=0.05] [TRACK=sentry|otlp] [RATE=2000] [SECS=3] [WATCH=6] \
#     bash benches/delivery_rtt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
null_app 1; sink=$null_url  # the Sentry track's OTLP copies go here
run() { # name, PYTHONPATH
  local up start during answered prev now i total=0
  up=$(free)
  setsid $py benches/slow_upstream.py "$up" "${DELAY:-0.05}" & pids+=($!)
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$up/" && break; sleep 0.1; done
  if [ "${TRACK:-sentry}" = sentry ]; then
    null_url=$sink
    PYTHONPATH=$2 gateway_of "$1" "" \
      "$(printf '[exporters.sentry]\ndsn = "http://upstream@127.0.0.1:%s/1"\n%s' "$up" "${EXPORTER:-}")"
    load="--track sentry"
  else
    null_url=http://127.0.0.1:$up
    PYTHONPATH=$2 OTLP_EXTRA=${EXPORTER:-} gateway_of "$1"
    load="--signal logs --records 100"
  fi
  start=$(curl -s "http://127.0.0.1:$up/")
  $py -m trackgate bench --no-progress --duration "${SECS:-3}" --json --url "$url" $load --connections 16 \
    --rate "${RATE:-2000}" | $py benches/bench_row.py "$1: ingest"
  prev=$(curl -s "http://127.0.0.1:$up/")
  during=$((prev - start))
  answered=()
  for i in $(seq "${WATCH:-6}"); do
    sleep 1; now=$(curl -s "http://127.0.0.1:$up/"); answered+=($((now - prev))); total=$((total + now - prev)); prev=$now
  done
  echo "| $1 | $during | ${answered[*]} | $((during + total)) |"
}
echo "# $(date -u +%FT%TZ), destination ${DELAY:-0.05} s away, track ${TRACK:-sentry}, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| gateway | requests the destination answered during the load | in each second after it | in all |"
[ -z "${BASE:-}" ] || run base "$BASE"
run new ""
