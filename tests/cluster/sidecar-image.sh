# Sourced by build-images.sh and build-old-sidecar.sh: one binary wrapped by
# sidecar/Dockerfile (the one recipe) with podman (state kept in
# target/podman, podman.sh) or, with IMAGE_ENGINE=docker, a running docker,
# and saved as a docker-archive that the local cluster's nodes import.
#   wrap_binary BIN_DIR NAME VERSION PORTS TAG TAR [DESCRIPTION]
_image_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "${IMAGE_ENGINE:-podman}" in
  podman) _image_run() { "$_image_here/podman.sh" "$@"; } ;;
  docker) _image_run() { docker "$@"; } ;;
  *) echo "IMAGE_ENGINE is podman or docker, not $IMAGE_ENGINE" >&2; exit 1 ;;
esac

wrap_binary() {
  local bin_dir=$1 name=$2 version=$3 ports=$4 tag=$5 tar=$6 desc=${7:-}
  local args=(build -q -f "$_image_here/../../sidecar/Dockerfile" --build-arg "BIN=$name"
    --build-arg "VERSION=$version" --build-arg "PORTS=$ports" -t "$tag")
  [ -n "$desc" ] && args+=(--build-arg "DESCRIPTION=$desc")
  case "${IMAGE_ENGINE:-podman}" in
    podman) args+=(--pull=never) ;;
    # docker: through buildx (BuildKit), loaded into docker to be saved.
    docker) args=(buildx "${args[@]}" --load) ;;
  esac
  _image_run "${args[@]}" "$bin_dir" >/dev/null
  mkdir -p "$(dirname "$tar")"
  rm -f "$tar.tmp"
  if [ "${IMAGE_ENGINE:-podman}" = podman ]; then
    _image_run save -q --format docker-archive -o "$tar.tmp" "$tag"
  else
    _image_run save -o "$tar.tmp" "$tag"
  fi
  mv "$tar.tmp" "$tar"
}
