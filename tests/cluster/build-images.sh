#!/usr/bin/env bash
# The images of `make image`, from the static release binaries in
# target/image/bin (the Makefile builds them): each Dockerfile is the one
# recipe, built with podman (state kept in target/podman, podman.sh) or, with
# IMAGE_ENGINE=docker, a running docker. Each image is also saved as a
# docker-archive, target/image/<name>.tar, which the local cluster's node
# imports (no registry is reachable here). Prints the archives.
#   build-images.sh IMAGE_REPO VERSION
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
image_repo=${1:?image repo}; version=${2:?version}
out=$repo/target/image
# shellcheck source=sidecar-image.sh
source "$here/sidecar-image.sh"

# name:ports[:description], all from sidecar/Dockerfile (one recipe).
file=sidecar/Dockerfile
for spec in "baton-sidecar:9095" \
  "baton-webhook:8443 8080:Mutating admission webhook that injects the baton sidecar into annotated workloads" \
  "baton-demo-app:8080:baton's demo app: hello world with a switchable /healthz"; do
  IFS=: read -r name ports desc <<<"$spec"
  tag="$image_repo/$name:$version"
  tar="$out/$name.tar"
  [ -x "$out/bin/$name" ] || { echo "build-images.sh: no $out/bin/$name (make image builds it)" >&2; exit 1; }
  # Up to date when the archive is newer than the binary and the recipe.
  if [ "$tar" -nt "$out/bin/$name" ] && [ "$tar" -nt "$repo/$file" ]; then echo "$tar"; continue; fi
  wrap_binary "$out/bin" "$name" "$version" "$ports" "$tag" "$tar" "$desc"
  echo "$tar"
done
