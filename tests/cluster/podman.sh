#!/usr/bin/env bash
# podman with all of its state in a folder of ours (default target/podman):
# image storage, run state, temp files and network config, so that building
# an image writes nothing outside the project and the build cache.
#   podman.sh build -f sidecar/Dockerfile -t NAME CONTEXT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${BATON_PODMAN_DIR:-$(cd "$here/../.." && pwd)/target/podman}
command -v podman >/dev/null || {
  echo "podman.sh: podman is needed to build images here (Debian: apt-get install podman)" >&2; exit 1; }
mkdir -p "$state"/{storage,run,tmp,net}
exec env TMPDIR="$state/tmp" podman --root "$state/storage" --runroot "$state/run" --tmpdir "$state/run/libpod" \
  --storage-driver vfs --events-backend none --cgroup-manager cgroupfs \
  --network-config-dir "$state/net" "$@"
