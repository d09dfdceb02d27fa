"""Latency, throughput and memory of ONNX models (onnxruntime, CPU) and PyTorch eager baselines.

Every configuration (model x batch x intra-op threads) gets a fresh inference session, so its
peak resident memory and its timings do not depend on the configurations before it. Nothing here
imports torch at module level: the slim runtime image has no torch, and only ``--torch`` baselines
(checkpoints) need it.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from facedistill import __version__
from facedistill.bench import sysinfo
from facedistill.bench.onnxinfo import OnnxParseError, model_precision, model_size_mb, summarize_onnx
from facedistill.errors import FaceDistillError

REPORT_SCHEMA = "facedistill.benchmark/1"
OUTLIER_FACTOR = 1.5          # a run slower than 1.5 x p50 is counted as an outlier
DEFAULT_MIN_TIME = 1.0        # seconds of timed runs per configuration when neither is given
MIN_RUNS = 10                 # at least this many timed runs when timing by --min-time
DEFAULT_INPUT_SIZE = 112
PROFILE_RUNS = 20            # profiled runs: as many as were timed, at most this
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")

ProgressFn = Callable[[int, int, str], None]


class BenchmarkError(FaceDistillError):
    """A model cannot be benchmarked as asked (missing file, not ONNX, torch needed but absent)."""


@dataclass
class BenchmarkRow:
    model: str                 # display name (file stem, made unique)
    path: str
    engine: str                # "onnxruntime" | "torch-eager"
    provider: str
    precision: str
    precision_source: str
    size_mb: float
    batch: int
    threads: int
    status: str = "ok"         # ok | skipped | failed
    note: str = ""
    warmup: int = 0
    runs: int = 0
    mean_ms: float = math.nan
    std_ms: float = math.nan
    min_ms: float = math.nan
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    ms_per_image: float = math.nan
    images_per_s: float = math.nan
    outliers: int = 0          # runs slower than OUTLIER_FACTOR x p50
    outlier_threshold_ms: float = math.nan
    peak_rss_mb: float | None = None    # process peak during this configuration
    model_rss_mb: float | None = None   # peak minus the resident memory before the model was loaded
    peak_rss_scope: str = "configuration"
    load_ms: float = math.nan  # session creation / checkpoint load
    profile: str | None = None
    top_ops: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchmarkRow":
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: (math.nan if v is None and k.endswith(("_ms", "_s", "image")) else v)
              for k, v in d.items() if k in known}
        return cls(**kw)


@dataclass
class BenchmarkReport:
    machine: dict[str, Any]
    rows: list[BenchmarkRow]
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    created: str = ""
    facedistill_version: str = __version__
    warnings: list[str] = field(default_factory=list)
    schema: str = REPORT_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "label": self.label, "created": self.created,
                "facedistill_version": self.facedistill_version, "machine": self.machine,
                "settings": self.settings, "warnings": self.warnings,
                "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchmarkReport":
        if d.get("schema") != REPORT_SCHEMA:
            raise BenchmarkError(f"not a facedistill benchmark report (schema {d.get('schema')!r}, "
                                 f"expected {REPORT_SCHEMA!r}); write one with `facedistill benchmark --json`.")
        return cls(machine=d.get("machine", {}), rows=[BenchmarkRow.from_dict(r) for r in d.get("rows", [])],
                   settings=d.get("settings", {}), label=d.get("label", ""), created=d.get("created", ""),
                   facedistill_version=d.get("facedistill_version", ""), warnings=d.get("warnings", []))

    def ok_rows(self) -> list[BenchmarkRow]:
        return [r for r in self.rows if r.status == "ok"]


# --- model entries ----------------------------------------------------------------------------

@dataclass
class ModelEntry:
    path: Path
    kind: str        # "onnx" | "checkpoint"
    name: str = ""


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in CHECKPOINT_SUFFIXES


def resolve_models(models: Iterable[str | os.PathLike], torch_baseline: bool) -> list[ModelEntry]:
    entries: list[ModelEntry] = []
    for m in models:
        p = Path(m)
        if not p.exists():
            raise BenchmarkError(f"{p}: no such file or folder")
        if _is_checkpoint(p):
            if not torch_baseline:
                raise BenchmarkError(
                    f"{p} is a checkpoint / run folder, not an ONNX file. Pass --torch to time it in "
                    "PyTorch eager as a baseline, or export it first (`facedistill export`) and "
                    "benchmark the .onnx file.")
            entries.append(ModelEntry(p, "checkpoint"))
        elif p.is_file() and p.suffix.lower() == ".json":
            raise BenchmarkError(f"{p} is a JSON file, not a model; to compare saved reports use "
                                 "`facedistill benchmark --merge a.json b.json`")
        elif p.is_file():
            entries.append(ModelEntry(p, "onnx"))
        else:
            raise BenchmarkError(f"{p}: not a file")
    if not entries:
        raise BenchmarkError("no models given: pass one or more .onnx files")
    # Unique, short display names: the stem, or parent/stem when stems collide.
    stems = [e.path.stem if e.kind == "onnx" or e.path.is_file() else e.path.name for e in entries]
    for e, stem in zip(entries, stems):
        e.name = stem if stems.count(stem) == 1 else f"{e.path.parent.name}/{stem}"
        if e.kind == "checkpoint":
            e.name += " (torch)"
    return entries


def parse_int_list(text: str | Sequence[int], what: str) -> list[int]:
    """"1,8,32" -> [1, 8, 32]; positive, de-duplicated, order kept."""
    items = text if not isinstance(text, str) else [t for t in text.replace(" ", "").split(",") if t]
    out: list[int] = []
    for t in items:
        try:
            v = int(t)
        except (TypeError, ValueError):
            raise BenchmarkError(f"--{what}: {t!r} is not an integer (expected e.g. 1,8,32)") from None
        if v < 1:
            raise BenchmarkError(f"--{what}: values must be >= 1, got {v}")
        if v not in out:
            out.append(v)
    if not out:
        raise BenchmarkError(f"--{what}: give at least one value")
    return out


# --- timing -----------------------------------------------------------------------------------

def time_runs(fn: Callable[[], Any], warmup: int, runs: int | None, min_time: float | None) -> np.ndarray:
    """Call ``fn`` ``warmup`` times, then time it; returns per-call latencies in ms.

    ``runs`` alone: exactly that many timed calls. ``min_time`` alone: calls until that many seconds
    have passed and at least MIN_RUNS were made. Both: whichever ends later. Neither: DEFAULT_MIN_TIME.
    """
    if runs is None and min_time is None:
        min_time = DEFAULT_MIN_TIME
    want_runs = runs if runs is not None else MIN_RUNS
    for _ in range(max(0, warmup)):
        fn()
    clock = time.perf_counter_ns
    times: list[int] = []
    deadline = clock() + int((min_time or 0.0) * 1e9)
    while len(times) < want_runs or clock() < deadline:
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return np.asarray(times, dtype=np.float64) / 1e6


def latency_stats(times_ms: np.ndarray, batch: int) -> dict[str, Any]:
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    mean = float(times_ms.mean())
    threshold = OUTLIER_FACTOR * float(p50)
    return {
        "runs": int(times_ms.size), "mean_ms": mean,
        "std_ms": float(times_ms.std(ddof=1)) if times_ms.size > 1 else 0.0,
        "min_ms": float(times_ms.min()), "p50_ms": float(p50), "p90_ms": float(p90),
        "p99_ms": float(p99), "max_ms": float(times_ms.max()),
        "ms_per_image": float(p50) / batch, "images_per_s": batch * 1000.0 / mean,
        "outliers": int((times_ms > threshold).sum()), "outlier_threshold_ms": threshold,
    }


# --- onnxruntime ------------------------------------------------------------------------------

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32}


def ort_session(path: str | Path, threads: int, profile_prefix: str | None = None,
                providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An onnxruntime session with ``threads`` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), so, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
        raise BenchmarkError(f"{path}: onnxruntime cannot load this model: {e}") from None


def make_inputs(session, batch: int, input_size: int = DEFAULT_INPUT_SIZE,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the session's input shapes; dynamic batch -> ``batch``.

    Raises BenchmarkError when the model has a fixed batch size other than ``batch``.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        shape = list(inp.shape)
        if shape and isinstance(shape[0], int) and shape[0] != batch:
            raise BenchmarkError(f"the model has a fixed batch size of {shape[0]}; export it with a "
                                 f"dynamic batch axis to time batch {batch}")
        dims = []
        for i, d in enumerate(shape):
            if i == 0:
                dims.append(batch)
            elif isinstance(d, int) and d > 0:
                dims.append(d)
            else:  # symbolic: NCHW face crops -> 3 channels, input_size x input_size
                dims.append(3 if (len(shape) == 4 and i == 1) else input_size)
        dtype = _ORT_DTYPES.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.integer):
            feeds[inp.name] = rng.integers(0, 256 if dtype == np.uint8 else 127, size=dims).astype(dtype)
        else:
            feeds[inp.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def _metadata_input_size(meta: dict[str, str]) -> int:
    v = meta.get("input_size")
    try:
        if v:
            return int(str(v).strip("[]() ").split(",")[0])
    except ValueError:
        pass
    return DEFAULT_INPUT_SIZE


def _memory_start() -> tuple[bool, float | None]:
    gc.collect()
    per_config = sysinfo.reset_peak_rss()
    return per_config, sysinfo.current_rss_mb()


def _memory_end(row: BenchmarkRow, per_config: bool, before: float | None) -> None:
    peak = sysinfo.peak_rss_mb()
    row.peak_rss_mb = None if peak is None else round(peak, 1)
    row.peak_rss_scope = "configuration" if per_config else "process"
    if peak is not None and before is not None and per_config:
        row.model_rss_mb = round(max(0.0, peak - before), 1)


def _apply_stats(row: BenchmarkRow, times: np.ndarray) -> None:
    for k, v in latency_stats(times, row.batch).items():
        setattr(row, k, v)


def _profile_onnx(entry: ModelEntry, row: BenchmarkRow, feeds: dict[str, np.ndarray],
                  profile_dir: Path) -> None:
    """A separate, short profiled session, so profiling overhead never touches the timings."""
    from facedistill.bench.profiling import top_ops

    profile_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{entry.path.stem}_b{row.batch}_t{row.threads}"
    sess = ort_session(entry.path, row.threads, profile_prefix=str(profile_dir / f".{stem}"))
    for _ in range(2):
        sess.run(None, feeds)
    for _ in range(max(3, min(PROFILE_RUNS, row.runs))):
        sess.run(None, feeds)
    raw = Path(sess.end_profiling())
    final = profile_dir / f"{stem}.json"
    shutil.move(str(raw), final)
    row.profile = str(final)
    row.top_ops = top_ops(final, limit=10)


def _bench_onnx(entry: ModelEntry, batches: Sequence[int], threads_list: Sequence[int], warmup: int,
                runs: int | None, min_time: float | None, profile_dir: Path | None,
                tick: Callable[[str], None]) -> list[BenchmarkRow]:
    try:
        summary = summarize_onnx(entry.path)
    except (OnnxParseError, OSError) as e:
        raise BenchmarkError(f"{entry.path}: not a readable ONNX model ({e})") from None
    precision, source = model_precision(summary)
    size = model_size_mb(entry.path, summary)
    input_size = _metadata_input_size(summary.metadata)
    usable = sysinfo.usable_cpus()
    rows: list[BenchmarkRow] = []
    for threads in threads_list:
        for batch in batches:
            row = BenchmarkRow(model=entry.name, path=str(entry.path), engine="onnxruntime",
                               provider="CPUExecutionProvider", precision=precision,
                               precision_source=source, size_mb=round(size, 3), batch=batch,
                               threads=threads, warmup=warmup)
            if threads > usable:
                row.note = f"{threads} threads on {usable} usable CPUs (oversubscribed)"
            per_config, before = _memory_start()
            t0 = time.perf_counter()
            sess = ort_session(entry.path, threads)
            row.load_ms = (time.perf_counter() - t0) * 1000
            try:
                feeds = make_inputs(sess, batch, input_size)
            except BenchmarkError as e:
                row.status, row.note = "skipped", str(e)
                rows.append(row)
                tick(f"{entry.name} b{batch} t{threads}")
                del sess
                continue
            try:
                times = time_runs(lambda s=sess: s.run(None, feeds), warmup, runs, min_time)
                _apply_stats(row, times)
                _memory_end(row, per_config, before)
                del sess
                if profile_dir is not None:
                    _profile_onnx(entry, row, feeds, profile_dir)
            except BenchmarkError:
                raise
            except Exception as e:  # e.g. out of memory at a large batch on a small board
                row.status, row.note = "failed", f"{type(e).__name__}: {e}"
            rows.append(row)
            tick(f"{entry.name} b{batch} t{threads}")
    return rows


# --- PyTorch eager baseline -------------------------------------------------------------------

def _bench_torch(entry: ModelEntry, batches: Sequence[int], threads_list: Sequence[int], warmup: int,
                 runs: int | None, min_time: float | None, tick: Callable[[str], None]) -> list[BenchmarkRow]:
    try:
        import torch
    except ImportError:
        raise BenchmarkError("--torch needs PyTorch, which is not installed here (the slim runtime "
                             "image has none): use the `full` image or drop --torch.") from None
    from facedistill.models.checkpoints import load_backbone, resolve_checkpoint

    ckpt, _ = resolve_checkpoint(entry.path)
    size = ckpt.stat().st_size / 2**20
    old_threads = torch.get_num_threads()
    rows: list[BenchmarkRow] = []
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            for batch in batches:
                row = BenchmarkRow(model=entry.name, path=str(entry.path), engine="torch-eager",
                                   provider=f"torch {torch.__version__} CPU", precision="fp32",
                                   precision_source="PyTorch eager", size_mb=round(size, 3),
                                   batch=batch, threads=threads, warmup=warmup)
                per_config, before = _memory_start()
                t0 = time.perf_counter()
                loaded = load_backbone(entry.path)
                row.load_ms = (time.perf_counter() - t0) * 1000
                model = loaded.model.eval()
                size_px = int(getattr(loaded.preprocessing, "input_size", DEFAULT_INPUT_SIZE))
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(batch, 3, size_px, size_px, generator=gen)
                try:
                    with torch.inference_mode():
                        times = time_runs(lambda m=model: m(x), warmup, runs, min_time)
                    _apply_stats(row, times)
                    _memory_end(row, per_config, before)
                except Exception as e:
                    row.status, row.note = "failed", f"{type(e).__name__}: {e}"
                del model, loaded
                rows.append(row)
                tick(f"{entry.name} b{batch} t{threads}")
    finally:
        torch.set_num_threads(old_threads)
    return rows


# --- public API -------------------------------------------------------------------------------

def benchmark_models(
    models: Sequence[str | os.PathLike],
    batches: Sequence[int] | str = (1,),
    threads: Sequence[int] | str = (1,),
    warmup: int = 5,
    runs: int | None = None,
    min_time: float | None = None,
    profile_dir: str | os.PathLike | None = None,
    torch_baseline: bool = False,
    progress: ProgressFn | None = None,
    label: str | None = None,
) -> BenchmarkReport:
    """Time every model x batch x intra-op thread count; return the rows with the machine info.

    ``models``: .onnx files (onnxruntime, CPU provider); with ``torch_baseline`` also checkpoints or
    run folders, timed in PyTorch eager. ``progress(done, total, label)`` is called after each
    configuration. Per-op profiles (onnxruntime only) go to ``profile_dir`` when given.
    """
    batches = parse_int_list(batches, "batch")
    threads = parse_int_list(threads, "threads")
    if runs is not None and runs < 1:
        raise BenchmarkError("--runs must be >= 1")
    if min_time is not None and min_time < 0:
        raise BenchmarkError("--min-time must be >= 0")
    if warmup < 0:
        raise BenchmarkError("--warmup must be >= 0")
    entries = resolve_models(models, torch_baseline)
    machine = sysinfo.machine_info()  # before the runs: the load average says how busy the box was
    total = len(entries) * len(batches) * len(threads)
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    pdir = Path(profile_dir) if profile_dir is not None else None
    # onnxruntime models first: importing torch for a baseline grows the process by hundreds of MB,
    # which would show up in the ONNX rows' peak RSS. Rows are reported in the order given.
    by_entry: dict[int, list[BenchmarkRow]] = {}
    for i, entry in sorted(enumerate(entries), key=lambda ie: ie[1].kind != "onnx"):
        if entry.kind == "onnx":
            by_entry[i] = _bench_onnx(entry, batches, threads, warmup, runs, min_time, pdir, tick)
        else:
            by_entry[i] = _bench_torch(entry, batches, threads, warmup, runs, min_time, tick)
    rows = [r for i in range(len(entries)) for r in by_entry[i]]
    warnings = [w for w in [sysinfo.contention_warning(machine)] if w]
    if pdir is not None and any(e.kind == "checkpoint" for e in entries):
        warnings.append("per-op profiles are onnxruntime only; PyTorch baselines were not profiled")
    settings = {"batches": batches, "threads": threads, "inter_op_threads": 1, "warmup": warmup,
                "runs": runs, "min_time_s": min_time if (runs is not None or min_time is not None)
                else DEFAULT_MIN_TIME, "outlier_factor": OUTLIER_FACTOR, "input": "random normal, seed 0"}
    return BenchmarkReport(machine=machine, rows=rows, settings=settings,
                           label=label or sysinfo.short_label(machine),
                           created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           warnings=warnings)


def speedups(report: BenchmarkReport) -> dict[int, float]:
    """Row index -> speed relative to the first model at the same batch and threads (p50 ratio)."""
    base: dict[tuple[int, int], float] = {}
    first = report.rows[0].model if report.rows else None
    for r in report.rows:
        if r.model == first and r.status == "ok":
            base[(r.batch, r.threads)] = r.p50_ms
    out: dict[int, float] = {}
    for i, r in enumerate(report.rows):
        b = base.get((r.batch, r.threads))
        if b and r.status == "ok" and r.p50_ms > 0:
            out[i] = b / r.p50_ms
    return out


# --- latency gate -----------------------------------------------------------------------------

def parse_latency_gates(specs: Sequence[str]) -> dict[int, float]:
    """``["15", "32=120"]`` -> {1: 15.0, 32: 120.0}: max p50 ms per batch size (bare number: batch 1)."""
    gates: dict[int, float] = {}
    for spec in specs:
        s = spec.strip().lower()
        batch_s, _, ms_s = s.rpartition("=")
        batch_s = batch_s.lstrip("b")
        try:
            batch = int(batch_s) if batch_s else 1
            ms = float(ms_s.removesuffix("ms"))
        except ValueError:
            raise BenchmarkError(f"--max-latency {spec!r}: expected MS (batch 1) or BATCH=MS, "
                                 "e.g. --max-latency 15 --max-latency 32=200") from None
        if ms <= 0 or batch < 1:
            raise BenchmarkError(f"--max-latency {spec!r}: batch and milliseconds must be positive")
        gates[batch] = ms
    return gates


def check_latency_gates(report: BenchmarkReport, gates: dict[int, float]) -> list[str]:
    """Failures (one line each) of onnxruntime rows whose p50 exceeds the gate for their batch.

    PyTorch baselines are not gated. A gate whose batch was not benchmarked, or a gated
    configuration that failed, is a failure too: a CI gate must never pass by not measuring.
    """
    failures: list[str] = []
    for batch, limit in sorted(gates.items()):
        rows = [r for r in report.rows if r.batch == batch and r.engine != "torch-eager"]
        if not rows:
            failures.append(f"batch {batch} was not benchmarked (gate p50 <= {limit:g} ms); add it to --batch")
        for r in rows:
            if r.status != "ok":
                failures.append(f"{r.model} batch {r.batch} threads {r.threads}: {r.status} ({r.note})")
            elif r.p50_ms > limit:
                failures.append(f"{r.model} batch {r.batch} threads {r.threads}: p50 {r.p50_ms:.2f} ms "
                                f"> {limit:g} ms")
    return failures
