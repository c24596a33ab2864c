#!/usr/bin/env bash
# One real node: containerd, kubelet and kube-proxy as one process tree.
# up.sh starts it as
#   nsenter --net=<the node's netns> -- unshare --mount --propagation slave -- node.sh
# so that everything here shares one private mount namespace (containerd's
# and kubelet's mounts must see each other) and nothing is mounted on the
# host. Settings come from the environment up.sh exports (NODE_*).
set -euo pipefail
: "${NODE_DIR:?}" "${NODE_NAME:?}" "${NODE_CGROUP:?}" "${K8S_BIN:?}" "${NODE_BIN:?}"

log() { echo "[node $(date +%T)] $*"; }

# --- Join the node's cgroup in every v1 hierarchy (up.sh created it under
# the harness's own cgroup): every process started below inherits it.
for h in /sys/fs/cgroup/*/; do
  [ "$(basename "$h")" = unified ] && continue
  echo $$ >"$h${NODE_CGROUP#/}/cgroup.procs"
done

# --- Paths the components hard-code, made private to this mount namespace.
# /run: containerd's shim sockets (/run/containerd/s) and runc's locks.
mount -t tmpfs -o mode=0755 tmpfs /run
# /var/log: kubelet's /var/log/containers links.
mkdir -p "$NODE_DIR/var-log"
mount --bind "$NODE_DIR/var-log" /var/log
# /var/lib: libcni's cache (/var/lib/cni), which no setting moves.
mkdir -p "$NODE_DIR/var-lib/upper" "$NODE_DIR/var-lib/work"
mount -t overlay overlay \
  -o "lowerdir=/var/lib,upperdir=$NODE_DIR/var-lib/upper,workdir=$NODE_DIR/var-lib/work" /var/lib

# --- kubelet sets these host-wide sysctls at start; here it finds them set
# already, in files bound over /proc/sys in this mount namespace only.
mkdir -p "$NODE_DIR/sysctl"
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
  kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
  key=${kv%%=*}; file="$NODE_DIR/sysctl/${key//\//.}"
  echo "${kv#*=}" >"$file"
  mount --bind "$file" "/proc/sys/$key"
done

# The launcher's pid: its mount namespace sees the host's cgroup mounts,
# which the harness's faults write to (tests/src/harness/nodes.rs).
echo $$ >"$NODE_DIR/launcher.pid"

pids=()
stop() {
  log "stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait
  exit 0
}
trap stop TERM INT

export PATH="$NODE_BIN:$PATH"
log "starting containerd"
containerd --config "$NODE_DIR/containerd.toml" >"$NODE_DIR/logs/containerd.log" 2>&1 &
pids+=($!)
# Each component's pid, for the harness's faults (stop only kubelet, ...).
echo $! >"$NODE_DIR/containerd.pid"
for _ in $(seq 100); do
  ctr --address "$NODE_DIR/containerd.sock" version >/dev/null 2>&1 && break
  sleep 0.1
done
ctr --address "$NODE_DIR/containerd.sock" version >/dev/null

# Images: the pause image and ours, built by `make image` (no registry here).
for tar in "$NODE_DIR"/images/*.tar; do
  [ -f "$tar" ] || continue
  ctr --address "$NODE_DIR/containerd.sock" -n k8s.io images import --no-unpack=false "$tar" >/dev/null
done
log "images: $(ctr --address "$NODE_DIR/containerd.sock" -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

log "starting kubelet"
"$K8S_BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
  --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/kubelet/pki" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1 \
  >"$NODE_DIR/logs/kubelet.log" 2>&1 &
pids+=($!)
echo $! >"$NODE_DIR/kubelet.pid"

log "starting kube-proxy"
"$K8S_BIN/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml" --hostname-override "$NODE_NAME" \
  >"$NODE_DIR/logs/kube-proxy.log" 2>&1 &
pids+=($!)
echo $! >"$NODE_DIR/kube-proxy.pid"

# Run until told to stop; if a component dies, say so and stop the rest.
wait -n "${pids[@]}" || true
log "a component exited; see $NODE_DIR/logs"
stop
