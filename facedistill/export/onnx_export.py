"""``export_model``: a trained backbone -> ONNX files that prove what they compute.

What one call does (every step is a gate; a failing gate raises :class:`ExportGateError`, which
carries the report, and leaves nothing under that file's final name):

1. load the backbone (run folder or state dict), check the output folder is writable and the opset
   is one the installed torch/onnx/onnxruntime can produce;
2. fp32: ``torch.onnx.export`` with an input named ``input`` (N x 3 x S x S) and an output named
   ``embedding``, a dynamic batch axis (or a fixed one), then onnxsim (keeping the batch axis);
   the facedistill metadata (:mod:`facedistill.export.metadata`) goes into the file;
3. parity: PyTorch and onnxruntime embeddings of real face images (the verify set, the calibration
   set, or synthetic faces) must agree, worst per-image cosine >= 0.9999; otherwise the first
   diverging node is located (:func:`facedistill.export.parity.locate_divergence`) and named in the
   error; a dynamic batch is run at batch 1 and 7 to prove the axis really is dynamic;
4. fp16 (``fp16=True``): float16 weights and compute, float32 input and output
   (onnxruntime's own float16 converter, ``keep_io_types``), gated on its cosine to fp32;
5. int8 (``int8=True``): :func:`facedistill.export.quantize.quantize_int8`, gated on the mean per-image
   cosine to fp32 (default >= 0.99) and, with ``verify=`` a pair set, on the verification accuracy
   drop against fp32 (default <= 0.5 points);
6. a quick batch-1 onnxruntime latency for each file, and the report.

The fp32 model goes to ``out``; the fp16 and int8 models go beside it as ``<stem>.fp16.onnx`` and
``<stem>.int8.onnx``. Every file is written under a temporary name in the same folder, checked by
loading it back (:func:`facedistill.export.metadata.check_onnx`), and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import ExportError, FaceDistillError
from facedistill.export.metadata import INPUT_NAME, OUTPUT_NAME, build_metadata, check_onnx, set_metadata
from facedistill.export.parity import (ParityResult, compare_embeddings, locate_divergence, ort_session,
                                       run_onnx, run_torch)
from facedistill.export.quantize import MAX_INT8_OPSET, MIN_INT8_OPSET, Int8Options, quantize_int8

__all__ = [
    "DEFAULT_OPSET",
    "ArtifactReport",
    "ExportGateError",
    "ExportReport",
    "export_model",
    "sibling_path",
    "torch_to_onnx",
]

DEFAULT_OPSET = 17
MIN_OPSET = 11
FP32_MIN_COSINE = 0.9999
FP16_MIN_COSINE = 0.999
INT8_MIN_MEAN_COSINE = 0.99
INT8_MAX_ACCURACY_DROP = 0.5  # percentage points
# ... and only when the drop is real: a one-sided paired (McNemar) test over the verify pairs must
# give p < this. On 600 pairs a 0.5-point drop is 3 pairs, which a coin produces as often
# (docs/deploy.md section 6, "the accuracy part of the gate"); 1.0 restores the bare threshold.
INT8_DROP_ALPHA = 0.05
DEFAULT_CALIB_IMAGES = 300
DEFAULT_PARITY_IMAGES = 64
BATCH_CHECK = (1, 7)

Progress = Callable[[str], None]


class ExportGateError(ExportError):
    """An export gate failed; ``report`` holds everything measured up to the failure."""

    def __init__(self, message: str, report: "ExportReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ArtifactReport:
    """One written (or rejected) model file."""

    precision: str
    path: str
    written: bool
    size_bytes: int = 0
    reference: str = ""  # what the cosines compare against: "torch" or "fp32"
    cosine_worst: float | None = None
    cosine_mean: float | None = None
    cosine_images: int = 0
    gate: str = ""
    passed: bool = False
    accuracy: float | None = None  # verification accuracy in percent, when verified
    latency_ms_b1: float | None = None
    latency_threads: int | None = None
    ops: dict[str, int] = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_mb"] = round(self.size_mb, 3)
        return d


@dataclass
class ExportReport:
    """Everything ``export_model`` measured; ``to_dict()`` is what ``--json`` writes."""

    source: str
    arch: str
    embedding_size: int
    opset: int  # the opset written
    batch: str
    simplified: bool
    preprocessing: dict[str, Any]
    source_opset: int | None = None  # an ONNX source's own opset, when it was converted on the way
    artifacts: list[ArtifactReport] = field(default_factory=list)
    parity_source: str = ""
    calibration: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    batch_check: list[int] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    divergence: dict[str, Any] | None = None
    qat: dict[str, Any] | None = None  # facedistill.export.qat.QATResult, when --qat-steps was used
    passed: bool = False
    failure: str | None = None
    seconds: float = 0.0

    def artifact(self, precision: str) -> ArtifactReport | None:
        return next((a for a in self.artifacts if a.precision == precision), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifacts"] = [a.to_dict() for a in self.artifacts]
        return d


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def sibling_path(out: str | os.PathLike, precision: str) -> Path:
    """``student.onnx`` -> ``student.int8.onnx`` / ``student.fp16.onnx``."""
    out = Path(out)
    suffix = out.suffix or ".onnx"
    return out.with_name(f"{out.stem if out.suffix else out.name}.{precision}{suffix}")


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise ExportError(f"cannot write into {folder}: a file of that name is in the way") from e
    except OSError as e:
        raise ExportError(f"cannot create the output folder {folder}: {e.strerror or e}") from e
    if not folder.is_dir():
        raise ExportError(f"cannot write into {folder}: it is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".facedistill-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExportError(f"the output folder {folder} is not writable ({e.strerror or e}); "
                          "choose another --out") from e


def _write_error(path: Path, e: OSError) -> ExportError:
    if e.errno == errno.ENOSPC:
        return ExportError(f"no space left on the device while writing {path}; free some space and export "
                           "again (nothing was left under that name)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(f"cannot write {path}: {e.strerror}; choose another --out")
    return ExportError(f"cannot write {path}: {e.strerror or e}")


def _write_model_file(model: Any, path: Path) -> None:
    data = model.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final``, renamed onto it only when the block succeeds."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as e:
        _unlink(tmp)
        raise _write_error(final, e) from e
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _opset_of(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def check_opset(opset: int, int8: bool) -> None:
    """Refuse, before any work, an opset the installed packages cannot produce or quantize."""
    import onnx
    import onnxruntime as ort

    try:
        from torch.onnx import _constants as c
        torch_max = int(getattr(c, "ONNX_MAX_OPSET", 20))
    except Exception:  # private module: be lenient
        torch_max = 20
    onnx_max = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old; use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    if opset > onnx_max:
        raise ExportError(f"--opset {opset}: the installed onnx {onnx.__version__} can write opsets up to "
                          f"{onnx_max}; use --opset {min(onnx_max, DEFAULT_OPSET)} or upgrade onnx")
    if opset > torch_max:
        import torch
        raise ExportError(f"--opset {opset}: torch {torch.__version__}'s ONNX exporter goes up to opset "
                          f"{torch_max}; use a lower --opset")
    if int8 and opset > MAX_INT8_OPSET:
        raise ExportError(f"--int8 needs --opset <= {MAX_INT8_OPSET} (onnxruntime {ort.__version__}'s static "
                          f"quantizer); got {opset}")
    if int8 and opset < MIN_INT8_OPSET:
        raise ExportError(f"--int8 needs --opset >= {MIN_INT8_OPSET} (per-channel DequantizeLinear takes an axis "
                          f"from opset {MIN_INT8_OPSET} on); got {opset}")


# ----------------------------------------------------------------------------------------------
# fp32 export
# ----------------------------------------------------------------------------------------------
def torch_to_onnx(model: Any, opset: int = DEFAULT_OPSET, batch: str | int = "dynamic", input_size: int = 112,
                  simplify: bool = True, notes: list[str] | None = None) -> Any:
    """Export ``model`` (eval mode, CPU) to an in-memory ``onnx.ModelProto``.

    Input ``input`` (N x 3 x S x S, N symbolic ``batch`` unless ``batch`` is an int), output
    ``embedding``. Opsets up to 20 use the TorchScript exporter (fast, exact, all opsets >= 11);
    newer ones the torch.export-based exporter. onnxsim runs unless ``simplify`` is False; if it fails
    or loses the dynamic batch axis, the unsimplified graph is kept and a note says so.
    """
    import onnx
    import torch

    notes = notes if notes is not None else []
    dynamic = batch == "dynamic"
    if not dynamic:
        try:
            batch = int(batch)
        except (TypeError, ValueError):
            raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}") from None
        if batch < 1:
            raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {batch}")
    example = torch.zeros((2 if dynamic else int(batch), 3, input_size, input_size), dtype=torch.float32)
    model = model.eval()
    with tempfile.TemporaryDirectory(prefix="facedistill-export-") as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        _torch_export(model, example, raw, opset, dynamic)
        proto = onnx.load(raw)
    got = _opset_of(proto)
    if got != opset:
        raise ExportError(f"asked for opset {opset} but the exporter wrote opset {got}; pick another --opset")
    proto.producer_name = "facedistill"
    if simplify:
        proto = _simplify(proto, dynamic, input_size, notes)
    _check_io(proto, dynamic, batch)
    return proto


def _torch_export(model: Any, example: Any, path: str, opset: int, dynamic: bool) -> None:
    import torch

    use_dynamo = opset > 20
    sink = io.StringIO()
    for attempt in ("torchscript", "dynamo") if not use_dynamo else ("dynamo",):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
                warnings.simplefilter("ignore")
                if attempt == "torchscript":
                    torch.onnx.export(
                        model, (example,), path, dynamo=False, input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=True,
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None,
                    )
                else:
                    kwargs: dict[str, Any] = {}
                    if dynamic:
                        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
                    torch.onnx.export(model, (example,), path, dynamo=True, input_names=[INPUT_NAME],
                                      output_names=[OUTPUT_NAME], opset_version=opset, external_data=False,
                                      verbose=False, **kwargs)
            return
        except Exception as e:
            if attempt == "torchscript" and _legacy_unavailable(e):
                continue  # a torch without the TorchScript exporter: try torch.export
            raise ExportError(f"torch.onnx.export failed at opset {opset} ({attempt} exporter): "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e


def _legacy_unavailable(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, (NotImplementedError, AttributeError, ImportError)) or "dynamo=false" in text or \
        "torchscript" in text and "removed" in text


def _simplify(proto: Any, dynamic: bool, input_size: int, notes: list[str]) -> Any:
    try:
        import onnxsim
    except ImportError:
        notes.append("onnxsim is not installed: the graph was not simplified")
        return proto
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            kwargs: dict[str, Any] = {}
            if dynamic:
                kwargs["test_input_shapes"] = {INPUT_NAME: [2, 3, input_size, input_size]}
            simplified, ok = onnxsim.simplify(proto, **kwargs)
    except Exception as e:  # onnxsim raises plain RuntimeErrors from C++
        notes.append(f"onnxsim failed ({type(e).__name__}: {str(e).strip()[:200]}); kept the unsimplified graph")
        return proto
    if not ok:
        notes.append("onnxsim's own check failed; kept the unsimplified graph")
        return proto
    if dynamic and not _batch_is_dynamic(simplified):
        notes.append("onnxsim fixed the batch axis; kept the unsimplified graph to keep it dynamic")
        return proto
    return simplified


def _batch_is_dynamic(proto: Any) -> bool:
    inits = {t.name for t in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    d_in = inp.type.tensor_type.shape.dim[0]
    d_out = proto.graph.output[0].type.tensor_type.shape.dim
    return not d_in.HasField("dim_value") and (len(d_out) == 0 or not d_out[0].HasField("dim_value"))


def _check_io(proto: Any, dynamic: bool, batch: Any) -> None:
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise ExportError(f"the exported graph has inputs {[i.name for i in inputs]} and outputs "
                          f"{[o.name for o in proto.graph.output]}; expected one input {INPUT_NAME!r} and one "
                          f"output {OUTPUT_NAME!r} (does the model's forward return a single tensor?)")
    if dynamic and not _batch_is_dynamic(proto):
        raise ExportError("the exported graph has a fixed batch axis although a dynamic one was asked for")


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
@dataclass
class _Images:
    calib: np.ndarray | None  # uint8 NHWC
    calib_source: str
    parity: np.ndarray
    parity_source: str
    pairs_set: Any = None  # PackedDataset with pairs, for verification
    fp32_verified: Any = None  # (accuracy dict, per-pair judgements) of the fp32 file, measured once


def _open_set(path: str | os.PathLike, flag: str) -> Any:
    from facedistill.data.packed import PackedDataset

    ds = PackedDataset(path)
    if len(ds) == 0:
        raise ExportError(f"{flag} {path}: the set holds no images")
    return ds


def _synthetic(n: int, first_identity: int, seed: int) -> np.ndarray:
    from facedistill.data.synthetic import render_identities

    per = 4
    ids = range(first_identity, first_identity + max(1, -(-n // per)))
    images, _ = render_identities(ids, per, seed=seed)
    return images[:n]


def spread_over_identities(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` image indices drawn across identities (sorted): identities in random order, one image
    of each per round, so 300 calibration images from a set of 1,000 identities come from 300
    identities instead of the few with the most images. Unknown labels (-1) count as one identity
    per image."""
    labels = np.asarray(labels).astype(np.int64)
    n = min(int(n), len(labels))
    if n <= 0:
        return np.zeros(0, np.int64)
    keys = np.where(labels >= 0, labels, -1 - np.arange(len(labels)))  # -1 labels: their own identity
    order = rng.permutation(len(labels))
    # rank of each image inside its identity (random order), then take ranks 0, 1, ... across identities
    perm_keys = keys[order]
    sort = np.argsort(perm_keys, kind="stable")
    sorted_keys = perm_keys[sort]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
    rank_sorted = np.arange(len(sorted_keys)) - np.repeat(first, np.diff(np.r_[first, len(sorted_keys)]))
    rank = np.empty(len(order), np.int64)
    rank[sort] = rank_sorted
    ident_order = {k: i for i, k in enumerate(rng.permutation(np.unique(keys)))}
    tiebreak = np.array([ident_order[k] for k in perm_keys])
    pick = np.lexsort((tiebreak, rank))[:n]
    return np.sort(order[pick])


def _gather_images(calib: str | os.PathLike | None, verify: str | os.PathLike | None, int8: bool,
                   calib_images: int, parity_images: int, seed: int, notes: list[str]) -> _Images:
    rng = np.random.default_rng(seed)
    pairs_set = None
    if verify is not None:
        pairs_set = _open_set(verify, "--verify")
        if pairs_set.pairs is None or len(pairs_set.pairs) == 0:
            raise ExportError(f"--verify {verify}: not a pair set (it has no pairs.npy); prepare one with "
                              "`facedistill prepare` (e.g. the val/ folder of `prepare synthetic`)")
    calib_arr = None
    calib_source = ""
    calib_idx: np.ndarray | None = None
    calib_ds = None
    if int8:
        if calib is not None:
            calib_ds = _open_set(calib, "--calib")
            n = min(calib_images, len(calib_ds))
            calib_idx = spread_over_identities(np.asarray(calib_ds.labels), n, rng)
            calib_arr = calib_ds.images(calib_idx)
            calib_source = str(calib)
            if n < calib_images:
                notes.append(f"--calib {calib} holds {len(calib_ds)} images; calibrated on all of them "
                             f"(asked for {calib_images})")
        else:
            calib_arr = _synthetic(calib_images, 50_000, seed)
            calib_source = "synthetic faces"
            notes.append("no --calib set: int8 calibrated on synthetic faces; calibrate on images like the "
                         "deployment's (e.g. a prepared train set) for the best int8 accuracy")
    # parity images: from the verify set, else the calibration set's other images, else synthetic
    if pairs_set is not None:
        n = min(parity_images, len(pairs_set))
        idx = np.sort(rng.choice(len(pairs_set), size=n, replace=False))
        parity, parity_source = pairs_set.images(idx), f"{verify} ({n} images)"
    elif calib_ds is not None and len(calib_ds) - len(calib_idx) >= min(parity_images, 16):
        rest = np.setdiff1d(np.arange(len(calib_ds)), calib_idx)
        idx = np.sort(rng.choice(rest, size=min(parity_images, len(rest)), replace=False))
        parity, parity_source = calib_ds.images(idx), f"{calib} (held out from calibration, {len(idx)} images)"
    elif calib_ds is not None:
        idx = np.sort(rng.choice(len(calib_ds), size=min(parity_images, len(calib_ds)), replace=False))
        parity, parity_source = calib_ds.images(idx), f"{calib} ({len(idx)} images, also used for calibration)"
    else:
        parity, parity_source = _synthetic(parity_images, 60_000, seed + 1), f"synthetic faces ({parity_images})"
    return _Images(calib=calib_arr, calib_source=calib_source, parity=parity, parity_source=parity_source,
                   pairs_set=pairs_set)


# ----------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------
def quick_latency_ms(path: str | os.PathLike, input_size: int = 112, threads: int = 1, warmup: int = 3,
                     max_runs: int = 50, max_seconds: float = 1.5) -> float:
    """Median batch-1 latency (ms) of an onnxruntime CPU session: a quick figure, not a benchmark.
    A fixed-batch model is timed at its own batch size."""
    sess = ort_session(path, threads=threads)
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    n = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 1
    x = np.random.default_rng(0).standard_normal((n, 3, input_size, input_size)).astype(dtype)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (time.perf_counter() - start < max_seconds or len(times) < 5):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def verification_accuracy(path: str | os.PathLike, pairs_set: Any, pre: Preprocessing,
                          batch: int = 64) -> dict[str, Any]:
    """insightface-style 10-fold accuracy (percent) of an ONNX model on a prepared pair set (flip on)."""
    return verify_pairs(path, pairs_set, pre, batch)[0]


def verify_pairs(path: str | os.PathLike, pairs_set: Any, pre: Preprocessing,
                 batch: int = 64) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`verification_accuracy` and, per pair, whether the model judged it right (for paired tests)."""
    from facedistill.evaluation.embedders import OnnxEmbedder, embed_images
    from facedistill.evaluation.protocol import pair_scores, verification_metrics

    embedder = OnnxEmbedder(str(path), preprocess=pre, batch_size=batch)
    pairs = np.asarray(pairs_set.pairs)
    used = np.unique(pairs[:, :2])
    got = embed_images(embedder, pairs_set.images(used), flip=True)
    emb = np.zeros((len(pairs_set), got.shape[1]), np.float32)
    emb[used] = got
    scores = pair_scores(emb[pairs[:, 0]], emb[pairs[:, 1]])
    nfolds = 10 if len(pairs) >= 100 else 1
    res = verification_metrics(scores, pairs[:, 2].astype(bool), nfolds=nfolds)
    return ({"accuracy": 100.0 * float(res.accuracy), "accuracy_std": 100.0 * float(res.accuracy_std),
             "auc": float(res.auc), "eer": float(res.eer), "pairs": int(len(pairs)), "nfolds": nfolds},
            res.pair_correct)


# ----------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------
def export_model(
    model_path: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    arch: str | None = None,
    embedding_size: int | None = None,
    int8: bool = False,
    calib: str | os.PathLike | None = None,
    calib_images: int = DEFAULT_CALIB_IMAGES,
    int8_options: Int8Options | None = None,
    fp16: bool = False,
    fp32_prelu: str = "keep",
    opset: int | None = None,
    batch: str | int = "dynamic",
    simplify: bool = True,
    verify: str | os.PathLike | None = None,
    parity_images: int = DEFAULT_PARITY_IMAGES,
    fp32_min_cosine: float = FP32_MIN_COSINE,
    fp16_min_cosine: float = FP16_MIN_COSINE,
    int8_min_cosine: float = INT8_MIN_MEAN_COSINE,
    int8_max_drop: float = INT8_MAX_ACCURACY_DROP,
    int8_drop_alpha: float = INT8_DROP_ALPHA,
    latency: bool = True,
    latency_threads: int = 1,
    seed: int = 0,
    keep_debug: bool = True,
    keep_rejected: bool = False,
    int8_mixed: bool = True,
    mean: Any = None,
    std: Any = None,
    channel_order: str | None = None,
    loaded: Any = None,
    qat: Any = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Export a backbone to ONNX (fp32, optionally fp16 and int8), proving each file on real images.

    ``model_path``: a run folder (``runs/<name>/``) or a backbone state dict (``arch`` then names the
    architecture when the keys cannot tell). ``loaded``: an already loaded
    :class:`facedistill.models.checkpoints.LoadedBackbone` instead (``model_path`` may then be None).
    ``qat``: :class:`facedistill.export.qat.QATOptions`; with ``int8``, the int8 file is quantized from a
    copy of the student fine-tuned against its own int8 simulation on the ``calib`` faces, and gated
    against the original fp32 file (which is what gets written as fp32).
    ``progress(message)`` is told about each stage. ``keep_rejected``: an int8 model that fails its gate
    is kept as ``<stem>.int8.rejected.onnx`` (never under the final name). Returns the report; raises
    :class:`ExportGateError` (a :class:`FaceDistillError`) when a gate fails, with ``.report`` set.
    """
    if loaded is None and model_path is not None and str(model_path).lower().endswith(".onnx"):
        # a model trained elsewhere: only int8 applies (the file itself is the fp32 model)
        if qat is not None:
            raise ExportError(f"{model_path} is an ONNX model: quantization-aware fine-tuning (--qat-steps) needs the "
                              "trained PyTorch student (a run folder or state dict)")
        if not int8 or fp16:
            raise ExportError(f"{model_path} is already an ONNX model: exporting it only makes sense with --int8 "
                              "(and without --fp16); --out then names the int8 file")
        from facedistill.export.onnx_source import export_onnx_int8

        return export_onnx_int8(model_path, out, calib=calib, calib_images=calib_images, int8_options=int8_options,
                                verify=verify, parity_images=parity_images, min_cosine=int8_min_cosine,
                                max_drop=int8_max_drop, drop_alpha=int8_drop_alpha, mean=mean, std=std,
                                channel_order=channel_order,
                                latency=latency, latency_threads=latency_threads, keep_rejected=keep_rejected,
                                int8_mixed=int8_mixed, seed=seed, progress=progress)
    start = time.time()
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name such as {out / 'student.onnx'}")
    opset = int(opset if opset is not None else DEFAULT_OPSET)
    check_opset(opset, int8)
    if calib_images < 1:
        raise ExportError(f"--calib-images must be >= 1, got {calib_images}")
    if parity_images < 1:
        raise ExportError(f"parity images must be >= 1, got {parity_images}")
    if calib is not None and not int8:
        raise ExportError("--calib is only used with --int8")
    if qat is not None and not int8:
        raise ExportError("--qat-steps fine-tunes the int8 model: add --int8")
    if qat is not None and calib is None:
        raise ExportError("--qat-steps needs --calib: a prepared set of real faces (e.g. the training set) to "
                          "fine-tune on; synthetic calibration faces are not enough")
    if fp32_prelu not in ("keep", "linear"):
        raise ExportError(f"--fp32-prelu must be 'keep' or 'linear', got {fp32_prelu!r}")
    opts = (int8_options or Int8Options()).validate() if int8 else None
    _check_writable(out.parent if str(out.parent) else Path("."))

    _say(progress, "loading the model")
    if loaded is None:
        if model_path is None:
            raise ExportError("no model given: pass a run folder or a state dict")
        from facedistill.models.checkpoints import load_backbone

        loaded = load_backbone(model_path, arch=arch, embedding_size=embedding_size)
    pre = loaded.preprocessing
    notes: list[str] = []
    report = ExportReport(
        source=str(loaded.source), arch=loaded.arch, embedding_size=int(loaded.embedding_size), opset=opset,
        batch=str(batch), simplified=simplify, preprocessing=pre.to_dict(),
        thresholds={"fp32_min_worst_cosine": fp32_min_cosine, "fp16_min_worst_cosine": fp16_min_cosine,
                    "int8_min_mean_cosine": int8_min_cosine, "int8_max_accuracy_drop_points": int8_max_drop,
                    "int8_drop_alpha": int8_drop_alpha},
        notes=notes,
    )

    def fail(message: str) -> ExportGateError:
        report.failure = message
        report.passed = False
        report.seconds = round(time.time() - start, 2)
        return ExportGateError(message, report)

    _say(progress, "gathering images")
    imgs = _gather_images(calib, verify, int8, calib_images, parity_images, seed, notes)
    report.parity_source = imgs.parity_source
    x_parity = pre.apply(imgs.parity)

    # ---- fp32 ----------------------------------------------------------------------------------
    _say(progress, f"exporting fp32 ONNX (opset {opset})")
    proto = torch_to_onnx(loaded.model, opset=opset, batch=batch, input_size=int(pre.input_size),
                          simplify=simplify, notes=notes)
    if simplify and any(n.startswith("onnxsim") for n in notes):
        report.simplified = False
    quant_source = proto  # int8 starts from the graph with its PRelu nodes (it rewrites them itself)
    if fp32_prelu == "linear":
        import onnx

        from facedistill.export.quantize import rewrite_prelu

        quant_source = onnx.ModelProto()
        quant_source.CopyFrom(proto)
        proto, n_prelu, _ = rewrite_prelu(proto, "linear")
        notes.append(f"fp32: {n_prelu} PRelu nodes rewritten as s*x + (1-s)*relu(x) (--fp32-prelu linear)")
    elif any(n.op_type == "PRelu" for n in proto.graph.node):
        notes.append("fp32: onnxruntime's CPU PRelu kernel is slow; --fp32-prelu linear rewrites the PRelu "
                     "nodes exactly and runs about 2x faster at batch 1 on onnxruntime")
    base_meta = dict(arch=loaded.arch, embedding_size=loaded.embedding_size, preprocessing=pre,
                     recipe_hash=loaded.recipe_hash)
    source_extra = {"source": "/".join(Path(loaded.source).parts[-2:]), "opset": opset, "batch": str(batch),
                    "fp32_prelu": fp32_prelu}
    _say(progress, "checking fp32 parity against PyTorch")
    ref_torch = run_torch(loaded.model, x_parity)
    if not np.isfinite(ref_torch).all():
        bad = int((~np.isfinite(ref_torch).all(axis=1)).sum())
        raise ExportError(f"the PyTorch model itself outputs NaN/inf for {bad} of {len(ref_torch)} images "
                          f"({report.parity_source}), so no export can be checked against it: the checkpoint is "
                          "damaged or its activations overflow (an untrained model with default BatchNorm "
                          "statistics does this); nothing was written")
    fp32_art = ArtifactReport(precision="fp32", path=str(out), written=False, reference="torch",
                              gate=f"worst cosine >= {fp32_min_cosine}")
    report.artifacts.append(fp32_art)
    ref_onnx: np.ndarray
    with _staged(out) as tmp:
        set_metadata(proto, build_metadata(precision="fp32", extra=source_extra, **base_meta))
        _write_model_file(proto, tmp)
        sess = ort_session(tmp)
        ref_onnx = run_onnx(sess, x_parity)
        if ref_onnx.shape != ref_torch.shape:
            raise fail(f"the ONNX model outputs shape {ref_onnx.shape[1:]} per image, PyTorch "
                       f"{ref_torch.shape[1:]}")
        par = compare_embeddings(ref_torch, ref_onnx, fp32_min_cosine, "worst")
        _fill(fp32_art, par)
        if not par.passed:
            _say(progress, "parity failed: locating the first diverging layer")
            debug = out.with_name(f"{out.stem}.parity-debug.onnx") if keep_debug else None
            div = None
            try:
                div = locate_divergence(loaded.model, proto, x_parity[par.worst_index:par.worst_index + 1],
                                        debug_path=debug)
            except FaceDistillError as e:
                notes.append(f"could not locate the divergence: {e}")
            except Exception as e:  # the localiser is a diagnostic: never mask the real failure
                notes.append(f"could not locate the divergence: {type(e).__name__}: {e}")
            where = div.describe() if div is not None else (
                "every intermediate tensor that has a PyTorch counterpart matches, so look at the last "
                "layers (the embedding head) and at ops without a module (functional calls in forward)")
            if div is not None:
                report.divergence = div.to_dict()
            raise fail(f"fp32 parity failed: the ONNX model disagrees with PyTorch on "
                       f"{report.parity_source}: worst per-image cosine {par.worst:.6f} "
                       f"(mean {par.mean:.6f}) < {fp32_min_cosine}. {where}. Nothing was written to {out}.")
        if batch == "dynamic":
            _say(progress, "checking the dynamic batch axis (batch 1 and 7)")
            for b in BATCH_CHECK:
                xb = np.ascontiguousarray(np.resize(x_parity, (b,) + x_parity.shape[1:]))
                yb = np.asarray(sess.run(None, {INPUT_NAME: xb})[0])
                if yb.shape[0] != b:
                    raise fail(f"the dynamic batch axis does not work: batch {b} gave {yb.shape[0]} embeddings")
                one = np.concatenate([np.asarray(sess.run(None, {INPUT_NAME: xb[i:i + 1]})[0]) for i in range(b)])
                c = compare_embeddings(one, yb, fp32_min_cosine)
                if not c.passed:
                    raise fail(f"batch {b} and batch 1 give different embeddings (worst cosine {c.worst:.6f})")
            report.batch_check = list(BATCH_CHECK)
        set_metadata(proto, build_metadata(precision="fp32", extra={
            **source_extra, "parity_worst_cosine": round(par.worst, 7), "parity_mean_cosine": round(par.mean, 7)},
            **base_meta))
        _write_model_file(proto, tmp)
        checked = check_onnx(tmp)
        fp32_art.size_bytes = checked.size_bytes
    fp32_art.written = True
    del sess

    # ---- fp16 ----------------------------------------------------------------------------------
    if fp16:
        _say(progress, "converting to fp16")
        path16 = sibling_path(out, "fp16")
        art = ArtifactReport(precision="fp16", path=str(path16), written=False, reference="fp32",
                             gate=f"worst cosine >= {fp16_min_cosine}")
        report.artifacts.append(art)
        proto16 = to_fp16(proto)
        with _staged(path16) as tmp:
            set_metadata(proto16, build_metadata(precision="fp16", extra=source_extra, **base_meta))
            _write_model_file(proto16, tmp)
            y16 = run_onnx(ort_session(tmp), x_parity)
            par = compare_embeddings(ref_onnx, y16, fp16_min_cosine, "worst")
            _fill(art, par)
            if not par.passed:
                raise fail(f"fp16 gate failed: worst per-image cosine to fp32 {par.worst:.6f} < {fp16_min_cosine} "
                           f"(mean {par.mean:.6f}); some activations probably overflow float16. "
                           f"Nothing was written to {path16}.")
            set_metadata(proto16, build_metadata(precision="fp16", extra={
                **source_extra, "parity_worst_cosine": round(par.worst, 7),
                "parity_mean_cosine": round(par.mean, 7)}, **base_meta))
            _write_model_file(proto16, tmp)
            art.size_bytes = check_onnx(tmp).size_bytes
        art.written = True

    # ---- int8 ----------------------------------------------------------------------------------
    if int8:
        assert opts is not None and imgs.calib is not None
        if qat is not None:
            quant_source = _qat_source(report, loaded, calib, qat, opts, pre, opset, batch, simplify, notes, progress)
        int8_stage(report, quant_source, out, ref_onnx, x_parity, imgs, pre, opts, base_meta, source_extra,
                   verify=verify, min_cosine=int8_min_cosine, max_drop=int8_max_drop, drop_alpha=int8_drop_alpha,
                   keep_rejected=keep_rejected,
                   mixed=int8_mixed, fail=fail, progress=progress)

    if verify is not None and not int8:
        _say(progress, f"verifying on {verify}")
        for a in report.artifacts:
            acc = verification_accuracy(a.path, imgs.pairs_set, pre)
            a.accuracy = acc["accuracy"]
            report.verification = report.verification or {"set": str(verify)}
            report.verification[a.precision] = acc

    if latency:
        _say(progress, "timing batch 1")
        for a in report.artifacts:
            a.latency_ms_b1 = round(quick_latency_ms(a.path, int(pre.input_size), threads=latency_threads), 3)
            a.latency_threads = latency_threads
    report.passed = all(a.passed for a in report.artifacts)
    report.seconds = round(time.time() - start, 2)
    return report


def _qat_source(report: ExportReport, loaded: Any, calib: Any, qat: Any, opts: Int8Options, pre: Preprocessing,
                opset: int, batch: str | int, simplify: bool, notes: list[str], progress: Progress | None) -> Any:
    """Fine-tune a copy of the student against its int8 simulation; its fp32 graph is what gets quantized."""
    from facedistill.export.qat import qat_finetune

    qat = qat.validate()
    every = max(1, qat.steps // 10)

    def step(k: int, n: int, loss: float) -> None:
        if k % every == 0 or k == n:
            _say(progress, f"QAT step {k}/{n}: 1 - cosine to fp32 {loss:.5f}")

    _say(progress, f"quantization-aware fine-tuning ({qat.steps} steps of {qat.batch_size} faces from {calib})")
    tuned, res = qat_finetune(loaded.model, _open_set(calib, "--calib"), pre.apply, qat, keep_float=opts.keep_float,
                              input_size=int(pre.input_size), source=str(calib), progress=step)
    report.qat = res.to_dict()
    notes.append(f"int8: QAT fine-tuned {res.quantized_convs} int8 convs for {res.steps} steps ({res.seconds:.0f} s): "
                 "simulated int8 cosine to fp32 on held-out faces "
                 f"{res.cosine_before:.4f} -> {res.cosine_after:.4f}; the int8 file is gated against the "
                 "original fp32 student")
    return torch_to_onnx(tuned, opset=opset, batch=batch, input_size=int(pre.input_size), simplify=simplify,
                         notes=[])


MIXED_ROUNDS = 4  # raise the probe target (halving the distance to 1) at most this many times
MIXED_COSINE_MARGIN = 0.002  # the mixed-precision search aims this far above the gate (its probe images
                             # are not the gate's; a margin keeps a borderline pick from failing there)


def accuracy_drop_problem(acc32: float, acc8: float, paired: dict[str, Any], max_drop: float,
                          alpha: float) -> str | None:
    """Why int8 fails the accuracy part of its gate, or None: the drop exceeds ``max_drop`` points
    *and* the paired test (:func:`facedistill.evaluation.protocol.paired_accuracy_test`) says it is
    real (p < ``alpha``). A drop the pairs cannot tell from noise does not refuse a file."""
    drop = acc32 - acc8
    tested = alpha < 1.0   # alpha 1: every drop over max_drop counts, tested or not
    if drop <= max_drop or (tested and paired["p_value"] >= alpha):
        return None
    return (f"verification accuracy drops {drop:.2f} points ({acc32:.2f}% -> {acc8:.2f}%), more than {max_drop}"
            + (f", and the drop is real: {paired['lost']} pairs lost, {paired['gained']} gained of "
               f"{paired['pairs']} (paired test p = {paired['p_value']:.3g} < {alpha})" if tested else ""))


def _gate_problems(art: ArtifactReport, par: ParityResult, min_cosine: float, report: ExportReport,
                   fp32_path: Path, int8_path: Path, verify: Any, imgs: "_Images", pre: Preprocessing,
                   max_drop: float, drop_alpha: float, fp32_art: ArtifactReport | None,
                   progress: Progress | None) -> list[str]:
    from facedistill.evaluation.protocol import paired_accuracy_test

    _fill(art, par)
    problems = []
    if not par.passed:
        problems.append(f"mean per-image cosine to fp32 {par.mean:.4f} < {min_cosine} (worst {par.worst:.4f})")
    if verify is not None:
        _say(progress, f"verifying fp32 and int8 on {verify}")
        if imgs.fp32_verified is None:
            imgs.fp32_verified = verify_pairs(fp32_path, imgs.pairs_set, pre)
        acc32, ok32 = imgs.fp32_verified
        acc8, ok8 = verify_pairs(int8_path, imgs.pairs_set, pre)
        if fp32_art is not None:
            fp32_art.accuracy = acc32["accuracy"]
        art.accuracy = acc8["accuracy"]
        drop = acc32["accuracy"] - acc8["accuracy"]
        paired = paired_accuracy_test(ok32, ok8)
        report.verification = {"set": str(verify), "fp32": acc32, "int8": acc8, "drop_points": round(drop, 4),
                               "paired": {k: paired[k] for k in ("pairs", "lost", "gained", "p_value")},
                               "drop_alpha": drop_alpha}
        problem = accuracy_drop_problem(acc32["accuracy"], acc8["accuracy"], paired, max_drop, drop_alpha)
        art.passed = art.passed and problem is None
        if problem:
            problems.append(problem)
    return problems


def int8_stage(report: ExportReport, quant_source: Any, fp32_path: Path, ref_onnx: np.ndarray,
               x_parity: np.ndarray, imgs: "_Images", pre: Preprocessing, opts: Int8Options,
               base_meta: dict[str, Any], source_extra: dict[str, Any], *, verify: Any, min_cosine: float,
               max_drop: float, keep_rejected: bool, mixed: bool, fail: Callable[[str], Exception],
               drop_alpha: float = INT8_DROP_ALPHA,
               progress: Progress | None = None, int8_path: Path | None = None) -> ArtifactReport:
    """Quantize ``quant_source``, gate it against the fp32 file, and when plain int8 fails the gate
    and ``mixed`` is on, search the fewest layers to keep float
    (:func:`facedistill.export.quantize.search_mixed_precision`) before refusing. Writes
    ``<fp32 stem>.int8.onnx`` with metadata; raises ``fail(message)`` when no model passes."""
    import onnx

    from facedistill.export.quantize import PreprocessedImages, search_mixed_precision

    notes = report.notes
    path8 = Path(int8_path) if int8_path is not None else sibling_path(fp32_path, "int8")
    fp32_art = report.artifact("fp32")
    fp32_shown = fp32_art.path if fp32_art is not None else fp32_path
    art = ArtifactReport(precision="int8", path=str(path8), written=False, reference="fp32",
                         gate=f"mean cosine >= {min_cosine}"
                              + (f", accuracy drop <= {max_drop} points"
                                 + (f" (or p >= {drop_alpha})" if drop_alpha < 1 else "") if verify is not None else ""))
    report.artifacts.append(art)
    x_calib = PreprocessedImages(imgs.calib, pre.apply)
    report.calibration = {"source": imgs.calib_source, "images": int(len(x_calib)), "method": opts.method,
                          "batch": opts.calib_batch, "streamed": True}
    _say(progress, f"quantizing to int8 ({opts.method} calibration on {len(x_calib)} images, "
                   f"PReLU mode {opts.prelu})")
    int8_extra = {**source_extra, "int8_method": opts.method, "int8_prelu": opts.prelu,
                  "int8_keep_float": ",".join(opts.keep_float) or "none",
                  "int8_kept_weights": opts.kept_float_weights,
                  "int8_activations": opts.activations, "int8_per_channel": str(opts.per_channel).lower(),
                  "int8_weight_bits": "7" if opts.reduce_range else "8",
                  "int8_calibration": f"{imgs.calib_source} ({len(x_calib)} images)"}
    if report.qat:
        int8_extra["int8_qat"] = (f"{report.qat['steps']} steps of {report.qat['options']['batch_size']} faces, "
                                  f"lr {report.qat['options']['lr']}")
    with _staged(path8) as tmp:
        try:
            qres = quantize_int8(quant_source, tmp, x_calib, opts)
        except OSError as e:
            raise _write_error(path8, e) from e
        report.int8 = {**opts.to_dict(), **qres.to_dict()}
        int8_extra["int8_keep_float"] = ",".join(qres.keep_float) or "none"
        par = compare_embeddings(ref_onnx, run_onnx(ort_session(tmp), x_parity), min_cosine, "mean")
        problems = _gate_problems(art, par, min_cosine, report, fp32_path, tmp, verify, imgs, pre, max_drop,
                                  drop_alpha, fp32_art, progress)
        if problems and mixed:
            plain_problems = list(problems)
            plain = tmp.with_name(tmp.name + ".plain")
            os.replace(tmp, plain)
            try:
                plain_size, plain_ms = os.path.getsize(plain), quick_latency_ms(plain, int(pre.input_size))
                # probe on calibration images (not the gate's parity/verify images), at most 64
                rng = np.random.default_rng(1)
                n_probe = min(64, len(imgs.calib))
                probe = pre.apply(imgs.calib[np.sort(rng.choice(len(imgs.calib), n_probe, replace=False))])
                target = min(0.9999, min_cosine + MIXED_COSINE_MARGIN)
                _say(progress, f"plain int8 failed its gate ({'; '.join(problems)}); measuring each layer's int8 "
                               f"damage to keep the fewest float (target probe cosine {target:.4f})")
                ranked = None
                for _round in range(MIXED_ROUNDS):
                    mres = search_mixed_precision(quant_source, tmp, x_calib, probe, opts, target_cosine=target,
                                                  progress=progress, layers=ranked)
                    ranked = mres.layers
                    par = compare_embeddings(ref_onnx, run_onnx(ort_session(tmp), x_parity), min_cosine, "mean")
                    problems = _gate_problems(art, par, min_cosine, report, fp32_path, tmp, verify, imgs, pre,
                                              max_drop, drop_alpha, fp32_art, progress)
                    if not problems or not mres.passed or target >= 0.9999:
                        break
                    # the probe passed but the gate's images did not: aim higher, same ranking
                    target = min(0.9999, target + (1.0 - target) / 2)
                    _say(progress, f"mixed precision passed its probe but not the gate ({'; '.join(problems)}); "
                                   f"raising the probe target to {target:.4f}")
                mixed_size, mixed_ms = os.path.getsize(tmp), quick_latency_ms(tmp, int(pre.input_size))
            finally:
                _unlink(plain)
            kept = [layer[0] for layer in mres.kept_float_layers]
            report.int8["mixed_precision"] = {
                **mres.to_dict(), "plain_failure": plain_problems,
                "plain_size_bytes": plain_size, "size_bytes": mixed_size,
                "plain_latency_ms_b1": round(plain_ms, 3), "latency_ms_b1": round(mixed_ms, 3)}
            report.int8["keep_float"] = list(mres.keep_float)
            int8_extra["int8_mixed_float_layers"] = ",".join(kept)
            notes.append(f"int8: plain int8 failed its gate ({'; '.join(plain_problems)}); sensitivity-guided "
                         f"mixed precision kept {len(kept)} of {len(mres.layers)} int8 layers float "
                         f"({', '.join(kept) or 'none'}): probe cosine {mres.cosine:.4f}, "
                         f"cost +{(mixed_size - plain_size) / 1e3:.0f} KB and "
                         f"{mixed_ms - plain_ms:+.2f} ms at batch 1 ({plain_ms:.2f} -> {mixed_ms:.2f} ms), "
                         f"search {mres.seconds:.0f} s")
        if problems:
            kept = ""
            if keep_rejected:
                proto8 = onnx.load(str(tmp))
                rejected = path8.with_name(f"{path8.stem}.rejected{path8.suffix}")
                set_metadata(proto8, build_metadata(precision="int8", extra={
                    **int8_extra, "int8_gate": "FAILED: " + "; ".join(problems)}, **base_meta))
                _write_model_file(proto8, tmp)
                os.replace(tmp, rejected)
                art.path = str(rejected)
                kept = f" The rejected model is kept for inspection at {rejected}."
            raise fail("int8 gate failed: " + "; ".join(problems) + ". Try --int8-calib-method percentile "
                       "or entropy, more or more representative --calib images (faces like the deployment's),"
                       " or keeping more layers in float (--int8-keep-float with node names of the fp32 "
                       "file). "
                       f"Nothing was written to {path8}; the fp32 model at {fp32_shown} is fine.{kept}")
        proto8 = onnx.load(str(tmp))
        int8_extra.update({"parity_worst_cosine": round(par.worst, 7), "parity_mean_cosine": round(par.mean, 7)})
        set_metadata(proto8, build_metadata(precision="int8", extra=int8_extra, **base_meta))
        _write_model_file(proto8, tmp)
        art.size_bytes = check_onnx(tmp).size_bytes
        try:  # what onnxruntime actually runs (QLinearConv, ...), for the report
            from facedistill.export.quantize import optimized_op_counts

            art.ops = optimized_op_counts(tmp)
        except Exception as e:  # diagnostic only
            notes.append(f"could not list the optimized int8 ops: {e}")
    art.written = True
    return art



def _fill(art: ArtifactReport, par: ParityResult) -> None:
    art.cosine_worst = round(par.worst, 7)
    art.cosine_mean = round(par.mean, 7)
    art.cosine_images = par.images
    art.passed = par.passed


def to_fp16(proto: Any) -> Any:
    """float16 weights and compute with float32 input/output (onnxruntime's float16 converter)."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as e:  # pragma: no cover - shipped with onnxruntime
        raise ExportError(f"--fp16 needs onnxruntime's float16 converter: {e}") from e
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.metadata_props[:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(copy, keep_io_types=True)
    return _toposort(converted)


def _toposort(proto: Any) -> Any:
    """Order the nodes topologically (the float16 converter appends its input Casts at the end)."""
    graph = proto.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError("the converted graph has a cycle or a dangling input; cannot order its nodes")
        pending = rest
    nodes = [type(n)() for n in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


__all__ += ["check_opset", "int8_stage", "quick_latency_ms", "spread_over_identities", "to_fp16", "verification_accuracy",
            "verify_pairs", "accuracy_drop_problem"]
