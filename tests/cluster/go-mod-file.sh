#!/usr/bin/env bash
# Prints the path of MODULE@VERSION's own go.mod, downloaded through Go's
# configured module proxy (GOPROXY) into the module cache.
#   go-mod-file.sh k8s.io/kubernetes v1.35.4
set -euo pipefail
module=${1:?module}; version=${2:?version}
file=$(cd / && GOFLAGS= GOTOOLCHAIN=local go mod download -json "$module@$version" \
  | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
[ -f "$file" ] || { echo "go-mod-file.sh: could not download $module@$version's go.mod" >&2; exit 1; }
echo "$file"
