#!/usr/bin/env bash
# Start a local Kubernetes control plane from upstream binaries, on loopback:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK
# (fake nodes whose pods become Running and Ready with 127.x IPs).
#
# Every process runs inside the network namespace of netns.sh, where KWOK's
# pod IPs are bindable addresses of its loopback.
# Everything lives in $BATON_CLUSTER_DIR (default target/cluster): PKI,
# data, logs, pid files and the kubeconfig. Nothing touches ~/.kube.
# `down.sh` stops it all; `up.sh` first stops a previous run of the same dir.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BATON_CLUSTER_DIR:-$repo/target/cluster}
nodes=${BATON_KWOK_NODES:-3}
etcd_port=${BATON_ETCD_PORT:-23790}
api_port=${BATON_APISERVER_PORT:-16443}
# shellcheck source=netns.sh
. "$here/netns.sh"

log() { echo "[cluster $(date +%T)] $*" >&2; }
started=$(date +%s)

bin=$("$here/build.sh")
"$here/down.sh" >/dev/null 2>&1 || true
rm -rf "$dir/etcd" "$dir/pods"
mkdir -p "$dir"/{pki,logs,pids,etcd}
ensure_netns
cd "$dir"

# --- PKI: one CA signs the serving cert and the admin client cert.
pki=$dir/pki
if [ ! -f "$pki/admin.crt" ]; then
  log "generating CA, serving and client certificates"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=baton-local-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
      -subj "/O=system:masters/CN=baton-admin" 2>/dev/null
    # Extensions make it an X.509 v3 certificate: rustls rejects v1.
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out admin.crt -days 3650 -extfile admin.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
fi

kubeconfig=$dir/kubeconfig
cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: baton-local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: baton-admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: baton-local
  context: {cluster: baton-local, user: baton-admin, namespace: default}
current-context: baton-local
EOF

# start NAME ARGS...: own session (so down.sh can kill the whole group),
# output to logs/NAME.log, pid to pids/NAME.pid.
start() {
  local name=$1; shift
  setsid ip netns exec "$netns" "$@" >"$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$dir/pids/$name.pid"
}

wait_for() { # wait_for WHAT TIMEOUT_S CMD...
  local what=$1 timeout=$2; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until in_netns "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${timeout}s waiting for $what; last log lines:"
      tail -n 30 "$dir/logs/"*.log >&2
      exit 1
    fi
    sleep 0.2
  done
}

log "starting etcd on 127.0.0.1:$etcd_port"
start etcd "$bin/etcd" --name baton --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "baton=http://127.0.0.1:$((etcd_port + 1))" \
  --unsafe-no-fsync --quota-backend-bytes 4294967296 --log-level warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

log "starting kube-apiserver on https://127.0.0.1:$api_port"
# endpoint-reconciler none: the 'kubernetes' Service would need a
# non-loopback endpoint, and nothing here dials it.
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
  --endpoint-reconciler-type none \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --authorization-mode RBAC \
  --allow-privileged=true \
  --profiling=false
wait_for kube-apiserver 90 curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" \
  --key "$pki/admin.key" "https://127.0.0.1:$api_port/readyz"

log "starting kube-controller-manager and kube-scheduler"
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$kubeconfig" --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0 \
  --service-account-private-key-file "$pki/sa.key" \
  --root-ca-file "$pki/ca.crt" \
  --controllers '*,-nodeipam,-nodelifecycle,-service,-route,-cloud-node-lifecycle' \
  --concurrent-endpoint-syncs 10 --concurrent-service-endpoint-syncs 10 \
  --endpointslice-updates-batch-period 0s
start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig "$kubeconfig" --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0

log "starting kwok (pod IPs from $pod_cidr)"
start kwok "$bin/kwok" --kubeconfig "$kubeconfig" --config "$bin/kwok-stages-2.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-label-selector type=kwok \
  --cidr "${pod_cidr%.0/*}.1/${pod_cidr#*/}" --node-ip 10.243.0.1 \
  --server-address 127.0.0.1:0

kubectl_() { in_netns "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
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
# The API server taints new nodes not-ready; the node lifecycle controller,
# which would lift it, is off (KWOK nodes send no kubelet heartbeats).
kubectl_ taint nodes -l type=kwok node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
wait_for "the default service account" 60 "$bin/kubectl" --kubeconfig "$kubeconfig" -n default get serviceaccount default

echo "$bin" >"$dir/bin-dir"

# The pod runner: runs our images' containers of KWOK pods as local processes.
if [ -n "${BATON_BIN_DIR:-}" ]; then
  [ -x "$BATON_BIN_DIR/baton-runner" ] || { log "no $BATON_BIN_DIR/baton-runner: run make build"; exit 1; }
  log "starting the pod runner (binaries from $BATON_BIN_DIR)"
  KUBECONFIG=$kubeconfig RUST_LOG=${RUST_LOG:-info} start runner "$BATON_BIN_DIR/baton-runner" \
    --bin-dir "$BATON_BIN_DIR" --state-dir "$dir/pods" --ca-file "$pki/ca.crt"
fi
log "control plane ready in $(( $(date +%s) - started ))s, in network namespace $netns"
log "kubectl: tests/cluster/kubectl ...   a shell inside: make shell"
