#!/usr/bin/env bash
# Run a command against a fresh local control plane and stop it afterwards,
# whatever happens (failure, Ctrl-C): the cluster is the command's fixture.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
trap '"$here/down.sh"' EXIT
trap 'exit 130' INT TERM
"$here/up.sh" || exit 1
"$@"
