"""The quickstart: prepare -> train a teacher -> distill a student -> evaluate -> export -> benchmark.

Everything runs on the built-in synthetic faces, on a CPU, with the recipes in
``recipes/quickstart/`` (so what the quickstart does is what a user's own recipe would do).
Each finished step is reused when the quickstart is run again (delete the folder to start over).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from facedistill.config import load_recipe
from facedistill.engine.trainer import Monitor, train
from facedistill.errors import FaceDistillError

REPO_RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "quickstart"


@dataclass(frozen=True)
class QuickstartSize:
    identities: int
    images_per_identity: int
    val_identities: int
    val_images_per_identity: int
    val_pairs: int
    teacher_epochs: float
    student_epochs: float
    difficulty: float = 1.0
    batch_size: int = 64


# "default" is calibrated to finish in under 10 minutes on 2 CPU cores; "tiny" is for tests.
SIZES: dict[str, QuickstartSize] = {
    "default": QuickstartSize(80, 10, 80, 4, 600, teacher_epochs=3, student_epochs=1.5, difficulty=0.6),
    "tiny": QuickstartSize(8, 4, 20, 2, 100, teacher_epochs=1, student_epochs=1, difficulty=0.6,
                          batch_size=8),
}

STUDENTS = ("none", "unified")


def _recipe(recipes: Path, name: str, workdir: Path, size: QuickstartSize, extra: list[str]):
    path = recipes / f"{name}.yaml"
    if not path.is_file():
        raise FaceDistillError(f"{path}: quickstart recipe not found; run from a facedistill checkout or pass "
                               "--recipes DIR (the recipes/quickstart folder of the project)")
    epochs = size.teacher_epochs if name == "teacher" else size.student_epochs
    # No evaluation during training: step 4 evaluates every model once, on the same pairs.
    overrides = [f"output_dir={workdir}", f"data.train={workdir / 'data' / 'train'}",
                 "data.val=null", f"train.epochs={epochs}",
                 f"name=quickstart-{name}", f"data.batch_size={size.batch_size}"]
    if name != "teacher":
        overrides.append(f"teacher.checkpoint={workdir / 'quickstart-teacher'}")
    return load_recipe(path, overrides + extra)


def _resumable(recipe, log: Callable[[str], None]) -> bool:
    """Resume an interrupted run of the same recipe; move a run of another recipe aside."""
    import torch

    ckpt = recipe.run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        return False
    if torch.load(ckpt, map_location="cpu", weights_only=True).get("recipe_hash") == recipe.hash():
        return True
    stale = recipe.run_dir.with_name(f"{recipe.run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    recipe.run_dir.rename(stale)
    log(f"{recipe.run_dir} was trained with other settings; moved it to {stale}")
    return False


def run_quickstart(workdir: str | Path = "runs/quickstart", size: str = "default", recipes: str | Path | None = None,
                   int8: bool = True, overrides: list[str] | None = None, monitor: Monitor | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole pipeline; returns a summary dict (accuracies, sizes, latencies, timings)."""
    from facedistill.data.packed import is_packed, read_manifest
    from facedistill.data.synthetic import write_synthetic

    if size not in SIZES:
        raise FaceDistillError(f"--size {size!r}: choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    workdir = Path(workdir)
    recipes = Path(recipes) if recipes else REPO_RECIPES
    monitor = monitor or Monitor()
    log = log or monitor.message
    extra = list(overrides or [])
    timings: dict[str, float] = {}
    t0 = time.time()

    # 1. data
    data = workdir / "data"
    wanted = {"seed": 0, "difficulty": spec.difficulty, "identities": spec.identities,
              "images_per_identity": spec.images_per_identity}
    have = read_manifest(data / "train").get("synthetic", {}) if is_packed(data / "train") else {}
    if not (is_packed(data / "val") and all(have.get(k) == v for k, v in wanted.items())):
        total = spec.identities * spec.images_per_identity + spec.val_identities * spec.val_images_per_identity
        with monitor.phase("prepare: rendering synthetic faces", total) as advance:
            write_synthetic(data, train_identities=spec.identities, images_per_identity=spec.images_per_identity,
                            val_identities=spec.val_identities, val_images_per_identity=spec.val_images_per_identity,
                            val_pairs=spec.val_pairs, seed=0, difficulty=spec.difficulty, progress=advance)
    else:
        log(f"prepare: reusing {data}")
    timings["prepare"] = time.time() - t0

    # 2-3. teacher, then students (a finished run is reused)
    runs: dict[str, dict[str, Any]] = {}
    for name in ("teacher",) + STUDENTS:
        t = time.time()
        recipe = _recipe(recipes, name, workdir, spec, extra)
        summary_file = recipe.run_dir / "summary.json"
        if summary_file.is_file() and json.loads(summary_file.read_text()).get("recipe_hash") == recipe.hash():
            log(f"{name}: reusing {recipe.run_dir}")
            runs[name] = json.loads(summary_file.read_text())
        else:
            log(f"{name}: training {recipe.student.arch} (distill: {recipe.loss.distill.type})")
            runs[name] = train(recipe, resume=_resumable(recipe, log), monitor=monitor).summary
        timings[f"train_{name}"] = time.time() - t

    # 4. evaluate every model on the verification pairs
    from facedistill.evaluation.evaluate import evaluate

    t = time.time()
    run_dirs = {name: workdir / f"quickstart-{name}" for name in runs}
    report = evaluate([run_dirs[n] for n in runs], [data / "val"])
    accuracy = {}
    for name, result in zip(runs, report.results):
        accuracy[name] = {"accuracy": result.metrics.accuracy, "accuracy_std": result.metrics.accuracy_std}
    timings["evaluate"] = time.time() - t

    # 5. export the distilled student (fp32 + int8) and the teacher (fp32, for latency)
    from facedistill.export.onnx_export import export_model, sibling_path

    t = time.time()
    export_dir = workdir / "export"
    student_onnx = export_dir / "student.onnx"
    teacher_onnx = export_dir / "teacher.onnx"
    from facedistill.export.onnx_export import ExportGateError

    try:
        student_export = export_model(run_dirs["unified"], student_onnx, int8=int8, calib=data / "train" if int8 else None,
                                      verify=data / "val", latency=False, fp32_prelu="linear")
    except ExportGateError as e:
        # The int8 gate refused its model (nothing was written for it); the fp32 export stands.
        if e.report is None or not any(a.precision == "fp32" and a.passed for a in e.report.artifacts):
            raise
        log(f"export: {e}")
        student_export = e.report
    export_model(run_dirs["teacher"], teacher_onnx, latency=False, fp32_prelu="linear")
    timings["export"] = time.time() - t

    # 6. benchmark batch-1 latency with onnxruntime
    from facedistill.bench.latency import benchmark_models

    t = time.time()
    int8_file = sibling_path(student_onnx, "int8")
    models = [teacher_onnx, student_onnx] + ([int8_file] if int8 and int8_file.is_file() else [])
    bench = benchmark_models(models, batches=(1,), threads=(1,), warmup=5, min_time=2.0)
    timings["benchmark"] = time.time() - t
    latency = {Path(r.path).name: {"p50_ms": r.p50_ms, "size_mb": r.size_mb} for r in bench.rows}

    rows = []
    for name in runs:
        s = runs[name]
        rows.append({"model": f"{name}" if name == "teacher" else f"student ({name})",
                     "arch": s["student"]["arch"], "parameters": s["student"]["parameters"],
                     "accuracy": accuracy[name]["accuracy"], "accuracy_std": accuracy[name]["accuracy_std"],
                     "train_s": round(s["wall_time_s"], 1)})
    exports = []
    for art in student_export.artifacts:
        exports.append({"file": Path(art.path).name if art.written else f"{Path(art.path).name} (refused by its gate)",
                        "precision": art.precision, "size_mb": round(art.size_mb, 3) if art.written else None,
                        "accuracy": art.accuracy, "cosine_mean": art.cosine_mean,
                        "p50_ms": latency.get(Path(art.path).name, {}).get("p50_ms")})
    exports.append({"file": teacher_onnx.name, "precision": "fp32",
                    "size_mb": latency.get(teacher_onnx.name, {}).get("size_mb"), "accuracy": None,
                    "p50_ms": latency.get(teacher_onnx.name, {}).get("p50_ms")})
    timings["total"] = time.time() - t0
    return {"workdir": str(workdir), "size": size, "models": rows, "exports": exports,
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "machine": f"{bench.machine.get('cpu_model')} ({bench.machine.get('usable_cpus')} CPUs)"}
