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
loading it back (:func:`facedistill.export.metadata.check_onnx`), and renamed into place
(:mod:`facedistill.export.files`).

The stages, in the order :func:`export_model` runs them (each a function here or in the module named;
:class:`~facedistill.export.report.ExportRun` carries the report and what they hand each other):

=====================================  =====================================================
``_check_request``                     options, opset (:mod:`~facedistill.export.torch_graph`), folder
``_open_torch_source``                 run folder or state dict (an ``.onnx`` source goes to
                                       :mod:`~facedistill.export.onnx_source` instead)
``_gather``                            calibration / parity / verify faces (:mod:`~facedistill.export.images`)
``_fp32_graph``                        ``torch.onnx.export`` + onnxsim (:mod:`~facedistill.export.torch_graph`),
                                       ``--fp32-prelu linear`` (:mod:`~facedistill.export.graph_rewrites`)
``_write_fp32``                        parity and batch gates (:mod:`~facedistill.export.gates`), metadata, write
``_write_fp16``                        :mod:`~facedistill.export.fp16`, its gate, metadata, write
``qat_source`` / ``int8_stage``        :mod:`~facedistill.export.int8_stage`: QAT, calibrate, quantize
                                       (:mod:`~facedistill.export.quantize`), gate, mixed precision
                                       (:mod:`~facedistill.export.mixed_precision`), metadata, write
``_verify_float`` / ``_time_batch1``   accuracy without int8, latency (:mod:`~facedistill.export.measure`)
=====================================  =====================================================
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from facedistill.errors import ExportError
from facedistill.export import files
from facedistill.export.files import check_writable, sibling_path
from facedistill.export.fp16 import to_fp16
from facedistill.export.gates import (BATCH_CHECK, FP16_MIN_COSINE, FP32_MIN_COSINE, INT8_DROP_ALPHA,
                                      INT8_MAX_ACCURACY_DROP, INT8_MIN_MEAN_COSINE, accuracy_drop_problem,
                                      batch_axis_gate, fp32_parity_gate)
from facedistill.export.graph_rewrites import rewrite_prelu
from facedistill.export.images import gather_images, spread_over_identities
from facedistill.export.int8_stage import MIXED_COSINE_MARGIN, MIXED_ROUNDS, Int8Gate, int8_stage, qat_source
from facedistill.export.measure import quick_latency_ms, verification_accuracy, verify_pairs
from facedistill.export.metadata import build_metadata, check_onnx, set_metadata
from facedistill.export.onnx_source import export_onnx_int8
from facedistill.export.parity import compare_embeddings, ort_session, run_onnx, run_torch
from facedistill.export.quantize import Int8Options
from facedistill.export.report import (ArtifactReport, ExportGateError, ExportReport, ExportRun, Progress,
                                       fill_parity, say)
from facedistill.export.torch_graph import DEFAULT_OPSET, MIN_OPSET, check_opset, torch_to_onnx

__all__ = [
    "DEFAULT_OPSET",
    "ArtifactReport",
    "ExportGateError",
    "ExportReport",
    "export_model",
    "sibling_path",
    "torch_to_onnx",
    # the names below live in the modules of their stage; kept importable from here
    "BATCH_CHECK", "FP16_MIN_COSINE", "FP32_MIN_COSINE", "INT8_DROP_ALPHA", "INT8_MAX_ACCURACY_DROP",
    "INT8_MIN_MEAN_COSINE", "MIN_OPSET", "MIXED_COSINE_MARGIN", "MIXED_ROUNDS", "Int8Options",
    "accuracy_drop_problem", "check_opset", "int8_stage", "quick_latency_ms", "spread_over_identities", "to_fp16",
    "verification_accuracy", "verify_pairs",
]

DEFAULT_CALIB_IMAGES = 300
DEFAULT_PARITY_IMAGES = 64


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
        return _export_onnx_source(model_path, out, int8=int8, fp16=fp16, qat=qat, calib=calib,
                                   calib_images=calib_images, int8_options=int8_options, verify=verify,
                                   parity_images=parity_images, min_cosine=int8_min_cosine, max_drop=int8_max_drop,
                                   drop_alpha=int8_drop_alpha, mean=mean, std=std, channel_order=channel_order,
                                   latency=latency, latency_threads=latency_threads, keep_rejected=keep_rejected,
                                   int8_mixed=int8_mixed, seed=seed, progress=progress)
    start = time.time()
    out = Path(out)
    opset = int(opset if opset is not None else DEFAULT_OPSET)
    opts = _check_request(out, opset, int8, calib, calib_images, parity_images, qat, fp32_prelu, int8_options)
    loaded = _open_torch_source(model_path, loaded, arch, embedding_size, progress)
    thresholds = {"fp32_min_worst_cosine": fp32_min_cosine, "fp16_min_worst_cosine": fp16_min_cosine,
                  "int8_min_mean_cosine": int8_min_cosine, "int8_max_accuracy_drop_points": int8_max_drop,
                  "int8_drop_alpha": int8_drop_alpha}
    run = _new_run(loaded, opset, batch, simplify, thresholds, start, progress)
    _gather(run, calib, verify, int8, calib_images, parity_images, seed)
    proto, quant_source = _fp32_graph(run, loaded, opset, batch, simplify, fp32_prelu)
    _write_fp32(run, loaded, proto, out, batch, fp32_min_cosine, keep_debug)
    if fp16:
        _write_fp16(run, proto, out, fp16_min_cosine)
    if int8:
        assert opts is not None and run.imgs.calib is not None
        if qat is not None:
            quant_source = qat_source(run, loaded, calib, qat, opts, opset, batch, simplify)
        gate = Int8Gate(min_cosine=int8_min_cosine, max_drop=int8_max_drop, drop_alpha=int8_drop_alpha, verify=verify,
                        mixed=int8_mixed, keep_rejected=keep_rejected)
        int8_stage(run, quant_source, out, opts, gate)
    if verify is not None and not int8:
        _verify_float(run, verify)
    if latency:
        _time_batch1(run, latency_threads)
    return run.finish()


def _export_onnx_source(model_path: Any, out: Any, *, int8: bool, fp16: bool, qat: Any, **kwargs: Any) -> ExportReport:
    """A model trained elsewhere: only int8 applies (the file itself is the fp32 model)."""
    if qat is not None:
        raise ExportError(f"{model_path} is an ONNX model: quantization-aware fine-tuning (--qat-steps) needs the "
                          "trained PyTorch student (a run folder or state dict)")
    if not int8 or fp16:
        raise ExportError(f"{model_path} is already an ONNX model: exporting it only makes sense with --int8 "
                          "(and without --fp16); --out then names the int8 file")
    return export_onnx_int8(model_path, out, **kwargs)


def _check_request(out: Path, opset: int, int8: bool, calib: Any, calib_images: int, parity_images: int, qat: Any,
                   fp32_prelu: str, int8_options: Int8Options | None) -> Int8Options | None:
    """Refuse, before any work, a request that cannot succeed; the validated int8 options (None without int8)."""
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name such as {out / 'student.onnx'}")
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
    check_writable(out.parent if str(out.parent) else Path("."))
    return opts


def _open_torch_source(model_path: Any, loaded: Any, arch: str | None, embedding_size: int | None,
                       progress: Progress | None) -> Any:
    """The backbone: ``loaded`` as given, else loaded from a run folder or state dict."""
    say(progress, "loading the model")
    if loaded is None:
        if model_path is None:
            raise ExportError("no model given: pass a run folder or a state dict")
        from facedistill.models.checkpoints import load_backbone

        loaded = load_backbone(model_path, arch=arch, embedding_size=embedding_size)
    return loaded


def _new_run(loaded: Any, opset: int, batch: str | int, simplify: bool, thresholds: dict[str, float],
             start: float, progress: Progress | None) -> ExportRun:
    pre = loaded.preprocessing
    report = ExportReport(
        source=str(loaded.source), arch=loaded.arch, embedding_size=int(loaded.embedding_size), opset=opset,
        batch=str(batch), simplified=simplify, preprocessing=pre.to_dict(), thresholds=thresholds, notes=[])
    return ExportRun(report=report, pre=pre, progress=progress, start=start)


def _gather(run: ExportRun, calib: Any, verify: Any, int8: bool, calib_images: int, parity_images: int,
            seed: int) -> None:
    run.say("gathering images")
    run.imgs = gather_images(calib, verify, int8, calib_images, parity_images, seed, run.notes)
    run.report.parity_source = run.imgs.parity_source
    run.x_parity = run.pre.apply(run.imgs.parity)


def _fp32_graph(run: ExportRun, loaded: Any, opset: int, batch: str | int, simplify: bool,
                fp32_prelu: str) -> tuple[Any, Any]:
    """The fp32 graph to write, and the one int8 starts from (with its PRelu nodes: it rewrites them itself)."""
    notes, pre = run.notes, run.pre
    run.say(f"exporting fp32 ONNX (opset {opset})")
    proto = torch_to_onnx(loaded.model, opset=opset, batch=batch, input_size=int(pre.input_size),
                          simplify=simplify, notes=notes)
    if simplify and any(n.startswith("onnxsim") for n in notes):
        run.report.simplified = False
    quant_source = proto
    if fp32_prelu == "linear":
        import onnx

        quant_source = onnx.ModelProto()
        quant_source.CopyFrom(proto)
        proto, n_prelu, _ = rewrite_prelu(proto, "linear")
        notes.append(f"fp32: {n_prelu} PRelu nodes rewritten as s*x + (1-s)*relu(x) (--fp32-prelu linear)")
    elif any(n.op_type == "PRelu" for n in proto.graph.node):
        notes.append("fp32: onnxruntime's CPU PRelu kernel is slow; --fp32-prelu linear rewrites the PRelu "
                     "nodes exactly and runs about 2x faster at batch 1 on onnxruntime")
    run.base_meta = dict(arch=loaded.arch, embedding_size=loaded.embedding_size, preprocessing=pre,
                         recipe_hash=loaded.recipe_hash)
    run.source_extra = {"source": "/".join(Path(loaded.source).parts[-2:]), "opset": opset, "batch": str(batch),
                        "fp32_prelu": fp32_prelu}
    return proto, quant_source


def _torch_reference(run: ExportRun, loaded: Any) -> np.ndarray:
    """PyTorch's embeddings of the parity images; a model that outputs NaN/inf cannot be checked."""
    run.say("checking fp32 parity against PyTorch")
    ref_torch = run_torch(loaded.model, run.x_parity)
    if not np.isfinite(ref_torch).all():
        bad = int((~np.isfinite(ref_torch).all(axis=1)).sum())
        raise ExportError(f"the PyTorch model itself outputs NaN/inf for {bad} of {len(ref_torch)} images "
                          f"({run.report.parity_source}), so no export can be checked against it: the checkpoint is "
                          "damaged or its activations overflow (an untrained model with default BatchNorm "
                          "statistics does this); nothing was written")
    return ref_torch


def _write_fp32(run: ExportRun, loaded: Any, proto: Any, out: Path, batch: str | int, min_cosine: float,
                keep_debug: bool) -> None:
    """Write the fp32 file once it agrees with PyTorch (and its batch axis is dynamic when asked)."""
    ref_torch = _torch_reference(run, loaded)
    art = ArtifactReport(precision="fp32", path=str(out), written=False, reference="torch",
                         gate=f"worst cosine >= {min_cosine}")
    run.report.artifacts.append(art)
    with files.staged(out) as tmp:
        set_metadata(proto, build_metadata(precision="fp32", extra=run.source_extra, **run.base_meta))
        files.write_model_file(proto, tmp)
        sess = ort_session(tmp)
        run.ref_onnx = run_onnx(sess, run.x_parity)
        if run.ref_onnx.shape != ref_torch.shape:
            raise run.fail(f"the ONNX model outputs shape {run.ref_onnx.shape[1:]} per image, PyTorch "
                           f"{ref_torch.shape[1:]}")
        par = fp32_parity_gate(run, art, loaded.model, proto, ref_torch, min_cosine, out, keep_debug)
        if batch == "dynamic":
            batch_axis_gate(run, sess, min_cosine)
        _write_with_parity(run, proto, tmp, "fp32", par, art)
    art.written = True
    del sess


def _write_with_parity(run: ExportRun, proto: Any, tmp: Path, precision: str, par: Any, art: ArtifactReport) -> None:
    """The gated file's final metadata (with its parity numbers), written and loaded back."""
    set_metadata(proto, build_metadata(precision=precision, extra={
        **run.source_extra, "parity_worst_cosine": round(par.worst, 7), "parity_mean_cosine": round(par.mean, 7)},
        **run.base_meta))
    files.write_model_file(proto, tmp)
    art.size_bytes = check_onnx(tmp).size_bytes


def _write_fp16(run: ExportRun, proto: Any, out: Path, min_cosine: float) -> None:
    """float16 weights and compute, gated on its worst cosine to the fp32 file."""
    run.say("converting to fp16")
    path16 = sibling_path(out, "fp16")
    art = ArtifactReport(precision="fp16", path=str(path16), written=False, reference="fp32",
                         gate=f"worst cosine >= {min_cosine}")
    run.report.artifacts.append(art)
    proto16 = to_fp16(proto)
    with files.staged(path16) as tmp:
        set_metadata(proto16, build_metadata(precision="fp16", extra=run.source_extra, **run.base_meta))
        files.write_model_file(proto16, tmp)
        y16 = run_onnx(ort_session(tmp), run.x_parity)
        par = compare_embeddings(run.ref_onnx, y16, min_cosine, "worst")
        fill_parity(art, par)
        if not par.passed:
            raise run.fail(f"fp16 gate failed: worst per-image cosine to fp32 {par.worst:.6f} < {min_cosine} "
                           f"(mean {par.mean:.6f}); some activations probably overflow float16. "
                           f"Nothing was written to {path16}.")
        _write_with_parity(run, proto16, tmp, "fp16", par, art)
    art.written = True


def _verify_float(run: ExportRun, verify: Any) -> None:
    """Without int8 (which verifies as part of its gate), the accuracy of each float file on ``verify``."""
    run.say(f"verifying on {verify}")
    for a in run.report.artifacts:
        acc = verification_accuracy(a.path, run.imgs.pairs_set, run.pre)
        a.accuracy = acc["accuracy"]
        run.report.verification = run.report.verification or {"set": str(verify)}
        run.report.verification[a.precision] = acc


def _time_batch1(run: ExportRun, threads: int) -> None:
    run.say("timing batch 1")
    for a in run.report.artifacts:
        a.latency_ms_b1 = round(quick_latency_ms(a.path, int(run.pre.input_size), threads=threads), 3)
        a.latency_threads = threads
