#!/usr/bin/env bash
# docker/smoke.sh — run the runtime image the way an edge box would, without a Docker engine
# (buildah from + buildah run --isolation chroot; `podman run` needs cgroups/rlimits some hosts lack).
#
#   docker/smoke.sh [--full] IMAGE MODELS_DIR PAIRS_DIR RESULTS_DIR
#
# MODELS_DIR holds student.onnx (mounted read-only at /models), PAIRS_DIR a packed pair set (mounted
# read-only at /data), RESULTS_DIR receives bench.json and eval.json (the /results volume).
# As the image's non-root user: --help, benchmark, evaluate; checks no torch and /models read-only.
# --full  for the `full` image: checks that torch is there instead, and when MODELS_DIR/run is a run
#         folder (student.pt + summary.json) also exports it with `facedistill export` inside the
#         image to /results/exported.onnx and benchmarks that file.
# An image of another architecture (linux/arm64 on x86-64) runs under qemu user mode (see
# docker/emulation.sh); its benchmark then only proves the model runs: emulated timings are no latency.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=docker/emulation.sh
. "$HERE/emulation.sh"
FULL=0
if [ "${1:-}" = --full ]; then FULL=1; shift; fi
[ $# -eq 4 ] || { echo "usage: docker/smoke.sh [--full] IMAGE MODELS_DIR PAIRS_DIR RESULTS_DIR" >&2; exit 2; }
IMAGE=$1; MODELS=$(realpath "$2"); PAIRS=$(realpath "$3"); RESULTS=$(realpath "$4")
command -v buildah >/dev/null || { echo "smoke.sh: buildah not found (apt-get install -y buildah)" >&2; exit 2; }
[ -f "$MODELS/student.onnx" ] || { echo "smoke.sh: $MODELS/student.onnx missing" >&2; exit 2; }
mkdir -p "$RESULTS"; chown 10001:10001 "$RESULTS"
ARCH=$(buildah inspect --type image --format '{{.OCIv1.Architecture}}' "$IMAGE")
BATCHES=1,4 RUNS=5
if [ "$ARCH" != "$(host_arch)" ]; then
  ensure_emulator "$ARCH" || exit 2
  echo "emulated linux/$ARCH (QEMU_CPU=${QEMU_CPU:-cortex-a72}): benchmark timings below are emulation's, not a device's latency"
  BATCHES=1,2 RUNS=2  # emulation is 35-80x slower: prove it runs, no more (use a small pair set too)
fi
emulation_args "$ARCH"
CTR=$(buildah from --pull=never "$IMAGE")
trap 'buildah rm "$CTR" >/dev/null' EXIT
in_ctr() {
  buildah run --isolation chroot --user 10001:10001 --workingdir /results "${EMU_ENV[@]}" "${EMU_VOLUMES[@]}" \
    -v "$MODELS:/models:ro" -v "$PAIRS:/data:ro" -v "$RESULTS:/results" "$CTR" -- "$@"
}
start=$(date +%s)
echo "+ facedistill --help"; help=$(in_ctr facedistill --help); echo "$help" | head -5
if [ "$FULL" -eq 0 ]; then
  echo "+ whoami / no torch / read-only /models"
  in_ctr python -c "import os, importlib.util as u, sys; assert os.getuid() == 10001, os.getuid(); \
assert u.find_spec('torch') is None, 'torch in the runtime image'; \
assert not os.access('/models', os.W_OK), '/models is writable'; print('uid', os.getuid(), 'no torch, /models read-only')"
else
  echo "+ whoami / torch / read-only /models"
  in_ctr python -c "import os, torch; assert os.getuid() == 10001, os.getuid(); \
assert not os.access('/models', os.W_OK), '/models is writable'; \
print('uid', os.getuid(), 'torch', torch.__version__, '/models read-only')"
fi
if in_ctr sh -c 'touch /models/x' 2>/dev/null; then echo "smoke.sh: could write /models" >&2; exit 1; fi
echo "+ facedistill benchmark /models/student.onnx"
in_ctr env COLUMNS=200 facedistill benchmark /models/student.onnx -b "$BATCHES" -t 1 --runs "$RUNS" --warmup 1 \
  --json /results/bench.json --max-latency 100000
echo "+ facedistill evaluate /models/student.onnx --data /data"
in_ctr env COLUMNS=200 facedistill evaluate /models/student.onnx --data /data --threads 1 --json /results/eval.json
if [ "$FULL" -eq 1 ] && [ -f "$MODELS/run/student.pt" ]; then
  echo "+ facedistill export /models/run --out /results/exported.onnx"
  in_ctr env COLUMNS=200 facedistill export /models/run --out /results/exported.onnx
  echo "+ facedistill benchmark /results/exported.onnx"
  in_ctr env COLUMNS=200 facedistill benchmark /results/exported.onnx -b 1 -t 1 --runs 3 --warmup 1 \
    --json /results/bench-exported.json --max-latency 100000
fi
echo "smoke passed in $(( $(date +%s) - start )) s"
