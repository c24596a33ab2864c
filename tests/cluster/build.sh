#!/usr/bin/env bash
# Build the upstream control-plane binaries from the Go module proxy, once per
# version set, into a cache outside the repository:
#   $BATON_CACHE/k8s-<K8S_VERSION>-etcd-<ETCD>-kwok-<KWOK>/bin
# Prints that bin directory on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${BATON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}
bin="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin"
wanted=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok kwok-stages-3.yaml)

missing=()
for b in "${wanted[@]}"; do [ -e "$bin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: Go is required to build Kubernetes ($K8S_VERSION)" >&2; exit 1; }
log() { echo "[build $(date +%T)] $*" >&2; }
mkdir -p "$bin"
start=$(date +%s)

# `go install k8s.io/kubernetes/cmd/...@v` refuses modules with replace
# directives, so build from a throwaway module that requires k8s.io/kubernetes
# and replaces each staging module (./staging/src/k8s.io/X) with its own tag.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0
go mod init baton.local/k8s-build >/dev/null 2>&1
gomod=$("$here/go-mod-file.sh" k8s.io/kubernetes "$K8S_VERSION")
{
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*#replace \1 => \1 '"$K8S_STAGING_VERSION"'#p' "$gomod"
} >>go.mod
grep -c '^replace' go.mod | xargs -I{} echo "[build] {} staging replaces" >&2

ver_flags="-s -w"
major=$(echo "${K8S_VERSION#v}" | cut -d. -f1); minor=$(echo "${K8S_VERSION#v}" | cut -d. -f2)
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ver_flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

for b in "${missing[@]}"; do
  case "$b" in
    etcd) pkg=go.etcd.io/etcd/server/v3 ;;
    kwok | kwok-stages-3.yaml) continue ;;
    *) pkg=k8s.io/kubernetes/cmd/$b ;;
  esac
  log "building $b from $pkg"
  go build -ldflags "$ver_flags" -o "$bin/$b.tmp" "$pkg"
  mv "$bin/$b.tmp" "$bin/$b"
done

if [[ " ${missing[*]} " == *" kwok "* ]]; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$work/gobin" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$work/gobin/kwok" "$bin/kwok"
fi
if [[ " ${missing[*]} " == *" kwok-stages-3.yaml "* ]]; then
  # KWOK needs stages (what happens to nodes and pods); use its own, from
  # the module just built: nodes Ready at once, pods Running and Ready with
  # an IP at once, deleted pods gone after at least 1s and at most their
  # grace period, like kubelet (the runner deletes its pods sooner, once
  # their processes have exited), and nodes' conditions refreshed beside
  # the node Leases KWOK renews (--node-lease-duration-seconds), as kubelet
  # does: the node lifecycle controller marks a node whose Lease lapses
  # NotReady. Bump the file name when the set changes.
  stages="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  [ -d "$stages" ] || go mod download "sigs.k8s.io/kwok@$KWOK_VERSION"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/general/pod-delete.yaml; do
    cat "$stages/$f"; echo "---"
  done >"$bin/kwok-stages-3.yaml"
fi
log "built ${missing[*]} in $(( $(date +%s) - start ))s"
echo "$bin"
