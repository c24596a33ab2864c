#!/usr/bin/env bash
# Stop everything up.sh (and the pod runner) started, and leave no process
# behind: each component runs in its own session, so killing its process
# group also ends whatever it spawned (the runner's pod processes).
set -uo pipefail
# A second Ctrl-C must not leave half a cluster behind: finish the cleanup.
trap '' INT TERM HUP
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BATON_CLUSTER_DIR:-$repo/target/cluster}

signal_all() {
  for f in "$dir"/pids/*.pid; do
    [ -f "$f" ] || continue
    kill "-$1" -- "-$(cat "$f")" 2>/dev/null
  done
}
alive() {
  for f in "$dir"/pids/*.pid; do
    [ -f "$f" ] && kill -0 -- "-$(cat "$f")" 2>/dev/null && return 0
  done
  return 1
}

# The runner first, so that sidecars hand over while the API server is up.
if [ -f "$dir/pids/runner.pid" ]; then
  kill -TERM -- "-$(cat "$dir/pids/runner.pid")" 2>/dev/null
  for _ in $(seq 50); do kill -0 -- "-$(cat "$dir/pids/runner.pid")" 2>/dev/null || break; sleep 0.1; done
fi
# The control plane keeps no state worth a graceful stop (up.sh wipes etcd);
# kube-apiserver's own graceful shutdown takes over 10 s.
signal_all TERM
for _ in $(seq 20); do alive || break; sleep 0.1; done
signal_all KILL
for _ in $(seq 50); do alive || break; sleep 0.1; done
rm -f "$dir"/pids/*.pid
# shellcheck source=netns.sh
. "$here/netns.sh"
ip netns del "$netns" 2>/dev/null
echo "[cluster] stopped"
