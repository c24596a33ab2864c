#!/usr/bin/env bash
# Everything a release publishes, in one folder (`make release` runs this
# after `make image` and `make plugin` built the static binaries and the
# images of this machine's architecture):
#   release.sh build VERSION DIR TARGET   the folder for this architecture
#   release.sh index VERSION DIR          Krew manifest, notes and SHA256SUMS
#                                         over whatever DIR holds (CI merges
#                                         the amd64 and arm64 folders first)
# The folder: static binaries <bin>-linux-<arch>, the plugin archives
# kubectl-baton-v<version>-linux-<arch>.tar.gz (+ .sha256), the images as
# docker-archives <image>-<version>-linux-<arch>.tar, the packaged chart
# baton-<version>.tgz, the SBOM baton-<version>-linux-<arch>.cdx.json
# (CycloneDX), the Krew manifest baton.yaml, RELEASE_NOTES.md and
# SHA256SUMS. Nothing is pushed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
mode=${1:?build or index}; version=${2:?version}; dir=${3:?release folder}
tool=$repo/target/debug/baton-release
[ -x "$tool" ] || { echo "release.sh: no $tool (make release builds it)" >&2; exit 1; }
log() { echo "release: $*" >&2; }

index() {
  "$tool" krew --dir "$dir" --out "$dir/baton.yaml"
  "$tool" notes --out "$dir/RELEASE_NOTES.md"
  (cd "$dir" && find . -maxdepth 1 -type f ! -name 'SHA256SUMS*' -printf '%P\n' | LC_ALL=C sort \
    | xargs sha256sum >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
  log "$(wc -l <"$dir/SHA256SUMS") files in $dir (SHA256SUMS)"
}

if [ "$mode" = index ]; then index; exit 0; fi
[ "$mode" = build ] || { echo "release.sh: build or index, not $mode" >&2; exit 1; }
target=${4:?rust target}
case "$target" in
  x86_64-*) arch=amd64 ;;
  aarch64-*) arch=arm64 ;;
  *) echo "release.sh: no release architecture for $target" >&2; exit 1 ;;
esac
bins=$repo/target/$target/release
# The commit's time: archives and the SBOM are the same from the same commit.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
stamp=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

rm -rf "$dir"; mkdir -p "$dir"
for b in baton-sidecar baton-webhook kubectl-baton; do
  [ -x "$bins/$b" ] || { echo "release.sh: no $bins/$b (make image plugin build it)" >&2; exit 1; }
  # Static: a release binary must run on any Linux of its architecture.
  if ldd "$bins/$b" 2>&1 | grep -q '=>'; then
    echo "release.sh: $bins/$b is dynamically linked" >&2; exit 1
  fi
  cp "$bins/$b" "$dir/$b-linux-$arch"
done

# The plugin archive Krew installs: the binary and the licence, with fixed
# owners, order and times.
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
cp "$bins/kubectl-baton" LICENSE "$stage/"
archive=kubectl-baton-v$version-linux-$arch.tar.gz
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
  -cf - kubectl-baton LICENSE | gzip -n -9 >"$dir/$archive"
(cd "$dir" && sha256sum "$archive" >"$archive.sha256")

# The images `make image` saved (docker-archives, tagged ghcr.io/...:version).
for image in baton-sidecar baton-webhook baton-demo-app; do
  tar=target/image/$image.tar
  [ "$tar" -nt "target/image/bin/$image" ] || { echo "release.sh: $tar is older than its binary (make image)" >&2; exit 1; }
  cp "$tar" "$dir/$image-$version-linux-$arch.tar"
done

helm_bin=$(tests/cluster/build-helm.sh)
"$helm_bin/helm" lint --quiet manifests/helm/baton >&2
"$helm_bin/helm" package manifests/helm/baton --destination "$dir" >&2
[ -f "$dir/baton-$version.tgz" ] || { echo "release.sh: helm package wrote no baton-$version.tgz" >&2; exit 1; }

"$tool" sbom --target "$target" --timestamp "$stamp" --out "$dir/baton-$version-linux-$arch.cdx.json"
index
