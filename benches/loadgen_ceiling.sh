#!/usr/bin/env bash
# `trackgate bench --ceiling` against `trackgate serve` (2 workers, defaults: disk queue,
# fsync = "always", file sink, in a temp dir), 100-record OTLP protobuf logs, a few connection
# counts; then the old Python-thread generator on the same gateway, and bench beside wrk on the
# null app. Figures go to benches/RESULTS.md ("Performance (issue 11): load generator").
#   bash benches/loadgen_ceiling.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
py=.venv/bin/python
tmp=$(mktemp -d)
# Free ports: other servers on this machine may bind fixed ones with SO_REUSEPORT and share them.
free() { $py -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
gwport=$(free)
url=http://127.0.0.1:$gwport
printf '[storage]\ndir = "%s"\n' "$tmp/data" > "$tmp/trackgate.toml"
setsid $py -m trackgate serve --config "$tmp/trackgate.toml" --listen 127.0.0.1:$gwport \
  --grpc-listen 127.0.0.1:$(free) --workers 2 > "$tmp/gateway.log" 2>&1 &
gw=$!
trap 'kill -TERM -- -$gw 2>/dev/null; wait $gw 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do curl -fs $url/healthz > /dev/null && break; sleep 0.1; done
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for c in 16 64 128; do
  echo "## bench --ceiling, $c connections"
  $py -m trackgate bench --url $url --signal logs --records 100 --connections "$c" \
    --duration "$secs" --ceiling --no-progress
done
echo "## p99 at half the saturating load (64 connections, --rate = half of a saturating run)"
full=$($py -m trackgate bench --url $url --signal logs --records 100 --connections 64 \
  --duration "$secs" --json | $py -c "import json, sys; print(json.load(sys.stdin)[0]['requests_per_s'])")
echo "saturating: $full requests/s"
$py -m trackgate bench --url $url --signal logs --records 100 --connections 64 \
  --duration "$secs" --rate "$($py -c "print(round($full / 2))")" --no-progress
echo "## old Python-thread generator (git show 9550aa7:python/trackgate/loadgen.py), same gateway"
git show 9550aa7:python/trackgate/loadgen.py > "$tmp/old_loadgen.py"
for c in 16 64; do
  echo "concurrency $c:"
  $py -c "import sys; sys.path.insert(0, '$tmp'); import old_loadgen as o
print(o.run('$url', signal='logs', records=100, concurrency=$c, duration=$secs).report())"
done
echo "## bench vs wrk on the null app (2 workers)"
port=$(free)
setsid $py -m granian --interface asgi --workers 2 --host 127.0.0.1 --port $port --no-ws \
  --log-level warning --backpressure 1024 trackgate.nullapp:app > /dev/null 2>&1 &
null=$!
trap 'kill -TERM -- -$gw -$null 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 2
$py -c "from trackgate.loadgen import request_body; open('$tmp/body', 'wb').write(request_body('logs', 100))"
cat > "$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-protobuf"
local f = io.open("$tmp/body", "rb"); wrk.body = f:read("*a"); f:close()
LUA
if command -v wrk > /dev/null; then
  echo "wrk -t2 -c64 -d${secs}s:"; wrk -t2 -c64 -d"${secs}s" --latency -s "$tmp/post.lua" "http://127.0.0.1:$port/v1/logs"
fi
echo "bench --connections 64:"
$py -m trackgate bench --url "http://127.0.0.1:$port" --signal logs --records 100 --connections 64 \
  --duration "$secs" --no-progress
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
