#!/usr/bin/env bash
# Stop everything up.sh (and the pod runner) started, and leave nothing
# behind: no process, mount, cgroup, network namespace, interface or
# firewall rule (they all live in the namespace, which goes last). Then
# check the host against what up.sh recorded (hostcheck.sh); exit 1 if
# anything is left, saying what.
set -uo pipefail
# A second Ctrl-C must not leave half a cluster behind: finish the cleanup.
trap '' INT TERM HUP
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BATON_CLUSTER_DIR:-$repo/target/cluster}
# shellcheck source=netns.sh
. "$here/netns.sh"
log() { echo "[cluster $(date +%T)] $*" >&2; }

pid_of() { [ -f "$dir/pids/$1.pid" ] && cat "$dir/pids/$1.pid"; }
stop_group() { # stop_group NAME TIMEOUT_TENTHS: TERM its process group, then KILL
  local pid; pid=$(pid_of "$1") || return 0
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq "$2"); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$dir/pids/$1.pid"
}
in_ns() { ip netns exec "$netns" "$@"; }
kubectl_() { in_ns "$(cat "$dir/bin-dir")/kubectl" --kubeconfig "$dir/kubeconfig" --request-timeout 5s "$@"; }

# The runner first, so that sidecars hand over while the API server is up.
stop_group runner 50

# Faults a test may have left (tests/src/harness/nodes.rs) are undone first,
# so that every node can stop its pods: links up, cgroups thawed, stopped
# processes continued.
count=$(node_count)
for i in $(seq 0 $((count - 1))); do
  node_vars "$i"
  ip -n "$netns" link set "$node_link" up 2>/dev/null
  f=/sys/fs/cgroup/freezer$node_cgroup/freezer.state
  [ -f "$f" ] && echo THAWED >"$f" 2>/dev/null
  for h in /sys/fs/cgroup/*/; do
    d="${h%/}$node_cgroup"
    [ -d "$d" ] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -CONT 2>/dev/null
  done
done

# The nodes: no controller may re-create pods, then every pod goes while
# kubelet and containerd still run, so that containers stop as kubelet stops
# them (sidecars hand over, volumes are unmounted).
running=0
for i in $(seq 0 $((count - 1))); do
  node_vars "$i"
  [ -n "$(pid_of "$node_name")" ] && running=1
done
if [ $running -eq 1 ] && [ -f "$dir/bin-dir" ]; then
  stop_group kube-controller-manager 20
  stop_group kube-scheduler 20
  kubectl_ delete pods --all-namespaces --all --grace-period=1 --wait=false >/dev/null 2>&1
  tasks() { # tasks: the containers still running on every node
    local i
    for i in $(seq 0 $((count - 1))); do
      node_vars "$i"
      [ -S "$node_dir/containerd.sock" ] || continue
      "$(cat "$dir/node-bin-dir")/ctr" --address "$node_dir/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null
    done
  }
  for _ in $(seq 300); do
    [ -z "$(tasks)" ] && break
    sleep 0.1
  done
  left=$(tasks | wc -l)
  [ "$left" -gt 0 ] && log "$left containers still running after 30 s; killing them"
fi
for i in $(seq 0 $((count - 1))); do
  node_vars "$i"
  stop_group "$node_name" 100
done

# Whatever is still in the nodes' cgroups (containers, shims) is killed, and
# the cgroups removed deepest first, with the parents between them and our
# own cgroup when empty (another local cluster may still use a parent).
for i in $(seq 0 $((count - 1))); do
  node_vars "$i"
  for _ in 1 2 3; do
    found=0
    for h in /sys/fs/cgroup/*/; do
      d="${h%/}$node_cgroup"
      [ -d "$d" ] || continue
      while read -r p; do
        [ -n "$p" ] && { kill -KILL "$p" 2>/dev/null; found=1; }
      done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
    done
    [ $found -eq 0 ] && break
    sleep 0.5
  done
  for h in /sys/fs/cgroup/*/; do
    d="${h%/}$node_cgroup"
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  node_cgroup_dirs | while read -r d; do
    [ -d "$d" ] && rmdir "$d" 2>/dev/null
  done
done

# The control plane keeps no state worth a graceful stop (up.sh wipes etcd);
# kube-apiserver's own graceful shutdown takes over 10 s.
for f in "$dir"/pids/*.pid; do
  [ -f "$f" ] || continue
  kill -TERM -- "-$(cat "$f")" 2>/dev/null
done
for name in kube-apiserver kube-controller-manager kube-scheduler kwok etcd; do
  stop_group "$name" 20
done
for f in "$dir"/pids/*.pid; do
  [ -f "$f" ] || continue
  kill -KILL -- "-$(cat "$f")" 2>/dev/null
  rm -f "$f"
done
for i in $(seq 0 $((count - 1))); do
  node_vars "$i"
  ip netns del "$node_netns" 2>/dev/null
done
ip netns del "$netns" 2>/dev/null
# What `ip netns add` made of /run/netns for a local cluster goes with the
# last namespace (netns.sh).
if [ -z "$(ip netns list 2>/dev/null)" ]; then
  if [ -f "$netns_markers/mount" ]; then
    while grep -q " /run/netns " /proc/self/mountinfo; do umount /run/netns 2>/dev/null || break; done
    rm -f "$netns_markers/mount"
  fi
  [ -f "$netns_markers/dir" ] && rmdir /run/netns 2>/dev/null && rm -f "$netns_markers/dir"
fi

status=0
if [ -f "$dir/host-before" ]; then
  "$here/hostcheck.sh" compare "$dir/host-before" || status=1
  [ $status -eq 0 ] && rm -f "$dir/host-before"
fi
[ $status -eq 0 ] && rm -f "$dir/real-nodes"
log "stopped"
exit $status
