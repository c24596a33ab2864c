#!/usr/bin/env bash
# Build promtool (to check the alert rules of manifests/observability) from
# the Go module proxy, once per version, into the same cache as build.sh:
#   $BATON_CACHE/promtool-<PROMETHEUS_VERSION>/bin/promtool
# Prints that bin directory on stdout; progress goes to stderr.
# github.com/prometheus/prometheus's go.mod has no replace directives, so
# plain `go install module@version` builds it (checked below). Its Go module
# versions are v0.<major*100+minor>.<patch>: v0.316.0 is Prometheus 3.16.0.
set -euo pipefail
version=${PROMETHEUS_VERSION:-v0.316.0}
module=github.com/prometheus/prometheus

cache_root=${BATON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}
bin="$cache_root/promtool-$version/bin"
if [ -x "$bin/promtool" ]; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build-promtool.sh: Go is required to build promtool $version" >&2; exit 1; }
log() { echo "[build $(date +%T)] $*" >&2; }
here=$(cd "$(dirname "$0")" && pwd)
gomod=$("$here/go-mod-file.sh" "$module" "$version")
if grep -q '^[[:space:]]*replace' "$gomod"; then
  echo "build-promtool.sh: $module $version's go.mod has replace directives; go install cannot build it" >&2
  exit 1
fi
start=$(date +%s)
mkdir -p "$bin"
log "building promtool $version"
GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$bin" \
  go install -ldflags "-s -w" "$module/cmd/promtool@$version"
log "built promtool $version in $(( $(date +%s) - start ))s"
echo "$bin"
