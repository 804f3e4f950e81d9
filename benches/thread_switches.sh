#!/usr/bin/env bash
# A HOOK for benches/tail_runs.sh: context switches and CPU ticks per thread of the gateway's
# first worker over 8 s of a run, largest first, into DIR/threads.RUN.
#   HOOK=benches/thread_switches.sh bash benches/tail_runs.sh TAG
set -euo pipefail
tmp=$1; r=$2
w=$(pgrep -P "$(cat "$tmp/gw.pid")" | head -1)
snap() {
  for t in /proc/"$w"/task/*; do
    echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(awk '/ctxt_switches/{s+=$2} END{print s}' "$t/status") $(awk '{print $14+$15}' "$t/stat")"
  done | sort
}
snap > "$tmp/th0.$r"; sleep 8; snap > "$tmp/th1.$r"
join "$tmp/th0.$r" "$tmp/th1.$r" | awk '{printf "%-8s %-20s ctxsw %7d cpu_ticks %5d\n", $1, $2, $6-$3, $7-$4}' | sort -k4 -rn > "$tmp/threads.$r"
