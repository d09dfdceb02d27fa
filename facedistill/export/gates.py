"""The gates an export passes before a file gets its final name, and their default thresholds.

* fp32 (:func:`fp32_parity_gate`): PyTorch and onnxruntime agree on real faces, worst per-image cosine
  >= 0.9999; when they do not, the first diverging node is located and named in the error;
* dynamic batch (:func:`batch_axis_gate`): batch 1 and 7 give the embeddings of batch 1, image by image;
* fp16 (in :mod:`facedistill.export.onnx_export`): worst cosine to fp32 >= 0.999;
* int8 (:func:`int8_gate_problems`): mean cosine to fp32 >= 0.99 and, with a pair set, a verification
  accuracy drop of at most 0.5 points unless a paired test cannot tell it from noise
  (:func:`accuracy_drop_problem`).

A failing gate raises the :class:`~facedistill.export.report.ExportGateError` that ``run.fail`` builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facedistill.errors import FaceDistillError
from facedistill.export.measure import verify_pairs
from facedistill.export.metadata import INPUT_NAME
from facedistill.export.parity import ParityResult, compare_embeddings, locate_divergence
from facedistill.export.report import ArtifactReport, ExportRun, fill_parity

__all__ = ["BATCH_CHECK", "FP16_MIN_COSINE", "FP32_MIN_COSINE", "INT8_DROP_ALPHA", "INT8_MAX_ACCURACY_DROP",
           "INT8_MIN_MEAN_COSINE", "accuracy_drop_problem", "batch_axis_gate", "fp32_parity_gate",
           "int8_gate_problems"]

FP32_MIN_COSINE = 0.9999
FP16_MIN_COSINE = 0.999
INT8_MIN_MEAN_COSINE = 0.99
INT8_MAX_ACCURACY_DROP = 0.5  # percentage points
# ... and only when the drop is real: a one-sided paired (McNemar) test over the verify pairs must
# give p < this. On 600 pairs a 0.5-point drop is 3 pairs, which a coin produces as often
# (docs/deploy.md section 6, "the accuracy part of the gate"); 1.0 restores the bare threshold.
INT8_DROP_ALPHA = 0.05
BATCH_CHECK = (1, 7)


def fp32_parity_gate(run: ExportRun, art: ArtifactReport, torch_model: Any, proto: Any, ref_torch: np.ndarray,
                     min_cosine: float, out: Path, keep_debug: bool) -> ParityResult:
    """The fp32 file's embeddings (``run.ref_onnx``) against PyTorch's; on failure, where they part ways."""
    report = run.report
    par = compare_embeddings(ref_torch, run.ref_onnx, min_cosine, "worst")
    fill_parity(art, par)
    if par.passed:
        return par
    run.say("parity failed: locating the first diverging layer")
    debug = out.with_name(f"{out.stem}.parity-debug.onnx") if keep_debug else None
    div = None
    try:
        div = locate_divergence(torch_model, proto, run.x_parity[par.worst_index:par.worst_index + 1],
                                debug_path=debug)
    except FaceDistillError as e:
        run.notes.append(f"could not locate the divergence: {e}")
    except Exception as e:  # the localiser is a diagnostic: never mask the real failure
        run.notes.append(f"could not locate the divergence: {type(e).__name__}: {e}")
    where = div.describe() if div is not None else (
        "every intermediate tensor that has a PyTorch counterpart matches, so look at the last "
        "layers (the embedding head) and at ops without a module (functional calls in forward)")
    if div is not None:
        report.divergence = div.to_dict()
    raise run.fail(f"fp32 parity failed: the ONNX model disagrees with PyTorch on "
                   f"{report.parity_source}: worst per-image cosine {par.worst:.6f} "
                   f"(mean {par.mean:.6f}) < {min_cosine}. {where}. Nothing was written to {out}.")


def batch_axis_gate(run: ExportRun, sess: Any, min_cosine: float) -> None:
    """A dynamic batch axis really is dynamic: batches of 1 and 7 give the per-image embeddings."""
    run.say("checking the dynamic batch axis (batch 1 and 7)")
    x = run.x_parity
    for b in BATCH_CHECK:
        xb = np.ascontiguousarray(np.resize(x, (b,) + x.shape[1:]))
        yb = np.asarray(sess.run(None, {INPUT_NAME: xb})[0])
        if yb.shape[0] != b:
            raise run.fail(f"the dynamic batch axis does not work: batch {b} gave {yb.shape[0]} embeddings")
        one = np.concatenate([np.asarray(sess.run(None, {INPUT_NAME: xb[i:i + 1]})[0]) for i in range(b)])
        c = compare_embeddings(one, yb, min_cosine)
        if not c.passed:
            raise run.fail(f"batch {b} and batch 1 give different embeddings (worst cosine {c.worst:.6f})")
    run.report.batch_check = list(BATCH_CHECK)


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


def int8_gate_problems(run: ExportRun, art: ArtifactReport, par: ParityResult, gate: Any, fp32_path: Path,
                       int8_path: Path) -> list[str]:
    """What keeps the int8 file at ``int8_path`` from passing ``gate`` (an
    :class:`~facedistill.export.int8_stage.Int8Gate`); empty when it passes. Fills ``art``."""
    from facedistill.evaluation.protocol import paired_accuracy_test

    fill_parity(art, par)
    problems = []
    if not par.passed:
        problems.append(f"mean per-image cosine to fp32 {par.mean:.4f} < {gate.min_cosine} (worst {par.worst:.4f})")
    if gate.verify is None:
        return problems
    imgs, fp32_art = run.imgs, run.report.artifact("fp32")
    run.say(f"verifying fp32 and int8 on {gate.verify}")
    if imgs.fp32_verified is None:
        imgs.fp32_verified = verify_pairs(fp32_path, imgs.pairs_set, run.pre)
    acc32, ok32 = imgs.fp32_verified
    acc8, ok8 = verify_pairs(int8_path, imgs.pairs_set, run.pre)
    if fp32_art is not None:
        fp32_art.accuracy = acc32["accuracy"]
    art.accuracy = acc8["accuracy"]
    drop = acc32["accuracy"] - acc8["accuracy"]
    paired = paired_accuracy_test(ok32, ok8)
    run.report.verification = {"set": str(gate.verify), "fp32": acc32, "int8": acc8, "drop_points": round(drop, 4),
                               "paired": {k: paired[k] for k in ("pairs", "lost", "gained", "p_value")},
                               "drop_alpha": gate.drop_alpha}
    problem = accuracy_drop_problem(acc32["accuracy"], acc8["accuracy"], paired, gate.max_drop, gate.drop_alpha)
    art.passed = art.passed and problem is None
    if problem:
        problems.append(problem)
    return problems
