# Sourced by the end-to-end bench scripts (run from the repository root): the venv's Python, a
# temp dir ($OUT when set, kept) and the process groups started ($pids), stopped on exit; free
# loopback ports; the do-nothing ASGI and RSGI apps as an upstream or as the ceilings.
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
