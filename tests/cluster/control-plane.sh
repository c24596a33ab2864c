# shellcheck shell=bash disable=SC2154 # $dir and $netns come from the script that sources this
# Sourced by up.sh and restart.sh (after netns.sh, with $dir set): how a
# control-plane process is started, and how its health is checked, in one
# place, so that restart.sh starts a process exactly as up.sh did.
etcd_port=${BATON_ETCD_PORT:-23790}
api_port=${BATON_APISERVER_PORT:-16443}

log() { echo "[cluster $(date +%T)] $*" >&2; }

# start NAME ARGS...: records the command line in cmds/NAME (NUL-separated),
# starts a fresh logs/NAME.log and launches it. Environment variables set on
# the call reach the process but are not recorded.
start() {
  local name=$1; shift
  mkdir -p "$dir/cmds"
  printf '%s\0' "$@" >"$dir/cmds/$name"
  : >"$dir/logs/$name.log"
  launch "$name"
}

# launch NAME: runs the command line recorded for NAME in its own session
# (so down.sh can kill the whole group), inside the network namespace,
# output appended to logs/NAME.log, pid to pids/NAME.pid.
launch() {
  local name=$1 args
  mapfile -d '' args <"$dir/cmds/$name"
  setsid ip netns exec "$netns" "${args[@]}" >>"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/$name.pid"
}

wait_for() { # wait_for WHAT TIMEOUT_S CMD...
  local what=$1 timeout=$2; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until in_netns "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${timeout}s waiting for $what; last log lines:"
      tail -n 30 "$dir/logs/"*.log "$dir"/baton-node-*/logs/*.log >&2 2>/dev/null
      exit 1
    fi
    sleep 0.2
  done
}

# wait_healthy NAME TIMEOUT_S: waits until etcd answers /health, or
# kube-apiserver /readyz.
wait_healthy() {
  case $1 in
    etcd) wait_for etcd "$2" curl -fsS "http://127.0.0.1:$etcd_port/health" ;;
    kube-apiserver)
      wait_for kube-apiserver "$2" curl -fsS --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" \
        --key "$dir/pki/admin.key" "https://127.0.0.1:$api_port/readyz" ;;
    *) log "no health check for $1"; return 1 ;;
  esac
}
