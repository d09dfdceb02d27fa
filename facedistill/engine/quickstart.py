"""The quickstart: prepare -> train a teacher -> distill a student -> evaluate -> export -> benchmark.

Everything runs on the built-in synthetic faces, on a CPU, with the recipes in
``recipes/quickstart/`` (so what the quickstart does is what a user's own recipe would do).
Each finished step is reused when the quickstart is run again (delete the folder to start over).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from facedistill.config import load_recipe
from facedistill.engine.monitor import Monitor
from facedistill.engine.run_state import train_or_reuse
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


def run_quickstart(workdir: str | Path = "runs/quickstart", size: str = "default", recipes: str | Path | None = None,
                   int8: bool = True, overrides: list[str] | None = None, monitor: Monitor | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole pipeline; returns a summary dict (accuracies, sizes, latencies, timings)."""
    if size not in SIZES:
        raise FaceDistillError(f"--size {size!r}: choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    workdir = Path(workdir)
    recipes = Path(recipes) if recipes else REPO_RECIPES
    monitor = monitor or Monitor()
    log = log or monitor.message
    timings: dict[str, float] = {}
    t0 = time.time()

    data = _prepare_data(workdir / "data", spec, monitor, log)
    timings["prepare"] = time.time() - t0
    runs: dict[str, dict[str, Any]] = {}
    for name in ("teacher",) + STUDENTS:
        t = time.time()
        recipe = _recipe(recipes, name, workdir, spec, list(overrides or []))
        runs[name], _ = train_or_reuse(recipe, monitor, log)
        timings[f"train_{name}"] = time.time() - t
    run_dirs = {name: workdir / f"quickstart-{name}" for name in runs}

    t = time.time()
    accuracy = _evaluate(run_dirs, data / "val")
    timings["evaluate"] = time.time() - t
    t = time.time()
    student_export, teacher_onnx = _export(run_dirs, workdir / "export", data, int8, log)
    timings["export"] = time.time() - t
    t = time.time()
    bench = _benchmark(student_export, teacher_onnx)
    timings["benchmark"] = time.time() - t
    timings["total"] = time.time() - t0
    return _report(workdir, size, runs, accuracy, student_export, teacher_onnx, bench, timings)


def _prepare_data(data: Path, spec: QuickstartSize, monitor: Monitor, log: Callable[[str], None]) -> Path:
    """Render the synthetic faces unless a set of the same size and seed is already there."""
    from facedistill.data.packed import is_packed, read_manifest
    from facedistill.data.synthetic import write_synthetic

    wanted = {"seed": 0, "difficulty": spec.difficulty, "identities": spec.identities,
              "images_per_identity": spec.images_per_identity}
    have = read_manifest(data / "train").get("synthetic", {}) if is_packed(data / "train") else {}
    if is_packed(data / "val") and all(have.get(k) == v for k, v in wanted.items()):
        log(f"prepare: reusing {data}")
        return data
    total = spec.identities * spec.images_per_identity + spec.val_identities * spec.val_images_per_identity
    with monitor.phase("prepare: rendering synthetic faces", total) as advance:
        write_synthetic(data, train_identities=spec.identities, images_per_identity=spec.images_per_identity,
                        val_identities=spec.val_identities, val_images_per_identity=spec.val_images_per_identity,
                        val_pairs=spec.val_pairs, seed=0, difficulty=spec.difficulty, progress=advance)
    return data


def _evaluate(run_dirs: dict[str, Path], val: Path) -> dict[str, dict[str, float]]:
    """Every model on the same verification pairs."""
    from facedistill.evaluation.evaluate import evaluate

    report = evaluate(list(run_dirs.values()), [val])
    return {name: {"accuracy": r.metrics.accuracy, "accuracy_std": r.metrics.accuracy_std}
            for name, r in zip(run_dirs, report.results)}


def _export(run_dirs: dict[str, Path], export_dir: Path, data: Path, int8: bool, log: Callable[[str], None]):
    """The distilled student to ONNX fp32 (+ int8) and the teacher to fp32 (for its latency)."""
    from facedistill.export.onnx_export import ExportGateError, export_model

    student_onnx = export_dir / "student.onnx"
    teacher_onnx = export_dir / "teacher.onnx"
    try:
        student_export = export_model(run_dirs["unified"], student_onnx, int8=int8,
                                      calib=data / "train" if int8 else None,
                                      verify=data / "val", latency=False, fp32_prelu="linear")
    except ExportGateError as e:
        # The int8 gate refused its model (nothing was written for it); the fp32 export stands.
        if e.report is None or not any(a.precision == "fp32" and a.passed for a in e.report.artifacts):
            raise
        log(f"export: {e}")
        student_export = e.report
    export_model(run_dirs["teacher"], teacher_onnx, latency=False, fp32_prelu="linear")
    return student_export, teacher_onnx


def _benchmark(student_export: Any, teacher_onnx: Path) -> Any:
    """Batch-1, one-thread onnxruntime latency of every ONNX file that was written."""
    from facedistill.bench.latency import benchmark_models

    written = [Path(a.path) for a in student_export.artifacts if a.written]
    return benchmark_models([teacher_onnx] + written, batches=(1,), threads=(1,), warmup=5, min_time=2.0)


def _report(workdir: Path, size: str, runs: dict[str, dict[str, Any]], accuracy: dict[str, dict[str, float]],
            student_export: Any, teacher_onnx: Path, bench: Any, timings: dict[str, float]) -> dict[str, Any]:
    latency = {Path(r.path).name: {"p50_ms": r.p50_ms, "size_mb": r.size_mb} for r in bench.rows}
    rows = []
    for name, s in runs.items():
        rows.append({"model": f"{name}" if name == "teacher" else f"student ({name})",
                     "arch": s["student"]["arch"], "parameters": s["student"]["parameters"],
                     "accuracy": accuracy[name]["accuracy"], "accuracy_std": accuracy[name]["accuracy_std"],
                     "train_s": round(s["wall_time_s"], 1)})
    exports = []
    for art in student_export.artifacts:
        exports.append({"file": Path(art.path).name if art.written else f"{Path(art.path).name} (refused by its gate)",
                        "precision": art.precision, "size_mb": round(art.size_mb, 3) if art.written else None,
                        # the export library measures in percent; every --json gives fractions
                        "accuracy": None if art.accuracy is None else art.accuracy / 100.0,
                        "cosine_mean": art.cosine_mean,
                        "p50_ms": latency.get(Path(art.path).name, {}).get("p50_ms")})
    exports.append({"file": teacher_onnx.name, "precision": "fp32",
                    "size_mb": latency.get(teacher_onnx.name, {}).get("size_mb"), "accuracy": None,
                    "p50_ms": latency.get(teacher_onnx.name, {}).get("p50_ms")})
    return {"workdir": str(workdir), "size": size, "models": rows, "exports": exports,
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "machine": f"{bench.machine.get('cpu_model')} ({bench.machine.get('usable_cpus')} CPUs)"}
