"""The int8 stage of an export, shared by our own students and ONNX models trained elsewhere:

calibrate (:func:`calibration_images`) -> quantize (:func:`facedistill.export.quantize.quantize_int8`)
-> gate (:func:`facedistill.export.gates.int8_gate_problems`) -> when plain int8 fails and ``mixed`` is
on, mixed precision (:func:`mixed_precision_fallback`) -> refuse (:func:`refuse_int8`, the file kept
only as ``<stem>.int8.rejected.onnx`` with ``keep_rejected``) or write with metadata
(:func:`write_int8`). :func:`qat_source` is the optional step before: quantization-aware fine-tuning
of a copy of the student, whose fp32 graph is then what gets quantized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facedistill.export import files
from facedistill.export.calibration import PreprocessedImages
from facedistill.export.gates import INT8_DROP_ALPHA, INT8_MAX_ACCURACY_DROP, INT8_MIN_MEAN_COSINE, int8_gate_problems
from facedistill.export.images import open_set
from facedistill.export.measure import quick_latency_ms
from facedistill.export.metadata import build_metadata, check_onnx, set_metadata
from facedistill.export.mixed_precision import MixedPrecisionResult, search_mixed_precision
from facedistill.export.parity import ParityResult, compare_embeddings, ort_session, run_onnx
from facedistill.export.quantize import Int8Options, optimized_op_counts, quantize_int8
from facedistill.export.report import ArtifactReport, ExportRun
from facedistill.export.torch_graph import torch_to_onnx

__all__ = ["MIXED_COSINE_MARGIN", "MIXED_ROUNDS", "Int8Gate", "int8_stage", "qat_source"]

MIXED_ROUNDS = 4  # raise the probe target (halving the distance to 1) at most this many times
MIXED_COSINE_MARGIN = 0.002  # the mixed-precision search aims this far above the gate (its probe images
                             # are not the gate's; a margin keeps a borderline pick from failing there)


@dataclass
class Int8Gate:
    """What the int8 file must pass, and what to do when plain int8 does not."""

    min_cosine: float = INT8_MIN_MEAN_COSINE
    max_drop: float = INT8_MAX_ACCURACY_DROP
    drop_alpha: float = INT8_DROP_ALPHA
    verify: Any = None  # the pair set of the accuracy part (None: cosine only)
    mixed: bool = True  # search the fewest layers to keep float before refusing
    keep_rejected: bool = False

    def describe(self) -> str:
        return (f"mean cosine >= {self.min_cosine}"
                + (f", accuracy drop <= {self.max_drop} points"
                   + (f" (or p >= {self.drop_alpha})" if self.drop_alpha < 1 else "") if self.verify is not None else ""))


def int8_stage(run: ExportRun, quant_source: Any, fp32_path: Path, opts: Int8Options, gate: Int8Gate,
               int8_path: Path | None = None) -> ArtifactReport:
    """Quantize ``quant_source``, gate it against the fp32 file at ``fp32_path``, fall back to mixed
    precision when plain int8 fails (``gate.mixed``), and write ``int8_path`` (default
    ``<fp32 stem>.int8.onnx``) with metadata; raises ``run.fail(...)`` when no model passes."""
    path8 = Path(int8_path) if int8_path is not None else files.sibling_path(fp32_path, "int8")
    art = ArtifactReport(precision="int8", path=str(path8), written=False, reference="fp32", gate=gate.describe())
    run.report.artifacts.append(art)
    x_calib = calibration_images(run, opts)
    extra = int8_metadata(run, opts, len(x_calib))
    with files.staged(path8) as tmp:
        try:
            qres = quantize_int8(quant_source, tmp, x_calib, opts)
        except OSError as e:
            raise files.write_error(path8, e) from e
        run.report.int8 = {**opts.to_dict(), **qres.to_dict()}
        extra["int8_keep_float"] = ",".join(qres.keep_float) or "none"
        par = _gate_parity(run, tmp, gate)
        problems = int8_gate_problems(run, art, par, gate, fp32_path, tmp)
        if problems and gate.mixed:
            par, problems = mixed_precision_fallback(run, quant_source, tmp, x_calib, opts, gate, art, fp32_path,
                                                     problems, extra)
        if problems:
            refuse_int8(run, tmp, path8, art, problems, extra, fp32_path, gate.keep_rejected)
        write_int8(run, tmp, art, par, extra)
    art.written = True
    return art


def calibration_images(run: ExportRun, opts: Int8Options) -> PreprocessedImages:
    """The calibration faces, preprocessed batch by batch; recorded in the report."""
    x_calib = PreprocessedImages(run.imgs.calib, run.pre.apply)
    run.report.calibration = {"source": run.imgs.calib_source, "images": int(len(x_calib)), "method": opts.method,
                              "batch": opts.calib_batch, "streamed": True}
    run.say(f"quantizing to int8 ({opts.method} calibration on {len(x_calib)} images, PReLU mode {opts.prelu})")
    return x_calib


def int8_metadata(run: ExportRun, opts: Int8Options, n_calib: int) -> dict[str, Any]:
    """The int8 file's informative metadata: how it was quantized (completed as the stage goes)."""
    extra = {**run.source_extra, "int8_method": opts.method, "int8_prelu": opts.prelu,
             "int8_keep_float": ",".join(opts.keep_float) or "none",
             "int8_kept_weights": opts.kept_float_weights,
             "int8_activations": opts.activations, "int8_per_channel": str(opts.per_channel).lower(),
             "int8_weight_bits": "7" if opts.reduce_range else "8",
             "int8_calibration": f"{run.imgs.calib_source} ({n_calib} images)"}
    qat = run.report.qat
    if qat:
        extra["int8_qat"] = f"{qat['steps']} steps of {qat['options']['batch_size']} faces, lr {qat['options']['lr']}"
    return extra


def _gate_parity(run: ExportRun, path: Path, gate: Int8Gate) -> ParityResult:
    return compare_embeddings(run.ref_onnx, run_onnx(ort_session(path), run.x_parity), gate.min_cosine, "mean")


def mixed_precision_fallback(run: ExportRun, quant_source: Any, tmp: Path, x_calib: PreprocessedImages,
                             opts: Int8Options, gate: Int8Gate, art: ArtifactReport, fp32_path: Path,
                             plain_problems: list[str], extra: dict[str, Any]) -> tuple[ParityResult, list[str]]:
    """Plain int8 failed its gate: keep the fewest, most damaging layers float
    (:func:`facedistill.export.mixed_precision.search_mixed_precision`) and gate again; the mixed model
    replaces the plain one at ``tmp``. Returns the last gate's parity and problems."""
    plain = tmp.with_name(tmp.name + ".plain")
    os.replace(tmp, plain)
    size = int(run.pre.input_size)
    try:
        plain_size, plain_ms = os.path.getsize(plain), quick_latency_ms(plain, size)
        par, problems, mres = _search_until_gate(run, quant_source, tmp, x_calib, opts, gate, art, fp32_path,
                                                 plain_problems)
        mixed_size, mixed_ms = os.path.getsize(tmp), quick_latency_ms(tmp, size)
    finally:
        files.unlink(plain)
    kept = [layer[0] for layer in mres.kept_float_layers]
    run.report.int8["mixed_precision"] = {
        **mres.to_dict(), "plain_failure": plain_problems,
        "plain_size_bytes": plain_size, "size_bytes": mixed_size,
        "plain_latency_ms_b1": round(plain_ms, 3), "latency_ms_b1": round(mixed_ms, 3)}
    run.report.int8["keep_float"] = list(mres.keep_float)
    extra["int8_mixed_float_layers"] = ",".join(kept)
    run.notes.append(f"int8: plain int8 failed its gate ({'; '.join(plain_problems)}); sensitivity-guided "
                     f"mixed precision kept {len(kept)} of {len(mres.layers)} int8 layers float "
                     f"({', '.join(kept) or 'none'}): probe cosine {mres.cosine:.4f}, "
                     f"cost +{(mixed_size - plain_size) / 1e3:.0f} KB and "
                     f"{mixed_ms - plain_ms:+.2f} ms at batch 1 ({plain_ms:.2f} -> {mixed_ms:.2f} ms), "
                     f"search {mres.seconds:.0f} s")
    return par, problems


def _probe_images(run: ExportRun) -> np.ndarray:
    """At most 64 calibration images (not the gate's parity/verify images) for the search to measure on."""
    calib = run.imgs.calib
    rng = np.random.default_rng(1)
    n_probe = min(64, len(calib))
    return run.pre.apply(calib[np.sort(rng.choice(len(calib), n_probe, replace=False))])


def _search_until_gate(run: ExportRun, quant_source: Any, tmp: Path, x_calib: PreprocessedImages,
                       opts: Int8Options, gate: Int8Gate, art: ArtifactReport, fp32_path: Path,
                       problems: list[str]) -> tuple[ParityResult, list[str], MixedPrecisionResult]:
    """Search, gate, and while the probe passes but the gate's images do not, aim higher (same ranking)."""
    probe = _probe_images(run)
    target = min(0.9999, gate.min_cosine + MIXED_COSINE_MARGIN)
    run.say(f"plain int8 failed its gate ({'; '.join(problems)}); measuring each layer's int8 "
            f"damage to keep the fewest float (target probe cosine {target:.4f})")
    ranked = None
    for _round in range(MIXED_ROUNDS):
        mres = search_mixed_precision(quant_source, tmp, x_calib, probe, opts, target_cosine=target,
                                      progress=run.progress, layers=ranked)
        ranked = mres.layers
        par = _gate_parity(run, tmp, gate)
        problems = int8_gate_problems(run, art, par, gate, fp32_path, tmp)
        if not problems or not mres.passed or target >= 0.9999:
            break
        target = min(0.9999, target + (1.0 - target) / 2)
        run.say(f"mixed precision passed its probe but not the gate ({'; '.join(problems)}); "
                f"raising the probe target to {target:.4f}")
    return par, problems, mres


def refuse_int8(run: ExportRun, tmp: Path, path8: Path, art: ArtifactReport, problems: list[str],
                extra: dict[str, Any], fp32_path: Path, keep_rejected: bool) -> None:
    """Raise the int8 gate's error; with ``keep_rejected`` the model is kept beside, never under, ``path8``."""
    import onnx

    fp32_art = run.report.artifact("fp32")
    fp32_shown = fp32_art.path if fp32_art is not None else fp32_path
    kept = ""
    if keep_rejected:
        proto8 = onnx.load(str(tmp))
        rejected = path8.with_name(f"{path8.stem}.rejected{path8.suffix}")
        set_metadata(proto8, build_metadata(precision="int8", extra={
            **extra, "int8_gate": "FAILED: " + "; ".join(problems)}, **run.base_meta))
        files.write_model_file(proto8, tmp)
        os.replace(tmp, rejected)
        art.path = str(rejected)
        kept = f" The rejected model is kept for inspection at {rejected}."
    raise run.fail("int8 gate failed: " + "; ".join(problems) + ". Try --int8-calib-method percentile "
                   "or entropy, more or more representative --calib images (faces like the deployment's),"
                   " or keeping more layers in float (--int8-keep-float with node names of the fp32 "
                   "file). "
                   f"Nothing was written to {path8}; the fp32 model at {fp32_shown} is fine.{kept}")


def write_int8(run: ExportRun, tmp: Path, art: ArtifactReport, par: ParityResult, extra: dict[str, Any]) -> None:
    """The passing int8 model at ``tmp`` gets its metadata; the report its size and the ops onnxruntime runs."""
    import onnx

    proto8 = onnx.load(str(tmp))
    extra.update({"parity_worst_cosine": round(par.worst, 7), "parity_mean_cosine": round(par.mean, 7)})
    set_metadata(proto8, build_metadata(precision="int8", extra=extra, **run.base_meta))
    files.write_model_file(proto8, tmp)
    art.size_bytes = check_onnx(tmp).size_bytes
    try:  # what onnxruntime actually runs (QLinearConv, ...), for the report
        art.ops = optimized_op_counts(tmp)
    except Exception as e:  # diagnostic only
        run.notes.append(f"could not list the optimized int8 ops: {e}")


def qat_source(run: ExportRun, loaded: Any, calib: Any, qat: Any, opts: Int8Options, opset: int,
               batch: str | int, simplify: bool) -> Any:
    """Fine-tune a copy of the student against its int8 simulation; its fp32 graph is what gets quantized."""
    from facedistill.export.qat import qat_finetune

    qat = qat.validate()
    every = max(1, qat.steps // 10)

    def step(k: int, n: int, loss: float) -> None:
        if k % every == 0 or k == n:
            run.say(f"QAT step {k}/{n}: 1 - cosine to fp32 {loss:.5f}")

    pre = run.pre
    run.say(f"quantization-aware fine-tuning ({qat.steps} steps of {qat.batch_size} faces from {calib})")
    tuned, res = qat_finetune(loaded.model, open_set(calib, "--calib"), pre.apply, qat, keep_float=opts.keep_float,
                              input_size=int(pre.input_size), source=str(calib), progress=step)
    run.report.qat = res.to_dict()
    run.notes.append(f"int8: QAT fine-tuned {res.quantized_convs} int8 convs for {res.steps} steps ({res.seconds:.0f} s): "
                     "simulated int8 cosine to fp32 on held-out faces "
                     f"{res.cosine_before:.4f} -> {res.cosine_after:.4f}; the int8 file is gated against the "
                     "original fp32 student")
    return torch_to_onnx(tuned, opset=opset, batch=batch, input_size=int(pre.input_size), simplify=simplify,
                         notes=[])
