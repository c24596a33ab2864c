#!/usr/bin/env bash
# build-go-tool.sh TOOL MODULE VERSION [LDFLAGS]: builds MODULE/cmd/TOOL at
# VERSION from the Go module proxy, once per version, into the same cache as
# build.sh:
#   $BATON_CACHE/TOOL-VERSION/bin/TOOL
# Prints that bin directory on stdout; progress goes to stderr. Once built,
# nothing here reaches the network. Plain `go install module@version` builds
# only modules whose go.mod has no replace directives: checked, with a clear
# error otherwise.
set -euo pipefail
tool=$1 module=$2 version=$3 ldflags=${4:-}

cache_root=${BATON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}
bin="$cache_root/$tool-$version/bin"
if [ -x "$bin/$tool" ]; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build-go-tool.sh: Go is required to build $tool $version" >&2; exit 1; }
log() { echo "[build $(date +%T)] $*" >&2; }
here=$(cd "$(dirname "$0")" && pwd)
gomod=$("$here/go-mod-file.sh" "$module" "$version")
if grep -q '^[[:space:]]*replace' "$gomod"; then
  echo "build-go-tool.sh: $module $version's go.mod has replace directives; go install cannot build $tool" >&2
  exit 1
fi
start=$(date +%s)
mkdir -p "$bin"
log "building $tool $version"
GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$bin" \
  go install -ldflags "-s -w $ldflags" "$module/cmd/$tool@$version"
log "built $tool $version in $(( $(date +%s) - start ))s"
echo "$bin"
