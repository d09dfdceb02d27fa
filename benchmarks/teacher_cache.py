"""Training throughput with the teacher-embedding cache versus computing the teacher online.

Claim: training on cached teacher embeddings is >= 2x faster than running the teacher online (``--check``
exits 1 below that).
Its figure (docs/results.md, "Teacher-embedding cache") comes from::

    python benchmarks/teacher_cache.py --steps 6

    python benchmarks/teacher_cache.py                        # iresnet50 teacher -> mobilefacenet student, CPU
    python benchmarks/teacher_cache.py --steps 20 --batch-size 64 --json cache.json
    python benchmarks/teacher_cache.py --teacher-arch iresnet18 --student-arch mobilefacenet_s --steps 2   # smoke

Two training runs of the *same* recipe (``loss.distill.type: unified`` by default, arcface margin,
``train.device: cpu``), differing only in ``teacher.cache: true`` / ``false``, on a small rendered
synthetic training set (``--images``; the sampler wraps around it, the teacher's work per step is
the same either way).

The teacher is a RANDOMLY INITIALISED iresnet50 (speed does not depend on the weights). arcface_torch
iresnets blow up numerically at random init in eval mode (their BatchNorm running stats are the
identity while the activations grow block by block), so its BatchNorm statistics are first set from
the training images with train-mode forward passes under ``torch.no_grad``; the state dict is then
saved as the teacher checkpoint.

How it is timed: each run trains ``--warmup + --steps`` steps (``train.max_steps``) with
``train.log_every: 1``; the trainer's per-step ``images_per_s`` in ``metrics.jsonl`` covers the teacher
(a forward, or a cache read), the student's forward/backward and the optimizer step, and excludes
reading the batch from the DataLoader, checkpoint writes and evaluation. The first ``--warmup`` steps
are dropped; images/s = images of the timed steps / sum of their step times. The cache build (one
teacher forward of every image and of its flip) is timed on its own, before the cached run, and
printed separately: it is paid once per (teacher, data set) and reused by every later run. The
break-even is the number of epochs after which build + cached training is cheaper than training
online. Target: cached >= 2x online images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _table import print_table  # benchmarks/_table.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_RATIO = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per run (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=None,
                    help="training images rendered (default: 4 batches; the cache build scales with it)")
    ap.add_argument("--teacher-arch", default="iresnet50")
    ap.add_argument("--student-arch", default="mobilefacenet")
    ap.add_argument("--student-embedding-size", type=int, default=512)
    ap.add_argument("--distill", default="unified", help="loss.distill.type of both runs (not none)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/teacher_cache_bench"))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here ('-' = stdout)")
    ap.add_argument("--check", action="store_true", help=f"exit 1 when the ratio is below {TARGET_RATIO:g}")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 2:
        ap.error("--steps >= 1, --warmup >= 0, --batch-size >= 2")
    if args.distill == "none":
        ap.error("--distill none has no teacher")
    args.images = args.images or 4 * args.batch_size
    if args.images < args.batch_size:
        ap.error("--images must be at least --batch-size")
    return args


def render_data(root: Path, images: int) -> Path:
    """A training set of ``images`` synthetic faces, 4 per identity (no val split needed)."""
    from facedistill.data.packed import PackedWriter
    from facedistill.data.synthetic import render_identities

    per = 4
    imgs, labels = render_identities(range(-(-images // per)), per, seed=0)
    train = root / "train"
    if train.exists():
        shutil.rmtree(train)
    with PackedWriter(train, kind="train", source="synthetic(seed=0)") as w:
        w.add_batch(imgs[:images], labels[:images])
    return train


def make_teacher(arch: str, train: Path, out: Path, batch_size: int) -> tuple[Path, float]:
    """Random-init ``arch`` with BatchNorm stats set from the data; returns (checkpoint, seconds)."""
    import torch

    from facedistill.data.packed import PackedDataset
    from facedistill.models import create_backbone

    t = time.perf_counter()
    torch.manual_seed(0)
    net = create_backbone(arch, 512)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    ds = PackedDataset(train)
    n = min(len(ds), 4 * batch_size)
    x = torch.from_numpy(ds.images(list(range(n)))).permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)
    net.train()
    with torch.no_grad():
        for i in range(0, n, batch_size):
            if len(x[i:i + batch_size]) > 1:  # train-mode BN needs more than one sample
                net(x[i:i + batch_size])
    net.eval()
    with torch.no_grad():
        emb = net(x[: min(n, 8)])
    if not torch.isfinite(emb).all():
        raise RuntimeError(f"the calibrated random {arch} still gives non-finite embeddings")
    path = out / f"teacher-{arch}-random.pt"
    torch.save(net.state_dict(), path)
    return path, time.perf_counter() - t


def make_recipe(args: argparse.Namespace, train: Path, teacher: Path, cache: bool):
    from facedistill.config import recipe_from_dict

    data = {
        "name": f"cache-{'on' if cache else 'off'}",
        "output_dir": str(args.workdir / "runs"),
        "data": {"train": str(train), "val": None, "batch_size": args.batch_size, "workers": 0, "flip": True},
        "student": {"arch": args.student_arch, "embedding_size": args.student_embedding_size},
        "teacher": {"type": "torch", "arch": args.teacher_arch, "checkpoint": str(teacher), "cache": cache,
                    "batch_size": args.batch_size},
        "loss": {"margin": {"type": "arcface", "scale": 32.0, "margin": 0.3}, "projector": "auto",
                 "distill": {"type": args.distill,
                             "rpsd": {"bank_size": 4 * args.batch_size, "hard_negatives": min(32, args.batch_size)}}},
        "optim": {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05, "schedule": "constant"},
        "train": {"epochs": 1000, "max_steps": args.warmup + args.steps, "seed": 0, "device": "cpu",
                  "threads": args.threads, "checkpoint_every": 10 ** 6, "log_every": 1, "eval_every": 0},
    }
    return recipe_from_dict(data, where="benchmarks/teacher_cache.py")


def timed_run(recipe, warmup: int) -> dict[str, Any]:
    from facedistill.engine.trainer import train

    if recipe.run_dir.exists():
        shutil.rmtree(recipe.run_dir)
    t = time.perf_counter()
    result = train(recipe)
    total = time.perf_counter() - t
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] > warmup]
    bs = recipe.data.batch_size
    seconds = [bs / r["images_per_s"] for r in rows]
    return {"images_per_s": len(rows) * bs / sum(seconds), "timed_steps": len(rows),
            "step_ms_median": round(1000 * statistics.median(seconds), 1),
            "train_call_s": round(total, 2), "summary_images_per_s": result.summary.get("images_per_s"),
            "teacher_cached": (result.summary.get("teacher") or {}).get("cached")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from facedistill.data.packed import PackedDataset
    from facedistill.engine.teacher_cache import load_or_build
    from facedistill.engine.teachers import build_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"NOTE: the teacher is a RANDOMLY INITIALISED {args.teacher_arch} (BatchNorm stats set from the data); "
          "its speed is that of a trained one, its embeddings are meaningless.", file=sys.stderr, flush=True)
    train_dir = render_data(args.workdir / "data", args.images)
    teacher_ckpt, calib_s = make_teacher(args.teacher_arch, train_dir, args.workdir, args.batch_size)

    cached = make_recipe(args, train_dir, teacher_ckpt, cache=True)
    online = make_recipe(args, train_dir, teacher_ckpt, cache=False)

    # Online first, then the cache build (timed alone), then the cached run (which reuses that cache).
    print(f"online: {args.warmup}+{args.steps} steps of batch {args.batch_size} ...", file=sys.stderr, flush=True)
    on = timed_run(online, args.warmup)
    print("building the teacher cache ...", file=sys.stderr, flush=True)
    shutil.rmtree(train_dir / "teacher-cache", ignore_errors=True)
    teacher = build_teacher(cached.teacher, "cpu")
    t = time.perf_counter()
    _, cache_file, built = load_or_build(PackedDataset(train_dir), teacher, cached.teacher.batch_size)
    build_s = time.perf_counter() - t
    assert built
    del teacher
    print(f"cached: {args.warmup}+{args.steps} steps of batch {args.batch_size} ...", file=sys.stderr, flush=True)
    cac = timed_run(cached, args.warmup)
    if not cac["teacher_cached"] or on["teacher_cached"]:
        raise RuntimeError("the runs did not use the teacher as intended (cache flag ignored?)")

    ratio = cac["images_per_s"] / on["images_per_s"]
    per_image_online = 1 / on["images_per_s"]
    per_image_cached = 1 / cac["images_per_s"]
    # Epochs of training after which build + cached training costs less than online training.
    saving = args.images * (per_image_online - per_image_cached)
    break_even_epochs = build_s / saving if saving > 0 else None
    result = {
        "benchmark": "teacher_cache",
        "teacher": f"{args.teacher_arch} (random init, BN stats calibrated)",
        "student": f"{args.student_arch} ({args.student_embedding_size}-d)",
        "distill": args.distill, "batch_size": args.batch_size, "warmup_steps": args.warmup,
        "timed_steps": args.steps, "train_images": args.images, "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "timing": "per-step images_per_s from metrics.jsonl (teacher + student fwd/bwd + optimizer; "
                  "no data loading), warm-up steps dropped",
        "online": on, "cached": cac,
        "cache_build_s": round(build_s, 2), "cache_build_images_per_s": round(args.images / build_s, 2),
        "cache_file": str(cache_file), "teacher_calibration_s": round(calib_s, 2),
        "ratio": ratio, "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO,
        "break_even_epochs": None if break_even_epochs is None else round(break_even_epochs, 2),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None},
    }

    print_table(["teacher embeddings", "images/s", "median step ms", "train() s (incl. warm-up, setup)"],
                [[label, f"{r['images_per_s']:.1f}", f"{r['step_ms_median']:.0f}", f"{r['train_call_s']:.1f}"]
                 for label, r in (("online (teacher.cache: false)", on), ("cached (teacher.cache: true)", cac))],
                title=f"teacher cache: {result['teacher']} -> {result['student']}, CPU, batch {args.batch_size}",
                notes=[f"{args.steps} timed steps after {args.warmup} warm-up; {result['timing']}"])
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"cache build: {build_s:.1f} s for {args.images} images x 2 views "
          f"({2 * args.images / build_s:.1f} teacher forwards/s), paid once per teacher and data set")
    print(f"ratio cached/online: {ratio:.2f}x ({verdict} the {TARGET_RATIO:g}x target)")
    if result["break_even_epochs"] is not None:
        print(f"break-even: the build pays for itself after {result['break_even_epochs']:g} epochs of training "
              "(build and training both scale with the data set size)")
    if result["machine"]["loadavg"]:
        print(f"load average during the run: {result['machine']['loadavg']} on {result['machine']['cpus']} CPUs")
    if args.json is not None:
        if str(args.json) == "-":
            print(json.dumps(result, indent=2))
        else:
            from facedistill.utils.atomic import write_json_atomic

            write_json_atomic(args.json, result)
    return 1 if args.check and not result["meets_target"] else 0


if __name__ == "__main__":
    sys.exit(main())
