#!/usr/bin/env bash
# Build what a real node needs beside kubelet and kube-proxy (build.sh):
# containerd, its runc shim and ctr from the Go module proxy, and the pause
# binary from kubernetes' own build/pause/linux/pause.c (gcc -static) and its
# image (podman, pause.Dockerfile), once per version, into
#   $BATON_CACHE/containerd-<CONTAINERD_VERSION>-k8s-<K8S_VERSION>/bin
# Prints that bin directory on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${BATON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}
bin="$cache_root/containerd-$CONTAINERD_VERSION-k8s-$K8S_VERSION/bin"
wanted=(containerd containerd-shim-runc-v2 ctr pause pause.tar)
missing=()
for b in "${wanted[@]}"; do [ -e "$bin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build-node.sh: Go is required to build containerd $CONTAINERD_VERSION" >&2; exit 1; }
command -v gcc >/dev/null || { echo "build-node.sh: gcc is required to build the pause binary" >&2; exit 1; }
log() { echo "[build $(date +%T)] $*" >&2; }
mkdir -p "$bin"
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for b in containerd containerd-shim-runc-v2 ctr; do
  [[ " ${missing[*]} " == *" $b "* ]] || continue
  log "building $b $CONTAINERD_VERSION"
  GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$work/gobin" \
    go install -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/$b@$CONTAINERD_VERSION"
  mv "$work/gobin/$b" "$bin/$b"
done

if [[ " ${missing[*]} " == *" pause "* ]]; then
  src=$(cd / && GOFLAGS= GOTOOLCHAIN=local go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')/build/pause/linux/pause.c
  log "building pause from $src"
  gcc -Os -static -DVERSION="${PAUSE_IMAGE##*:}" -o "$bin/pause.tmp" "$src"
  strip "$bin/pause.tmp"
  mv "$bin/pause.tmp" "$bin/pause"
fi
if [[ " ${missing[*]} " == *" pause.tar "* ]]; then
  log "building the image $PAUSE_IMAGE"
  ctx="$work/pause-image"; mkdir -p "$ctx"; cp "$bin/pause" "$ctx/"
  export BATON_PODMAN_DIR="$cache_root/podman"
  "$here/podman.sh" build -q --pull=never -f "$here/pause.Dockerfile" -t "$PAUSE_IMAGE" "$ctx" >/dev/null
  rm -f "$bin/pause.tar"
  "$here/podman.sh" save -q --format docker-archive -o "$bin/pause.tar.tmp" "$PAUSE_IMAGE"
  mv "$bin/pause.tar.tmp" "$bin/pause.tar"
fi
log "built ${missing[*]} in $(( $(date +%s) - start ))s"
echo "$bin"
