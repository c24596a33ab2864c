#!/usr/bin/env bash
# Run a command inside the network namespace of a fresh local cluster, and
# stop the cluster afterwards whatever happens (failure, Ctrl-C). The run
# fails if the teardown leaves anything behind (down.sh checks the host).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/netns.sh"
finish() {
  local rc=$?
  if ! "$here/down.sh"; then
    echo "with-cluster.sh: the teardown left something behind (see above)" >&2
    [ "$rc" -eq 0 ] && rc=1
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM
"$here/up.sh" || exit 1
in_netns "$@"
