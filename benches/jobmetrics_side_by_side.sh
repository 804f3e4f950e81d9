#!/usr/bin/env bash
# Job metrics cost on the events path (issue 8): two gateways side by side, `[metrics] enabled`
# (default) against `enabled = false`, 2 workers each, fsync always, an `[exporters.otlp]` upstream
# that answers 200 (the null app); `trackgate bench --track events --signal events --records 100`,
# interleaved, ROUNDS rounds. With REDIS=1 a third gateway has an `[exporters.redis]` bus on a
# local redis-server (the job state shared in Redis, one script call per request). With
# BEFORE=DIR, a copy of an earlier `python/trackgate` (e.g. `git archive e83c006 python/trackgate`,
# with this build's `_core*.so` copied in) runs as more gateways in the same rounds (PYTHONPATH).
#   [REDIS=1] [BEFORE=DIR] bash benches/jobmetrics_side_by_side.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-2}
source benches/lib.sh
null_app 1; upstream=$null_url
gateway() { # name, extra toml, [PYTHONPATH] -> sets $url
  local name=$1 extra=$2 pypath=${3:-} port
  port=$(free)
  mkdir -p "$tmp/$name"
  cat > "$tmp/$name/trackgate.toml" <<TOML
[storage]
dir = "$tmp/$name/data"
[exporters.otlp]
endpoint = "$upstream"
$extra
TOML
  setsid env ${pypath:+PYTHONPATH=$pypath} $py -m trackgate serve --config "$tmp/$name/trackgate.toml" --listen "127.0.0.1:$port" \
    --workers 2 > "$tmp/$name/gateway.log" 2>&1 &
  pids+=($!)
  url=http://127.0.0.1:$port
  wait_healthy "$url/healthz"
}
# One row per run; "events per CPU-s" = events/s over the gateway's CPU (all its processes, in
# cores): the cost per event, steadier than events/s when other work takes the cores.
bench() {
  local name=$1; shift
  $py -m trackgate bench --no-progress --duration "$secs" --json "$@" | $py -c '
import json, sys
run = json.load(sys.stdin)[0]
track, cpu = run["tracks"][0], (run.get("server") or {}).get("cpu_percent", 0)
lat, rps, eps = run["tracks"][0]["latency_ms"], run["requests_per_s"], run["records_per_s"]
per_cpu = format(eps / (cpu / 100), ",.0f") if cpu else "-"
statuses = ", ".join(k + ": " + format(n, ",") for k, n in track["statuses"].items())
cells = [sys.argv[1], format(rps, ",.0f"), format(eps, ",.0f"), format(lat["p50"], ".1f"),
         format(lat["p99"], ".1f"), format(cpu, ".0f") + "%", per_cpu, statuses]
print("| " + " | ".join(cells) + " |")
' "$name"
}
gateway on ''; on=$url
gateway off $'[metrics]\nenabled = false'; off=$url
before_on=""; before_redis=""
if [ -n "${BEFORE:-}" ]; then
  gateway before_on '' "$BEFORE"; before_on=$url
fi
redis_url=""
if [ "${REDIS:-0}" = 1 ]; then
  rport=$(free)
  mkdir -p "$tmp/redis"
  setsid redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp/redis" \
    > /dev/null 2>&1 &
  pids+=($!)
  sleep 0.5
  gateway redis "[exporters.redis]"$'\n'"url = \"redis://127.0.0.1:$rport/0\""; redis_url=$url
  if [ -n "${BEFORE:-}" ]; then
    # Its own database: the two gateways' job state stays apart.
    gateway before_redis "[exporters.redis]"$'\n'"url = \"redis://127.0.0.1:$rport/1\"" "$BEFORE"; before_redis=$url
  fi
fi
echo "# $(date -u +%FT%TZ), $(git rev-parse --short HEAD), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| gateway | requests/s | events/s | p50 ms | p99 ms | gateway CPU | events per CPU-s | statuses |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for r in $(seq "$rounds"); do
  if [ -n "$before_on" ]; then
    bench "before: metrics enabled (round $r)" --url "$before_on" --track events --signal events --records 100
  fi
  bench "metrics enabled (round $r)" --url "$on" --track events --signal events --records 100
  bench "metrics disabled (round $r)" --url "$off" --track events --signal events --records 100
  if [ -n "$redis_url" ]; then
    bench "metrics enabled, Redis bus + shared state (round $r)" --url "$redis_url" --track events --signal events --records 100
  fi
  if [ -n "$before_redis" ]; then
    bench "before: metrics enabled, Redis bus + shared state (round $r)" --url "$before_redis" --track events --signal events --records 100
  fi
done
echo "# end $(date -u +%FT%TZ), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
