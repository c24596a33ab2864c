#!/usr/bin/env bash
# Build actionlint (checks .github/workflows in `make lint`) from the Go
# module proxy, once per version, into the same cache as build.sh:
#   $BATON_CACHE/actionlint-<ACTIONLINT_VERSION>/bin/actionlint
# Prints that bin directory on stdout; progress goes to stderr. Once built,
# nothing here reaches the network, so `make lint` runs offline.
# github.com/rhysd/actionlint's go.mod has no replace directives, so plain
# `go install module@version` builds it (checked below).
set -euo pipefail
version=${ACTIONLINT_VERSION:-v1.7.12}
module=github.com/rhysd/actionlint

cache_root=${BATON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}
bin="$cache_root/actionlint-$version/bin"
if [ -x "$bin/actionlint" ]; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build-actionlint.sh: Go is required to build actionlint $version" >&2; exit 1; }
log() { echo "[build $(date +%T)] $*" >&2; }
here=$(cd "$(dirname "$0")" && pwd)
gomod=$("$here/go-mod-file.sh" "$module" "$version")
if grep -q '^[[:space:]]*replace' "$gomod"; then
  echo "build-actionlint.sh: $module $version's go.mod has replace directives; go install cannot build it" >&2
  exit 1
fi
start=$(date +%s)
mkdir -p "$bin"
log "building actionlint $version"
GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$bin" \
  go install -ldflags "-s -w -X $module.version=$version" "$module/cmd/actionlint@$version"
log "built actionlint $version in $(( $(date +%s) - start ))s"
echo "$bin"
