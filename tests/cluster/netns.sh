# Sourced by the cluster scripts: the network namespace the local cluster
# lives in. Kubernetes refuses loopback addresses as endpoints, so pods need
# real-looking IPs; inside a namespace of our own, a `local` route makes a
# whole pod CIDR bindable on the namespace's loopback, and nothing in it can
# reach or be reached from any other network. Needs root (or CAP_SYS_ADMIN).
netns=${BATON_NETNS:-baton}
pod_cidr=${BATON_POD_CIDR:-10.244.0.0/16}

ensure_netns() {
  # `ip netns list` prints "name (id: N)"; match the whole name only.
  if ! ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$netns"; then
    ip netns add "$netns" || {
      echo "cannot create network namespace $netns: the local cluster needs root (or CAP_SYS_ADMIN)" >&2
      return 1
    }
  fi
  ip -n "$netns" link set lo up
  ip -n "$netns" route replace local "$pod_cidr" dev lo
}

# in_netns CMD...: run CMD inside the cluster's network namespace.
in_netns() { ip netns exec "$netns" "$@"; }
