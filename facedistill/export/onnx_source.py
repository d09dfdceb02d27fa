"""int8 export of an ONNX face model trained elsewhere (SFace, an insightface/arcface export, a
MobileFaceNet from another project): ``facedistill export model.onnx --out m.int8.onnx --int8
--calib SET [--verify SET]``.

The same quantizer, gates and mixed-precision fallback as our own students
(:func:`facedistill.export.int8_stage.int8_stage`); what differs is how the fp32 graph arrives:

* preprocessing comes from flags (``mean``/``std``/``channel_order``) or, when the file carries
  facedistill metadata, from it; neither: refused (a guessed normalisation would calibrate on the
  wrong input range and the gate would then blame the quantizer);
* an opset outside what the quantizer handles is converted with ``onnx.version_converter`` to
  opset 17: above onnxruntime's static quantizer's range (SFace ships opset 21), or below the 13
  that per-channel weights need (the PaddleX MobileFaceNet is opset 9, the ReLU6 one 12); the
  report and the metadata keep the source's opset beside the one written. A fixed batch axis (SFace: 1) is made dynamic when the
  graph gives the same embeddings that way -- both checked against the original file on real faces
  (worst cosine >= 0.9999) before anything is quantized;
* the output file gets our metadata (architecture from the source metadata or ``onnx:<file stem>``).

Stages of :func:`export_onnx_int8`: check the request -> open the source (:func:`load_onnx_source`,
preprocessing, images, the source's own embeddings) -> the prepared fp32 graph against the source
(:func:`_fp32_gate`) -> int8 -> batch-1 latency.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import ExportError
from facedistill.utils.onnx_repair import with_dynamic_batch
from facedistill.export.files import check_writable
from facedistill.export.gates import INT8_DROP_ALPHA, INT8_MAX_ACCURACY_DROP, INT8_MIN_MEAN_COSINE
from facedistill.export.graph_parts import graph_opset
from facedistill.export.images import gather_images
from facedistill.export.int8_stage import Int8Gate, int8_stage
from facedistill.export.measure import quick_latency_ms
from facedistill.export.metadata import read_metadata
from facedistill.export.parity import compare_embeddings, ort_session, run_onnx
from facedistill.export.quantize import MAX_INT8_OPSET, MIN_INT8_OPSET, Int8Options
from facedistill.export.report import ArtifactReport, ExportReport, ExportRun, say

__all__ = ["export_onnx_int8", "graph_opset", "load_onnx_source", "onnx_source_preprocessing"]

CONVERT_TO_OPSET = 17


def onnx_source_preprocessing(meta: dict[str, str], mean: Any = None, std: Any = None,
                              channel_order: str | None = None, input_size: int = 112) -> tuple[Preprocessing, str]:
    """Preprocessing of a foreign model: flags win, then facedistill metadata; (pre, where from)."""
    if mean is None and std is None and channel_order is None:
        if "mean" in meta and "std" in meta:
            return Preprocessing.from_metadata(meta, source="model"), "the model's facedistill metadata"
        raise ExportError("this ONNX model has no facedistill metadata, so its input normalisation is unknown: "
                          "give --mean, --std and --channel-order (SFace: --mean 0 --std 1 --channel-order RGB; "
                          "insightface arcface models: --mean 127.5 --std 127.5 --channel-order RGB)")
    base = Preprocessing.from_metadata(meta, source="model") if "mean" in meta and "std" in meta else Preprocessing()
    pre = Preprocessing(mean=base.mean if mean is None else mean, std=base.std if std is None else std,
                        channel_order=channel_order or base.channel_order, input_size=input_size)
    return pre, "flags"


def _one_io(model: Any, path: Path) -> tuple[Any, Any]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ExportError(f"{path}: a face model has one image input and one embedding output; this one has "
                          f"{len(inputs)} inputs and {len(model.graph.output)} outputs")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        raise ExportError(f"{path}: the input must be N x 3 x H x W (NCHW images), got "
                          f"{[d.dim_value if d.HasField('dim_value') else d.dim_param for d in dims]}")
    return inputs[0], model.graph.output[0]


def load_onnx_source(path: str | os.PathLike, notes: list[str]) -> tuple[Any, int]:
    """The foreign model, ready to quantize: opset 13..20, dynamic batch when possible, no metadata.
    Returns (model, input size). The caller checks it against the original on real images."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise ExportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    inp, _ = _one_io(model, path)
    dims = inp.type.tensor_type.shape.dim
    size = dims[2].dim_value if dims[2].HasField("dim_value") else 112
    del model.metadata_props[:]  # ours is rewritten on the way out (and the checker refuses duplicate keys)
    opset = graph_opset(model)
    if not MIN_INT8_OPSET <= opset <= MAX_INT8_OPSET:
        model = _convert_opset(model, opset, path)
        notes.append(f"source opset {opset} converted to {CONVERT_TO_OPSET} for the int8 quantizer")
    inp, out = _one_io(model, path)
    if inp.type.tensor_type.shape.dim[0].HasField("dim_value"):
        fixed = inp.type.tensor_type.shape.dim[0].dim_value
        trial = with_dynamic_batch(model, int(size))
        if trial is not None:
            model = trial
            notes.append(f"source batch axis fixed at {fixed}: made dynamic (same embeddings per image)")
        else:
            notes.append(f"source batch axis fixed at {fixed} and it cannot be made dynamic: kept fixed")
    return model, int(size)


def _convert_opset(model: Any, opset: int, path: Path) -> Any:
    """``model`` at CONVERT_TO_OPSET, or a one-line refusal before any calibration work."""
    import onnx
    from onnx import version_converter

    why = (f"per-channel int8 needs opset >= {MIN_INT8_OPSET}" if opset < MIN_INT8_OPSET
           else f"onnxruntime's static quantizer needs opset <= {MAX_INT8_OPSET}")
    try:
        converted = version_converter.convert_version(model, CONVERT_TO_OPSET)
        onnx.checker.check_model(converted)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(f"{path} has opset {opset}; {why} and onnx {onnx.__version__}'s version converter could "
                          f"not take it to {CONVERT_TO_OPSET} ({type(e).__name__}: {first}). Re-export the model "
                          f"at an opset from {MIN_INT8_OPSET} to {MAX_INT8_OPSET} and quantize that file") from e
    return converted


def export_onnx_int8(source: str | os.PathLike, out: str | os.PathLike, *, calib: str | os.PathLike | None,
                     calib_images: int, int8_options: Int8Options | None = None, verify: Any = None,
                     parity_images: int = 64, min_cosine: float = INT8_MIN_MEAN_COSINE,
                     max_drop: float = INT8_MAX_ACCURACY_DROP, drop_alpha: float = INT8_DROP_ALPHA,
                     mean: Any = None, std: Any = None, channel_order: str | None = None,
                     latency: bool = True, latency_threads: int = 1, keep_rejected: bool = False,
                     int8_mixed: bool = True, seed: int = 0, progress: Any = None) -> ExportReport:
    """Quantize the fp32 ONNX face model ``source`` to ``out`` (int8 QDQ) with the export gates.

    Returns an :class:`~facedistill.export.report.ExportReport` whose ``fp32`` artifact is the
    source file (its cosine: the prepared graph against the original) and whose ``int8`` artifact is
    ``out``. Raises :class:`~facedistill.export.report.ExportGateError` when a gate fails."""
    import onnx

    start = time.time()
    source, out = Path(source), Path(out)
    opts = _check_request(source, out, calib, calib_images, int8_options)
    gate = Int8Gate(min_cosine=min_cosine, max_drop=max_drop, drop_alpha=drop_alpha, verify=verify, mixed=int8_mixed,
                    keep_rejected=keep_rejected)
    run, model, size, orig = _open_source(source, calib, verify, calib_images, parity_images, seed, mean, std,
                                          channel_order, gate, start, progress)
    with tempfile.TemporaryDirectory(prefix="facedistill-onnx-src-") as tmp:
        fp32_path = Path(tmp) / f"{source.stem}.fp32.onnx"
        onnx.save(model, str(fp32_path))
        fp32_art = _fp32_gate(run, source, fp32_path, orig)
        run.say("quantizing")
        int8_stage(run, model, fp32_path, opts, gate, int8_path=out)
        if latency:
            fp32_art.latency_ms_b1 = round(quick_latency_ms(fp32_path, size, threads=latency_threads), 3)
            fp32_art.latency_threads = latency_threads
    if latency:
        a8 = run.report.artifact("int8")
        a8.latency_ms_b1 = round(quick_latency_ms(a8.path, size, threads=latency_threads), 3)
        a8.latency_threads = latency_threads
    return run.finish()


def _check_request(source: Path, out: Path, calib: Any, calib_images: int,
                   int8_options: Int8Options | None) -> Int8Options:
    """Refuse, before any work, a request that cannot succeed; the validated int8 options."""
    if out.resolve() == source.resolve():
        raise ExportError(f"--out {out} is the source model; give another file name (e.g. {source.stem}.int8.onnx)")
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name such as {out / (source.stem + '.int8.onnx')}")
    if calib is None:
        raise ExportError("quantizing an ONNX model needs --calib: a prepared set of face images like the "
                          "deployment's (e.g. `facedistill prepare folder ...`)")
    if calib_images < 1:
        raise ExportError(f"--calib-images must be >= 1, got {calib_images}")
    opts = (int8_options or Int8Options()).validate()
    check_writable(out.parent if str(out.parent) else Path("."))
    return opts


def _open_source(source: Path, calib: Any, verify: Any, calib_images: int, parity_images: int, seed: int,
                 mean: Any, std: Any, channel_order: str | None, gate: Int8Gate, start: float,
                 progress: Any) -> tuple[ExportRun, Any, int, np.ndarray]:
    """The run (report, preprocessing, images), the prepared graph, its input size, and the source's own
    embeddings of the parity images."""
    notes: list[str] = []
    meta = read_metadata(source) if source.is_file() else {}
    say(progress, f"loading {source}")
    model, size = load_onnx_source(source, notes)
    source_opset = _file_opset(source)
    pre, pre_from = onnx_source_preprocessing(meta, mean, std, channel_order, input_size=size)
    notes.append(f"preprocessing from {pre_from}: mean {pre.mean}, std {pre.std}, {pre.channel_order}")
    imgs = gather_images(calib, verify, True, calib_images, parity_images, seed, notes)
    x_parity = pre.apply(imgs.parity)
    orig = run_onnx(ort_session(source), x_parity)
    opset = graph_opset(model)
    dynamic = not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    report = ExportReport(
        source=str(source), arch=meta.get("architecture") or f"onnx:{source.stem}", embedding_size=int(orig.shape[1]),
        opset=opset, batch="dynamic" if dynamic else "fixed", simplified=False, preprocessing=pre.to_dict(),
        source_opset=source_opset,
        thresholds={"int8_min_mean_cosine": gate.min_cosine, "int8_max_accuracy_drop_points": gate.max_drop,
                    "int8_drop_alpha": gate.drop_alpha}, notes=notes,
        parity_source=imgs.parity_source)
    base_meta = dict(arch=report.arch, embedding_size=report.embedding_size, preprocessing=pre,
                     recipe_hash=meta.get("recipe_hash", ""))
    source_extra = {"source": source.name, "opset": opset, "source_opset": source_opset, "batch": report.batch,
                    "source_sha256_prefix": _sha_prefix(source)}
    run = ExportRun(report=report, pre=pre, progress=progress, start=start, imgs=imgs, x_parity=x_parity,
                    base_meta=base_meta, source_extra=source_extra)
    return run, model, size, orig


def _fp32_gate(run: ExportRun, source: Path, fp32_path: Path, orig: np.ndarray) -> ArtifactReport:
    """The prepared graph (opset conversion, dynamic batch) must give the source's embeddings; its
    embeddings become the reference the int8 file is gated on."""
    run.ref_onnx = run_onnx(ort_session(fp32_path), run.x_parity)
    par = compare_embeddings(orig, run.ref_onnx, 0.9999, "worst")
    fp32_art = ArtifactReport(precision="fp32", path=str(source), written=True, reference="source",
                              gate="worst cosine >= 0.9999 (prepared graph vs source)",
                              cosine_worst=round(par.worst, 7), cosine_mean=round(par.mean, 7),
                              cosine_images=par.images, passed=par.passed,
                              size_bytes=os.path.getsize(source))
    run.report.artifacts.append(fp32_art)
    if not par.passed:
        raise run.fail(f"preparing {source} for int8 (opset conversion / dynamic batch) changed its embeddings: "
                       f"worst cosine {par.worst:.6f} < 0.9999; nothing was written")
    return fp32_art


def _file_opset(path: Path) -> int:
    """The opset of the file on disk (its graph, not the weights, is read)."""
    import onnx

    return graph_opset(onnx.load(str(path), load_external_data=False))


def _sha_prefix(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
