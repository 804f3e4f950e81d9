# Sourced by the end-to-end bench scripts (run from the repository root): the venv's Python, a
# temp dir ($OUT when set, kept) and the process groups started ($pids), stopped on exit; free
# loopback ports; the do-nothing ASGI app as an upstream or as the ceiling.
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
# The null app (`trackgate.nullapp:app`) on granian with WORKERS workers; sets $null_url.
null_app() {
  local port; port=$(free)
  setsid $py -m granian --interface asgi --workers "$1" --host 127.0.0.1 --port "$port" --no-ws \
    --log-level warning trackgate.nullapp:app > /dev/null 2>&1 &
  pids+=($!)
  null_url=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -s -o /dev/null "$null_url/" && break; sleep 0.1; done
}
