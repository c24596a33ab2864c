#!/usr/bin/env bash
# What the local cluster must leave as it found it, recorded before up.sh
# and compared after down.sh:
#   hostcheck.sh record FILE    hostcheck.sh compare FILE
# network namespaces, the host's interfaces and firewall rules, mounts,
# the sysctls kubelet would write, cgroups of ours, and processes that run
# our binaries. Exit 1 with the differences when they differ.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BATON_CLUSTER_DIR:-$repo/target/cluster}
# shellcheck source=netns.sh
. "$here/netns.sh"

snapshot() {
  # Other clusters (the bench's, another checkout's) may come and go
  # meanwhile: namespaces and their mounts are compared for ours only.
  # /run/netns is iproute2's, shared by every local cluster: down.sh removes
  # what a cluster made of it when the last namespace goes (netns.sh).
  echo "## our network namespaces"; ip netns list 2>/dev/null | awk '{print $1}' | grep -xE "$netns(-n[0-9]+)?" | sort
  echo "## host interfaces"; ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sort
  echo "## host firewall rules"; { nft list ruleset 2>/dev/null || true; } | md5sum | cut -d' ' -f1
  # Where a mount of the node's could leak to if its namespace did not hold
  # it: the project, and the paths node.sh mounts over.
  echo "## mounts"
  awk '{print $5}' /proc/self/mountinfo | grep -E "^($repo|/run|/var/log|/var/lib|/proc/sys)(/|$)" \
    | grep -v '^/run/netns\(/\|$\)' | sort
  grep -E " /run/netns/$netns(-n[0-9]+)? " /proc/self/mountinfo | awk '{print $5}' | sort
  echo "## sysctls"
  for k in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
    kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward \
    net/bridge/bridge-nf-call-iptables net/netfilter/nf_conntrack_max; do
    [ -r "/proc/sys/$k" ] && echo "$k=$(cat "/proc/sys/$k")"
  done
  # The node's cgroup, and the parents created for it that no other local
  # cluster uses (no child cgroup): what down.sh must have removed.
  echo "## the nodes' cgroups and their unused parents"
  local d i
  for i in $(seq 0 $(($(node_count) - 1))); do
    node_vars "$i"
    node_cgroup_dirs | while read -r d; do
      [ -d "$d" ] || continue
      [ "$d" = "${d%"$node_cgroup"}$node_cgroup" ] && { echo "$d"; continue; }
      [ -z "$(find "$d" -mindepth 1 -maxdepth 1 -type d 2>/dev/null)" ] && echo "$d"
    done
  done | sort -u
  echo "## processes of ours"
  # Every process the cluster starts names its folder on its command line
  # (a container's processes live in the node's cgroups, checked above).
  for p in /proc/[0-9]*; do
    [ "$p" = "/proc/$$" ] || [ "$p" = "/proc/$BASHPID" ] && continue
    grep -qaF -- "$dir/" "$p/cmdline" 2>/dev/null && tr '\0' ' ' <"$p/cmdline" 2>/dev/null | cut -c1-160 && echo
  done | grep -v '^$' | grep -v hostcheck.sh | sort
  return 0
}

case "${1:-}" in
  record) snapshot >"$2" ;;
  compare)
    now=$(mktemp)
    snapshot >"$now"
    if ! diff -u "$2" "$now" >"$now.diff"; then
      echo "the local cluster left something behind (- before, + after):" >&2
      grep '^[-+][^-+]' "$now.diff" >&2
      rm -f "$now" "$now.diff"; exit 1
    fi
    rm -f "$now" "$now.diff" ;;
  *) echo "usage: hostcheck.sh record|compare FILE" >&2; exit 2 ;;
esac
