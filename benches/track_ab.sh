#!/usr/bin/env bash
# One track, two builds: a gateway of each at defaults (2 workers, disk queue, fsync "always",
# the null app as the OTLP exporter), "base" with PYTHONPATH=$BASE (a copy of the other build's
# python/ with its extension), "new" this tree, loaded in turn at saturation (64 connections,
# SECS seconds, ROUNDS interleaved rounds) with the bench arguments in $LOAD (default: Fluent
# Bit's http output, json_lines, 100 records per request); STORAGE adds [storage] lines to both
# (e.g. a small max_bytes, for the rate sustained once the queue is full); SENTRY_UPSTREAM=1 has
# both forward Sentry envelopes to the null app as their upstream Sentry; FORWARD=1 gives each a
# forward listener and the load `--track forward --records 100` to it.
#   BASE=/path/to/base/python [LOAD="--track fluent --records 100"] [STORAGE=...] [SENTRY_UPSTREAM=1] \
#     [FORWARD=1] bash benches/track_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
null_app 1
extra=""
[ -z "${SENTRY_UPSTREAM:-}" ] || extra=$(printf '[exporters.sentry]\ndsn = "http://upstream@%s/1"' "${null_url#http://}")
listener() { # the forward listener's config lines, on a free port kept in $fport
  [ -z "${FORWARD:-}" ] || { fport=$(free); printf '[receivers.forward]\nlisten = "127.0.0.1:%s"' "$fport"; }
}
fport=""
PYTHONPATH=${BASE:?set BASE to a copy of the other build python dir} gateway_of base "${STORAGE:-}" \
  "$extra"$'\n'"$(listener)"
base=$url
gateway_of new "${STORAGE:-}" "$extra"$'\n'"$(listener)"
if [ -n "${FORWARD:-}" ]; then
  # $(listener) ran in subshells: read each gateway's forward port back from its config.
  forward_of() { sed -n 's/^listen = "\(.*\)"$/\1/p' "$tmp/$1/trackgate.toml"; }
  LOAD="--track forward --records 100" interleave_forward "${ROUNDS:-3}" "${SECS:-8}" \
    "base=$base=$(forward_of base)" "new=$url=$(forward_of new)"
else
  LOAD=${LOAD:---track fluent --records 100} interleave "${ROUNDS:-3}" "${SECS:-8}" "base=$base" "new=$url"
fi
