# Sourced by the cluster scripts: the network namespace the local cluster
# lives in, and the addresses inside it. Nothing in it can reach or be
# reached from any other network. Needs root (or CAP_SYS_ADMIN).
netns=${BATON_NETNS:-baton}
# KWOK's pods: a `local` route makes this whole range bindable on the
# namespace's loopback (Kubernetes refuses loopback addresses as endpoints).
pod_cidr=${BATON_POD_CIDR:-10.244.0.0/16}
# The real node: its address on a veth pair inside the namespace, its pods'
# range (a CNI bridge), the Service range kube-proxy programs.
node_name=${BATON_NODE_NAME:-baton-node-0}
node_ip=${BATON_NODE_IP:-10.242.0.1}
node_link=${BATON_NODE_LINK:-node0}
node_pod_cidr=${BATON_NODE_POD_CIDR:-10.245.0.0/24}
service_cidr=${BATON_SERVICE_CIDR:-10.96.0.0/16}
api_service_ip=${service_cidr%.0/*}.1
# The node's cgroup: under the one this shell runs in (the memory
# controller's path, the one that the machine limits), named for the netns.
node_cgroup="$(sed -n 's/^[0-9]*:memory:\(.*\)$/\1/p' /proc/self/cgroup | sed 's#/$##')/baton-node-$netns"

ensure_netns() {
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
