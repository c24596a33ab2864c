#!/usr/bin/env bash
# Build helm from the Go module proxy, once per version, into the same cache
# as build.sh:  $BATON_CACHE/helm-<HELM_VERSION>/bin/helm
# Prints that bin directory on stdout; progress goes to stderr.
# helm.sh/helm/v3's go.mod has no replace directives, so plain
# `go install module@version` builds it (checked below before building).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
# Pinned here (versions.env pins the cluster's components); helm v3.22 is
# built with k8s.io/* v0.37 and renders for any API server.
version=${HELM_VERSION:-v3.22.0}

cache_root=${BATON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}
bin="$cache_root/helm-$version/bin"
if [ -x "$bin/helm" ]; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build-helm.sh: Go is required to build helm $version" >&2; exit 1; }
log() { echo "[build $(date +%T)] $*" >&2; }
gomod=$("$here/go-mod-file.sh" helm.sh/helm/v3 "$version")
if grep -q '^[[:space:]]*replace' "$gomod"; then
  echo "build-helm.sh: helm $version's go.mod has replace directives; go install cannot build it" >&2
  exit 1
fi
# As helm's own Makefile: the Kubernetes version `helm template` assumes
# (client-go v0.X -> 1.X); without it, helm assumes 1.20.
client_go=$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod")
k8s_flags=""
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  k8s_flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${client_go:?no client-go in the go.mod of helm}"
done
start=$(date +%s)
mkdir -p "$bin"
log "building helm $version"
GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$bin" \
  go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version $k8s_flags" \
  "helm.sh/helm/v3/cmd/helm@$version"
log "built helm $version in $(( $(date +%s) - start ))s"
echo "$bin"
