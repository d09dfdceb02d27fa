"""``evaluate``: several models x several pair sets, insightface's numbers, one report.

For every set, the images some pair uses are read once, batch by batch, and every model embeds
each of them once: ``model(x) + model(hflip(x))`` summed raw, then L2-normalised (``flip=False``
drops the flip), kept as float32 (N, D) only. Pair scores are squared L2 distances; accuracy is
insightface's 10-fold protocol (thresholds 0..3.99 step 0.01, contiguous folds), see
:mod:`facedistill.evaluation.protocol`. TAR at fixed FARs, EER and AUC come from the ROC over all
pairs. When the same model is given as a torch checkpoint and as ONNX, the worst (and mean)
cosine between their embeddings of the set's images is reported.

With two rows or more, every row is compared with a reference row on the same pairs (the first
model unless told otherwise): pairs it wins and loses (judged right where the reference is wrong,
and the reverse, each at its own fold thresholds) and a two-sided exact McNemar p; "a tie" where
p > 0.05. Two accuracies on the same pairs are not independent samples: the paired test is the
fair way to say whether a point is real.

The ONNX path needs neither torch nor (unless a model must be repaired) the ``onnx`` package.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np

from facedistill import __version__
from facedistill.errors import DataError, FaceDistillError
from facedistill.evaluation.embedders import embed_images
from facedistill.evaluation.protocol import (
    DEFAULT_FAR_TARGETS,
    FOLD_SCHEMES,
    MIN_PAIRS_PER_FOLD,
    VerificationResult,
    far_key,
    pair_scores,
    paired_comparison,
    verification_metrics,
)
from facedistill.evaluation.model_sources import ModelInfo, OpenedModel, match_parity, model_display_names, open_model
from facedistill.evaluation.pair_sets import PairSet, open_pair_set
from facedistill.utils.embeddings import joint_embedding

__all__ = ["EvaluationReport", "ModelSetResult", "ParityResult", "evaluate", "compare_to_reference",
           "resolve_reference", "TABLE_FARS"]

# FARs shown in the terminal table (the JSON has every target).
TABLE_FARS: tuple[float, ...] = (1e-3, 1e-4)
SCORE_CHUNK = 65536  # pairs scored at a time (bounded float64 temporaries)

ProgressFactory = Callable[[str, int], ContextManager[Callable[[int], None]]]


@dataclass
class ModelSetResult:
    """One model on one set."""

    model: str
    data: str
    metrics: VerificationResult
    info: ModelInfo
    images: int
    seconds: float
    data_spec: str = ""
    # against the reference row on the same pairs (paired_comparison + "reference"); None for the
    # reference itself, and when the set has a single row
    vs_reference: dict[str, Any] | None = None
    is_reference: bool = False

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "model": self.model,
            "data": self.data,
            "model_spec": self.info.spec,  # the model and set exactly as passed to evaluate()
            "data_spec": self.data_spec,
            "pairs": int(m.num_pairs),
            "accuracy": float(m.accuracy),
            "accuracy_std": float(m.accuracy_std),
            "threshold": float(m.threshold),
            "tar_at_far": {k: (None if v is None else float(v)) for k, v in m.tar_at_far.items()},
            "tar_at_far_note": dict(m.tar_at_far_note),
            "eer": float(m.eer),
            "auc": float(m.auc),
            "fold_accuracies": [float(a) for a in m.fold_accuracies],
            "fold_thresholds": [float(t) for t in m.fold_thresholds],
            "nfolds": int(m.nfolds),
            "fold_scheme": m.fold_scheme,
            "fold_positives": [int(x) for x in m.fold_positives],
            "impostor_cosine": float(m.impostor_cosine),
            "genuine_cosine": float(m.genuine_cosine),
            "num_positive": int(m.num_positive),
            "num_negative": int(m.num_negative),
            "images": int(self.images),
            "seconds": round(float(self.seconds), 3),
            "ms_per_image": round(1000.0 * self.seconds / self.images, 3) if self.images else None,
            "kind": self.info.kind,
            "params": self.info.params,
            "size_mb": None if self.info.size_mb is None else round(float(self.info.size_mb), 3),
            "precision": self.info.precision,
            "model_path": self.info.path,
            "is_reference": bool(self.is_reference),
            "vs_reference": None if self.vs_reference is None else dict(self.vs_reference),
        }


@dataclass
class ParityResult:
    """Torch vs ONNX embeddings of the same model on one set's images."""

    torch_model: str
    onnx_model: str
    data: str
    min_cosine: float
    mean_cosine: float
    images: int
    matched_by: str
    accuracy_torch: float
    accuracy_onnx: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "torch_model": self.torch_model, "onnx_model": self.onnx_model, "data": self.data,
            "min_cosine": float(self.min_cosine), "mean_cosine": float(self.mean_cosine), "images": int(self.images),
            "matched_by": self.matched_by, "accuracy_torch": float(self.accuracy_torch),
            "accuracy_onnx": float(self.accuracy_onnx),
            "accuracy_diff": float(self.accuracy_onnx - self.accuracy_torch),
        }


@dataclass
class EvaluationReport:
    """Everything ``evaluate`` measured; ``to_dict()`` is the ``--json`` output."""

    results: list[ModelSetResult]
    models: list[ModelInfo]
    sets: list[dict[str, Any]]
    parity: list[ParityResult] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def result(self, model: str, data: str) -> ModelSetResult:
        for r in self.results:
            if r.model == model and r.data == data:
                return r
        raise KeyError((model, data))

    def worst_parity(self, model: str) -> ParityResult | None:
        """The lowest-cosine parity entry a model takes part in (as torch or ONNX), over all sets."""
        rows = [p for p in self.parity if model in (p.torch_model, p.onnx_model)]
        return min(rows, key=lambda p: p.min_cosine) if rows else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [r.to_dict() for r in self.results],
            "models": [m.to_dict() for m in self.models],
            "sets": list(self.sets),
            "parity": [p.to_dict() for p in self.parity],
            "plots": list(self.plots),
            "notes": list(self.notes),
            "settings": dict(self.settings),
            "seconds": round(float(self.seconds), 3),
            "facedistill_version": __version__,
        }


@contextlib.contextmanager
def _no_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


def _resolve_compare(compare: Sequence[tuple[str, str]], models: Sequence[str],
                     opened: Sequence[OpenedModel]) -> list[tuple[int, int]]:
    def find(spec: str) -> int:
        for i, m in enumerate(models):
            if os.fspath(m) == spec:
                return i
        target = Path(spec).resolve()
        for i, m in enumerate(models):
            if Path(m).resolve() == target:
                return i
        for i, om in enumerate(opened):
            if om.info.name == spec:
                return i
        raise FaceDistillError(f"--compare {spec}: not one of the models given ({', '.join(map(str, models))})")

    out = []
    for a, b in compare:
        i, j = find(a), find(b)
        kinds = {opened[i].info.kind, opened[j].info.kind}
        if kinds != {"torch", "onnx"}:
            raise FaceDistillError(f"--compare {a}={b}: give one torch checkpoint and one ONNX model "
                                   f"(got {opened[i].info.kind} and {opened[j].info.kind})")
        out.append((i, j) if opened[i].info.kind == "torch" else (j, i))
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def evaluate(
    models: Sequence[str | os.PathLike],
    sets: Sequence[str | os.PathLike],
    arch: str | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    bgr: bool | None = None,
    images_dir: str | os.PathLike | None = None,
    flip: bool = True,
    batch_size: int = 64,
    nfolds: int = 10,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    plot_dir: str | os.PathLike | None = None,
    fold_scheme: str = "auto",
    compare: Sequence[tuple[str, str]] = (),
    allow_missing: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] | None = None,
    ensemble: bool = False,
    weights: Sequence[float] | None = None,
    reference: str | int | None = None,
) -> EvaluationReport:
    """Evaluate every model on every pair set with insightface's verification protocol.

    ``models``: run folders, backbone state dicts (``arch`` when it cannot be inferred) or ``.onnx``
    files. ``sets``: packed pair sets, insightface ``.bin`` files, or ``PAIRS.txt[:IMAGES_DIR]``
    (``images_dir`` is the default image folder of pairs files given without one).
    ``mean``/``std``/``bgr``: preprocessing of ONNX models that carry no metadata.
    ``compare``: extra (torch, ONNX) model pairs whose embeddings to compare (matching by ONNX
    metadata or file names happens anyway). ``progress(description, total)`` is a context manager
    yielding ``advance(n)`` (e.g. :func:`facedistill.cli.common.progress_bar`); ``log(msg)`` gets
    notes as they arise. ``threads``: CPU threads for inference (None: the runtimes' defaults).
    ``fold_scheme``: ``auto`` | ``contiguous`` | ``balanced`` | ``source`` (the folds a packed set or
    ``.bin`` came with); see :mod:`facedistill.evaluation.protocol`.
    ``ensemble``: also score the models together: one more row whose embedding is the concatenation
    of each model's L2-normalised embedding times sqrt(w_i / sum w) (``weights``, default all 1), so
    its cosine is the weighted mean of the models' cosines: exactly the target a recipe's ``teachers``
    list distils (:mod:`facedistill.utils.embeddings`).
    ``reference``: the row every other row is compared with on each set, pair by pair
    (:func:`facedistill.evaluation.protocol.paired_comparison`: won / lost, two-sided p, "a tie"
    where p > 0.05): a model as given or as named in the table, its position counting from 1,
    ``"ensemble"``, or ``"best"`` (the most accurate row of each set). Default: the first model.
    """
    start = time.perf_counter()
    models = [os.fspath(m) for m in models]
    sets = [os.fspath(s) for s in sets]
    if not models:
        raise FaceDistillError("no model given: pass at least one run folder, checkpoint or .onnx file")
    if not sets:
        raise FaceDistillError("no pair set given: pass at least one --data SET")
    if batch_size < 1:
        raise FaceDistillError(f"--batch-size must be >= 1, got {batch_size}")
    if nfolds < 2:
        raise FaceDistillError(f"--folds must be >= 2, got {nfolds}")
    if threads is not None and threads < 1:
        raise FaceDistillError(f"--threads must be >= 1, got {threads}")
    if fold_scheme not in FOLD_SCHEMES + ("source",):
        raise FaceDistillError(f"--fold-scheme must be one of {', '.join(FOLD_SCHEMES + ('source',))}, "
                               f"got {fold_scheme!r}")
    if weights is not None:
        if not ensemble:
            raise FaceDistillError("--weights applies to --ensemble; add --ensemble")
        if len(weights) != len(models) or any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise FaceDistillError(f"--weights needs one non-negative weight per model ({len(models)}), not all 0; "
                                   f"got {list(weights)}")
    if ensemble and len(models) < 2:
        raise FaceDistillError("--ensemble needs at least two models")
    reference_row = resolve_reference(reference, models, ensemble)
    progress = progress or _no_progress
    ens_weights = [float(w) for w in (weights or [1.0] * len(models))] if ensemble else None
    with _torch_threads(threads, models):
        return _evaluate(models, sets, arch=arch, mean=mean, std=std, bgr=bgr, images_dir=images_dir, flip=flip,
                         batch_size=batch_size, nfolds=nfolds, far_targets=far_targets, plot_dir=plot_dir,
                         fold_scheme=fold_scheme, compare=compare, allow_missing=allow_missing, device=device, threads=threads,
                         progress=progress, log=log, start=start, ens_weights=ens_weights,
                         reference_row=reference_row)


def resolve_reference(reference: str | int | None, models: Sequence[str], ensemble: bool) -> int | str:
    """``reference`` as a row index (0-based: the models in order, then the ensemble) or ``"best"``."""
    rows = len(models) + (1 if ensemble else 0)
    if reference is None:
        return 0
    text = str(reference).strip()
    if text == "best":
        return "best"
    if text == "ensemble":
        if not ensemble:
            raise FaceDistillError("--reference ensemble: there is no ensemble row; add --ensemble or name a model")
        return rows - 1
    if isinstance(reference, int) or text.isdigit():
        k = int(text)
        if not 1 <= k <= rows:
            raise FaceDistillError(f"--reference {text}: there are {rows} row(s); give a position 1..{rows} (1 = the "
                                   "first model), a model as given or as named in the table, 'ensemble' or 'best'")
        return k - 1
    names = model_display_names(list(models))
    for i, (spec, name) in enumerate(zip(models, names)):
        if text in (spec, name):
            return i
    target = Path(text).resolve()
    for i, spec in enumerate(models):
        if Path(spec).resolve() == target:
            return i
    raise FaceDistillError(f"--reference {text}: not one of the models ({', '.join(names)}); give a model as given "
                           f"or as named in the table, a position 1..{rows}, 'ensemble' or 'best'")


def compare_to_reference(results: Sequence[ModelSetResult], reference_row: int | str) -> None:
    """Fill ``vs_reference`` / ``is_reference`` of one set's rows (in row order)."""
    if len(results) < 2:
        return
    if reference_row == "best":
        ref = max(range(len(results)), key=lambda i: (results[i].metrics.accuracy, -i))
        how = "best"
    else:
        ref = int(reference_row)
        how = "given"
    base = results[ref]
    base.is_reference = True
    for i, r in enumerate(results):
        if i != ref:
            r.vs_reference = {"reference": base.model, "chosen": how,
                              **paired_comparison(base.metrics.pair_correct, r.metrics.pair_correct)}


@contextlib.contextmanager
def _torch_threads(threads: int | None, models: Sequence[str]) -> Iterator[None]:
    """Set torch's intra-op threads for the run (only when asked and a torch model is evaluated)."""
    from facedistill.evaluation.model_sources import is_onnx_path

    if threads is None or all(is_onnx_path(m) for m in models):
        yield
        return
    try:
        import torch
    except ImportError:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _evaluate(models: list[str], sets: list[str], *, arch: str | None, mean: Any, std: Any, bgr: bool | None,
              images_dir: Any, flip: bool, batch_size: int, nfolds: int, far_targets: Sequence[float],
              plot_dir: Any, fold_scheme: str, compare: Sequence[tuple[str, str]], allow_missing: bool, device: str,
              threads: int | None, progress: ProgressFactory, log: Callable[[str], None] | None,
              start: float, ens_weights: list[float] | None = None,
              reference_row: int | str = 0) -> EvaluationReport:
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        if log is not None:
            log(msg)

    # 1. pair sets: cheap checks first (fold sizes), before any model runs
    opened_sets: list[PairSet] = []
    for spec in sets:
        ps = open_pair_set(spec, images_dir=images_dir, allow_missing=allow_missing)
        ps.spec = str(spec)
        need = MIN_PAIRS_PER_FOLD * nfolds
        if len(ps.pairs) < need:
            raise DataError(
                f"{ps.path}: {len(ps.pairs)} pairs is too few for {nfolds}-fold verification: each fold needs at "
                f"least {MIN_PAIRS_PER_FOLD} pairs ({need} in all).\n  fix: use a larger pair set (LFW, CFP-FP, "
                f"AgeDB-30 hold 6,000-7,000 pairs; `facedistill prepare synthetic --val-pairs 1200`), or fewer folds "
                f"(--folds).")
        same = ps.pairs[:, 2].astype(bool)
        if same.all() or not same.any():
            raise DataError(f"{ps.path}: verification needs both same and different pairs; this set has "
                            f"{int(same.sum())} same and {int((~same).sum())} different")
        for msg in ps.notes:
            note(msg)
        opened_sets.append(ps)
    set_names = model_display_names([s.path for s in opened_sets])
    if len(set(s.name for s in opened_sets)) == len(opened_sets):
        set_names = [s.name for s in opened_sets]
    for ps, nm in zip(opened_sets, set_names):
        ps.name = nm

    # 2. models (each checked with a probe batch)
    names = model_display_names(models)
    opened: list[OpenedModel] = []
    for spec, nm in zip(models, names):
        om = open_model(spec, arch=arch, mean=mean, std=std, bgr=bgr, batch_size=batch_size, device=device, name=nm,
                        threads=threads)
        om.info.spec = str(spec)
        for msg in om.info.notes:
            note(msg)
        opened.append(om)
    for om in opened:
        for ps in opened_sets:
            if ps.image_size is not None and ps.image_size != om.info.input_size:
                raise FaceDistillError(
                    f"{om.info.path}: the model takes {om.info.input_size}x{om.info.input_size} input but the pair set "
                    f"{ps.path} holds {ps.image_size}x{ps.image_size} aligned faces.\n  fix: evaluate a model exported "
                    f"for {ps.image_size}x{ps.image_size} input (`facedistill export` writes 112x112, the insightface "
                    f"standard), or a pair set aligned at {om.info.input_size}x{om.info.input_size}.")
    matches = match_parity(opened, _resolve_compare(compare, models, opened))

    plot_path = Path(plot_dir) if plot_dir is not None else None
    results: list[ModelSetResult] = []
    parity: list[ParityResult] = []
    plots: list[str] = []
    for ps in opened_sets:
        set_results, set_parity, set_plots = _evaluate_set(
            ps, opened, matches, flip=flip, batch_size=batch_size, nfolds=nfolds, far_targets=far_targets,
            plot_dir=plot_path, progress=progress, folds=_fold_spec(ps, fold_scheme), ens_weights=ens_weights)
        compare_to_reference(set_results, reference_row)
        results.extend(set_results)
        parity.extend(set_parity)
        plots.extend(set_plots)

    settings = {
        "flip": bool(flip), "nfolds": int(nfolds), "fold_scheme": fold_scheme, "batch_size": int(batch_size), "device": device,
        "threads": threads,
        "score": "squared L2 distance of L2-normalised embeddings",
        "thresholds": "0..3.99 step 0.01", "far_targets": [far_key(f) for f in far_targets],
        "embedding": ("model(x) + model(hflip(x)), then L2-normalised" if flip else "model(x), L2-normalised"),
    }
    infos = [om.info for om in opened]
    if ens_weights is not None:
        infos.append(_ensemble_info(opened, ens_weights))
    settings["reference"] = "best" if reference_row == "best" else infos[int(reference_row)].name
    return EvaluationReport(results=results, models=infos,
                            sets=[ps.to_dict() for ps in opened_sets], parity=parity, plots=plots, notes=notes,
                            settings=settings, seconds=time.perf_counter() - start)


def _evaluate_set(
    ps: PairSet, opened: Sequence[OpenedModel], matches: Sequence[tuple[int, int, str]], flip: bool,
    batch_size: int, nfolds: int, far_targets: Sequence[float], plot_dir: Path | None, progress: ProgressFactory,
    folds: str | np.ndarray = "auto", ens_weights: list[float] | None = None,
) -> tuple[list[ModelSetResult], list[ParityResult], list[str]]:
    used = ps.used_images()
    n = len(used)
    chunk = max(256, batch_size)
    embeddings: list[np.ndarray | None] = [None] * len(opened)
    seconds = [0.0] * len(opened)
    with progress(f"{ps.name}: embedding {n} images x {len(opened)} model(s)", n * len(opened)) as advance:
        for lo in range(0, n, chunk):
            idx = used[lo:lo + chunk]
            images = ps.images(idx)  # read/decoded once for all models
            if images.ndim != 4 or images.shape[1:] != (images.shape[1], images.shape[1], 3):
                raise DataError(f"{ps.path}: expected square RGB images, got {images.shape[1:]} at "
                                f"{ps.image_name(int(idx[0]))}")
            for k, om in enumerate(opened):
                t0 = time.perf_counter()
                try:
                    emb = embed_images(om.embedder, images, flip=flip, batch_size=batch_size)
                except FaceDistillError as e:
                    raise type(e)(f"{om.info.path} on {ps.path}: {e}") from e
                seconds[k] += time.perf_counter() - t0
                if not np.isfinite(emb).all():
                    bad = int(idx[int(np.nonzero(~np.isfinite(emb).all(axis=1))[0][0])])
                    raise FaceDistillError(f"{om.info.path}: non-finite embedding for {ps.image_name(bad)} of "
                                           f"{ps.path}; the model is broken (or fp16 overflow: evaluate the fp32 "
                                           "export)")
                if embeddings[k] is None:
                    embeddings[k] = np.empty((n, emb.shape[1]), dtype=np.float32)
                embeddings[k][lo:lo + len(idx)] = emb
                advance(len(idx))

    rows_a = np.searchsorted(used, ps.pairs[:, 0])
    rows_b = np.searchsorted(used, ps.pairs[:, 1])
    same = ps.pairs[:, 2].astype(bool)
    rows: list[tuple[ModelInfo, np.ndarray, float]] = [
        (om.info, embeddings[k], seconds[k]) for k, om in enumerate(opened)]  # type: ignore[misc]
    if ens_weights is not None:
        rows.append((_ensemble_info(opened, ens_weights),
                     joint_embedding([e for _, e, _ in rows], ens_weights), float(sum(seconds))))
    results: list[ModelSetResult] = []
    for info, emb, secs in rows:
        assert emb is not None
        scores = np.empty(len(rows_a), dtype=np.float64)
        for lo in range(0, len(rows_a), SCORE_CHUNK):
            sl = slice(lo, lo + SCORE_CHUNK)
            scores[sl] = pair_scores(emb[rows_a[sl]], emb[rows_b[sl]])
        try:
            metrics = verification_metrics(scores, same, nfolds=nfolds, far_targets=far_targets, folds=folds)
        except DataError as e:
            raise DataError(f"{ps.path}: {e}") from e
        results.append(ModelSetResult(model=info.name, data=ps.name, metrics=metrics, info=info, images=n,
                                      seconds=secs, data_spec=ps.spec))

    parity: list[ParityResult] = []
    for t, o, how in matches:
        et, eo = embeddings[t], embeddings[o]
        assert et is not None and eo is not None
        if et.shape != eo.shape:
            parity.append(ParityResult(opened[t].info.name, opened[o].info.name, ps.name, float("nan"),
                                       float("nan"), n, how + f" (embedding sizes differ: {et.shape[1]} vs "
                                       f"{eo.shape[1]})", results[t].metrics.accuracy, results[o].metrics.accuracy))
            continue
        cos = np.einsum("ij,ij->i", et.astype(np.float64), eo.astype(np.float64))
        parity.append(ParityResult(
            torch_model=opened[t].info.name, onnx_model=opened[o].info.name, data=ps.name,
            min_cosine=float(cos.min()), mean_cosine=float(cos.mean()), images=n, matched_by=how,
            accuracy_torch=results[t].metrics.accuracy, accuracy_onnx=results[o].metrics.accuracy))

    plots: list[str] = []
    if plot_dir is not None:
        plots = _plot_set(ps, results, plot_dir)
    del embeddings
    return results, parity, plots


def _ensemble_info(opened: Sequence[OpenedModel], weights: Sequence[float]) -> ModelInfo:
    parts = [f"{om.info.name}" + ("" if w == 1 else f"*{w:g}") for om, w in zip(opened, weights)]
    return ModelInfo(name="ensemble(" + " + ".join(parts) + ")", path="", kind="ensemble",
                     params=sum(om.info.params or 0 for om in opened) or None,
                     size_mb=sum(om.info.size_mb or 0 for om in opened) or None,
                     notes=[f"concatenated L2-normalised embeddings scaled by sqrt(w / sum w), weights {list(weights)}"])


def _fold_spec(ps: PairSet, scheme: str) -> str | np.ndarray:
    """``scheme``, or for ``source`` the per-pair fold ids the set came with."""
    if scheme != "source":
        return scheme
    from facedistill.data.pairs import source_fold_ids

    if ps.kind == "bin":  # insightface's own folds: 10 consecutive blocks
        n = len(ps.pairs)
        return np.arange(n) // max(n // 10, 1) if n % 10 == 0 else np.zeros(n, dtype=np.int64)
    ids = source_fold_ids(Path(ps.path)) if ps.kind == "packed" else None
    if ids is None or len(ids) != len(ps.pairs):
        raise DataError(f"{ps.path}: --fold-scheme source needs the folds the pairs came from; this set does not "
                        "record them. Pack it with `facedistill prepare pairs` (which stores them), or use "
                        "--fold-scheme balanced.")
    return ids


def _plot_set(ps: PairSet, results: Sequence[ModelSetResult], plot_dir: Path) -> list[str]:
    from facedistill.evaluation.plots import plot_roc, plot_score_histogram

    out: list[str] = []
    curves = {r.model: (r.metrics.far, r.metrics.tar) for r in results}
    path = plot_roc(curves, f"ROC on {ps.name} ({results[0].metrics.num_pairs} pairs)",
                    plot_dir / f"roc_{_safe(ps.name)}.png",
                    accuracies={r.model: r.metrics.accuracy for r in results},
                    aucs={r.model: r.metrics.auc for r in results})
    out.append(str(path))
    for r in results:
        m = r.metrics
        title = (f"{r.model} on {ps.name}: acc {100 * m.accuracy:.2f}% ± {100 * m.accuracy_std:.2f}, "
                 f"threshold {m.threshold:.3f}")
        path = plot_score_histogram(m.scores, m.same, title, plot_dir / f"hist_{_safe(r.model)}__{_safe(ps.name)}.png",
                                    threshold=m.threshold)
        out.append(str(path))
    return out


def format_accuracy(acc: float, std: float) -> str:
    """``0.99417, 0.0035`` -> ``"99.42 ± 0.35"`` (percent)."""
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return "-"
    return f"{100 * acc:.2f} ± {100 * std:.2f}"
