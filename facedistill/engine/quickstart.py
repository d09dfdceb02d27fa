"""The quickstart: prepare -> train a teacher -> distill a student -> evaluate -> export -> benchmark.

Everything runs on the built-in synthetic faces, on a CPU, with the recipes in
``recipes/quickstart/`` (so what the quickstart does is what a user's own recipe would do).
Each finished step is reused when the quickstart is run again (delete the folder to start over):
a training run when its summary carries the same recipe hash (``engine/run_state.py``), the
evaluation and the exports when a stamp beside them says they were made from the same checkpoints,
recipes and data and their files are unchanged (``engine/step_cache.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from facedistill.config import load_recipe
from facedistill.engine.monitor import Monitor
from facedistill.engine.run_state import train_or_reuse
from facedistill.engine.step_cache import load_reusable, save_stamp
from facedistill.errors import FaceDistillError
from facedistill.utils.hashing import sha256_file

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


# "default" finishes in about 4 minutes on 2 idle CPU cores (229 s measured, docs/results.md); "tiny" is for tests.
SIZES: dict[str, QuickstartSize] = {
    "default": QuickstartSize(80, 10, 80, 4, 600, teacher_epochs=3, student_epochs=1.5, difficulty=0.6),
    "tiny": QuickstartSize(8, 4, 20, 2, 100, teacher_epochs=1, student_epochs=1, difficulty=0.6,
                          batch_size=8),
}

STUDENTS = ("none", "unified")
# Stamps that let a re-run reuse the evaluation and the exports (engine/step_cache.py).
EVALUATION_STAMP = "evaluation.json"
EXPORT_STAMP = "exports.json"
# How the quickstart calls export_model; part of the exports' key, so a change here exports again.
EXPORT_OPTIONS = ("student: fp32 + int8 (calib train, verify val, min cosine 0.97), fp32_prelu linear; "
                  "teacher: fp32")
# The int8 gate's cosine floor for the quickstart's students (export's default: 0.99). Their embeddings,
# 1.5 epochs on synthetic faces, move more under int8 than real-face students' do (all-int8 mean cosine
# 0.979-0.981 across calibration methods) while verification holds (77.83% fp32, 78.33-81.00% int8,
# paired test p > 0.7; docs/results.md): the accuracy gate decides, and the table shows the cosine.
INT8_MIN_COSINE = 0.97


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
    accuracy = _evaluate(run_dirs, data, log)
    timings["evaluate"] = time.time() - t
    t = time.time()
    exports = _export(run_dirs, workdir / "export", data, int8, log)
    timings["export"] = time.time() - t
    t = time.time()
    bench = _benchmark(exports, workdir / "export")
    timings["benchmark"] = time.time() - t
    timings["total"] = time.time() - t0
    return _report(workdir, size, runs, accuracy, exports, bench, timings)


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


def _input_key(run_dirs: dict[str, Path], data: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """What an export or evaluation is made from: each model's weights and recipe, the data, the version."""
    from facedistill import __version__
    from facedistill.models.checkpoints import STUDENT_FILE, SUMMARY_FILE

    key: dict[str, Any] = {"facedistill_version": __version__}
    for name in names:
        summary = json.loads((run_dirs[name] / SUMMARY_FILE).read_text())
        key[f"{name}_weights_sha256"] = sha256_file(run_dirs[name] / STUDENT_FILE)
        key[f"{name}_recipe_hash"] = summary.get("recipe_hash", "")
    for split in ("train", "val"):
        manifest = data / split / "manifest.json"
        key[f"data_{split}_sha256"] = sha256_file(manifest) if manifest.is_file() else "missing"
    return key


def _evaluate(run_dirs: dict[str, Path], data: Path, log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Every model on the same verification pairs (reused when no model and no pair changed)."""
    from facedistill.evaluation.evaluate import evaluate

    stamp = data.parent / EVALUATION_STAMP
    key = _input_key(run_dirs, data, tuple(run_dirs))
    reused, _ = load_reusable(stamp, key)
    if reused is not None:
        log(f"evaluate: reusing {stamp} (same models, same pairs)")
        return reused
    report = evaluate(list(run_dirs.values()), [data / "val"])
    accuracy = {name: {"accuracy": r.metrics.accuracy, "accuracy_std": r.metrics.accuracy_std}
                for name, r in zip(run_dirs, report.results)}
    save_stamp(stamp, key, {}, accuracy)
    return accuracy


def _export(run_dirs: dict[str, Path], export_dir: Path, data: Path, int8: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
    """The distilled student to ONNX fp32 (+ int8) and the teacher to fp32 (for its latency).

    Reused, like a finished training run, when the stamp beside the files says they were made from
    the same checkpoints, recipes, data and options, every file still has the digest it was written
    with, and each file's ``recipe_hash`` metadata names its run's recipe.
    """
    key = {**_input_key(run_dirs, data, ("teacher", "unified")), "int8": bool(int8),
           "options": EXPORT_OPTIONS}
    stamp = export_dir / EXPORT_STAMP
    reused, why = load_reusable(stamp, key, check=lambda d: _metadata_problem(export_dir, d, key))
    if reused is not None:
        log(f"export: reusing {export_dir} (made from the same checkpoints and recipes)")
        return reused
    if stamp.is_file():
        log(f"export: exporting again ({why})")
    result = _run_exports(run_dirs, export_dir, data, int8, log)
    written = {a["file"]: export_dir / a["file"] for a in result["artifacts"] if a["written"]}
    written[result["teacher"]] = export_dir / result["teacher"]
    save_stamp(stamp, key, written, result)
    return result


def _metadata_problem(export_dir: Path, stamp: dict[str, Any], key: dict[str, Any]) -> str | None:
    """None when every stamped ONNX file's metadata names the recipe of the run it was exported from."""
    from facedistill.export.metadata import read_metadata

    teacher = (stamp.get("result") or {}).get("teacher")
    for name in stamp.get("files") or {}:
        run = "teacher" if name == teacher else "unified"
        try:
            found = read_metadata(export_dir / name).get("recipe_hash")
        except FaceDistillError as e:
            return str(e)
        if found != key[f"{run}_recipe_hash"]:
            return f"{name} was exported from another recipe (recipe_hash {found})"
    return None


def _run_exports(run_dirs: dict[str, Path], export_dir: Path, data: Path, int8: bool,
                 log: Callable[[str], None]) -> dict[str, Any]:
    from facedistill.export.onnx_export import ExportGateError, export_model

    student_onnx = export_dir / "student.onnx"
    teacher_onnx = export_dir / "teacher.onnx"
    try:
        report = export_model(run_dirs["unified"], student_onnx, int8=int8,
                              calib=data / "train" if int8 else None,
                              verify=data / "val", latency=False, fp32_prelu="linear",
                              int8_min_cosine=INT8_MIN_COSINE)
    except ExportGateError as e:
        # The int8 gate refused its model (nothing was written for it); the fp32 export stands.
        if e.report is None or not any(a.precision == "fp32" and a.passed for a in e.report.artifacts):
            raise
        log(f"export: {e}")
        report = e.report
    export_model(run_dirs["teacher"], teacher_onnx, latency=False, fp32_prelu="linear")
    return {"artifacts": [_artifact_row(a, report) for a in report.artifacts], "teacher": teacher_onnx.name}


def _artifact_row(art: Any, report: Any) -> dict[str, Any]:
    """One export as plain data; an int8 file with float layers says which and what they cost."""
    row = {"file": Path(art.path).name, "precision": art.precision, "written": bool(art.written),
           "size_mb": round(art.size_mb, 3) if art.written else None,
           # the export library measures in percent; every --json gives fractions
           "accuracy": None if art.accuracy is None else art.accuracy / 100.0,
           "cosine_mean": art.cosine_mean, "float_layers": [], "float_cost": None}
    int8 = report.int8 or {}
    if art.precision == "int8" and art.written:
        mixed = int8.get("mixed_precision")
        if mixed:
            row["float_layers"] = [layer[0] for layer in mixed.get("kept_float_layers", [])]
            row["float_cost"] = {"of_layers": len(mixed.get("layers", [])),
                                 "size_kb": round((mixed["size_bytes"] - mixed["plain_size_bytes"]) / 1e3, 1),
                                 "latency_ms_b1": round(mixed["latency_ms_b1"] - mixed["plain_latency_ms_b1"], 3)}
        row["float_parts"] = list(int8.get("keep_float") or [])
    return row


def _benchmark(exports: dict[str, Any], export_dir: Path) -> Any:
    """Batch-1, one-thread onnxruntime latency of every ONNX file that was written."""
    from facedistill.bench.latency import benchmark_models

    written = [export_dir / a["file"] for a in exports["artifacts"] if a["written"]]
    return benchmark_models([export_dir / exports["teacher"]] + written, batches=(1,), threads=(1,), warmup=5,
                            min_time=2.0)


SHOWN_FLOAT_LAYERS = 3  # in the table; --json lists them all (float_layers)


def _precision_label(row: dict[str, Any]) -> str:
    """``int8``, or ``int8, N of M layers float (+KB, +ms)`` / ``int8, <parts> float`` when not all int8."""
    if row["precision"] != "int8":
        return row["precision"]
    cost = row.get("float_cost")
    if row.get("float_layers") and cost:
        names = row["float_layers"]
        shown = ", ".join(names[:SHOWN_FLOAT_LAYERS]) + (", ..." if len(names) > SHOWN_FLOAT_LAYERS else "")
        return (f"int8, {len(names)} of {cost['of_layers']} layers float ({shown}; "
                f"+{cost['size_kb']:.0f} KB, {cost['latency_ms_b1']:+.2f} ms vs plain int8)")
    if row.get("float_parts"):
        return f"int8, {', '.join(row['float_parts'])} float"
    return "int8"


def _report(workdir: Path, size: str, runs: dict[str, dict[str, Any]], accuracy: dict[str, dict[str, float]],
            exports: dict[str, Any], bench: Any, timings: dict[str, float]) -> dict[str, Any]:
    latency = {Path(r.path).name: {"p50_ms": r.p50_ms, "size_mb": r.size_mb} for r in bench.rows}
    rows = []
    for name, s in runs.items():
        rows.append({"model": f"{name}" if name == "teacher" else f"student ({name})",
                     "arch": s["student"]["arch"], "parameters": s["student"]["parameters"],
                     "accuracy": accuracy[name]["accuracy"], "accuracy_std": accuracy[name]["accuracy_std"],
                     "train_s": round(s["wall_time_s"], 1)})
    out = []
    fp32_ms = latency.get("student.onnx", {}).get("p50_ms")
    for art in exports["artifacts"]:
        out.append({**art, "file": art["file"] if art["written"] else f"{art['file']} (refused by its gate)",
                    "precision": _precision_label(art), "all_int8": art["precision"] == "int8" and not (
                        art.get("float_layers") or art.get("float_parts")),
                    "p50_ms": latency.get(art["file"], {}).get("p50_ms")})
        ms = out[-1]["p50_ms"]
        out[-1]["speedup_vs_fp32"] = round(fp32_ms / ms, 2) if ms and fp32_ms else None
    teacher = exports["teacher"]
    out.append({"file": teacher, "precision": "fp32", "written": True,
                "size_mb": latency.get(teacher, {}).get("size_mb"), "accuracy": None,
                "p50_ms": latency.get(teacher, {}).get("p50_ms")})
    return {"workdir": str(workdir), "size": size, "models": rows, "exports": out,
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "machine": f"{bench.machine.get('cpu_model')} ({bench.machine.get('usable_cpus')} CPUs)"}
