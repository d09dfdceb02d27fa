"""Distillation ablation: the same student trained with every distillation objective, same budget and seeds.

Claim: how each distillation objective compares with the margin loss alone (``none``) for the same student,
data, budget and seeds.
Its figure (docs/results.md, "Synthetic faces") comes from::

    OMP_NUM_THREADS=1 python benchmarks/kd_ablation.py --workdir /tmp/abl3 --seeds 0,1,2 \
        --set train.threads=1 --set data.workers=0 --teacher-set train.threads=1 \
        --teacher-set data.workers=0 --json /tmp/abl3/kd.json

    python benchmarks/kd_ablation.py                                   # 8 types x seeds 0,1,2, quickstart data
    python benchmarks/kd_ablation.py --types none,unified --seeds 0,1 --json kd.json
    python benchmarks/kd_ablation.py --set optim.lr=0.001 --student-epochs 3 --workdir runs/kd_lr1e-3

What it does, in order:

1. renders the synthetic faces of ``facedistill prepare synthetic`` into ``WORKDIR/data`` (the
   quickstart's "default" size unless ``--identities`` etc. say otherwise; kept when the folder
   already holds the same set);
2. trains one teacher from ``RECIPES/teacher.yaml`` (``WORKDIR/teacher``);
3. trains, for every type T and seed S, ``RECIPES/T.yaml`` as ``WORKDIR/T-sS`` with the same data,
   epochs, batch size and ``train.seed=S`` (``--set`` overrides go to every student recipe, after
   the ablation's own);
4. takes every model's accuracy from its run summary (the end-of-training ``val_accuracy`` on the
   val pairs, 10-fold, no flip: nothing is computed twice); ``--accuracy evaluate`` re-evaluates
   every model with :func:`facedistill.evaluation.evaluate.evaluate` instead (flip test-time
   augmentation; about 30 s per model on 2 cores);
5. prints one table: per type, the mean ± std *over seeds* (sample std, ddof=1; 0 with one seed) of
   the verification accuracy, the difference to ``none``, and the mean training wall time
   (``summary.json``'s ``wall_time_s``: the training loop only, without building the teacher
   cache, which every student shares); the teacher is a reference row. The results go to
   ``WORKDIR/kd_ablation.json`` (and ``--json OUT``) and a bar chart to ``WORKDIR/kd_ablation.png``.

Every finished run (a ``summary.json`` whose ``recipe_hash`` matches the recipe that would be trained
now) is reused, an unfinished one is resumed from its checkpoint, so an interrupted ablation
continues where it stopped. A run folder left by a *different* recipe (other epochs, other
``--set``) is moved aside to ``WORKDIR/stale/`` and trained again.
"""

from __future__ import annotations

import argparse
import json
import math
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

from facedistill.engine.quickstart import SIZES  # noqa: E402

ALL_TYPES = ("none", "l2", "cosine", "rkd", "sp", "iled", "rpsd", "unified")
DEFAULT = SIZES["default"]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--workdir", type=Path, default=Path("runs/kd_ablation"), help="where data, runs and results go")
    ap.add_argument("--recipes", type=Path, default=ROOT / "recipes" / "quickstart",
                    help="folder holding teacher.yaml and one <type>.yaml per distillation type")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    ap.add_argument("--types", default=",".join(ALL_TYPES),
                    help=f"comma-separated types (default {','.join(ALL_TYPES)})")
    data = ap.add_argument_group("data (defaults: the quickstart's 'default' size)")
    data.add_argument("--identities", type=int, default=DEFAULT.identities, help="training identities")
    data.add_argument("--images-per-identity", type=int, default=DEFAULT.images_per_identity)
    data.add_argument("--val-identities", type=int, default=DEFAULT.val_identities)
    data.add_argument("--val-images-per-identity", type=int, default=DEFAULT.val_images_per_identity)
    data.add_argument("--val-pairs", type=int, default=DEFAULT.val_pairs, help="a multiple of 20")
    data.add_argument("--difficulty", type=float, default=DEFAULT.difficulty)
    data.add_argument("--data-seed", type=int, default=0, help="seed of the rendered faces (not the training seed)")
    tr = ap.add_argument_group("training")
    tr.add_argument("--teacher-epochs", type=float, default=DEFAULT.teacher_epochs)
    tr.add_argument("--student-epochs", type=float, default=DEFAULT.student_epochs)
    tr.add_argument("--batch-size", type=int, default=DEFAULT.batch_size, help="teacher and students")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every student run (repeatable), e.g. --set optim.lr=0.001")
    tr.add_argument("--teacher-set", dest="teacher_overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for the teacher run (repeatable)")
    ap.add_argument("--accuracy", choices=("summary", "evaluate"), default="summary",
                    help="summary: the runs' own val_accuracy (default, no extra work); "
                         "evaluate: re-evaluate every model with flip TTA")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here ('-' = stdout)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG bar chart")
    ap.add_argument("--quiet", action="store_true", help="no training progress output")
    args = ap.parse_args(argv)
    args.seed_list = [int(s) for s in _csv(args.seeds)]
    args.type_list = _csv(args.types)
    bad = [t for t in args.type_list if t not in ALL_TYPES]
    if bad or not args.type_list:
        ap.error(f"--types: unknown {bad}; choose from {', '.join(ALL_TYPES)}")
    if not args.seed_list:
        ap.error("--seeds: give at least one seed")
    if len(set(args.seed_list)) != len(args.seed_list) or len(set(args.type_list)) != len(args.type_list):
        ap.error("--seeds/--types: duplicates")
    if args.val_pairs % 20:
        ap.error("--val-pairs must be a multiple of 20 (10 folds, half same, half different)")
    return args


# --------------------------------------------------------------------------------------------
# Data and runs
# --------------------------------------------------------------------------------------------
def prepare_data(args: argparse.Namespace, log) -> Path:
    from facedistill.data.packed import is_packed, read_manifest
    from facedistill.data.synthetic import write_synthetic

    data = args.workdir / "data"
    want_train = {"seed": args.data_seed, "difficulty": args.difficulty, "identities": args.identities,
                  "images_per_identity": args.images_per_identity}
    want_val = {"seed": args.data_seed, "difficulty": args.difficulty, "identities": args.val_identities,
                "images_per_identity": args.val_images_per_identity, "pairs": args.val_pairs}

    def same(folder: Path, want: dict[str, Any]) -> bool:
        if not is_packed(folder):
            return False
        have = read_manifest(folder).get("synthetic", {})
        return all(have.get(k) == v for k, v in want.items())

    if same(data / "train", want_train) and same(data / "val", want_val):
        log(f"data: reusing {data}")
        return data
    if data.exists():
        shutil.rmtree(data)  # our own rendering with other parameters (teacher caches inside go too)
    t = time.time()
    write_synthetic(data, train_identities=args.identities, images_per_identity=args.images_per_identity,
                    val_identities=args.val_identities, val_images_per_identity=args.val_images_per_identity,
                    val_pairs=args.val_pairs, seed=args.data_seed, difficulty=args.difficulty)
    log(f"data: rendered {args.identities}x{args.images_per_identity} train images, "
        f"{args.val_identities}x{args.val_images_per_identity} val images, {args.val_pairs} pairs "
        f"in {time.time() - t:.1f} s -> {data}")
    return data


def make_recipe(args: argparse.Namespace, data: Path, kind: str, seed: int | None = None):
    """``kind``: 'teacher' or a distillation type. Returns a validated Recipe."""
    from facedistill.config import load_recipe
    from facedistill.errors import FaceDistillError

    path = args.recipes / f"{kind}.yaml"
    if not path.is_file():
        raise FaceDistillError(f"{path}: recipe not found (pass --recipes, the recipes/quickstart folder)")
    common = [f"output_dir={args.workdir}", f"data.train={data / 'train'}", f"data.val={data / 'val'}",
              f"data.batch_size={args.batch_size}"]
    if kind == "teacher":
        overrides = common + ["name=teacher", f"train.epochs={args.teacher_epochs}"] + args.teacher_overrides
        return load_recipe(path, overrides)
    overrides = common + [f"name={kind}-s{seed}", f"train.seed={seed}", f"train.epochs={args.student_epochs}",
                          f"teacher.checkpoint={args.workdir / 'teacher'}"] + args.overrides
    # The teacher does not exist yet when the plan is checked (dry validation), only at training time.
    recipe = load_recipe(path, overrides, check_files=(args.workdir / "teacher").exists())
    if recipe.loss.distill.type != kind:
        raise FaceDistillError(f"{path}: `loss.distill.type` is {recipe.loss.distill.type!r}, expected {kind!r} "
                               "(or a --set overrides it); the ablation's rows would be mislabelled")
    return recipe


def train_or_reuse(recipe, monitor, log, label: str) -> tuple[dict[str, Any], str]:
    """(summary, 'reused'|'resumed'|'trained'): the engine decides (facedistill.engine.run_state)."""
    from facedistill.engine.run_state import train_or_reuse as engine_train_or_reuse

    summary, action = engine_train_or_reuse(recipe, monitor, log, label=label)
    return summary, {"reuse": "reused", "resume": "resumed", "train": "trained"}[action]


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict[str, Any]], types: list[str]) -> list[dict[str, Any]]:
    rows = []
    base = None
    for kind in types:
        mine = [r for r in runs if r["type"] == kind]
        acc_mean, acc_std = mean_std([r["accuracy"] for r in mine])
        wall_mean, _ = mean_std([r["wall_time_s"] for r in mine])
        row = {"type": kind, "seeds": [r["seed"] for r in mine], "accuracies": [r["accuracy"] for r in mine],
               "accuracy_mean": acc_mean, "accuracy_std": acc_std, "wall_time_mean_s": wall_mean,
               "images_per_s_mean": mean_std([r["images_per_s"] or 0.0 for r in mine])[0]}
        if kind == "none":
            base = acc_mean
        rows.append(row)
    for row in rows:
        row["delta_vs_none"] = None if base is None else row["accuracy_mean"] - base
    return rows


def show_table(result: dict[str, Any]) -> None:
    s = result["settings"]
    seeds = ",".join(str(x) for x in s["seeds"])
    t = result["teacher"]
    rows = [[f"teacher ({t['arch']}, reference)", f"{100 * t['accuracy']:.2f}", "", "",
             f"{t['wall_time_s']:.1f}", f"{t['images_per_s'] or 0:.0f}"]]
    best = max(r["accuracy_mean"] for r in result["rows"])
    for r in result["rows"]:
        acc = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        delta = "" if r["delta_vs_none"] is None or r["type"] == "none" else f"{100 * r['delta_vs_none']:+.2f}"
        per_seed = " ".join(f"{100 * a:.1f}" for a in r["accuracies"])
        rows.append([r["type"] + (" *" if r["accuracy_mean"] == best else ""), acc, delta, per_seed,
                     f"{r['wall_time_mean_s']:.1f}", f"{r['images_per_s_mean']:.0f}"])
    notes = [f"verification accuracy on {s['val_pairs']} val pairs ({result['accuracy_source']}); "
             "± = std over seeds (ddof=1); train s = mean training-loop wall time per run; * = best"]
    resumed = [f"{r['type']}-s{r['seed']}" for r in result["runs"] if r["how"] == "resumed"]
    if resumed:
        notes.append(f"note: {', '.join(resumed)} resumed after an interruption; their train s covers "
                     "only the part after the resume")
    print_table(["model", "accuracy %", "Δ vs none", "per seed %", "train s", "img/s"], rows,
                title=f"KD ablation: {s['student_arch']} student, {s['student_epochs']:g} epochs, seeds {seeds}",
                notes=notes)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["type"] for r in rows]
    means = [100 * r["accuracy_mean"] for r in rows]
    stds = [100 * r["accuracy_std"] for r in rows]
    colors = ["#9e9e9e" if n == "none" else "#d62728" if n == "unified" else "#1f77b4" for n in names]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(7, 1.1 * len(names) + 4), 4.2),
                                  gridspec_kw={"width_ratios": [3, 2]})
    ax.bar(names, means, yerr=stds, capsize=4, color=colors)
    teacher = 100 * result["teacher"]["accuracy"]
    ax.axhline(teacher, ls="--", color="k", lw=1, label=f"teacher {teacher:.1f}%")
    lo = min(min(m - s for m, s in zip(means, stds)), teacher)
    hi = max(max(m + s for m, s in zip(means, stds)), teacher)
    pad = max(1.0, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
    ax.set_ylabel("verification accuracy % (mean ± std over seeds)")
    ax.set_title(f"{len(result['settings']['seeds'])} seed(s), {result['settings']['student_epochs']:g} epochs")
    ax.legend(loc="lower right", fontsize=8)
    ax.tick_params(axis="x", rotation=30)
    ax2.bar(names, [r["wall_time_mean_s"] for r in rows], color=colors)
    ax2.set_ylabel("mean train wall time (s)")
    ax2.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from facedistill.errors import FaceDistillError

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        return _run(args, log)
    except FaceDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, log) -> int:
    from facedistill.cli.distill import RichMonitor
    from facedistill.utils.atomic import write_json_atomic

    t0 = time.time()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args, log)
    monitor = RichMonitor(enabled=not args.quiet)

    # Check every recipe before anything long runs (a typo in --set fails now, not after the teacher).
    for kind in args.type_list:
        make_recipe(args, data, kind, args.seed_list[0])

    teacher_recipe = make_recipe(args, data, "teacher")
    teacher_summary, how = train_or_reuse(teacher_recipe, monitor, log, "teacher")
    plan = [(kind, seed) for seed in args.seed_list for kind in args.type_list]  # seed-major: early full rows
    runs: list[dict[str, Any]] = []
    for i, (kind, seed) in enumerate(plan, 1):
        recipe = make_recipe(args, data, kind, seed)
        summary, how = train_or_reuse(recipe, monitor, log, f"[{i}/{len(plan)}] {kind} seed {seed}")
        runs.append({"type": kind, "seed": seed, "run_dir": str(recipe.run_dir), "recipe_hash": recipe.hash(),
                     "how": how, "steps": summary["steps"], "wall_time_s": summary["wall_time_s"],
                     "images_per_s": summary.get("images_per_s"),
                     "summary_val_accuracy": summary.get("val_accuracy"),
                     "summary_val_accuracy_std": summary.get("val_accuracy_std")})

    teacher = {"run_dir": str(teacher_recipe.run_dir), "arch": teacher_summary["student"]["arch"],
               "wall_time_s": teacher_summary["wall_time_s"], "images_per_s": teacher_summary.get("images_per_s"),
               "steps": teacher_summary["steps"], "summary_val_accuracy": teacher_summary.get("val_accuracy")}
    if args.accuracy == "evaluate":
        from facedistill.evaluation.evaluate import evaluate

        t = time.time()
        models = [teacher["run_dir"]] + [r["run_dir"] for r in runs]
        report = evaluate(models, [data / "val"])
        for target, res in zip([teacher] + runs, report.results):
            target["accuracy"] = float(res.metrics.accuracy)
            target["accuracy_10fold_std"] = float(res.metrics.accuracy_std)
        log(f"evaluate: {len(models)} models on {data / 'val'} in {time.time() - t:.1f} s")
        source = "evaluate(), 10-fold, flip TTA"
    else:
        for target in [teacher] + runs:
            if target["summary_val_accuracy"] is None:
                from facedistill.errors import FaceDistillError

                raise FaceDistillError(f"{target['run_dir']}: summary has no val_accuracy; use --accuracy evaluate")
            target["accuracy"] = float(target["summary_val_accuracy"])
        source = "run summaries' val_accuracy, no flip"

    student0 = make_recipe(args, data, args.type_list[0], args.seed_list[0])
    result: dict[str, Any] = {
        "benchmark": "kd_ablation",
        "accuracy_source": source,
        "settings": {"seeds": args.seed_list, "types": args.type_list, "recipes": str(args.recipes),
                     "student_arch": student0.student.arch, "student_embedding_size": student0.student.embedding_size,
                     "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
                     "batch_size": args.batch_size, "overrides": args.overrides,
                     "teacher_overrides": args.teacher_overrides, "identities": args.identities,
                     "images_per_identity": args.images_per_identity, "val_identities": args.val_identities,
                     "val_images_per_identity": args.val_images_per_identity, "val_pairs": args.val_pairs,
                     "difficulty": args.difficulty, "data_seed": args.data_seed},
        "teacher": teacher,
        "rows": aggregate(runs, args.type_list),
        "runs": runs,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()},
        "total_s": None,
    }
    show_table(result)
    if not args.no_plot:
        png = args.workdir / "kd_ablation.png"
        plot(result, png)
        result["plot"] = str(png)
    result["total_s"] = round(time.time() - t0, 1)
    write_json_atomic(args.workdir / "kd_ablation.json", result)
    print(f"results: {args.workdir / 'kd_ablation.json'}" + (f", chart: {result['plot']}" if "plot" in result else ""))
    if args.json is not None:
        if str(args.json) == "-":
            print(json.dumps(result, indent=2))
        else:
            write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
