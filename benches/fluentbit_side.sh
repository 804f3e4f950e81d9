#!/usr/bin/env bash
# The issue's side-by-side: trackgate at defaults (2 workers, disk queue, fsync "always") against a
# real Fluent Bit (../shared/peers/fluent-bit, or $FLUENT_BIT) doing the same job, OTLP/HTTP logs in
# and OTLP/HTTP out to the same do-nothing upstream (Fluent Bit buffers in memory, no fsync), and
# the null ASGI app for scale. 64 connections, 100-record OTLP protobuf logs, SECS seconds,
# ROUNDS interleaved rounds. FB_ARGS adds Fluent Bit options (e.g. "-p workers=2" for its output).
#   bash benches/fluentbit_side.sh
set -euo pipefail
cd "$(dirname "$0")/.."
fb=${FLUENT_BIT:-../shared/peers/fluent-bit}
[ -x "$fb" ] || { echo "no Fluent Bit binary at $fb (see ../shared/peers/README.md)" >&2; exit 1; }
source benches/lib.sh
null_app 1
gateway_of trackgate ""; tg=$url
port=$(free); upstream=${null_url#http://}
setsid "$fb" -q -f 1 -i opentelemetry -p listen=127.0.0.1 -p "port=$port" \
  -o opentelemetry -m '*' -p "host=${upstream%:*}" -p "port=${upstream#*:}" -p logs_uri=/v1/logs ${FB_ARGS:-} \
  > "$tmp/fluent-bit.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
"$fb" --version | head -1
interleave "${ROUNDS:-2}" "${SECS:-8}" "trackgate defaults=$tg" "Fluent Bit OTLP in, OTLP out=http://127.0.0.1:$port" \
  "null ASGI app=$null_url"
