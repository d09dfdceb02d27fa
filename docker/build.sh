#!/usr/bin/env bash
# docker/build.sh — build the facedistill images with podman, without a registry if need be.
#
#   docker/build.sh [--standin] [--full] [--platform amd64|arm64] [--tag PREFIX]
#
# --standin     first make a local base image from Debian packages (debootstrap --variant=minbase
#               bookworm + python3 python3-venv python3-pip, a `python` link as in the official image)
#               and build FROM it; for machines that reach Debian and PyPI but no container registry.
#               The rootfs is cached in $STANDIN_DIR (default /var/tmp/facedistill-standin); a CA
#               bundle named by $PIP_CERT (a TLS-inspecting proxy's) is copied into it.
# --full        also build the `full` stage (PyTorch CPU)
# --platform    target architecture (default amd64)
# --tag PREFIX  image name prefix (default facedistill): PREFIX:runtime-ARCH, PREFIX:full-ARCH
# Prints the build time and each image's size. Needs root (podman build --isolation chroot).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STANDIN=0; FULL=0; ARCH=amd64; TAG=facedistill
STANDIN_DIR=${STANDIN_DIR:-/var/tmp/facedistill-standin}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --standin) STANDIN=1; shift ;;
    --full) FULL=1; shift ;;
    --platform) ARCH=${2#linux/}; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "build.sh: unknown option $1" >&2; usage 2 ;;
  esac
done
case "$ARCH" in amd64|arm64) ;; *) echo "build.sh: --platform must be amd64 or arm64 (got $ARCH)" >&2; exit 2 ;; esac

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "build.sh: $1 not found; install it (Debian: apt-get install -y $2)" >&2; exit 2; }
}
need podman podman
ARGS=()
if [ "$STANDIN" -eq 1 ]; then
  need debootstrap debootstrap
  [ "$(id -u)" -eq 0 ] || { echo "build.sh: --standin needs root (debootstrap)" >&2; exit 2; }
  BASE="localhost/facedistill-standin:bookworm-$ARCH"
  if ! podman image exists "$BASE"; then
    DIR="$STANDIN_DIR/bookworm-$ARCH"
    if [ ! -x "$DIR/usr/bin/python3" ]; then
      echo "+ debootstrap --variant=minbase --arch $ARCH bookworm $DIR"
      rm -rf "$DIR"; mkdir -p "$DIR"
      debootstrap --variant=minbase --arch "$ARCH" \
        --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$DIR" "$MIRROR"
    fi
    ln -sf /usr/bin/python3 "$DIR/usr/local/bin/python"
    # A host behind a TLS-inspecting proxy trusts an extra CA (pip's PIP_CERT); the stand-in must too.
    if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
      cp "$PIP_CERT" "$DIR/etc/ssl/certs/ca-certificates.crt"
    fi
    rm -rf "$DIR"/var/cache/apt/archives/*.deb "$DIR"/var/lib/apt/lists/*
    echo "+ podman import $BASE"
    tar -C "$DIR" -c . | podman import --arch "$ARCH" \
      --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" - "$BASE" >/dev/null
  fi
  ARGS+=(--build-arg "PYTHON_SLIM_IMAGE=$BASE" --build-arg "PYTHON_FULL_IMAGE=$BASE")
fi

STAGES=(runtime); [ "$FULL" -eq 1 ] && STAGES+=(full)
for stage in "${STAGES[@]}"; do
  start=$(date +%s)
  echo "+ podman build --platform linux/$ARCH --target $stage -t $TAG:$stage-$ARCH"
  podman build --isolation chroot --platform "linux/$ARCH" --target "$stage" "${ARGS[@]}" \
    -t "$TAG:$stage-$ARCH" -f "$ROOT/Dockerfile" "$ROOT"
  echo "built $TAG:$stage-$ARCH in $(( $(date +%s) - start )) s"
done
podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "facedistill" || true
