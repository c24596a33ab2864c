#!/usr/bin/env bash
# restart.sh NAME: restart one control-plane process of the local cluster
# (etcd or kube-apiserver) as the chaos tests do: SIGTERM, wait until it has
# exited, start it again with the command line up.sh recorded (same pid and
# log files, the log appended to), and wait until it is healthy again.
# A process still running BATON_STOP_GRACE seconds (default 5) after the
# SIGTERM is killed: kube-apiserver's graceful shutdown waits 60 s for the
# HTTP server to drain while clients hold watches open.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BATON_CLUSTER_DIR:-$repo/target/cluster}
# shellcheck source=netns.sh
. "$here/netns.sh"
# shellcheck source=control-plane.sh
. "$here/control-plane.sh"

name=${1:?usage: restart.sh etcd|kube-apiserver}
[ -f "$dir/cmds/$name" ] || { log "no command line recorded for $name in $dir/cmds: run up.sh"; exit 1; }
pid=$(cat "$dir/pids/$name.pid")

# Gone once no process of its group is left but zombies (nothing may reap
# them here: their parent, up.sh's shell, exited long ago).
alive() {
  local p
  for p in $(pgrep -g "$pid" || true); do
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" = Z ] || return 0
  done
  return 1
}

log "restarting $name (pid $pid)"
kill -TERM -- "-$pid" 2>/dev/null || true
grace=${BATON_STOP_GRACE:-5}
deadline=$(( $(date +%s) + grace ))
while alive; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "$name did not exit within $grace s of SIGTERM: killing it"
    kill -KILL -- "-$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + 10 ))
  fi
  sleep 0.1
done
launch "$name"
wait_healthy "$name" 90
log "$name restarted (pid $(cat "$dir/pids/$name.pid")) and healthy"
