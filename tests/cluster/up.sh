#!/usr/bin/env bash
# Start a local Kubernetes cluster from upstream binaries: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, and
#  - real nodes (BATON_REAL_NODES, default 1), each in a network namespace
#    of its own: containerd, runc, a CNI bridge, kubelet and kube-proxy
#    (node.sh), running the images that `make image` built
#    (target/image/*.tar), with routes between their pod ranges;
#  - and/or KWOK fake nodes (BATON_KWOK_NODES, default 0) with the pod runner
#    standing in for their kubelet, where hundreds of pods are needed.
#
# The control plane (and a kube-proxy, so that it and clients there reach
# ClusterIPs) runs inside the network namespace of netns.sh; each node in a
# namespace of its own and a private mount namespace, with its processes and
# cgroups under the cgroup this script runs in. Everything lives in $BATON_CLUSTER_DIR (default
# target/cluster): PKI, data, logs, pid files and the kubeconfig. Nothing
# touches ~/.kube. `down.sh` stops it all and checks that nothing is left;
# `up.sh` first stops a previous run of the same dir.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BATON_CLUSTER_DIR:-$repo/target/cluster}
nodes=${BATON_KWOK_NODES:-0}
image_dir=${BATON_IMAGE_DIR:-$repo/target/image}
# shellcheck source=netns.sh
. "$here/netns.sh"
# shellcheck source=control-plane.sh
. "$here/control-plane.sh"
# shellcheck source=versions.env
. "$here/versions.env"

started=$(date +%s)

bin=$("$here/build.sh")
node_bin=""
[ "$real_nodes" -gt 0 ] && node_bin=$("$here/build-node.sh")
"$here/preflight.sh" "$real_nodes"
if ls "$dir"/pids/*.pid >/dev/null 2>&1 || ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$netns"; then
  log "a cluster from an earlier run is still up ($dir, network namespace $netns): stopping it"
fi
# A failed check here is about the earlier run (its record may also be old):
# say so, and check this run against a fresh record.
"$here/down.sh" >&2 || log "warning: the earlier run left something behind (above); it is cleaned up now as far as down.sh can"
rm -f "$dir/host-before"
rm -rf "$dir/etcd" "$dir/pods" "$dir/node" "$dir"/baton-node-*
mkdir -p "$dir"/{pki,logs,pids,etcd}
# The nodes this run starts, one line each, for down.sh, hostcheck.sh and the
# harness's faults (tests/src/harness/nodes.rs):
#   name address netns link cgroup dir
# and the cluster's own network namespace, where each node's link has its port.
echo "$netns" >"$dir/netns"
: >"$dir/real-nodes"
for i in $(seq 0 $((real_nodes - 1))); do
  node_vars "$i"
  echo "$node_name $node_ip $node_netns $node_link $node_cgroup $node_dir" >>"$dir/real-nodes"
done
# What the host looks like before: down.sh checks that it is the same after.
"$here/hostcheck.sh" record "$dir/host-before"
ensure_netns
[ "$nodes" -gt 0 ] && ip -n "$netns" route replace local "$pod_cidr" dev lo
if [ "$real_nodes" -gt 0 ]; then
  # The control plane's address on a bridge, the nodes' L2 segment; every
  # node's veth pair has one end there. ClusterIPs route through it, so that
  # clients in this namespace (tests, the API server calling webhooks) reach
  # Services through the kube-proxy that runs here.
  ip -n "$netns" link add "$cp_bridge" type bridge
  ip -n "$netns" addr add "$cp_ip/24" dev "$cp_bridge"
  ip -n "$netns" link set "$cp_bridge" up
  ip -n "$netns" route replace "$service_cidr" dev "$cp_bridge" src "$cp_ip"
  for i in $(seq 0 $((real_nodes - 1))); do
    node_vars "$i"
    ip netns add "$node_netns"
    ip -n "$node_netns" link set lo up
    ip -n "$netns" link add "$node_link" type veth peer name eth0 netns "$node_netns"
    ip -n "$netns" link set "$node_link" master "$cp_bridge" up
    ip -n "$node_netns" addr add "$node_ip/24" dev eth0
    ip -n "$node_netns" link set eth0 up
    ip -n "$node_netns" route replace default via "$cp_ip"
    # The node forwards between its pods' bridge and its link (a setting of
    # its own network namespace, not of the host).
    ip netns exec "$node_netns" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
  done
fi
cd "$dir"

# --- PKI: one CA signs the serving cert and every client cert.
pki=$dir/pki
# client_cert NAME SUBJECT, in $pki: NAME.key and NAME.crt, signed by the CA.
client_cert() {
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out "$1.crt" -days 3650 -extfile client.ext 2>/dev/null
}
if [ ! -f "$pki/kube-proxy.crt" ] || ! grep -q "IP:$cp_ip," "$pki/apiserver.ext" 2>/dev/null; then
  log "generating CA, serving and client certificates"
  rm -f "$pki"/*
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=baton-local-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' \
      "$cp_ip" "$api_service_ip" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
    # Client certificates: the admin, the API server towards kubelets and
    # kube-proxy (the nodes' below). Extensions make them X.509 v3: rustls
    # rejects v1.
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >client.ext
    for who in admin:/O=system:masters/CN=baton-admin \
      apiserver-kubelet-client:/O=system:masters/CN=kube-apiserver-kubelet-client \
      kube-proxy:/CN=system:kube-proxy; do
      client_cert "${who%%:*}" "${who#*:}"
    done
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
fi
# Each kubelet its own identity: the NodeRestriction admission plugin lets a
# node change only its own Node and pods.
for i in $(seq 0 $((real_nodes - 1))); do
  node_vars "$i"
  [ -f "$pki/$node_name.crt" ] || (cd "$pki" && client_cert "$node_name" "/O=system:nodes/CN=system:node:$node_name")
done

# write_kubeconfig FILE SERVER_HOST CERT_NAME
write_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: baton-local
  cluster:
    server: https://$2:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: $3
  user:
    client-certificate: $pki/$3.crt
    client-key: $pki/$3.key
contexts:
- name: baton-local
  context: {cluster: baton-local, user: $3, namespace: default}
current-context: baton-local
EOF
}
kubeconfig=$dir/kubeconfig
write_kubeconfig "$kubeconfig" 127.0.0.1 admin

log "starting etcd on 127.0.0.1:$etcd_port"
start etcd "$bin/etcd" --name baton --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "baton=http://127.0.0.1:$((etcd_port + 1))" \
  --unsafe-no-fsync --quota-backend-bytes 4294967296 --log-level warn
wait_healthy etcd 30

# With real nodes, the API server advertises its address on the nodes'
# bridge: the 'kubernetes' Service's endpoint, which pods reach through
# kube-proxy. Without one nothing dials that Service, and loopback is no
# valid endpoint.
if [ "$real_nodes" -gt 0 ]; then
  api_net=(--bind-address 0.0.0.0 --advertise-address "$cp_ip")
else
  api_net=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none)
fi
log "starting kube-apiserver on https://127.0.0.1:$api_port"
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  "${api_net[@]}" --secure-port "$api_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$service_cidr" \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction \
  --allow-privileged=true \
  --profiling="${BATON_APISERVER_PROFILING:-false}" # true serves /debug/pprof, to find where its time goes
wait_healthy kube-apiserver 90

log "starting kube-controller-manager and kube-scheduler"
# Every controller a cluster runs, node lifecycle (NotReady pods and taints
# of a node that stops renewing its Lease, after node-monitor-grace-period,
# 50 s by default) and node IPAM (each node's pod range) included. Off: the
# ones that need a cloud provider (load balancers, cloud routes, cloud node
# deletion); up.sh adds the routes between pod ranges itself, as kind's
# kindnetd does. BATON_NODE_MONITOR_GRACE_PERIOD changes the grace period
# (not done by make test: its tests wait for the default).
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$kubeconfig" --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0 \
  --service-account-private-key-file "$pki/sa.key" \
  --root-ca-file "$pki/ca.crt" \
  --controllers '*,-service,-route,-cloud-node-lifecycle' \
  --allocate-node-cidrs --cluster-cidr "$cluster_cidr" --node-cidr-mask-size 24 \
  --service-cluster-ip-range "$service_cidr" \
  ${BATON_NODE_MONITOR_GRACE_PERIOD:+--node-monitor-grace-period "$BATON_NODE_MONITOR_GRACE_PERIOD"} \
  --concurrent-endpoint-syncs 10 --concurrent-service-endpoint-syncs 10 \
  --endpointslice-updates-batch-period 0s
start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig "$kubeconfig" --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0

kubectl_() { in_netns "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

if [ "$real_nodes" -gt 0 ]; then
  . "$here/node-config.sh"
  # This namespace's own kube-proxy: the API server calls webhooks, and the
  # tests' clients call Services, through ClusterIPs from here.
  write_kube_proxy_config "$dir/kube-proxy.yaml" "$dir/kube-proxy.kubeconfig" 127.0.0.1
  start kube-proxy "$bin/kube-proxy" --config "$dir/kube-proxy.yaml" --hostname-override baton-control-plane
  for i in $(seq 0 $((real_nodes - 1))); do
    node_vars "$i"
    write_node_config
    log "starting the node $node_name ($node_ip in network namespace $node_netns; cgroup $node_cgroup)"
    # One process tree in one private mount namespace (node.sh says why).
    setsid nsenter --net="/run/netns/$node_netns" -- unshare --mount --propagation slave -- \
      env NODE_DIR="$node_dir" NODE_NAME="$node_name" NODE_IP="$node_ip" NODE_CGROUP="$node_cgroup" \
      K8S_BIN="$bin" NODE_BIN="$node_bin" "$here/node.sh" >"$dir/logs/$node_name.log" 2>&1 </dev/null &
    echo $! >"$dir/pids/$node_name.pid"
  done
  # Each node's pod range, once node IPAM has given it one: its CNI bridge
  # takes addresses from it, and every other namespace routes it via the
  # node's address (what kind's kindnetd does). Then the node turns Ready.
  for i in $(seq 0 $((real_nodes - 1))); do
    node_vars "$i"
    wait_for "node $node_name to register and get a pod range" 90 bash -c \
      "[ -n \"\$('$bin/kubectl' --kubeconfig '$kubeconfig' get node '$node_name' -o jsonpath='{.spec.podCIDR}')\" ]"
    range=$(kubectl_ get node "$node_name" -o jsonpath='{.spec.podCIDR}')
    write_node_cni "$range"
    ip -n "$netns" route replace "$range" via "$node_ip"
    for j in $(seq 0 $((real_nodes - 1))); do
      [ "$j" -eq "$i" ] && continue
      ip -n "$netns-n$j" route replace "$range" via "$node_ip"
    done
    log "node $node_name: pods from $range"
  done
  for i in $(seq 0 $((real_nodes - 1))); do
    node_vars "$i"
    wait_for "node $node_name to be Ready" 90 bash -c \
      "'$bin/kubectl' --kubeconfig '$kubeconfig' get node '$node_name' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
    # Beside KWOK nodes (make bench), real nodes take only the pods that ask
    # for them (tests/src/workload.rs ON_REAL_NODE); the rest go to KWOK.
    if [ "$nodes" -gt 0 ]; then
      kubectl_ taint nodes "$node_name" baton.dev/real-node=true:NoSchedule >/dev/null
    fi
  done
fi

if [ "$nodes" -gt 0 ]; then
  log "starting kwok (pod IPs from $pod_cidr)"
  # KWOK renews its nodes' Leases, as kubelet does, for the node lifecycle
  # controller (at kubelet's default duration).
  start kwok "$bin/kwok" --kubeconfig "$kubeconfig" --config "$bin/kwok-stages-3.yaml" \
    --node-lease-duration-seconds 40 \
    --manage-all-nodes=false \
    --manage-nodes-with-label-selector type=kwok \
    --cidr "${pod_cidr%.0/*}.1/${pod_cidr#*/}" --node-ip 10.243.0.1 \
    --server-address 127.0.0.1:0
  for i in $(seq 0 $((nodes - 1))); do
    cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {type: kwok, kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "500"}
  capacity: {cpu: "32", memory: 256Gi, pods: "500"}
---
EOF
  done | kubectl_ apply -f - >/dev/null
  wait_for "$nodes Ready nodes" 60 bash -c \
    "[ \"\$('$bin/kubectl' --kubeconfig '$kubeconfig' get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}' | grep -c True)\" -eq $nodes ]"
  # Node IPAM gives KWOK's nodes ranges too, and KWOK takes its pods' IPs
  # from them rather than from --cidr: the pod runner's processes, in this
  # namespace, must be able to bind them, so each range is local here.
  for i in $(seq 0 $((nodes - 1))); do
    wait_for "a pod range for kwok-node-$i" 60 bash -c \
      "[ -n \"\$('$bin/kubectl' --kubeconfig '$kubeconfig' get node kwok-node-$i -o jsonpath='{.spec.podCIDR}')\" ]"
    range=$(kubectl_ get node "kwok-node-$i" -o jsonpath='{.spec.podCIDR}')
    ip -n "$netns" route replace local "$range" dev lo
  done
fi
# New nodes start tainted not-ready; the node lifecycle controller lifts the
# taint once it sees them Ready (KWOK's renew their Leases, kubelets theirs).
wait_for "no node tainted not-ready" 60 bash -c \
  "! '$bin/kubectl' --kubeconfig '$kubeconfig' get nodes -o jsonpath='{.items[*].spec.taints[*].key}' | grep -q node.kubernetes.io/not-ready"
wait_for "the default service account" 60 "$bin/kubectl" --kubeconfig "$kubeconfig" -n default get serviceaccount default

echo "$bin" >"$dir/bin-dir"
[ -n "$node_bin" ] && echo "$node_bin" >"$dir/node-bin-dir"

# The pod runner: runs our images' containers of KWOK pods as local processes.
if [ "$nodes" -gt 0 ] && [ -n "${BATON_BIN_DIR:-}" ]; then
  [ -x "$BATON_BIN_DIR/baton-runner" ] || { log "no $BATON_BIN_DIR/baton-runner: run make build"; exit 1; }
  # The pods' processes may come from elsewhere: `make bench` runs the
  # release binaries of the images (BATON_POD_BIN_DIR=target/image/bin).
  pod_bin=${BATON_POD_BIN_DIR:-$BATON_BIN_DIR}
  log "starting the pod runner (pods' binaries from $pod_bin)"
  KUBECONFIG=$kubeconfig RUST_LOG=${RUST_LOG:-info} start runner "$BATON_BIN_DIR/baton-runner" \
    --bin-dir "$pod_bin" --state-dir "$dir/pods" --ca-file "$pki/ca.crt"
fi
log "cluster ready in $(( $(date +%s) - started ))s, in network namespace $netns"
log "kubectl: tests/cluster/kubectl ...   a shell inside: make shell"
