#!/usr/bin/env bash
# How utilization falls as the links get worse, side by side: the llama-7b
# simulation across us5's namespaced datacenters with one NATS server or one
# per datacenter, and with extra microbatches in flight, then with the round
# trips scaled and the access rates cut. One `caravan simulate` after
# another (they share the machine); each prints its JSON line, tagged.
# Needs root (network namespaces). docs/benchmarks.md has a run's figures.
#
#   sudo bash bench/wan-sweep.sh [--reps N]
#   BASE=/path/to/another/checkout sudo bash bench/wan-sweep.sh   # the same grid from that tree's code too
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
reps=1
if [[ "${1:-}" == "--reps" ]]; then reps=${2:?--reps needs a number}; fi
[[ $(id -u) == 0 ]] || { echo "wan-sweep: needs root for network namespaces" >&2; exit 1; }

sim() {  # tree tag args...
  local tree=$1 tag=$2; shift 2
  local line
  line=$(cd "$tree" && npx tsx runtime/cli/bin.ts simulate --preset llama-7b "$@" --json | tail -n 1)
  echo "{\"sweep\":\"$tag\",\"args\":\"$*\",\"result\":$line}"
}

here=$PWD
trees=("$here")
[[ -n "${BASE:-}" ]] && trees+=("$BASE")
for tree in "${trees[@]}"; do
  who=$([[ $tree == "$here" ]] && echo this || echo base)
  sim "$tree" "$who loopback"
  for ((r = 1; r <= reps; r++)); do
    sim "$tree" "$who us5" --wan us5
    if [[ $who == this ]]; then
      sim "$tree" "$who us5 hub" --wan us5 --nats-topology hub
      sim "$tree" "$who us5 extra 1" --wan us5 --extra-in-flight 1
    fi
  done
  for links in "--rtt-scale 4" "--rtt-scale 10" "--rate-mbit 200" "--rate-mbit 50" "--rate-mbit 20"; do
    # shellcheck disable=SC2086
    sim "$tree" "$who $links" --wan us5 $links
    # shellcheck disable=SC2086
    [[ $who == this && $links == --rtt* ]] && sim "$tree" "$who $links extra 1" --wan us5 $links --extra-in-flight 1
  done
done
