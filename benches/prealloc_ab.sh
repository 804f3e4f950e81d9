#!/usr/bin/env bash
# `storage.preallocate` on and off under fsync "always", with fsync "never" as the reference: three
# gateways (2 workers each) of this tree exporting to one upstream answering 200, loaded in turn at
# saturation (64 connections, 100-record OTLP logs, SECS seconds), ROUNDS interleaved rounds.
#   [SECS=8] [ROUNDS=3] bash benches/prealloc_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
null_app 1
gateway_of always-prealloc $'fsync = "always"\npreallocate = true'; prealloc=$url
gateway_of always-growing $'fsync = "always"\npreallocate = false'; growing=$url
gateway_of never 'fsync = "never"'; never=$url
interleave "${ROUNDS:-3}" "${SECS:-8}" "always-prealloc=$prealloc" "always-growing=$growing" "never=$never"
