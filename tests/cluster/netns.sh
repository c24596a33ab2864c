# Sourced by the cluster scripts: the network namespace the local cluster
# lives in, and the addresses inside it. Nothing in it can reach or be
# reached from any other network. Needs root (or CAP_SYS_ADMIN).
netns=${BATON_NETNS:-baton}
# KWOK's pods: a `local` route makes this whole range bindable on the
# namespace's loopback (Kubernetes refuses loopback addresses as endpoints).
pod_cidr=${BATON_POD_CIDR:-10.244.0.0/16}
# The real nodes (BATON_REAL_NODES of them): each in a network namespace of
# its own, "<netns>-n<i>", joined to the cluster's namespace by a veth pair
# whose outer end is a port of the bridge $cp_bridge there (one L2 segment,
# as kind's nodes share a docker network). The cluster's namespace holds the
# control plane at $cp_ip on that bridge; node i is 10.242.0.(10+i). Pod
# ranges come from node IPAM: /24s out of $cluster_cidr.
real_nodes=${BATON_REAL_NODES:-1}
cp_ip=${BATON_CP_IP:-10.242.0.1}
cp_bridge=baton0
cluster_cidr=${BATON_CLUSTER_CIDR:-10.245.0.0/16}
service_cidr=${BATON_SERVICE_CIDR:-10.96.0.0/16}
api_service_ip=${service_cidr%.0/*}.1
# The calling shell's own cgroup (the memory controller's path, the one that
# the machine limits): every node's cgroup is nested under it.
own_cgroup="$(sed -n 's/^[0-9]*:memory:\(.*\)$/\1/p' /proc/self/cgroup | sed 's#/$##')"

# node_vars I: sets node_name, node_ip, node_netns, node_link (the veth end
# in the cluster's namespace), node_cgroup and node_dir for node I: as up.sh
# recorded them in $dir/real-nodes if it did (another shell may live in
# another cgroup), else as up.sh would make them.
node_vars() {
  local line
  line=$(sed -n "$(($1 + 1))p" "$dir/real-nodes" 2>/dev/null)
  if [ -n "$line" ]; then
    read -r node_name node_ip node_netns node_link node_cgroup node_dir <<<"$line"
    return
  fi
  node_name=baton-node-$1
  node_ip=${cp_ip%.*}.$((10 + $1))
  node_netns=$netns-n$1
  node_link=n$1
  node_cgroup=$own_cgroup/baton-node-$node_netns
  node_dir=$dir/$node_name
}

# node_count: how many real nodes the cluster in $dir has (up.sh records
# it), or would have.
node_count() {
  if [ -f "$dir/real-nodes" ]; then wc -l <"$dir/real-nodes"; else echo "$real_nodes"; fi
}

# cgroup_own HIERARCHY_DIR: this shell's own cgroup in that hierarchy (a
# directory name under /sys/fs/cgroup: cpu, memory, systemd, unified, ...).
cgroup_own() {
  local name=$1 line ctl path
  while IFS= read -r line; do
    ctl=${line#*:}; path=${ctl#*:}; ctl=${ctl%%:*}
    if { [ "$name" = unified ] && [ -z "$ctl" ]; } || [ "$ctl" = "name=$name" ] \
      || [[ ",$ctl," == *",$name,"* ]]; then
      echo "${path%/}"; return
    fi
  done </proc/self/cgroup
}

# node_cgroup_dirs: the node's cgroup ($node_cgroup) in every hierarchy,
# then the parents between it and this shell's own cgroup there (deepest
# first): the dirs node-config.sh may create and down.sh removes. Parents can
# be shared with another local cluster (the bench's): only an empty one is
# ever removed.
node_cgroup_dirs() {
  local h name own path
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}; name=$(basename "$h")
    own=$(cgroup_own "$name")
    path=$node_cgroup
    while [ -n "$path" ] && [ "$path" != "$own" ] && [ "$path" != / ]; do
      echo "$h$path"
      path=${path%/*}
    done
  done
}

# `ip netns add` makes /run/netns (a directory, then a mount point of its
# own) the first time. Markers in the build cache say what a local cluster
# made, so that down.sh undoes it when the last namespace goes (other local
# clusters, the bench's, may share it meanwhile).
netns_markers=${BATON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}/run-netns

ensure_netns() {
  mkdir -p "$netns_markers"
  [ -d /run/netns ] || : >"$netns_markers/dir"
  grep -q " /run/netns " /proc/self/mountinfo || : >"$netns_markers/mount"
  # `ip netns list` prints "name (id: N)"; match the whole name only.
  if ! ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$netns"; then
    ip netns add "$netns" || {
      echo "cannot create network namespace $netns: the local cluster needs root (or CAP_SYS_ADMIN)" >&2
      return 1
    }
  fi
  ip -n "$netns" link set lo up
}

# in_netns CMD...: run CMD inside the cluster's network namespace.
in_netns() { ip netns exec "$netns" "$@"; }
