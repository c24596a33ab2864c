#!/usr/bin/env bash
# Run a command inside the network namespace of a fresh local control plane,
# and stop the control plane afterwards whatever happens (failure, Ctrl-C).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/netns.sh"
trap '"$here/down.sh"' EXIT
trap 'exit 130' INT TERM
"$here/up.sh" || exit 1
in_netns "$@"
