"""What augmentation the teacher agrees with costs: the K-view cache build, and training images/s.

Claim: the K-view cache (augmented views the teacher embedded once) costs K teacher forwards per image, once;
training on it runs near flip-only speed, an online teacher does not.
Its figure (docs/results.md, "Augmentation the teacher agrees with (K-view cache)") comes from::

    OMP_NUM_THREADS=1 python benchmarks/augment_cost.py --images 256 --steps 5 --warmup 1 --views 4 \
        --batch-size 64 --threads 1 --workdir /tmp/aug/bench --json /tmp/aug/augment_cost.json

    python benchmarks/augment_cost.py --images 256 --steps 5 --threads 1      # SFace, LFW folds 1-5 slice
    python benchmarks/augment_cost.py --recipe recipes/sface_lfw/iled.yaml --views 8 --json aug.json

One invocation measures side by side, on the first ``--images`` faces of a packed train set (copied to
``--workdir`` so caches of the slice never land beside the real data), with the recipe's ONNX
teacher (default ``recipes/sface_lfw/iled.yaml``: SFace -> ``mobilefacenet_s``, ILED):

* **cache builds**: the plain (image, flip) cache (2 teacher forwards per image) and the K-view
  cache of ``data.augment`` (K forwards per image, plus the augmentation), seconds per image;
* **training images/s** of three runs of the same recipe, ``--warmup`` + ``--steps`` steps of
  ``--batch-size`` at ``--threads`` threads (student and ONNX teacher alike):
  (i) flip only (augment off, plain cache), (ii) ``data.augment`` + ``teacher.views: K`` (cache
  built above), (iii) ``data.augment`` + ``teacher.online: true`` (the teacher embeds every batch).

Timing is the trainer's per-step ``images_per_s`` (``metrics.jsonl``): augmentation, teacher
lookup or forward, student forward/backward and the optimizer step; not the DataLoader, checkpoints
or evaluation. Warm-up steps are dropped. Report ratios (ii)/(i) and (iii)/(i) from one invocation;
absolute numbers depend on what else the machine runs (the load average is printed).
Accuracy at an equal budget needs long runs; this script does not train to convergence.
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

from _table import print_table  # noqa: E402  (benchmarks/_table.py, beside this script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "sface_lfw" / "iled.yaml",
                    help="base recipe (an ONNX teacher); data.train, teacher.onnx and the rest as overridden")
    ap.add_argument("--train", type=Path, default=None, help="packed train set (default: the recipe's data.train)")
    ap.add_argument("--teacher", type=Path, default=None, help="ONNX teacher (default: the recipe's teacher.onnx)")
    ap.add_argument("--images", type=int, default=256, help="faces used: the first N of the train set")
    ap.add_argument("--views", type=int, default=4, help="K of the view cache (teacher.views)")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--student-arch", default="mobilefacenet_s")
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="more recipe overrides for all three runs (e.g. data.augment.jpeg=0.5)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/augment_cost"))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here ('-' = stdout)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 2 or args.views < 2 or args.threads < 1:
        ap.error("--steps >= 1, --warmup >= 0, --batch-size >= 2, --views >= 2, --threads >= 1")
    if args.images < args.batch_size:
        ap.error("--images must be at least --batch-size")
    return args


def slice_train_set(src: Path, out: Path, images: int) -> Path:
    """The first ``images`` faces of ``src`` as a packed set of their own (labels and names kept)."""
    from facedistill.data.packed import PackedDataset, PackedWriter

    ds = PackedDataset(src)
    n = min(images, len(ds))
    if out.exists():
        shutil.rmtree(out)
    with PackedWriter(out, kind="train", source=f"{src} [:{n}]") as w:
        w.add_batch(ds.images(range(n)), ds.labels[:n].tolist(), ds.names[:n])
    return out


def recipes(args: argparse.Namespace, train: Path) -> dict[str, Any]:
    from facedistill.config import load_recipe

    common = [f"output_dir={args.workdir / 'runs'}", f"data.train={train}", "data.val=null",
              f"data.batch_size={args.batch_size}", "data.workers=0", f"student.arch={args.student_arch}",
              "train.device=cpu", f"train.threads={args.threads}", f"train.max_steps={args.warmup + args.steps}",
              "train.log_every=1", "train.eval_every=-1", "train.checkpoint_every=1000000",
              f"train.precise_bn_images={args.batch_size}"]
    if args.teacher:
        common.append(f"teacher.onnx={args.teacher}")
    common += args.overrides
    aug = ["data.augment.enabled=true"]
    out = {"flip only": load_recipe(args.recipe, common + ["name=flip-only"]),
           f"views K={args.views}": load_recipe(args.recipe, common + aug + [f"teacher.views={args.views}",
                                                                               "name=views"]),
           "online": load_recipe(args.recipe, common + aug + ["teacher.online=true", "name=online"])}
    if out["flip only"].teacher.type != "onnx":
        raise SystemExit(f"{args.recipe}: this benchmark needs an ONNX teacher (teacher.type: onnx)")
    return out


def timed_run(recipe, warmup: int) -> dict[str, Any]:
    from facedistill.engine.trainer import train

    if recipe.run_dir.exists():
        shutil.rmtree(recipe.run_dir)
    result = train(recipe)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] > warmup]
    bs = recipe.data.batch_size
    seconds = [bs / r["images_per_s"] for r in rows]
    return {"images_per_s": round(len(rows) * bs / sum(seconds), 3), "timed_steps": len(rows),
            "step_ms_median": round(1000 * statistics.median(seconds), 1), "augment": result.summary.get("augment")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from facedistill.data.packed import PackedDataset
    from facedistill.engine.teacher_cache import load_or_build, load_or_build_views
    from facedistill.engine.teachers import build_teacher

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from facedistill.config import load_recipe

    src = args.train or Path(load_recipe(args.recipe, args.overrides, check_files=False).data.train)
    train_dir = slice_train_set(Path(src), args.workdir / "train", args.images)
    runs = recipes(args, train_dir)
    views = runs[f"views K={args.views}"]
    ds = PackedDataset(train_dir)
    teacher = build_teacher(views.teacher, "cpu", threads=args.threads)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    log(f"cache builds on {len(ds)} images ...")
    t = time.perf_counter()
    _, _, built = load_or_build(ds, teacher, views.teacher.batch_size)
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    _, view_file, built_v = load_or_build_views(ds, teacher, views.data.augment, args.views, views.data.flip,
                                                views.teacher.batch_size)
    views_s = time.perf_counter() - t
    assert built and built_v, "the slice was just written: both caches must be new"
    del teacher

    rows = {}
    for label, recipe in runs.items():
        log(f"{label}: {args.warmup}+{args.steps} steps of batch {args.batch_size} ...")
        rows[label] = timed_run(recipe, args.warmup)
    base = rows["flip only"]["images_per_s"]
    for row in rows.values():
        row["ratio_vs_flip_only"] = round(row["images_per_s"] / base, 3)
    result = {
        "benchmark": "augment_cost", "recipe": str(args.recipe), "train": str(src), "images": len(ds),
        "teacher": views.teacher.onnx, "student": args.student_arch, "batch_size": args.batch_size,
        "views": args.views, "threads": args.threads, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "cache_build": {"plain_s_per_image": round(plain_s / len(ds), 5),
                        "views_s_per_image": round(views_s / len(ds), 5),
                        "views_vs_plain": round(views_s / plain_s, 3), "view_cache_file": str(view_file)},
        "training": rows,
        "timing": "per-step images_per_s from metrics.jsonl (augmentation + teacher + student fwd/bwd + optimizer; "
                  "no data loading), warm-up steps dropped",
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "loadavg": [round(x, 2) for x in os.getloadavg()]},
    }
    print(f"augment_cost: {len(ds)} images of {src}, teacher {views.teacher.onnx}, {args.student_arch} "
          f"batch {args.batch_size}, {args.threads} thread(s)")
    cb = result["cache_build"]
    print(f"  cache build  plain (image, flip): {1000 * cb['plain_s_per_image']:.1f} ms/image   "
          f"K={args.views} views: {1000 * cb['views_s_per_image']:.1f} ms/image   ({cb['views_vs_plain']:.2f}x)")
    print_table(["training", "images/s", "median step ms", "vs flip only"],
                [[label, f"{row['images_per_s']:.2f}", f"{row['step_ms_median']:.0f}", f"{row['ratio_vs_flip_only']:.2f}x"]
                 for label, row in rows.items()],
                notes=[f"load average after the run: {result['machine']['loadavg']} on {result['machine']['cpus']} CPUs"])
    if args.json is not None:
        if str(args.json) == "-":
            print(json.dumps(result, indent=2))
        else:
            from facedistill.utils.atomic import write_json_atomic

            write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
