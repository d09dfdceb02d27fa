#!/usr/bin/env bash
# docker/parity.sh — do two images (e.g. linux/amd64 and linux/arm64 runtime) give the same embeddings?
#
#   docker/parity.sh [--faces N] REF_IMAGE IMAGE MODELS_DIR PAIRS_DIR RESULTS_DIR
#
# Embeds the first N faces (default 64) that the pair set in PAIRS_DIR uses with every *.onnx in
# MODELS_DIR, once inside each image as its non-root user (docker/embed.py, mounted read-only; a
# foreign-architecture image runs under qemu, see docker/emulation.sh), then compares them per model:
# the worst per-face cosine must reach 0.99999 for fp32 and 0.999 for fp16/int8. Writes
# RESULTS_DIR/parity/<arch>/*.npy and RESULTS_DIR/parity.json. Exit 0 pass, 1 a model differs, 2 bad
# input. Reports no timings: an emulated run says nothing about a device's latency.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=docker/emulation.sh
. "$HERE/emulation.sh"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
FACES=64
while [ $# -gt 0 ]; do
  case "$1" in
    --faces) FACES=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "parity.sh: unknown option $1" >&2; usage 2 ;;
    *) break ;;
  esac
done
[ $# -eq 5 ] || usage 2
REF=$1 IMAGE=$2; MODELS=$(realpath "$3"); PAIRS=$(realpath "$4"); RESULTS=$(realpath "$5")
command -v buildah >/dev/null || { echo "parity.sh: buildah not found (apt-get install -y buildah)" >&2; exit 2; }
shopt -s nullglob
onnx=("$MODELS"/*.onnx)
shopt -u nullglob
[ "${#onnx[@]}" -gt 0 ] || { echo "parity.sh: no .onnx file in $MODELS" >&2; exit 2; }
mkdir -p "$RESULTS/parity"; chown -R 10001:10001 "$RESULTS"

# in_image IMAGE CMD...: run CMD in a fresh container of IMAGE as uid 10001, with the usual mounts.
in_image() {
  local image=$1 arch ctr rc=0; shift
  arch=$(buildah inspect --type image --format '{{.OCIv1.Architecture}}' "$image")
  [ "$arch" = "$(host_arch)" ] || ensure_emulator "$arch" || return 2
  emulation_args "$arch"
  ctr=$(buildah from --pull=never "$image")
  buildah run --isolation chroot --user 10001:10001 --workingdir /results "${EMU_ENV[@]}" "${EMU_VOLUMES[@]}" \
    -v "$MODELS:/models:ro" -v "$PAIRS:/data:ro" -v "$RESULTS:/results" -v "$HERE:/opt/facedistill-docker:ro" \
    "$ctr" -- "$@" || rc=$?
  buildah rm "$ctr" >/dev/null
  return "$rc"
}

names=()
for f in "${onnx[@]}"; do names+=("/models/${f##*/}"); done
dirs=()
for image in "$REF" "$IMAGE"; do
  arch=$(buildah inspect --type image --format '{{.OCIv1.Architecture}}' "$image")
  out=/results/parity/$arch
  [ "${#dirs[@]}" -eq 0 ] || [ "$out" != "${dirs[0]}" ] || out=$out-2  # two images of one architecture
  echo "+ $image ($arch$([ "$arch" = "$(host_arch)" ] || echo ", emulated")): embed $FACES faces with ${#names[@]} model(s)"
  in_image "$image" python /opt/facedistill-docker/embed.py embed --data /data --faces "$FACES" --out "$out" "${names[@]}"
  dirs+=("$out")
done
echo "+ compare ${dirs[0]} ${dirs[1]}"
in_image "$REF" python /opt/facedistill-docker/embed.py compare "${dirs[0]}" "${dirs[1]}" --json /results/parity.json
