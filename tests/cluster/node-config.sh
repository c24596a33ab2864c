# Sourced by up.sh: writes a real node's configuration under $node_dir and
# creates its cgroup (the node_* variables come from netns.sh's node_vars).
# Each setting that differs from a stock node says why; most keep the node
# inside the project's folders and the harness's cgroup.

write_node_config() {
  local node=$node_dir
  mkdir -p "$node"/{logs,images,cni/net.d,cni/ipam,kubelet,pod-logs,containerd/root,containerd/state,runc,volume-plugins}

  # Images: the pause image (build-node.sh) and ours (`make image`).
  cp "$node_bin/pause.tar" "$node/images/"
  local n=0
  for tar in "$image_dir"/*.tar; do
    [ -f "$tar" ] || continue
    ln -f "$tar" "$node/images/" 2>/dev/null || cp "$tar" "$node/images/"
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || log "warning: no images in $image_dir (make image); pods of ours will not start"

  # containerd 2.x (config version 3). The grpc socket path must stay under
  # 108 bytes; /run is a tmpfs of the node's mount namespace (node.sh).
  cat >"$node/containerd.toml" <<EOF
version = 3
root = "$node/containerd/root"
state = "$node/containerd/state"
# No drop-ins from /etc/containerd: this node is configured here alone.
imports = []
[grpc]
  address = "$node/containerd.sock"
[plugins.'io.containerd.internal.v1.opt']
  path = "$node/containerd/opt"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins.'io.containerd.cri.v1.runtime']
  # Without CAP_SYS_RESOURCE a container cannot get a lower OOM score than us.
  restrict_oom_score_adj = true
  # Pod network namespaces under our state dir, not /run/netns of the host.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  enable_cdi = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    # A private conf dir: Debian's podman drops a conflist in /etc/cni/net.d.
    conf_dir = "$node/cni/net.d"
    max_conf_num = 1
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$node/runc"
        SystemdCgroup = false
EOF

  write_kubeconfig "$node/kubelet.kubeconfig" "$cp_ip" "$node_name"
  : >"$node/resolv.conf"

  cat >"$node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$node/containerd.sock
# cgroups: ours, nested under the harness's own, in every v1 hierarchy.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: $node_cgroup
# No CAP_SYS_RESOURCE to lower scores; no swap accounting wanted.
oomScoreAdj: 0
failSwapOn: false
# Everything on disk in the project's folders.
podLogsDir: $node/pod-logs
volumePluginDir: $node/volume-plugins
resolvConf: $node/resolv.conf
# An image garbage-collected here could not be pulled again, and a busy
# build machine's disk must not evict test pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%", imagefs.inodesFree: "0%", memory.available: "100Mi"}
# Pods' status reaches the API server sooner: readiness drives the Service.
nodeStatusUpdateFrequency: 10s
serializeImagePulls: false
localStorageCapacityIsolation: false
# A renewed Secret reaches mounted volumes at the pod's next periodic sync:
# 10 s instead of a minute keeps the certificate-rotation test short.
syncFrequency: 10s
EOF

  write_kube_proxy_config "$node/kube-proxy.yaml" "$node/kube-proxy.kubeconfig" "$cp_ip"

  # The node's cgroup in every v1 hierarchy, with the parents it needs
  # (runc makes the same path in the cgroup2 mount itself). Another local
  # cluster may remove an empty shared parent meanwhile: try again.
  local h path dir
  for h in /sys/fs/cgroup/*/; do
    [ "$(basename "$h")" = unified ] && continue
    dir=${h%/}$node_cgroup
    for _ in 1 2 3 4 5; do mkdir -p "$dir" 2>/dev/null && break; sleep 0.1; done
    [ -d "$dir" ] || { log "cannot create the node's cgroup $dir"; return 1; }
    # A new cpuset has no CPUs nor memory nodes until given its parent's.
    path=${h%/}
    for part in $(echo "${node_cgroup#/}" | tr '/' ' '); do
      path=$path/$part
      if [ -f "$path/cpuset.cpus" ] && [ -z "$(cat "$path/cpuset.cpus")" ]; then
        cat "$(dirname "$path")/cpuset.cpus" >"$path/cpuset.cpus"
        cat "$(dirname "$path")/cpuset.mems" >"$path/cpuset.mems"
      fi
    done
  done
}

# write_node_cni RANGE: the node's pod network, once node IPAM has given it
# RANGE (containerd picks the file up; kubelet then reports the node Ready).
# A bridge with host-local addresses; no masquerade (pod addresses are routed
# between the namespaces), the bridge is the pods' gateway.
write_node_cni() {
  cat >"$node_dir/cni/net.d/10-baton.conflist.tmp" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "baton",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$node_dir/cni/ipam",
        "ranges": [[{"subnet": "$1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  mv "$node_dir/cni/net.d/10-baton.conflist.tmp" "$node_dir/cni/net.d/10-baton.conflist"
}

# write_kube_proxy_config FILE KUBECONFIG API_HOST: a kube-proxy's settings
# (one per node, and one in the control plane's namespace).
write_kube_proxy_config() {
  write_kubeconfig "$2" "$3" kube-proxy
  cat >"$1" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $2}
mode: nftables
clusterCIDR: $cluster_cidr
# Default sync periods, as on users' clusters (minSyncPeriod 1s), unless
# BATON_KUBE_PROXY_MIN_SYNC says otherwise (the bench's tuned-cluster run).
${BATON_KUBE_PROXY_MIN_SYNC:+nftables: {minSyncPeriod: $BATON_KUBE_PROXY_MIN_SYNC\}}
oomScoreAdj: 0
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# The conntrack sysctls are read-only inside a network namespace.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}
