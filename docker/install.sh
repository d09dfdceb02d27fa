#!/usr/bin/env bash
# docker/install.sh — the one place that says what a facedistill image installs.
# The Dockerfile runs it to build /opt/venv; CI runs the same script (tests/test_docker.py) so the
# image's install path is exercised without a Docker engine.
#
#   docker/install.sh MODE [--venv DIR] [--src PATH] [--python PY] [--dry-run]
#
# MODE
#   runtime  onnxruntime, numpy, opencv-python-headless<5, typer, rich, pyyaml + facedistill (--no-deps).
#            No torch: `evaluate` and `benchmark` ONNX models on an edge box. Binary wheels only, so
#            nothing is compiled and the image needs no build tools.
#   full     PyTorch CPU wheels (from the PyTorch CPU index, or a folder of wheels) + facedistill with
#            all its dependencies: distill, export, everything.
# --venv DIR    the virtual environment to create or reuse (default /opt/venv)
# --src PATH    a facedistill source tree, a wheel, or a folder holding one wheel (default: this repo)
# --python PY   interpreter that creates the venv (default python3)
# --dry-run     print the commands instead of running them
#
# Versions can be overridden with environment variables: ORT_VERSION, NUMPY_VERSION,
# TORCH_VERSION (full; empty = latest), TORCH_INDEX_URL (full), TORCH_FIND_LINKS (full: a folder or
# URL holding torch CPU wheels, for machines that cannot reach the PyTorch index; torch then comes from
# there alone, with --no-index, so a CUDA build from PyPI can never be picked instead).
set -euo pipefail

ORT_VERSION=${ORT_VERSION:-1.32.0}     # keep equal on every target: parity checks compare across them
NUMPY_VERSION=${NUMPY_VERSION:-2.4.6}
TORCH_VERSION=${TORCH_VERSION:-}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
TORCH_FIND_LINKS=${TORCH_FIND_LINKS:-}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }

MODE=${1:-}
case "$MODE" in
  runtime|full) shift ;;
  -h|--help) usage 0 ;;
  *) echo "install.sh: MODE must be 'runtime' or 'full' (got '${MODE}')" >&2; usage 2 ;;
esac

VENV=/opt/venv
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=python3
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV=$2; shift 2 ;;
    --src) SRC=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
done

# A folder holding built wheels (the Dockerfile's /dist) -> the facedistill wheel in it.
if [ -d "$SRC" ] && [ ! -f "$SRC/pyproject.toml" ]; then
  shopt -s nullglob
  wheels=("$SRC"/facedistill-*.whl)
  shopt -u nullglob
  if [ "${#wheels[@]}" -ne 1 ]; then
    echo "install.sh: $SRC holds ${#wheels[@]} facedistill wheels; expected exactly one" >&2
    exit 2
  fi
  SRC=${wheels[0]}
fi
[ -e "$SRC" ] || { echo "install.sh: --src $SRC does not exist" >&2; exit 2; }

run() {
  echo "+ $*"
  if [ "$DRY" -eq 0 ]; then "$@"; fi
}

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=${PIP_NO_CACHE_DIR:-1}
[ -x "$VENV/bin/python" ] || run "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --no-input)

if [ "$MODE" = runtime ]; then
  run "${PIP[@]}" --only-binary=:all: \
    "onnxruntime==${ORT_VERSION}" "numpy==${NUMPY_VERSION}" "opencv-python-headless>=4.8,<5" \
    "typer>=0.12" "rich>=13" "pyyaml>=6"
  # facedistill's own metadata requires torch; the runtime deliberately installs without it.
  run "${PIP[@]}" --no-deps "$SRC"
else
  if [ -n "$TORCH_FIND_LINKS" ]; then
    # torch alone from the folder; its own dependencies come from the index with facedistill's below
    run "${PIP[@]}" --no-index --no-deps --find-links "$TORCH_FIND_LINKS" "torch${TORCH_VERSION:+==$TORCH_VERSION}"
  else
    run "${PIP[@]}" --index-url "$TORCH_INDEX_URL" "torch${TORCH_VERSION:+==$TORCH_VERSION}"
  fi
  run "${PIP[@]}" "onnxruntime==${ORT_VERSION}" "numpy==${NUMPY_VERSION}" "$SRC"
fi

# Prove the install works the way the image will be used.
run "$VENV/bin/python" -c "import facedistill.cli.main, facedistill.bench, onnxruntime, cv2, numpy"
run "$VENV/bin/facedistill" --help
if [ "$MODE" = runtime ]; then
  run "$VENV/bin/python" -c "import importlib.util, sys; sys.exit('torch must not be in the runtime venv' if importlib.util.find_spec('torch') else 0)"
else
  run "$VENV/bin/python" -c "import torch; print('torch', torch.__version__)"
fi
if [ "$MODE" = runtime ]; then
  # What an edge box never runs: numpy's own test suite, and pip/setuptools in the venv (to add a
  # package, use the base image's pip: python3 -m pip --python /opt/venv/bin/python install ...).
  run find "$VENV" -path '*/site-packages/numpy/*' -name tests -type d -prune -exec rm -rf {} +
  run "$VENV/bin/python" -m pip uninstall --yes --quiet pip setuptools
fi
run find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
echo "facedistill $MODE environment ready in $VENV"
