#!/usr/bin/env bash
# `make demo`: baton on a laptop, in one command.
#
# Starts a fresh local cluster (tests/cluster/up.sh: etcd, kube-apiserver,
# controller-manager, scheduler and one real node -- containerd, kubelet,
# kube-proxy -- inside the network namespace $BATON_NETNS), installs baton
# as the README says (kubectl apply -k manifests/webhook, images built by
# `make image`), installs manifests/examples/helloworld with kubectl, then
# tells the story with real commands and their real output, calling the
# Service through its ClusterIP. The Service selects both pods and targets
# the sidecars' proxies, which pass every connection to the Lease holder:
# one pod serves, its app fails, the Lease and the answers move to the
# standby (the EndpointSlice does not change), and a kept-alive client
# follows; the serving pod is deleted, they move again; a switchover with
# `kubectl baton` moves them back. Everything is stopped at the end, and
# checked to be gone.
#
# Commands are printed as you would type them against a real cluster
# (`kubectl ...`, `curl ...`); they run through tests/cluster/kubectl and
# `ip netns exec`, because the cluster lives in its own network namespace.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cluster=$repo/tests/cluster
export BATON_CLUSTER_DIR=${BATON_CLUSTER_DIR:-$repo/target/cluster}
export BATON_NETNS=${BATON_NETNS:-baton}
ns=${BATON_DEMO_NAMESPACE:-helloworld}
started=$(date +%s.%N)
cd "$repo"

# --- Output: bold headings and commands on a terminal, plain text otherwise.
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
  bold=$'\e[1m' dim=$'\e[2m' green=$'\e[32m' reset=$'\e[0m'
else
  bold='' dim='' green='' reset=''
fi
step_no=0
step() { step_no=$((step_no + 1)); printf '\n%s== %d. %s%s\n' "$bold" "$step_no" "$*" "$reset"; }
say() { printf '%s\n' "$*" | fold -s -w "${COLUMNS:-100}"; }
note() { printf '%s%s%s\n' "$dim" "$*" "$reset"; }
show() { printf '%s$ %s%s\n' "$green" "$*" "$reset"; }
# Words quoted as a user types them: 'single quotes' around shell characters.
quoted() {
  local out=() a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@,%+-]*$ ]]; then out+=("$a"); else out+=("'$a'"); fi
  done
  echo "${out[*]}"
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
now() { date +%s.%N; }

# kubectl, as typed (`kubectl ARGS`), run against the local cluster.
k() { show "kubectl $(quoted "$@")"; "$cluster/kubectl" "$@"; }
# kubectl without echo, for the script's own bookkeeping.
kq() { "$cluster/kubectl" "$@"; }
# `kubectl baton ARGS`, the plugin built by `make plugin`, found on the PATH
# as kubectl finds plugins (kubectl takes no flag before a plugin's name, so
# the kubeconfig goes through KUBECONFIG).
kb() {
  show "kubectl baton $(quoted "$@")"
  ip netns exec "$BATON_NETNS" env KUBECONFIG="$BATON_CLUSTER_DIR/kubeconfig" \
    PATH="$repo/target/x86_64-unknown-linux-gnu/release:$PATH" "$(cat "$BATON_CLUSTER_DIR/bin-dir")/kubectl" baton "$@"
}
# curl inside the cluster's network namespace, where pod IPs are reachable.
c() { show "curl $(quoted "$@")"; ip netns exec "$BATON_NETNS" curl -sS --max-time 5 "$@"; }

# The Service's EndpointSlice as a user would look at it: its pods, whether
# each is ready, the port (the sidecar's proxy).
show_slice() {
  k -n "$ns" get endpointslices -l kubernetes.io/service-name=helloworld \
    -o custom-columns='PODS:.endpoints[*].targetRef.name,READY:.endpoints[*].conditions.ready,PORT:.ports[*].port'
}
# The same for the script: "POD ready|not ready|terminating, ...", by name.
slice_state() {
  kq -n "$ns" get endpointslices -l kubernetes.io/service-name=helloworld \
    -o jsonpath='{range .items[*].endpoints[*]}{.targetRef.name} {.conditions.ready} {.conditions.terminating}{"\n"}{end}' |
    sort | awk '{ s = ($3 == "true") ? "terminating" : ($2 == "true") ? "ready" : "not ready"
                  printf "%s%s %s", sep, $1, s; sep = ", " }'
}
# Each slice's resourceVersion: equal before and after means no change.
slice_version() {
  kq -n "$ns" get endpointslices -l kubernetes.io/service-name=helloworld \
    -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}'
}
# Waits until the EndpointSlice lists both pods, ready.
wait_slice_ready() {
  for i in $(seq 300); do
    [ "$(slice_state)" = "helloworld-0 ready, helloworld-1 ready" ] && return
    [ "$i" -lt 300 ] || { echo "the EndpointSlice never listed both pods ready: $(slice_state)" >&2; exit 1; }
    sleep 0.2
  done
}

# switch_to POD CMD...: runs CMD, then times how long until the Lease names
# POD and until a client of the ClusterIP is answered by POD (a request
# every 20 ms, each on a new connection; a request the proxy holds while it
# waits for the new holder counts as answered when it is), and says whether
# the Service's EndpointSlice changed meanwhile. Appends a line to `seen`.
seen=()
switch_to() {
  local want=$1; shift
  # Watch first (kubectl wait lists, then watches: no change is missed).
  local marks; marks=$(mktemp)
  { kq -n "$ns" wait --for=jsonpath='{.spec.holderIdentity}'="$want" lease/helloworld \
      --timeout=60s >/dev/null && now >"$marks"; } &
  local waiter=$! t0 t1 t2="" failed=0 body v0 v1 s0 s1 slice
  v0=$(slice_version); s0=$(slice_state)
  t0=$(now)
  "$@"
  while [ "$(elapsed "$t0" "$(now)" | cut -d. -f1)" -lt 30 ]; do
    body=$(ip netns exec "$BATON_NETNS" curl -sS --max-time 5 "http://$service_ip/" 2>/dev/null) || failed=$((failed + 1))
    if [ "$body" = "hello from $want" ]; then t2=$(now); break; fi
    sleep 0.02
  done
  [ -n "$t2" ] || { echo "no answer by $want through the ClusterIP within 30s" >&2; exit 1; }
  wait "$waiter" || { echo "the Lease never named $want" >&2; exit 1; }
  t1=$(cat "$marks"); rm -f "$marks"
  v1=$(slice_version); s1=$(slice_state)
  if [ "$v0" = "$v1" ]; then
    slice="its EndpointSlice did not change ($s1)"
  else
    slice="its EndpointSlice changed meanwhile, from ($s0) to ($s1)"
  fi
  printf '%sThe Lease named %s after %ss; the first answer through the ClusterIP by %s came after %ss (%d requests failed meanwhile); %s.%s\n' \
    "$bold" "$want" "$(elapsed "$t0" "$t1")" "$want" "$(elapsed "$t0" "$t2")" "$failed" "$slice" "$reset"
  seen+=("$(elapsed "$t0" "$t1") s to the Lease, $(elapsed "$t0" "$t2") s to the first answer by $want, $failed failed requests; $slice")
}

# A kept-alive client: curl given 100 URLs sends them one after another on
# one connection (20 a second, answers to answers.txt, how many connections
# each request opened to connects.txt). keepalive_start starts it in the
# background; keepalive_report waits for it and shows what it got.
ka_dir=""
keepalive_start() {
  ka_dir=$(mktemp -d)
  show "curl -s --rate 20/s -w '%{stderr}%{num_connects}\\n' 'http://$service_ip/?[1-100]' >answers.txt 2>connects.txt &"
  (cd "$ka_dir" && exec ip netns exec "$BATON_NETNS" curl -s --rate 20/s -w '%{stderr}%{num_connects}\n' \
    "http://$service_ip/?[1-100]" >answers.txt 2>connects.txt) &
  ka_pid=$!
}
keepalive_report() {
  show "wait"
  wait "$ka_pid" || true
  show "uniq -c answers.txt"
  (cd "$ka_dir" && uniq -c answers.txt)
  show "awk '{ n += \$1 } END { print n }' connects.txt"
  (cd "$ka_dir" && awk '{ n += $1 } END { print n }' connects.txt)
  local runs answered connections
  runs=$(awk 'n && $0 != last { printf "%s%d x %s", sep, n, last; sep = ", then "; n = 0 } { last = $0; n++ }
              END { if (n) printf "%s%d x %s", sep, n, last }' "$ka_dir/answers.txt")
  answered=$(grep -c '^hello from ' "$ka_dir/answers.txt" || true)
  connections=$(awk '{ n += $1 } END { print n + 0 }' "$ka_dir/connects.txt")
  ka_summary="$runs; $((100 - answered)) of 100 requests failed; $connections connections opened"
  ka_connections=$connections
  printf '%sThe kept-alive client got %s.%s\n' "$bold" "$ka_summary" "$reset"
}

cleanup() {
  local rc=$?
  step "Clean up"
  show "tests/cluster/down.sh"
  "$cluster/down.sh" 2>&1 | sed 's/^/  /' || true
  [ -z "$ka_dir" ] || rm -rf "$ka_dir"
  if [ "$rc" -ne 0 ]; then
    say "The demo failed (exit $rc). Logs: $BATON_CLUSTER_DIR/logs/ (control plane), $BATON_CLUSTER_DIR/baton-node-0/logs/ (containerd, kubelet, kube-proxy) and $BATON_CLUSTER_DIR/baton-node-0/pod-logs/ (containers)."
  fi
  printf '\n%sDone in %ss.%s\n' "$bold" "$(elapsed "$started" "$(now)")" "$reset"
  exit "$rc"
}

printf '%sbaton demo: one Service, two pods, exactly one of them serving.%s\n' "$bold" "$reset"
say "A sidecar in each pod probes its app and competes for a Lease; the holder labels its pod role=active. The Service selects both pods and targets each sidecar's proxy, which passes every connection to the Lease holder and, at a switch, moves an HTTP/1.1 connection between requests to the new holder and cuts the others it carries. Watch the Lease and the answers move when the active app fails, when its pod is deleted and on a switchover, while the Service's EndpointSlice keeps listing both pods; and a kept-alive client follow a switch."

step "Build baton's images and the local cluster"
show "make image"
(cd "$repo" && make --no-print-directory image 2>&1 | grep -E '^(error|warning: unused)|Finished|Compiling baton|\.tar$' | sed 's/^ */  /') || {
  echo "make image failed" >&2; exit 1; }
show "make plugin"
(cd "$repo" && make --no-print-directory plugin 2>&1 | grep -E '^error|Finished|kubectl-baton$' | sed 's/^ */  /') || {
  echo "make plugin failed" >&2; exit 1; }
note "The cluster is upstream Kubernetes $(. "$cluster/versions.env"; echo "$K8S_VERSION") and containerd $(. "$cluster/versions.env"; echo "$CONTAINERD_VERSION"), built from the Go module proxy once (cached in ~/.cache/baton; the first time takes several minutes)."
show "tests/cluster/build.sh && tests/cluster/build-node.sh"
{ "$cluster/build.sh" && "$cluster/build-node.sh"; } 2>&1 >/dev/null | sed 's/^/  /'

trap cleanup EXIT
trap 'exit 130' INT TERM

step "Start a local cluster"
say "etcd, kube-apiserver, kube-controller-manager and kube-scheduler, and one real node: containerd with runc and a CNI bridge, kubelet, and kube-proxy in nftables mode. The node runs the images 'make image' just built (no registry is needed)."
show "tests/cluster/up.sh"
"$cluster/up.sh" 2>&1 | sed 's/^/  /'
k get nodes -o wide

step "Install baton as the README says"
say "The webhook runs as a Deployment in baton-system; it makes its own CA and serving certificate and publishes the CA in its webhook configurations."
k apply -k manifests/webhook
k -n baton-system rollout status deployment/baton-webhook --timeout=120s
k create namespace "$ns"
say "Injection is enabled per namespace: baton being down never blocks pods of namespaces without this label."
k label namespace "$ns" baton.dev/injection=enabled
# The API server loads webhook configurations asynchronously: wait until a
# dry-run pod comes back with the sidecar before creating the real ones.
probe_pod='{"apiVersion":"v1","kind":"Pod","metadata":{"name":"probe","annotations":{"baton.dev/inject":"true","baton.dev/lease-name":"probe"}},"spec":{"containers":[{"name":"app","image":"ghcr.io/baton-dev/baton-demo-app:0.1.0"}]}}'
for i in $(seq 300); do
  if kq -n "$ns" create --dry-run=server -o jsonpath='{.spec.initContainers[*].name}' -f - <<<"$probe_pod" 2>/dev/null | grep -q baton-sidecar; then
    break
  fi
  [ "$i" -lt 300 ] || { echo "the API server never called the webhook" >&2; exit 1; }
  sleep 0.1
done

step "Install the example: a 2-replica StatefulSet annotated baton.dev/inject=true"
say "manifests/examples/helloworld holds the StatefulSet (the demo app, a hello-world HTTP server whose /healthz can be told to fail), the Service 'helloworld' that selects app=helloworld (both pods) with targetPort baton-proxy (the sidecar's proxy), a headless Service, and the sidecar's Role and RoleBinding."
k -n "$ns" apply -k manifests/examples/helloworld
k -n "$ns" wait --for=create pod/helloworld-0 pod/helloworld-1 --timeout=60s >/dev/null
say "The webhook injected the sidecar (a native sidecar: an init container that keeps running):"
k -n "$ns" get pod helloworld-0 -o jsonpath='{range .spec.initContainers[*]}{.name}{"\t"}{.image}{"\n"}{end}{range .spec.containers[*]}{.name}{"\t"}{.image}{"\n"}{end}'
k -n "$ns" wait --for=condition=Ready pod -l app=helloworld --timeout=120s

step "Who serves? The Lease, the pods' role labels, the Service"
kq -n "$ns" wait --for=create lease/helloworld --timeout=60s >/dev/null
kq -n "$ns" wait --for=jsonpath='{.spec.holderIdentity}' lease/helloworld --timeout=60s >/dev/null
active=$(kq -n "$ns" get lease helloworld -o jsonpath='{.spec.holderIdentity}')
wait_slice_ready
k -n "$ns" get lease helloworld
k -n "$ns" get pods -L role
k -n "$ns" describe service helloworld
show_slice
say "Two endpoints, both pods, both ready, on the proxy's port 9096: the Service does not pick the active pod, and a switch needs no change to this list. Who serves is the Lease holder, $active, labelled role=active; the other pod runs, warm, as passive, and its proxy passes the connections it gets to $active."
other=$( [ "$active" = helloworld-0 ] && echo helloworld-1 || echo helloworld-0 )
active_ip=$(kq -n "$ns" get pod "$active" -o jsonpath='{.status.podIP}')
other_ip=$(kq -n "$ns" get pod "$other" -o jsonpath='{.status.podIP}')
service_ip=$(kq -n "$ns" get service helloworld -o jsonpath='{.spec.clusterIP}')
# kube-proxy applies a new Service at its next sync (at most a second).
for _ in $(seq 50); do
  ip netns exec "$BATON_NETNS" curl -sS --max-time 1 "http://$service_ip/" 2>/dev/null | grep -q "$active" && break
  sleep 0.1
done
say "A client calls the Service's ClusterIP; kube-proxy sends it to either pod, and either pod's proxy passes it to $active. Each pod's proxy, called directly, answers the same:"
c "http://$service_ip/"
c "http://$active_ip:9096/"
c "http://$other_ip:9096/"
c "http://$active_ip:9095/status"; echo

step "The active app's health check starts failing"
say "The demo app's /healthz returns 500 from now on. The sidecar sees two failed probes (one every 500ms), labels its pod passive, moves or cuts the connections its proxy carries and releases the Lease; the other sidecar, watching the Lease, takes it and labels its own pod active. We time it twice: until the Lease names the other pod, and until a client of the ClusterIP (a new connection every 20 ms) is answered by it."
say "First, a kept-alive client: curl given 100 URLs sends them all on one connection, 20 a second, and we let it run across the switch:"
keepalive_start
sleep 1
switch_to "$other" c -X POST "http://$active_ip:8080/control?health=fail"
keepalive_report
# The story above is told only if it is what the client got.
[ "$(head -n1 "$ka_dir/answers.txt")" = "hello from $active" ] && [ "$(tail -n1 "$ka_dir/answers.txt")" = "hello from $other" ] ||
  { echo "the kept-alive client did not go from $active to $other" >&2; exit 1; }
if [ "$ka_connections" -eq 1 ]; then
  ka_story="its one connection was answered by $active until the switch and by $other after it: the proxy carrying it moved it to the new holder between two HTTP/1.1 requests, and curl never reconnected"
else
  ka_story="its connection was answered by $active until the switch, when the proxy carrying it cut it, and curl's next connection, to whichever pod kube-proxy picked, was answered by $other"
fi
say "So $ka_story."
c "http://$active_ip:8080/healthz" || true
k -n "$ns" get lease helloworld -o custom-columns=HOLDER:.spec.holderIdentity,TRANSITIONS:.spec.leaseTransitions
k -n "$ns" get pods -L role
show "kubectl -n $ns get events --sort-by=.eventTime | grep -E 'Promoted|Demoted|AppUnhealthy|HandedOver'"
kq -n "$ns" get events --sort-by=.eventTime | grep -E 'REASON|Promoted|Demoted|AppUnhealthy|HandedOver' || true
say "leaseTransitions grew by one: the app can use it as a fencing token (the sidecar also writes it to a file with --role-file)."

step "The failed app recovers; it stays passive"
say "Some seconds after the switch, kubelet's own readinessProbe on the app (the StatefulSet's: /healthz every 2 s, three failures) marks $active not ready, and the EndpointSlice lists it so. The switch did not wait for it: the proxies had passed every connection to $other before."
kq -n "$ns" wait --for=condition=Ready=false pod/"$active" --timeout=60s >/dev/null
for _ in $(seq 100); do
  case "$(slice_state)" in *"$active not ready"*) break ;; esac
  sleep 0.2
done
show_slice
c -X POST "http://$active_ip:8080/control?health=ok"
# The sidecar probes every 500ms; one good probe makes the app healthy again.
for _ in $(seq 50); do
  ip netns exec "$BATON_NETNS" curl -sS "http://$active_ip:9095/status" | grep -q '"app_healthy":true' && break
  sleep 0.1
done
c "http://$active_ip:9095/status"; echo
k -n "$ns" wait --for=condition=Ready pod/"$active" --timeout=60s
wait_slice_ready
show_slice
say "A healthy pod does not take the Lease back: the holder keeps it while it stays healthy. $active is a warm standby again, listed ready, and its proxy passes connections to $other."
old_active=$active; active=$other; other=$old_active
active_ip=$other_ip

step "Delete the active pod"
say "On SIGTERM (or once its pod has a deletionTimestamp) the holder labels itself passive and releases the Lease at once, so the standby takes over without waiting for the Lease to expire. The StatefulSet then re-creates the deleted pod, which joins as passive."
old_uid=$(kq -n "$ns" get pod "$active" -o jsonpath='{.metadata.uid}')
switch_to "$other" k -n "$ns" delete pod "$active" --wait=false
k -n "$ns" get lease helloworld -o custom-columns=HOLDER:.spec.holderIdentity,TRANSITIONS:.spec.leaseTransitions
say "The StatefulSet re-creates $active (a new pod with the same name):"
# Until the pod of that name is a new one (another uid), Ready and labelled.
for i in $(seq 300); do
  state=$(kq -n "$ns" get pod "$active" --ignore-not-found \
    -o jsonpath='{.metadata.uid} {.metadata.labels.role} {.status.conditions[?(@.type=="Ready")].status}')
  case "$state" in "$old_uid "*) ;; *" passive True") break ;; esac
  [ "$i" -lt 300 ] || { echo "$active did not come back passive: $state" >&2; exit 1; }
  sleep 0.2
done
k -n "$ns" get pods -L role
wait_slice_ready
show_slice
say "$active is back, passive, and listed ready again; $other keeps serving."

step "An operator's view, and a switchover on request: kubectl baton"
say "kubectl baton, a kubectl plugin built with the workspace (make plugin), shows every group at a glance: the holder, healthy pods, transitions, when and why the active pod last changed. With -o wide, every pod's role, health (the condition baton.dev/app-healthy its sidecar keeps) and cordon mark."
# The re-created pod's sidecar sets its health condition after its first probe.
kq -n "$ns" wait --for=jsonpath='{.status.conditions[?(@.type=="baton.dev/app-healthy")].status}'=True pod/"$active" --timeout=60s >/dev/null
kb status -n "$ns" -o wide
say "A switchover moves the role to a chosen healthy pod without deleting anything (for maintenance of the node, say): the holder hands the Lease to it and keeps serving until the new holder takes over. kubectl baton waits and reports the time it took. The same request can be made with plain kubectl: kubectl annotate lease helloworld baton.dev/switchover-to=$active."
switch_to "$active" kb switchover helloworld --to "$active" -n "$ns"
k -n "$ns" get lease helloworld -o jsonpath='{.metadata.annotations.baton\.dev/switch-reason}{"\n"}'
kb status -n "$ns"
say "Also: kubectl baton cordon POD (a pod never becomes active; an active one hands over), and kubectl baton pause GROUP (a failing app is reported, not failed over) with resume. docs/kubectl-baton.md has the reference."

step "What you saw"
say "- The Service 'helloworld' selects both pods, and its EndpointSlice listed both: no switch needed it to change (it changed only with the pods themselves: kubelet's readiness probe of the failed app, the deleted pod and its successor). Who served was the Lease holder, labelled role=active; whichever pod a connection reached, its proxy passed it to the holder."
say "- A failing health check moved the Lease to the standby, and the ClusterIP answered from it: ${seen[0]}."
say "- A kept-alive client across that switch got $ka_summary: $ka_story."
say "- Deleting the active pod: ${seen[1]}. A switchover asked with kubectl baton: ${seen[2]}."
say "- Selecting role=active as well also works, with refused new connections while kube-proxy syncs the moved endpoint at an unplanned switch. Install on a real cluster: docs/install.md. Timings and failure modes: docs/operations.md."
