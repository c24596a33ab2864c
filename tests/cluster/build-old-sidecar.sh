#!/usr/bin/env bash
# The sidecar image of an earlier commit, for the mixed-version group of
# tests/tests/upgrade.rs: a group in the middle of an upgrade runs sidecars
# of two builds. Default commit: the last one before the proxy's peer port
# sent its one-byte "served" acknowledgement, the skew an upgrade across it
# hits. Built once per commit into ~/.cache/baton/old-sidecar/<commit>
# (sources from `git archive`, its own target dir, offline when the cargo
# registry cache holds every crate), wrapped by today's sidecar/Dockerfile as
# ghcr.io/baton-dev/baton-sidecar:old-<short commit> and saved as
# target/image/baton-sidecar-old.tar, which up.sh hands to every real node
# with the other images. Prints the archive.
#   build-old-sidecar.sh [COMMIT]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
commit=${1:-${BATON_OLD_SIDECAR_COMMIT:-2e5709044c092a8e6ea96bbe77f4845521c69a1c}}
image_repo=${IMAGE_REPO:-ghcr.io/baton-dev}
target=$(uname -m)-unknown-linux-gnu
# shellcheck source=sidecar-image.sh
source "$here/sidecar-image.sh"

have() { git -C "$repo" cat-file -e "$1^{commit}" 2>/dev/null; }
# A shallow clone may lack it: its origin (a local path or a mirror) has it.
if ! have "$commit" && [ "$(git -C "$repo" rev-parse --is-shallow-repository)" = true ]; then
  git -C "$repo" fetch --quiet --unshallow >&2 || true
fi
have "$commit" || {
  echo "build-old-sidecar.sh: commit $commit is not in this clone (a shallow clone whose" \
    "origin cannot be reached?); fetch it (git fetch --unshallow) or set BATON_OLD_SIDECAR_COMMIT" >&2
  exit 1
}
commit=$(git -C "$repo" rev-parse "$commit^{commit}")
short=${commit:0:7}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/baton/old-sidecar/$commit
bin=$cache/bin/baton-sidecar
tag=$image_repo/baton-sidecar:old-$short
tar=$repo/target/image/baton-sidecar-old.tar

# The archive names its tag: up to date when it is this commit's and newer
# than the recipe that wraps the binary.
if [ -f "$tar" ] && [ "$(cat "$tar.tag" 2>/dev/null)" = "$tag" ] && [ "$tar" -nt "$repo/sidecar/Dockerfile" ]; then
  echo "$tar"; exit 0
fi

if [ ! -x "$bin" ]; then
  rm -rf "$cache/src"
  mkdir -p "$cache/src" "$cache/bin"
  git -C "$repo" archive "$commit" | tar -x -C "$cache/src"
  # Offline when every crate of that lock file is in the registry cache (a
  # dry fetch says so), else the registry is asked once.
  offline=()
  (cd "$cache/src" && cargo fetch --locked --offline >/dev/null 2>&1) && offline=(--offline)
  (cd "$cache/src" && RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo build --release --locked "${offline[@]}" --target "$target" --target-dir "$cache/target" \
      -p baton-sidecar --bin baton-sidecar >&2)
  cp "$cache/target/$target/release/baton-sidecar" "$bin.tmp"
  mv "$bin.tmp" "$bin"
fi

wrap_binary "$cache/bin" baton-sidecar "old-$short" 9095 "$tag" "$tar"
echo "$tag" >"$tar.tag"
echo "$tar"
