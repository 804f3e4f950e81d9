#!/usr/bin/env bash
# How much the per-batch acks cost under fsync "always" (each ack rewrites and fsyncs the queue
# ledger): defaults against batches 8x larger (65,536 records, 16 MiB: 8x fewer acks), with
# fsync "never" as the reference. Three gateways (2 workers each) of this tree exporting to one
# upstream answering 200, loaded in turn at saturation (64 connections, 100-record OTLP logs).
#   [SECS=8] [ROUNDS=2] bash benches/ack_batch_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
null_app 1
gateway_of defaults; defaults=$url
gateway_of big-batches '' $'[batch]\nmax_records = 65536\nmax_bytes = 16777216'; big=$url
gateway_of never 'fsync = "never"'; never=$url
interleave "${ROUNDS:-2}" "${SECS:-8}" "defaults=$defaults" "big-batches=$big" "never=$never"
