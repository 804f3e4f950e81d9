#!/usr/bin/env bash
# fsync "always" against "never" for two builds at once: four gateways (2 workers each; "base"
# runs with PYTHONPATH=$BASE, a copy of the other build's python/ with its extension, "new" is
# this tree) exporting to one upstream answering 200, loaded in turn at saturation (64
# connections, 100-record OTLP logs, SECS seconds), ROUNDS interleaved rounds.
#   BASE=/path/to/base/python bash benches/fsync_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECS:-8}; rounds=${ROUNDS:-2}
source benches/lib.sh
null_app 1
declare -A url
for b in base new; do for f in always never; do
  port=$(free); d=$tmp/$b-$f; mkdir -p $d
  printf '[storage]\ndir = "%s/data"\nfsync = "%s"\n[exporters.otlp]\nendpoint = "%s"\n' $d $f $null_url > $d/trackgate.toml
  if [ $b = base ]; then pp=${BASE:?set BASE to a copy of the other build python dir}; else pp=; fi
  PYTHONPATH=$pp setsid $py -m trackgate serve --config $d/trackgate.toml --listen 127.0.0.1:$port --grpc-listen 127.0.0.1:$(free) --workers 2 > $d/gateway.log 2>&1 &
  pids+=($!)
  url[$b-$f]=http://127.0.0.1:$port
done; done
for k in "${!url[@]}"; do wait_healthy "${url[$k]}/healthz"; done
sleep 1
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq $rounds); do for k in base-always new-always base-never new-never; do
  $py -m trackgate bench --no-progress --duration $secs --json --url ${url[$k]} --signal logs --records 100 --connections 64 | $py benches/bench_row.py "$k (round $r)"
done; echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"; done
