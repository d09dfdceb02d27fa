"""SFace -> MobileFaceNet on real faces (LFW folds 1-5 train, 6-7 val): the whole product, one table.

Claim: the whole product on real faces: each objective's student on LFW folds 6-7 under one budget, and the
deployed student's fp32 / int8 accuracy, size and latency next to the teacher.
Its figure (README.md ("SFace on LFW") and docs/results.md, "The objectives side by side") comes from::

    python benchmarks/sface_lfw.py --epochs 3 --jobs 2 --threads 1

What it does, each step through the ``facedistill`` CLI a user would type:

1. checks the inputs (``models/sface_fp32.onnx``, ``data/lfw112/{train,val}``; the recipe header
   says how to make them) and builds the frozen teacher's embedding cache once, with every core;
2. trains one student per distillation type and seed (``recipes/sface_lfw/<type>.yaml``; the unified
   row is ``recipes/sface_to_mbf_lfw.yaml``) under the same budget: same epochs, batch and threads;
   with ``--seeds 0,1,2`` every type is trained once per seed (runs ``<type>-s<seed>``, seed by
   seed) and the table shows the mean ± std over seeds (``--more-seeds-for l2,iled,unified``: the
   seeds after the first only for those rows);
   ``--jobs 2 --threads 1`` runs two rows side by side, which on a 2-core CPU gets ~20% more images/s
   than one row on two threads. Finished rows are reused; killed rows resume;
3. evaluates the teacher and every student on the val pairs (10-fold, flip TTA, the LFW protocol,
   balanced folds where the pair list's blocks are not); EER and the impostor-pair cosine beside;
4. deploys one row (``--deploy``, default unified): fp32 and int8 ONNX, both evaluated on the same
   pairs, sizes, and batch-1 single-thread latency next to the teacher's;
5. prints the two tables, writes ``<workdir>/sface_lfw.json`` and a PNG chart.

    python benchmarks/sface_lfw.py --workdir runs/sface_lfw --epochs 3 --jobs 2 --threads 1
    python benchmarks/sface_lfw.py --types none,iled,rpsd,unified --seeds 0,1,2 --deploy ''
    # the same rows on LFW + CelebA (the training sources of that recipe, for every row)
    python benchmarks/sface_lfw.py --data-from recipes/sface_lfw/unified_celeba.yaml --epochs 4 --deploy ''

Timings are this machine's; rows run concurrently share its cores, which the table states.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALL_TYPES = ["none", "l2", "cosine", "rkd", "sp", "iled", "rpsd", "unified"]


def recipe_path(kind: str) -> Path:
    return ROOT / "recipes" / ("sface_to_mbf_lfw.yaml" if kind == "unified" else f"sface_lfw/{kind}.yaml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/sface_lfw"), help="runs and results go here")
    ap.add_argument("--types", default=",".join(ALL_TYPES), help=f"rows (default {','.join(ALL_TYPES)})")
    ap.add_argument("--epochs", type=float, default=3.0, help="training epochs of every row (the equal budget)")
    ap.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds N)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds: every type is trained once per seed and "
                                                 "the table shows mean ± std over seeds (default 0)")
    ap.add_argument("--more-seeds-for", default="", metavar="TYPES",
                    help="train the seeds after the first only for these types (comma-separated; default: every "
                         "type); the others get one run, their ± is the fold std")
    ap.add_argument("--jobs", type=int, default=2, help="rows trained at the same time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per row")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every row (repeatable)")
    ap.add_argument("--data-from", type=Path, default=None, metavar="RECIPE",
                    help="train every row on this recipe's `data.train` (e.g. recipes/sface_lfw/unified_celeba.yaml: "
                         "LFW + CelebA) instead of LFW folds 1-5 alone")
    ap.add_argument("--deploy", default="unified", help="row to export to fp32/int8 ONNX ('' = skip)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    args.type_list = [t.strip() for t in args.types.split(",") if t.strip()]
    try:
        args.seed_list = [args.seed] if args.seed is not None else [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not args.seed_list or len(set(args.seed_list)) != len(args.seed_list):
        ap.error("--seeds: give at least one seed, each once")
    args.more_seeds = [t.strip() for t in args.more_seeds_for.split(",") if t.strip()] or list(args.type_list)
    bad = [t for t in args.type_list + args.more_seeds if t not in ALL_TYPES]
    if bad or not args.type_list:
        ap.error(f"--types / --more-seeds-for: unknown {bad}; choose from {', '.join(ALL_TYPES)}")
    if args.deploy and args.deploy not in args.type_list:
        ap.error(f"--deploy {args.deploy!r} is not one of the --types rows")
    if args.jobs < 1 or args.threads < 1:
        ap.error("--jobs and --threads must be at least 1")
    args.data_train = None
    if args.data_from is not None:
        from facedistill.config import load_recipe
        from facedistill.errors import FaceDistillError

        try:
            args.data_train = load_recipe(args.data_from).to_dict()["data"]["train"]  # plain YAML data
        except FaceDistillError as e:
            ap.error(f"--data-from: {e}")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "facedistill", *argv]


def run_cli(argv: list[str], log_file: Path, ok: tuple[int, ...] = (0,)) -> int:
    with open(log_file, "w") as fh:
        rc = subprocess.call(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc not in ok:
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise SystemExit(f"command failed (exit {rc}): {' '.join(argv)}\n--- {log_file} (tail) ---\n{tail}")
    return rc


# --------------------------------------------------------------------------------------------
def row_label(args: argparse.Namespace, kind: str, seed: int) -> str:
    """The run's name: the type alone for one seed, ``<type>-s<seed>`` for several."""
    return kind if len(args.seed_list) == 1 else f"{kind}-s{seed}"


def row_overrides(args: argparse.Namespace, kind: str, seed: int) -> list[str]:
    return [f"output_dir={args.workdir.resolve()}", f"name={row_label(args, kind, seed)}",
            f"train.epochs={args.epochs}", f"train.seed={seed}", f"train.threads={args.threads}", "data.workers=0",
            "train.eval_every=-1"] + \
        ([f"data.train={json.dumps(args.data_train)}"] if args.data_train is not None else []) + args.overrides


def plan_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Load every row's recipe (errors now, not after an hour) and decide reuse / resume / train.

    The decision (and moving a folder of another recipe aside) is the engine's: run_state.prepare_run.
    """
    from facedistill.config import load_recipe
    from facedistill.engine.run_state import prepare_run

    rows = []
    for seed in args.seed_list:  # seed-major: a killed sweep leaves whole seeds behind
        for kind in args.type_list:
            if seed != args.seed_list[0] and kind not in args.more_seeds:
                continue
            label = row_label(args, kind, seed)
            recipe = load_recipe(recipe_path(kind), row_overrides(args, kind, seed))
            state = prepare_run(recipe, lambda msg, label=label: log(f"{label}: {msg}"))
            rows.append({"type": kind, "seed": seed, "label": label, "recipe": recipe, "run_dir": state.run_dir,
                         "how": state.action})
    return rows


def ensure_teacher_cache(recipe) -> dict[str, Any]:
    """Build the frozen teacher's (image, flip) embeddings once, with all cores, before rows fork."""
    from facedistill.data.multisource import MultiSourceDataset, open_train_set
    from facedistill.engine.teacher_cache import cache_path, load_or_build
    from facedistill.engine.teachers import build_teacher

    train_set = open_train_set(recipe.data.train)
    sources = train_set.sources if isinstance(train_set, MultiSourceDataset) else [train_set]
    teacher = build_teacher(recipe.teacher)
    paths, built = [], None
    for dataset in sources:  # one cache per source, beside its data, as the trainer keeps them
        path = cache_path(dataset, teacher.fingerprint)
        paths.append(str(path))
        if path.is_file():
            continue
        log(f"teacher cache: embedding {len(dataset)} images x 2 flips with {recipe.teacher.onnx} ...")
        t = time.time()
        load_or_build(dataset, teacher, recipe.teacher.batch_size)
        built = (built or 0.0) + round(time.time() - t, 1)
    return {"path": paths[0] if len(paths) == 1 else paths, "built_s": built}


def train_rows(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    todo = [r for r in rows if r["how"] != "reuse"]
    # seed by seed (a sweep cut short leaves whole seeds), the deployed row first: its export can start early
    todo.sort(key=lambda r: (args.seed_list.index(r["seed"]), r["type"] != args.deploy))
    for r in rows:
        if r["how"] == "reuse":
            log(f"{r['label']}: reusing {r['run_dir']}")
    running: list[tuple[dict[str, Any], subprocess.Popen, Any]] = []
    failed: list[str] = []
    while todo or running:
        while todo and len(running) < args.jobs:
            r = todo.pop(0)
            argv = cli("distill", str(recipe_path(r["type"])))  # non-TTY: a progress line every 20 s
            for o in row_overrides(args, r["type"], r["seed"]):
                argv += ["--set", o]
            if r["how"] == "resume":
                argv.append("--resume")
            r["log"] = args.workdir / f"{r['label']}.log"
            fh = open(r["log"], "a")
            log(f"{r['label']}: {'resuming' if r['how'] == 'resume' else 'training'} "
                f"({args.epochs:g} epochs, {args.threads} thread(s)) -> {r['run_dir']}")
            running.append((r, subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT), fh))
        time.sleep(5)
        for item in list(running):
            r, proc, fh = item
            if proc.poll() is None:
                continue
            fh.close()
            running.remove(item)
            if proc.returncode == 0:
                s = json.loads((r["run_dir"] / "summary.json").read_text())
                log(f"{r['label']}: done in {s['wall_time_s']:.0f} s")
            else:
                failed.append(r["label"])
                log(f"{r['label']}: FAILED (exit {proc.returncode}), see {r['log']}")
    if failed:
        raise SystemExit(f"rows failed: {', '.join(failed)} (their logs are in {args.workdir})")


# --------------------------------------------------------------------------------------------
def evaluate_all(args: argparse.Namespace, teacher_onnx: Path, val: Path, rows: list[dict[str, Any]]) -> dict:
    out = args.workdir / "evaluate.json"
    models = [str(teacher_onnx)] + [str(r["run_dir"]) for r in rows]
    log(f"evaluate: teacher + {len(rows)} students on {val} (10-fold, flip TTA) ...")
    run_cli(cli("evaluate", *models, "--data", str(val), "--mean", "0", "--std", "1", "--rgb",
                "--json", str(out), "--plot", str(args.workdir / "plots")), args.workdir / "evaluate.log")
    return json.loads(out.read_text())


def deploy(args: argparse.Namespace, row: dict[str, Any], teacher_onnx: Path, train: Path, val: Path) -> dict:
    folder = args.workdir / "deploy"
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / f"{row['type']}.onnx"
    log(f"export: {row['run_dir']} -> fp32 + int8 ONNX (calibration on {train}, verified on {val}) ...")
    # fp32 with PRelu rewritten exactly (onnxruntime's PRelu kernel is slow). --keep-rejected: an int8
    # model the gate refuses (export exits 2) is still measured, and marked REFUSED in the table.
    report = folder / "export.json"
    report.unlink(missing_ok=True)
    run_cli(cli("export", str(row["run_dir"]), "--out", str(fp32), "--int8", "--calib", str(train),
                "--verify", str(val), "--fp32-prelu", "linear", "--keep-rejected", "--json", str(report)),
            folder / "export.log", ok=(0, 2))
    if not report.is_file():
        raise SystemExit(f"export wrote no report; see {folder / 'export.log'}")
    export = json.loads(report.read_text())
    files = []
    for a in export["artifacts"]:  # a refused int8 model's path is its kept `.rejected.onnx` file
        if a["precision"] in ("fp32", "int8") and (a["written"] or Path(a["path"]).is_file()):
            files.append(a["path"])
    if not any(Path(f).name == fp32.name for f in files):
        raise SystemExit(f"export did not write {fp32}; see {folder / 'export.log'}")
    log("evaluate: deployed ONNX files on the val pairs ...")
    run_cli(cli("evaluate", *files, "--data", str(val), "--json", str(folder / "evaluate.json")),
            folder / "evaluate.log")
    log("benchmark: batch 1, 1 thread: teacher vs deployed student ...")
    run_cli(cli("benchmark", str(teacher_onnx), *files, "--batch", "1", "--threads", "1",
                "--json", str(folder / "benchmark.json")), folder / "benchmark.log")
    return {"export": export, "evaluate": json.loads((folder / "evaluate.json").read_text()),
            "benchmark": json.loads((folder / "benchmark.json").read_text())}


# --------------------------------------------------------------------------------------------
def _mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarise(args, rows, evaluation, deployed, cache, teacher_onnx) -> dict[str, Any]:
    by_spec = {r["model_spec"]: r for r in evaluation["results"]}  # evaluate_all passed str(path) verbatim

    def acc_of(path: str) -> dict[str, Any]:
        return by_spec[path]

    t = acc_of(str(teacher_onnx))
    table = [{"model": "teacher (SFace, ONNX)", "accuracy": t["accuracy"], "accuracy_std": t["accuracy_std"],
              "tar_at_far_1e-3": t["tar_at_far"].get("1e-03") or t["tar_at_far"].get("0.001"),
              "eer": t.get("eer"), "impostor_cosine": t.get("impostor_cosine"), "fold_scheme": t.get("fold_scheme")}]
    runs = []
    for r in rows:
        s = json.loads((r["run_dir"] / "summary.json").read_text())
        e = acc_of(str(r["run_dir"]))
        runs.append({"type": r["type"], "seed": r["seed"], "accuracy": e["accuracy"],
                     "fold_std": e["accuracy_std"], "eer": e.get("eer"), "impostor_cosine": e.get("impostor_cosine"),
                     "steps": s["steps"], "wall_time_s": s["wall_time_s"], "images_per_s": s.get("images_per_s"),
                     "run_dir": str(r["run_dir"]), "how": r["how"]})
    for kind in args.type_list:
        mine = [x for x in runs if x["type"] == kind]
        accs = [x["accuracy"] for x in mine]
        several = len(mine) > 1
        table.append({"model": kind, "accuracy": statistics.fmean(accs),
                      # the spread over seeds when there are several, else the 10-fold std of the one run
                      "accuracy_std": statistics.stdev(accs) if several else mine[0]["fold_std"],
                      "spread": "seeds" if several else "folds", "accuracies": accs,
                      "seeds": [x["seed"] for x in mine], "eer": _mean([x["eer"] for x in mine]),
                      "impostor_cosine": _mean([x["impostor_cosine"] for x in mine]),
                      "epochs": args.epochs, "steps": mine[0]["steps"],
                      "wall_time_s": statistics.fmean(x["wall_time_s"] for x in mine),
                      "images_per_s": _mean([x["images_per_s"] for x in mine]),
                      "run_dir": mine[0]["run_dir"], "how": ",".join(sorted({x["how"] for x in mine}))})
    deploy_rows = []
    if deployed:
        bench = {Path(b["path"]).resolve(): b for b in deployed["benchmark"]["rows"] if b["status"] == "ok"}
        tb = bench.get(teacher_onnx.resolve())
        deploy_rows.append({"model": "teacher (SFace fp32 ONNX)", "accuracy": t["accuracy"],
                            "accuracy_std": t["accuracy_std"], "size_mb": tb["size_mb"] if tb else None,
                            "p50_ms": tb["p50_ms"] if tb else None, "speedup_vs_teacher": 1.0})
        for res in deployed["evaluate"]["results"]:
            b = bench.get(Path(res["model_spec"]).resolve())
            art = next((a for a in deployed["export"]["artifacts"] if a["path"] == res["model_spec"]), {})
            deploy_rows.append({"model": f"{args.deploy} student {res['precision']} ONNX", "accuracy": res["accuracy"],
                                "accuracy_std": res["accuracy_std"], "size_mb": b["size_mb"] if b else None,
                                "p50_ms": b["p50_ms"] if b else None,
                                "speedup_vs_teacher": (tb["p50_ms"] / b["p50_ms"]) if (b and tb) else None,
                                "gate": art.get("gate"), "gate_passed": art.get("passed"),
                                "cosine_mean_vs_reference": art.get("cosine_mean")})
    return {"benchmark": "sface_lfw", "settings": {"types": args.type_list, "epochs": args.epochs,
                                                   "seeds": args.seed_list, "more_seeds_for": args.more_seeds,
                                                   "jobs": args.jobs, "threads": args.threads,
                                                   "overrides": args.overrides, "deploy": args.deploy,
                                                   "data_from": str(args.data_from) if args.data_from else None,
                                                   "data_train": args.data_train},
            "teacher_cache": cache, "val_pairs": t["pairs"], "rows": table, "runs": runs, "deploy": deploy_rows,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}


def _spread_text(rows: list[dict[str, Any]]) -> str:
    """What ± means over these student rows: the std over seeds, over the 10 folds, or each in turn."""
    by_seeds = [r.get("spread") == "seeds" for r in rows]
    if all(by_seeds):
        return "std over seeds"
    return "std over the 10 folds" if not any(by_seeds) else "std over seeds, or over the 10 folds for one run"


def print_tables(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    console = Console(width=max(110, Console().width))
    tab = Table(title=f"SFace -> MobileFaceNet, LFW folds 6-7 ({result['val_pairs']} pairs)",
                caption=(f"trained on {s['data_from']}'s data.train; " if s.get("data_from") else "")
                + f"equal budget: {s['epochs']:g} epochs, seeds {','.join(map(str, s['seeds']))}, {s['jobs']} "
                        f"rows at a time x {s['threads']} thread(s); ± = "
                        + _spread_text(result["rows"][1:])
                        + f"; folds: {result['rows'][0].get('fold_scheme')}")
    for c in ("model", "runs", "accuracy %", "EER %", "impostor cos", "steps", "train s", "img/s"):
        tab.add_column(c, justify="left" if c == "model" else "right")
    rows = result["rows"]
    best = max(r["accuracy"] for r in rows[1:]) if len(rows) > 1 else None
    for r in rows:
        tab.add_row(r["model"], str(len(r.get("accuracies", [r["accuracy"]]))),
                    f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}",
                    f"{100 * r['eer']:.2f}" if r.get("eer") is not None else "",
                    f"{r['impostor_cosine']:.3f}" if r.get("impostor_cosine") is not None else "",
                    str(r.get("steps", "")), f"{r['wall_time_s']:.0f}" if "wall_time_s" in r else "",
                    f"{r['images_per_s']:.1f}" if r.get("images_per_s") else "",
                    style="bold" if r["accuracy"] == best else ("dim" if "teacher" in r["model"] else None))
    console.print(tab)
    if result["deploy"]:
        dep = Table(title="deployed student vs teacher (onnxruntime, batch 1, 1 thread)")
        for c in ("model", "accuracy %", "size MB", "p50 ms", "x teacher", "gate"):
            dep.add_column(c, justify="left" if c in ("model", "gate") else "right")
        for r in result["deploy"]:
            dep.add_row(r["model"], f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}",
                        f"{r['size_mb']:.2f}" if r["size_mb"] else "", f"{r['p50_ms']:.2f}" if r["p50_ms"] else "",
                        f"{r['speedup_vs_teacher']:.1f}" if r["speedup_vs_teacher"] else "",
                        "" if r.get("gate_passed") is None else ("passed" if r["gate_passed"] else "REFUSED"))
        console.print(dep)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"][1:]
    names = [r["model"] for r in rows]
    acc = [100 * r["accuracy"] for r in rows]
    err = [100 * r["accuracy_std"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 3, 4))
    ax.bar(names, acc, yerr=err, capsize=4,
           color=["#d62728" if n == "unified" else "#9e9e9e" if n == "none" else "#1f77b4" for n in names])
    teacher = 100 * result["rows"][0]["accuracy"]
    ax.axhline(teacher, ls="--", color="k", lw=1, label=f"teacher {teacher:.2f}%")
    ax.set_ylim(max(0.0, min(a - e for a, e in zip(acc, err)) - 3), 100)
    spread = _spread_text(rows)
    ax.set_ylabel("LFW folds 6-7 accuracy %")
    ax.set_title(f"SFace -> MobileFaceNet, {result['settings']['epochs']:g} epochs each (± {spread})", fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from facedistill.data.multisource import SourceSpec
    from facedistill.errors import FaceDistillError
    from facedistill.utils.atomic import write_json_atomic

    t0 = time.time()
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        rows = plan_rows(args)
        recipe = rows[0]["recipe"]
        teacher_onnx, val = Path(recipe.teacher.onnx), Path(recipe.data.val)
        first = recipe.data.train[0] if isinstance(recipe.data.train, (list, tuple)) else recipe.data.train
        train = Path(SourceSpec.parse(first).path)  # int8 calibration: the first source
        cache = ensure_teacher_cache(recipe)
    except FaceDistillError as e:
        print(f"error: {e}\n(the header of recipes/sface_lfw/base.yaml says how to prepare the inputs)",
              file=sys.stderr)
        return 2
    train_rows(args, rows)
    evaluation = evaluate_all(args, teacher_onnx, val, rows)
    deployed = None
    if args.deploy:
        deployed = deploy(args, next(r for r in rows if r["type"] == args.deploy and r["seed"] == args.seed_list[0]),
                          teacher_onnx, train, val)
    result = summarise(args, rows, evaluation, deployed, cache, teacher_onnx)
    print_tables(result)
    png = args.workdir / "sface_lfw.png"
    plot(result, png)
    result["plot"] = str(png)
    result["total_s"] = round(time.time() - t0, 1)
    write_json_atomic(args.workdir / "sface_lfw.json", result)
    if args.json:
        write_json_atomic(args.json, result)
    print(f"results: {args.workdir / 'sface_lfw.json'}, chart: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
