#!/usr/bin/env bash
# The GPU path, run for real: the quickstart teacher and one student for a few hundred steps on one
# GPU (CUDA AMP, channels_last, pinned memory, workers), the student again under
# `torchrun --nproc_per_node 1` (DDP over NCCL), and one run killed after its first checkpoint and
# resumed. Prints images/s, peak GPU memory and the student's verification accuracy per run.
#
#   bash benchmarks/gpu_check.sh                      # on a GPU box: installs the CUDA build of torch first
#   bash benchmarks/gpu_check.sh --dry-run            # on a CPU: the same steps, tiny, train.device=cpu
#   bash benchmarks/gpu_check.sh --no-install --steps 300 --out /tmp/gpu-check
#
# Options: --out DIR (default gpu-check), --steps N (default 300), --no-install (use the torch that
# is installed), --torch-index URL (default the PyTorch CUDA 12.8 wheel index), --dry-run.
# It writes DIR/report.json (one row per run) and exits non-zero if any step fails.
set -euo pipefail

OUT=gpu-check
STEPS=300
INSTALL=1
DRY=0
TORCH_VERSION=2.13.0
TORCH_INDEX=https://download.pytorch.org/whl/cu128
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --torch-index) TORCH_INDEX=$2; shift 2 ;;
    --dry-run) DRY=1; INSTALL=0; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
if [[ $INSTALL == 1 ]]; then
  "$PY" -m pip install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
  "$PY" -m pip install -e "$REPO"
fi

if [[ $DRY == 1 ]]; then
  DEVICE=cpu; STEPS=${DRY_STEPS:-12}; IDS=12; PER_ID=4; VAL_IDS=10; PAIRS=100; CKPT_EVERY=4; WORKERS=0
else
  DEVICE=cuda; IDS=200; PER_ID=20; VAL_IDS=100; PAIRS=1200; CKPT_EVERY=50; WORKERS=4
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: torch sees no CUDA device (torch ' + torch.__version__ + '); use --dry-run on a CPU')"
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$OUT"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"

facedistill prepare synthetic --out data --identities $IDS --images-per-identity $PER_ID \
  --val-identities $VAL_IDS --val-pairs $PAIRS --json prepare.json > /dev/null
COMMON=(--set train.device=$DEVICE --set train.max_steps=$STEPS --set train.checkpoint_every=$CKPT_EVERY
        --set train.eval_every=-1 --set data.workers=$WORKERS --set data.train=data/train --set data.val=data/val
        --set output_dir=runs)
[[ $DRY == 1 ]] && COMMON+=(--set data.batch_size=8 --set train.precise_bn_images=16)
STUDENT=(--set teacher.checkpoint=runs/gpu-teacher)

step() { echo; echo "== $*"; }

step "teacher: ${STEPS} steps on $DEVICE"
facedistill distill "$REPO/recipes/quickstart/teacher.yaml" --name gpu-teacher "${COMMON[@]}" -q --json teacher.json

step "student (unified): ${STEPS} steps on $DEVICE"
facedistill distill "$REPO/recipes/quickstart/unified.yaml" --name gpu-student "${COMMON[@]}" "${STUDENT[@]}" -q \
  --json student.json

step "student under torchrun --nproc_per_node 1 (DDP)"
torchrun --standalone --nproc_per_node 1 -m facedistill distill "$REPO/recipes/quickstart/unified.yaml" \
  --name gpu-student-ddp "${COMMON[@]}" "${STUDENT[@]}" -q --json student_ddp.json

step "kill after the first checkpoint, then --resume"
facedistill distill "$REPO/recipes/quickstart/unified.yaml" --name gpu-resume "${COMMON[@]}" "${STUDENT[@]}" -q \
  --json /dev/null &
PID=$!
for _ in $(seq 1 600); do
  [[ -f runs/gpu-resume/checkpoint.pt ]] && break
  kill -0 $PID 2>/dev/null || break
  sleep 0.5
done
if kill -9 $PID 2>/dev/null; then echo "killed at $(date +%T)"; else echo "it finished before the kill"; fi
wait $PID 2>/dev/null || true
facedistill distill "$REPO/recipes/quickstart/unified.yaml" --name gpu-resume "${COMMON[@]}" "${STUDENT[@]}" -q \
  --resume --json resume.json

"$PY" - <<'PY'
import json
rows = []
for name in ("teacher", "student", "student_ddp", "resume"):
    s = json.load(open(f"{name}.json"))
    rows.append({"run": name, "device": s.get("device"), "world_size": s.get("world_size"), "steps": s.get("steps"),
                 "images_per_s": s.get("images_per_s"), "peak_gpu_memory_mb": s.get("peak_gpu_memory_mb"),
                 "val_accuracy": s.get("val_accuracy"), "resumed_from_step": s.get("resumed_from_step"),
                 "precision": s.get("precision")})
json.dump({"rows": rows}, open("report.json.tmp", "w"), indent=2)
import os; os.replace("report.json.tmp", "report.json")
print(f"\n{'run':<12} {'device':<8} {'ws':>2} {'steps':>5} {'img/s':>8} {'peak MB':>8} {'val acc':>8} {'resumed':>8}")
for r in rows:
    acc = "-" if r["val_accuracy"] is None else f"{100 * r['val_accuracy']:.2f}"
    mem = "-" if r["peak_gpu_memory_mb"] is None else f"{r['peak_gpu_memory_mb']:.0f}"
    print(f"{r['run']:<12} {r['device']:<8} {r['world_size']:>2} {r['steps']:>5} {r['images_per_s'] or 0:>8.1f} "
          f"{mem:>8} {acc:>8} {str(r['resumed_from_step']):>8}")
PY
