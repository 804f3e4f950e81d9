#!/usr/bin/env bash
# The most that recycling delivered segments could give `fsync = "always"`: a gateway with 1 GiB
# preallocated segments, warmed until its spare is in place (so no zeros are written during the
# runs, as with a recycled segment), against the defaults (segments grow) and `fsync = "never"`,
# interleaved at saturation (64 connections, 100-record logs). Prints each gateway's fdatasync
# counters after.
#   [SECS=8] [ROUNDS=3] bash benches/prealloc_bound.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
null_app 1
gateway_of always-pre $'fsync = "always"\npreallocate = true\nsegment_bytes = 1073741824'; pre=$url
gateway_of always-grow 'fsync = "always"'; grow=$url
gateway_of never 'fsync = "never"'; never=$url
# 1 MiB in the active segment starts the spare; writing 1 GiB of zeros per worker takes a while.
$py -m trackgate bench --no-progress --duration 2 --url "$pre" --signal logs --records 100 --connections 8 > /dev/null
sleep 25
interleave "${ROUNDS:-3}" "${SECS:-8}" "always-pre=$pre" "always-grow=$grow" "never=$never"
for u in "$pre" "$grow"; do echo "# $u"; curl -s "$u/metrics" | grep -E '^trackgate_queue_fsync'; done
