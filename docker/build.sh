#!/usr/bin/env bash
# docker/build.sh — build the facedistill images with podman, without a registry if need be.
#
#   docker/build.sh [--standin] [--full [--torch-wheels DIR]] [--platform amd64|arm64] [--tag PREFIX]
#
# --standin     first make a local base image from Debian packages (debootstrap --variant=minbase
#               bookworm + python3 python3-venv python3-pip, a `python` link as in the official image)
#               and build FROM it; for machines that reach Debian and PyPI but no container registry.
#               The rootfs is cached in $STANDIN_DIR (default /var/tmp/facedistill-standin); a CA
#               bundle named by $PIP_CERT (a TLS-inspecting proxy's) is copied into it.
# --full        also build the `full` stage (PyTorch CPU, from the PyTorch CPU index by default)
# --torch-wheels DIR  take torch from the wheels in DIR instead (mounted read-only into the build),
#               for machines that cannot reach the PyTorch index; $TORCH_VERSION pins one of them
# --platform    target architecture (default: this machine's). A foreign one (arm64 on x86-64) runs
#               under qemu user mode: the emulator is registered with binfmt_misc first (see
#               docker/emulation.sh) and the stand-in's second debootstrap stage runs under it.
#               podman 4.3 builds every stage of a local single-arch base for the target platform,
#               the pure-Python wheel stage too (emulated; buildx runs that one natively).
# --tag PREFIX  image name prefix (default facedistill): PREFIX:runtime-ARCH, PREFIX:full-ARCH
# Prints the build time and each image's size. Needs root (podman build --isolation chroot).
set -euo pipefail

HERE=${BASH_SOURCE[0]%/*}; [ "$HERE" != "${BASH_SOURCE[0]}" ] || HERE=.
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=docker/emulation.sh
. "$ROOT/docker/emulation.sh"
HOST=$(host_arch)
STANDIN=0; FULL=0; ARCH=$HOST; TAG=facedistill; TORCH_WHEELS=
STANDIN_DIR=${STANDIN_DIR:-/var/tmp/facedistill-standin}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --standin) STANDIN=1; shift ;;
    --full) FULL=1; shift ;;
    --torch-wheels) TORCH_WHEELS=$(cd "$2" && pwd) || { echo "build.sh: --torch-wheels $2: no such folder" >&2; exit 2; }; shift 2 ;;
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
if [ "$ARCH" != "$HOST" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "build.sh: --platform $ARCH on $HOST registers an emulator: needs root" >&2; exit 2; }
  ensure_emulator "$ARCH" || exit 2
fi
emulation_args "$ARCH"

# The stand-in base for one architecture: Debian's python3 in a minbase root, imported as an image.
standin() {
  local arch=$1 base="localhost/facedistill-standin:bookworm-$1" dir="$STANDIN_DIR/bookworm-$1" t
  if podman image exists "$base"; then echo "$base"; return; fi
  if [ ! -x "$dir/usr/bin/python3" ] || [ ! -e "$dir/var/lib/dpkg/status" ] || [ -e "$dir/debootstrap" ]; then
    t=$(date +%s)
    rm -rf "$dir"; mkdir -p "$dir"
    local opts=(--variant=minbase --arch "$arch" --include=python3,python3-venv,python3-pip,ca-certificates)
    if [ "$arch" = "$HOST" ]; then
      echo "+ debootstrap ${opts[*]} bookworm $dir" >&2
      debootstrap "${opts[@]}" bookworm "$dir" "$MIRROR" >&2
    else  # foreign: unpack here, then configure the packages under the emulator
      echo "+ debootstrap --foreign ${opts[*]} bookworm $dir" >&2
      debootstrap --foreign "${opts[@]}" bookworm "$dir" "$MIRROR" >&2
      echo "+ chroot $dir /debootstrap/debootstrap --second-stage   (emulated $arch)" >&2
      chroot "$dir" /debootstrap/debootstrap --second-stage >&2
    fi
    echo "debootstrap $arch: $(( $(date +%s) - t )) s" >&2
  fi
  ln -sf /usr/bin/python3 "$dir/usr/local/bin/python"
  # Slim like Debian's -slim images (which the official python:*-slim builds on): no docs, man pages
  # or translations, now and for packages installed later; copyright files stay.
  mkdir -p "$dir/etc/dpkg/dpkg.cfg.d"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/groff/*' \
    'path-exclude /usr/share/lintian/*' 'path-exclude /usr/share/locale/*' \
    'path-include /usr/share/locale/locale.alias' > "$dir/etc/dpkg/dpkg.cfg.d/slim"
  find "$dir/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/groff/* "$dir"/usr/share/lintian/*
  # A host behind a TLS-inspecting proxy trusts an extra CA (pip's PIP_CERT); the stand-in must too.
  if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    cp "$PIP_CERT" "$dir/etc/ssl/certs/ca-certificates.crt"
  fi
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  echo "+ podman import $base" >&2
  tar -C "$dir" -c . | podman import --arch "$arch" \
    --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" - "$base" >/dev/null
  echo "$base"
}

ARGS=()
if [ "$STANDIN" -eq 1 ]; then
  need debootstrap debootstrap
  [ "$(id -u)" -eq 0 ] || { echo "build.sh: --standin needs root (debootstrap)" >&2; exit 2; }
  BASE=$(standin "$ARCH")
  ARGS+=(--build-arg "PYTHON_SLIM_IMAGE=$BASE" --build-arg "PYTHON_FULL_IMAGE=$BASE")
  ARGS+=(--pull=never)  # every base is local: never ask a registry
fi

if [ -n "$TORCH_WHEELS" ]; then
  ARGS+=(-v "$TORCH_WHEELS:/torch-wheels:ro" --build-arg TORCH_FIND_LINKS=/torch-wheels)
fi
[ -z "${TORCH_VERSION:-}" ] || ARGS+=(--build-arg "TORCH_VERSION=$TORCH_VERSION")
STAGES=(runtime); [ "$FULL" -eq 1 ] && STAGES+=(full)
for stage in "${STAGES[@]}"; do
  start=$(date +%s)
  echo "+ podman build --platform linux/$ARCH --target $stage -t $TAG:$stage-$ARCH"
  podman build --isolation chroot --platform "linux/$ARCH" --target "$stage" "${ARGS[@]}" "${EMU_VOLUMES[@]}" \
    -t "$TAG:$stage-$ARCH" -f "$ROOT/Dockerfile" "$ROOT"
  echo "built $TAG:$stage-$ARCH in $(( $(date +%s) - start )) s"
done
podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "facedistill" || true
