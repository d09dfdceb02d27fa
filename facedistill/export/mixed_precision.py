"""Sensitivity-guided mixed precision: when plain int8 fails the export's gate, keep the fewest,
most damaging layers float.

:func:`layer_sensitivity` quantizes each candidate layer (:func:`quantizable_layers`: a
Conv/Gemm/MatMul with its activation, or a residual Add/Concat) alone and measures the probe images'
mean cosine to fp32; :func:`search_mixed_precision` keeps the top k float with k = 1, 2, 4, ... until
the target is met, then bisects to the smallest such k. One calibration serves every try.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from facedistill.export.graph_parts import consumers
from facedistill.export.quantize import Int8Options, PreparedGraph, prepare_graph, quantize_int8

__all__ = ["QUANTIZABLE_LAYER_OPS", "LayerDamage", "MixedPrecisionResult", "layer_sensitivity",
           "quantizable_layers", "search_mixed_precision"]

QUANTIZABLE_LAYER_OPS = ("Conv", "Gemm", "MatMul")
_ACTIVATION_OPS = ("PRelu", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish")
_STREAM_OPS = ("Add", "Sum", "Concat")


def quantizable_layers(fp32_model: Any, options: Int8Options | None = None) -> list[list[str]]:
    """The layers :func:`quantize_int8` would put in int8 with ``options``, as groups of node names
    of the pre-processed graph (what ``keep_float`` accepts): each Conv/Gemm/MatMul with the
    activation right after it, and each residual Add/Concat. Layers already kept float by ``options.keep_float`` are left out.
    These are the units of the sensitivity analysis (:func:`layer_sensitivity`)."""
    opts = (options or Int8Options()).validate()
    with tempfile.TemporaryDirectory(prefix="facedistill-int8-") as tmp:
        prep = prepare_graph(fp32_model, opts, tmp)
    return _layers(prep)


def _layers(prep: PreparedGraph) -> list[list[str]]:
    model = prep.pre
    cons = consumers(model)
    excluded = set(prep.excluded)
    out: list[list[str]] = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE_LAYER_OPS:
            continue
        names = prep.mapping.get(node.name, [node.name])
        if all(n in excluded for n in names):
            continue
        group = [node.name]
        for nxt in cons.get(node.output[0], []):
            if nxt.op_type in _ACTIVATION_OPS and len(cons.get(node.output[0], [])) == 1:
                group.append(nxt.name)
        out.append(group)
    # the residual stream: an int8 Add quantizes the sum again; in MobileFaceNet these re-quantizations
    # of the block outputs were the damage left when every conv was float (cosine 0.985 on the tiny
    # quickstart student), so they are units of their own
    for node in model.graph.node:
        if node.op_type in _STREAM_OPS and node.name not in excluded:
            out.append([node.name])
    return out


@dataclass
class LayerDamage:
    """One layer's int8 damage: mean per-image cosine to fp32 with only that layer in int8."""

    nodes: list[str]
    op: str
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MixedPrecisionResult:
    """What :func:`search_mixed_precision` found: the fewest most-damaging layers kept float that
    bring the probe cosine to the target (``passed``), and every try on the way."""

    passed: bool
    target_cosine: float
    cosine: float
    kept_float_layers: list[list[str]]
    keep_float: tuple[str, ...]          # the Int8Options.keep_float that was used
    layers: list[LayerDamage]            # every candidate layer, most damaging first
    tries: list[dict[str, Any]]          # {"float_layers": k, "cosine": c}
    probe_images: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        return d


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.sum(a * b, axis=1)))


def _embed(path: str, x: np.ndarray, batch: int = 16) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch
    out = []
    for i in range(0, len(x), step):
        chunk = np.ascontiguousarray(x[i:i + step], dtype=np.float32)
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.ascontiguousarray(np.resize(chunk, (fixed,) + chunk.shape[1:]))
        out.append(np.asarray(sess.run(None, {inp.name: chunk})[0])[:n].reshape(n, -1))
    return np.concatenate(out).astype(np.float32)


def layer_sensitivity(fp32_model: Any, calib_inputs: Any, probe: np.ndarray, options: Int8Options | None = None,
                      calibration_cache: str | os.PathLike | None = None,
                      progress: Callable[[str], None] | None = None) -> list[LayerDamage]:
    """Quantize each candidate layer (:func:`quantizable_layers`) alone, everything else float, and
    measure the mean cosine of the probe images' embeddings to fp32. Most damaging first.

    One calibration serves every layer (``calibration_cache``; a temporary one when None)."""
    import onnx

    opts = (options or Int8Options()).validate()
    model = fp32_model if not isinstance(fp32_model, (str, os.PathLike)) else onnx.load(str(fp32_model))
    with tempfile.TemporaryDirectory(prefix="facedistill-sens-") as tmp:
        cache = str(calibration_cache) if calibration_cache is not None else os.path.join(tmp, "ranges.json")
        prep = prepare_graph(model, opts, tmp)
        layers = _layers(prep)
        all_nodes = [n.name for n in prep.pre.graph.node]
        fp32_path = os.path.join(tmp, "fp32.onnx")
        onnx.save(model, fp32_path)
        ref = _embed(fp32_path, probe)
        out: list[LayerDamage] = []
        q = os.path.join(tmp, "one.int8.onnx")
        for i, layer in enumerate(layers):
            mine = set(layer)
            one = Int8Options(**{**opts.to_dict(), "keep_float": tuple(n for n in all_nodes if n not in mine),
                                 "compact_names": False, "kept_float_weights": "fp32"})
            quantize_int8(model, q, calib_inputs, one, calibration_cache=cache)
            cos = _mean_cosine(ref, _embed(q, probe))
            op = next((n.op_type for n in prep.pre.graph.node if n.name == layer[0]), "?")
            out.append(LayerDamage(nodes=list(layer), op=op, cosine=round(cos, 6)))
            if progress is not None:
                progress(f"sensitivity {i + 1}/{len(layers)}: {layer[0]} cosine {cos:.4f}")
    return sorted(out, key=lambda d: d.cosine)


def search_mixed_precision(fp32_model: Any, out_path: str | os.PathLike, calib_inputs: Any, probe: np.ndarray,
                           options: Int8Options | None = None, target_cosine: float = 0.99,
                           progress: Callable[[str], None] | None = None,
                           layers: list[LayerDamage] | None = None) -> MixedPrecisionResult:
    """Keep the fewest layers float that bring the int8 model's mean probe cosine to fp32 up to
    ``target_cosine``: rank the layers by :func:`layer_sensitivity`, then keep the top k float with
    k = 1, 2, 4, ... until the target is met and bisect down to the smallest such k. The best model
    found (the passing one, else the one with every candidate float) is written to ``out_path``.

    ``probe``: preprocessed images to measure on (use images other than the ones the caller's own
    gate measures on, so the search cannot fit the gate's images)."""
    import shutil

    import onnx

    opts = (options or Int8Options()).validate()
    start = time.time()
    model = fp32_model if not isinstance(fp32_model, (str, os.PathLike)) else onnx.load(str(fp32_model))
    probe = np.asarray(probe, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="facedistill-mixed-") as tmp:
        cache = os.path.join(tmp, "ranges.json")
        fp32_path = os.path.join(tmp, "fp32.onnx")
        onnx.save(model, fp32_path)
        ref = _embed(fp32_path, probe)
        if layers is None:  # a caller raising its target reuses the ranking it already has
            layers = layer_sensitivity(model, calib_inputs, probe, opts, calibration_cache=cache, progress=progress)
        tries: dict[int, float] = {}

        def attempt(k: int) -> float:
            names = tuple(n for layer in layers[:k] for n in layer.nodes)
            o = Int8Options(**{**opts.to_dict(), "keep_float": tuple(opts.keep_float) + names})
            path = os.path.join(tmp, f"k{k}.onnx")
            quantize_int8(model, path, calib_inputs, o, calibration_cache=cache)
            tries[k] = _mean_cosine(ref, _embed(path, probe))
            if progress is not None:
                progress(f"mixed precision: {k} layer(s) float -> cosine {tries[k]:.4f}")
            return tries[k]

        n = len(layers)
        k, good = 1, None
        while k <= n:
            if attempt(k) >= target_cosine:
                good = k
                break
            if k == n:
                break
            k = min(2 * k, n)
        if good is not None:
            # the largest k tried that failed (or 0: the plain int8 the caller already refused)
            lo = max((j for j, c in tries.items() if c < target_cosine and j < good), default=0)
            hi = good
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if attempt(mid) >= target_cosine:
                    hi = mid
                else:
                    lo = mid
            good = hi
        best = good if good is not None else max(tries, key=lambda j: tries[j])
        shutil.copyfile(os.path.join(tmp, f"k{best}.onnx"), str(out_path))
    kept = [layer.nodes for layer in layers[:best]]
    return MixedPrecisionResult(
        passed=good is not None, target_cosine=target_cosine, cosine=round(tries[best], 6),
        kept_float_layers=kept, keep_float=tuple(opts.keep_float) + tuple(n for g in kept for n in g),
        layers=layers, tries=[{"float_layers": j, "cosine": round(c, 6)} for j, c in sorted(tries.items())],
        probe_images=int(len(probe)), seconds=round(time.time() - start, 2))
