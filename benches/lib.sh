# Sourced by the end-to-end bench scripts (run from the repository root): the venv's Python, a
# temp dir ($OUT when set, kept) and the process groups started ($pids), stopped on exit; free
# loopback ports; the do-nothing ASGI and RSGI apps as an upstream or as the ceilings; a gateway of
# this tree with given config lines (gateway_of), and interleaved saturating runs (interleave).
py=.venv/bin/python
tmp=${OUT:-$(mktemp -d)}
mkdir -p "$tmp"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${OUT:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
# A free port: other servers on this machine may bind fixed ones with SO_REUSEPORT and share them.
free() { $py -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
wait_healthy() { for _ in $(seq 300); do curl -fs "$1" > /dev/null && return 0; sleep 0.1; done; echo "not healthy: $1" >&2; return 1; }
# A do-nothing app on granian with WORKERS workers, over INTERFACE (asgi, the default:
# `trackgate.nullapp:app`; rsgi: `trackgate.nullapp:rsgi_app`); sets $null_url.
null_app() {
  local port interface=${2:-asgi} target=trackgate.nullapp:app
  [ "$interface" = rsgi ] && target=trackgate.nullapp:rsgi_app
  port=$(free)
  setsid $py -m granian --interface "$interface" --workers "$1" --host 127.0.0.1 --port "$port" --no-ws \
    --log-level warning "$target" > /dev/null 2>&1 &
  pids+=($!)
  null_url=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -s -o /dev/null "$null_url/" && break; sleep 0.1; done
}
# A gateway of this tree (2 workers) named NAME, in its own dir under $tmp, with [storage] lines
# STORAGE and any further TOML EXTRA, exporting to $null_url ([exporters.otlp], with the lines in
# $OTLP_EXTRA); sets $url. Its queue is in that dir, or in $QUEUE_DIR when set.
gateway_of() { # name, [storage lines], [extra toml]
  local d=$tmp/$1 port; port=$(free); mkdir -p "$d"
  printf '[storage]\ndir = "%s"\n%s\n%s\n[exporters.otlp]\nendpoint = "%s"\n%s\n' "${QUEUE_DIR:-$d/data}" "${2:-}" "${3:-}" \
    "$null_url" "${OTLP_EXTRA:-}" > "$d/trackgate.toml"
  setsid $py -m trackgate serve --config "$d/trackgate.toml" --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$(free)" \
    --workers 2 > "$d/gateway.log" 2>&1 &
  pids+=($!)
  url=http://127.0.0.1:$port
  wait_healthy "$url/healthz"
}
# Waits (up to a minute) until the gateway at URL has delivered everything it queued (its Sentry
# and event-bus queues included), so that its exporters do not take CPU from the next run. Builds
# before trackgate_side_queue_records: what the exporters sent must also hold still for a second.
drained() {
  local i sent last=-1
  for i in $(seq 600); do
    if [ "$(curl -s "$1/metrics" | awk '/^trackgate_(side_)?queue_records/ {s += $2} END {print s + 0}')" = 0 ]; then
      sent=$(curl -s "$1/metrics" | awk '/^trackgate_exporter_sent_records_total/ {s += $2} END {print s + 0}')
      [ "$sent" = "$last" ] && return 0
      last=$sent
      sleep 1
    else
      sleep 0.1
    fi
  done
  echo "# $1 still delivering after 60 s" >&2
}
# `interleave` for the forward track: NAME=URL=FORWARD_ADDR (the forward listener's HOST:PORT).
interleave_forward() { # rounds, secs, name=url=forward...
  local rounds=$1 secs=$2 r kv name rest; shift 2
  echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "| what answers | requests/s | records/s | p50 ms | p99 ms | server CPU | server RSS peak | statuses |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  for r in $(seq "$rounds"); do for kv in "$@"; do
    name=${kv%%=*}; rest=${kv#*=}
    $py -m trackgate bench --no-progress --duration "$secs" --json --url "${rest%=*}" --forward "${rest##*=}" \
      $LOAD --connections 64 | $py benches/bench_row.py "$name (round $r)"
    drained "${rest%=*}"
  done; done
  echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
}
# ROUNDS interleaved rounds of SECS-second saturating runs (64 connections, 100-record OTLP logs,
# or the bench arguments in $LOAD), one table row per run, over the gateways given as NAME=URL.
interleave() { # rounds, secs, name=url...
  local rounds=$1 secs=$2 r kv; shift 2
  echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "| what answers | requests/s | records/s | p50 ms | p99 ms | server CPU | server RSS peak | statuses |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  for r in $(seq "$rounds"); do for kv in "$@"; do
    $py -m trackgate bench --no-progress --duration "$secs" --json --url "${kv#*=}" ${LOAD:---signal logs --records 100} \
      --connections 64 | $py benches/bench_row.py "${kv%%=*} (round $r)"
    drained "${kv#*=}"
  done; done
  echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
}
