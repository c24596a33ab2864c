#!/usr/bin/env bash
# What the local cluster needs from the machine, checked before anything
# starts, each with the fix:  preflight.sh REAL_NODES
set -uo pipefail
real_nodes=${1:-1}
fail=0
need() { echo "preflight: $1" >&2; fail=1; }
[ "$(id -u)" -eq 0 ] || need "the local cluster needs root (network and mount namespaces, cgroups)"
for tool in ip nsenter unshare curl openssl; do
  command -v "$tool" >/dev/null || need "no $tool (Debian: iproute2, util-linux, curl, openssl)"
done
if [ "$real_nodes" -gt 0 ]; then
  command -v runc >/dev/null || need "no runc (Debian: apt-get install runc)"
  command -v nft >/dev/null || need "no nft, which kube-proxy's nftables mode runs (Debian: apt-get install nftables)"
  for p in bridge host-local portmap loopback; do
    [ -x "/usr/lib/cni/$p" ] || need "no CNI plugin /usr/lib/cni/$p (Debian: apt-get install containernetworking-plugins)"
  done
  grep -qw overlay /proc/filesystems || need "the kernel has no overlay filesystem (containerd's snapshotter and node.sh need it)"
  [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || need "no cgroup hierarchy mounted under /sys/fs/cgroup"
  [ -f /sys/fs/cgroup/cgroup.controllers ] && need "cgroup v2 only: node-config.sh nests the node's cgroups in v1 hierarchies (not written for a pure v2 host yet)"
fi
exit $fail
