"""int8 export: onnxruntime static quantization (QDQ, per-channel weights) of a face backbone.

Pipeline (:func:`quantize_int8`)::

    fp32 ONNX (simplified, dynamic batch, opset <= 20)
      -> quant_pre_process   symbolic shape inference + onnxruntime's basic graph optimisation
                             (Conv+BatchNorm folding; the pre-activation BN of IResNet blocks sits
                             before a padded conv and cannot be folded exactly, so it stays)
      -> PReLU rewrite       ``s*x + relu((1-s)*x)`` (``prelu="fused"``, exact for s <= 1; a node
                             with a steeper slope gets ``linear``), see below
      -> quantize_static     QDQ, symmetric per-channel int8 weights in 7 bits (``reduce_range``: no
                             saturation in x86 kernels without VNNI), uint8 activations, calibration
                             on real face images streamed one batch per collect (bounded memory;
                             Percentile 99.999 by default, MinMax and Entropy selectable), nodes of the parts
                             in ``keep_float`` excluded (``auto``: stem/head/depthwise/PReLU in a PReLU
                             network, nothing otherwise)
      -> compact storage     weights of the excluded (float) layers: the head's Linear as
                             weight-only int8, convs as fp16 + Cast (``kept_float_weights``);
                             tensor/node names compacted

When plain int8 fails the export's gate,
:func:`facedistill.export.mixed_precision.search_mixed_precision` (per-layer damage from
``layer_sensitivity``, then the fewest most-damaging layers kept float) is the default fallback
(docs/deploy.md section 6; numbers in docs/results.md).

This module holds the settings (:class:`Int8Options`, each default with its measurement below) and
the quantizer call; the graph rewrites are in :mod:`facedistill.export.graph_rewrites`, the stem /
head / depthwise lookups in :mod:`facedistill.export.graph_parts`, the calibration readers in
:mod:`facedistill.export.calibration`.

Note for AVX2-only CPUs (docs/results.md, "int8 speed"): the measurements below were taken with 8-bit
weights on an AVX512-VNNI machine. On a CPU without VNNI the all-int8 trunk with the ``fused`` PReLU
rewrite was faster than the depthwise/PReLU-float default (benchmarks/int8_speed.py), and a ReLU6
network (``mobilefacenet_s_relu6``) is faster still; the default was left accuracy-first.

Defaults, and why (measured; reproduce with ``benchmarks/int8_export.py --prelu-sweep``):

* onnxruntime has no quantized PReLU, and its fp32 ``PRelu`` kernel is slow: in a per-op profile of
  the fp32 MobileFaceNet (1 thread, batch 1) the 33 PRelu nodes took 61% of the time (24.9 of 40.9 ms).
  ``rewrite_prelu(..., "linear")`` replaces each by Mul/Relu/Mul/Add, exact for any per-channel
  slope; in float those become fused NCHWc ops (the fp32 model alone gets 2.35x faster), in int8
  QLinearMul/QLinearAdd (every op between convs stays int8). ``relu`` (``relu(x) - s*relu(-x)``)
  leaves a float Neg; ``qdq`` and ``float`` leave DQ -> PRelu(fp32) -> Q, slower than fp32 itself.
* onnxruntime's int8 depthwise conv (QLinearConv, group > 1) is ~4x slower on this x86 CPU than its
  fp32 NCHWc depthwise conv (14.5 vs 3.8 ms for MobileFaceNet's), while dense/1x1 QLinearConvs are
  2.5-3x faster than fp32. So depthwise convs stay float (``"depthwise"``), and so do the rewritten
  PReLUs around them (``"prelu"``): fewer Q/DQ hops, and the most accurate variant measured.
* uint8 activations (U8S8): with int8 activations onnxruntime left most convs in float behind
  Transposes and ran slower (20.5 vs 16.3 ms); ``activations="int8"`` remains available.
* ``keep_float`` default ``("stem", "head", "depthwise", "prelu")``: the first conv (+ input
  normalisation) and the embedding head (global 1x1 conv, Flatten, Linear, BN1d) stay float.
  Their weights are stored compactly (``kept_float_weights="compact"``): the Linear as
  weight-only int8 (cosine to fp32 unchanged to 4 decimals on SFace), conv weights as fp16 + Cast.
  Not int8 + DequantizeLinear for convs: onnxruntime does not fold a DQ in a QDQ model, the conv then
  loses its pre-packed NCHWc weights, and MobileFaceNet ran ~40% slower; the Cast is folded at load
  (measured: 11.7 ms compact vs 11.8 ms fp32-kept weights, 2.33 vs 3.23 MB).

MobileFaceNet (random init, BatchNorm statistics from synthetic faces), onnxruntime 1.32, 1 thread,
batch 1, interleaved timing on this 2-core AVX512-VNNI Xeon shared with other jobs (load 4-6, so
+-15%); cosine = mean per-image cosine to fp32 on 256 synthetic faces::

    graph                                      MB    b1 ms   x fp32   cosine
    fp32 as exported (PRelu)                  8.21   28.6     1.00    1
    fp32, PReLU linear rewrite                8.30   12.2     2.35    1
    int8 PReLU float, stem+head float         2.27   37.3     0.77    0.799
    int8 PReLU qdq,   stem+head float         2.26   36.0     0.79    0.799
    int8 PReLU relu,  stem+head float         2.29   19.1     1.50    0.788
    int8 PReLU linear, stem+head float        2.30   18.0     1.59    0.799
    int8 PReLU linear, all int8               2.30   18.1     1.58    0.762
    int8 linear, + depthwise float            2.36   10.5     2.71    0.862
    int8 default (+ PReLU float)              2.38   10.4     2.75    0.878   (dw conv weights fp32)
    int8 default, compact kept weights        2.33   11.7     2.70    -       (separate run: fp32 31.5 ms)

A random network amplifies quantisation noise (hence the low cosines); on a *trained* PReLU
MobileNet-style face model (OpenCV Zoo's SFace, fp32-folded, LFW folds 1-2, 1200 pairs, calibrated
on 300 LFW images): fp32 99.25%; int8 PReLU-float 99.33% (cos 0.991); all-int8 linear 99.17% (cos
0.983); default 99.33% (cos 0.996) -- every variant within one pair of fp32. On SFace (wide 1x1
convs up to 1024 channels) the all-int8 graph was the fastest (14.0 vs 23.0 ms fp32) and the
depthwise-float default slower (16.8 ms with fp32 kept weights; 25.4 ms when all kept weights were
int8 + DequantizeLinear, before the fp16 conv storage): the defaults are tuned for MobileFaceNet, other
architectures should be swept (``--int8-keep-float stem,head`` gives the all-int8 trunk). ARM
targets have no NCHWc fp32 kernels; sweep on the device there.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from facedistill.errors import ExportError
from facedistill.export.calibration import PreprocessedImages, calibration_reader
from facedistill.export.graph_parts import (ensure_names, find_depthwise_nodes, find_head_nodes, find_stem_nodes,
                                            graph_opset)
from facedistill.export.graph_rewrites import (DEFAULT_PRELU_MODE, PRELU_MODES, compact_names, drop_zero_points,
                                               quantize_weights_only, rewrite_prelu)

__all__ = [
    "CALIB_METHODS",
    "DEFAULT_PRELU_MODE",
    "MAX_INT8_OPSET",
    "MIN_INT8_OPSET",
    "PRELU_MODES",
    "Int8Options",
    "QuantizeResult",
    "compact_names",
    "drop_zero_points",
    "find_depthwise_nodes",
    "find_head_nodes",
    "find_stem_nodes",
    "optimized_op_counts",
    "quantize_int8",
    "quantize_weights_only",
    "rewrite_prelu",
]

CALIB_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES: tuple[str, ...] = ("uint8", "int8")
KNOWN_PARTS: tuple[str, ...] = ("stem", "head", "depthwise", "prelu", "auto")
# What stays float in a PReLU network: measured fastest *and* most accurate on x86 (see the module docstring).
KEEP_FLOAT_PARTS: tuple[str, ...] = ("stem", "head", "depthwise", "prelu")
# The default, "auto": KEEP_FLOAT_PARTS when the graph has PReLU nodes, nothing otherwise. A network
# without PReLU (ReLU/ReLU6/Clip after each conv: the MobileFaceNet *_relu6 variants, most public int8
# face models) quantizes to back-to-back fused QLinearConvs, depthwise ones included, and that all-int8
# graph is the fastest (benchmarks/int8_speed.py: 94% of its time in QLinearConv, no Q/DQ hops).
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("auto",)
# onnxruntime's static quantizer handles the default ONNX domain up to this opset.
MAX_INT8_OPSET = 20
# Per-channel weights need QuantizeLinear/DequantizeLinear's ``axis`` attribute, which opset 13 added
# (an opset-12 graph quantizes, then fails to load: "Unrecognized attribute: axis").
MIN_INT8_OPSET = 13


@dataclass
class Int8Options:
    """Settings of :func:`quantize_int8` (all have CLI flags)."""

    method: str = "percentile"  # measured best on trained students (docs/results.md, "int8 accuracy")
    prelu: str = DEFAULT_PRELU_MODE
    keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT  # parts (KNOWN_PARTS) and/or node names
    per_channel: bool = True
    # 7-bit weights. onnxruntime's u8s8 int8 kernels on x86 CPUs without VNNI (AVX2, AVX-512F) add
    # pairs of u8*s8 products in int16 and saturate with full 8-bit weights: on such a CPU (an AVX2 EPYC
    # here) the fused int8 graph disagreed with its own QDQ reference (cosine 0.55 on a random ReLU6
    # MobileFaceNet) and with emulated aarch64. 7-bit weights cannot saturate, so every kernel (VNNI,
    # AVX2, ARM dot-product) computes the same thing. Off: a little more weight precision for
    # VNNI/ARM-only targets.
    reduce_range: bool = True
    activations: str = "uint8"
    percentile: float = 99.999
    calib_batch: int = 16
    # Weights of the nodes kept in float: "compact" stores the head's Linear as weight-only int8 and
    # conv weights as float16 (see quantize_weights_only; compute stays float, the file shrinks);
    # "fp32" leaves them as they are.
    kept_float_weights: str = "compact"
    # Rename the int8 graph's tensors and nodes to short ids (t12, n34): QDQ graphs repeat long
    # layer-path names thousands of times (~10% of a MobileFaceNet int8 file). Inputs/outputs keep
    # their names; the fp32 file keeps the layer names for debugging.
    compact_names: bool = True

    def validate(self) -> "Int8Options":
        if self.method not in CALIB_METHODS:
            raise ExportError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got {self.method!r}")
        if self.prelu not in PRELU_MODES:
            raise ExportError(f"PReLU mode must be one of {', '.join(PRELU_MODES)}, got {self.prelu!r}")
        if self.activations not in ACTIVATION_TYPES:
            raise ExportError(f"activation type must be one of {', '.join(ACTIVATION_TYPES)}, got {self.activations!r}")
        if not (50.0 < float(self.percentile) <= 100.0):
            raise ExportError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.kept_float_weights not in ("compact", "fp32"):
            raise ExportError(f"kept weights must be 'compact' or 'fp32', got {self.kept_float_weights!r}")
        if self.calib_batch < 1:
            raise ExportError("calibration batch must be >= 1")
        self.keep_float = tuple(str(k).strip() for k in self.keep_float if str(k).strip() and str(k) != "none")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        return d


@dataclass
class QuantizeResult:
    """What :func:`quantize_int8` did."""

    prelu_mode: str
    prelu_count: int
    excluded_nodes: list[str]
    calibration_images: int
    method: str
    seconds: float
    quantized_ops: dict[str, int] = field(default_factory=dict)
    keep_float: list[str] = field(default_factory=list)  # the parts/nodes kept float, "auto" resolved

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_excluded(model: Any, keep_float: Iterable[str], stem: list[str], head: list[str],
                      depthwise: list[str] | None = None) -> list[str]:
    names = [n.name for n in model.graph.node]
    known = set(names)
    out: list[str] = []
    for item in keep_float:
        if item == "stem":
            group = stem
        elif item == "head":
            group = head
        elif item == "depthwise":
            group = depthwise if depthwise is not None else find_depthwise_nodes(model)
        elif item == "prelu":
            group = [n.name for n in model.graph.node if n.op_type == "PRelu"]
        else:
            if item not in known:
                example = next((n for n in names if "Conv" in n), names[0] if names else "")
                raise ExportError(f"--int8-keep-float: not a part ({', '.join(KNOWN_PARTS)}) nor a node named {item!r} in the graph (after BatchNorm "
                                  f"folding; node names look like {example!r})")
            group = [item]
        out += [name for name in group if name in known and name not in out]
    return out


@dataclass
class PreparedGraph:
    """The fp32 graph as the quantizer sees it: BatchNorm folded, PReLU rewritten, names fixed."""

    ready: Any                     # onnx.ModelProto ready for quantize_static
    pre: Any                       # after quant_pre_process, before the PReLU rewrite
    input_name: str
    fixed_batch: int | None
    n_prelu: int
    mapping: dict[str, list[str]]  # PRelu node name -> the nodes that replaced it
    excluded: list[str]            # nodes of the keep_float parts (names in ``ready``)
    keep_float: list[str] = field(default_factory=list)  # options.keep_float with "auto" resolved


def prepare_graph(fp32_model: Any, opts: Int8Options, tmp: str) -> PreparedGraph:
    """The fp32 graph as the quantizer will see it (files under ``tmp``); refuses an opset it cannot take."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = fp32_model if not isinstance(fp32_model, (str, os.PathLike)) else onnx.load(str(fp32_model))
    opset = graph_opset(model)
    if opset > MAX_INT8_OPSET:
        raise ExportError(f"int8 needs opset <= {MAX_INT8_OPSET} (onnxruntime's static quantizer); the model "
                          f"has opset {opset}. Export with --opset {MAX_INT8_OPSET} or lower.")
    if opset < MIN_INT8_OPSET and opts.per_channel:
        raise ExportError(f"per-channel int8 needs opset >= {MIN_INT8_OPSET} (DequantizeLinear's axis); the model "
                          f"has opset {opset}. Export with --opset {MIN_INT8_OPSET} or newer.")
    graph_input = next(i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    dim0 = graph_input.type.tensor_type.shape.dim[0]
    fixed_batch = int(dim0.dim_value) if dim0.HasField("dim_value") else None
    src = os.path.join(tmp, "fp32.onnx")
    pre = os.path.join(tmp, "pre.onnx")
    onnx.save(model, src)
    try:
        quant_pre_process(src, pre, skip_symbolic_shape=False)
    except Exception as e:  # the symbolic shape pass gives up on some graphs; the basic one suffices
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=True)
        except Exception as e2:
            raise ExportError(f"int8 pre-processing (shape inference, BatchNorm folding) failed: {e2} "
                              f"(first try: {e})") from e2
    pre_model = onnx.load(pre)
    ensure_names(pre_model)
    pre_copy = onnx.ModelProto()
    pre_copy.CopyFrom(pre_model)
    stem = find_stem_nodes(pre_model)
    head = find_head_nodes(pre_model)
    depthwise = find_depthwise_nodes(pre_model)
    has_prelu = any(n.op_type == "PRelu" for n in pre_model.graph.node)
    keep: list[str] = []
    for item in opts.keep_float:
        for part in ((KEEP_FLOAT_PARTS if has_prelu else ()) if item == "auto" else (item,)):
            if part not in keep:
                keep.append(part)
    excluded_pre = _resolve_excluded(pre_model, keep, stem, head, depthwise)
    rewritten, n_prelu, mapping = rewrite_prelu(pre_model, opts.prelu)
    rewritten = onnx.shape_inference.infer_shapes(rewritten)
    excluded = [new for name in excluded_pre for new in mapping.get(name, [name])]
    return PreparedGraph(ready=rewritten, pre=pre_copy, input_name=graph_input.name, fixed_batch=fixed_batch,
                     n_prelu=n_prelu, mapping=mapping, excluded=excluded, keep_float=keep)


def quantize_int8(fp32_model: Any, out_path: str | os.PathLike, calib_inputs: Any,
                  options: Int8Options | None = None,
                  progress: Callable[[int], None] | None = None,
                  calibration_cache: str | os.PathLike | None = None) -> QuantizeResult:
    """Quantize ``fp32_model`` (an ``onnx.ModelProto`` or a path) to an int8 QDQ model at ``out_path``.

    ``calib_inputs``: preprocessed float32 N x 3 x H x W calibration images (a few hundred real
    faces), or a :class:`PreprocessedImages` (uint8 faces preprocessed batch by batch). The
    calibrator is fed one batch (``options.calib_batch`` images) per collect, so its memory is capped
    by the batch, not by N. ``progress(n)`` is called with the number of calibration images fed.
    ``calibration_cache``: a JSON file of tensor ranges; written after calibrating when it does not
    exist, read (and the images not run at all) when it does -- repeated quantizations of one graph
    with different ``keep_float`` (the mixed-precision search) calibrate once. Writes ``out_path``
    directly (the caller owns atomicity) without metadata.
    """
    import onnx

    opts = (options or Int8Options()).validate()
    cache_hit = calibration_cache is not None and os.path.isfile(calibration_cache)
    if not isinstance(calib_inputs, PreprocessedImages):
        calib_inputs = np.asarray(calib_inputs, dtype=np.float32)
    if not cache_hit and (calib_inputs.ndim != 4 or len(calib_inputs) == 0):
        raise ExportError(f"int8 calibration needs N x 3 x H x W images, got shape {calib_inputs.shape}")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="facedistill-int8-") as tmp:
        prep = prepare_graph(fp32_model, opts, tmp)
        ready = os.path.join(tmp, "ready.onnx")
        onnx.save(prep.ready, ready)
        reader = None if cache_hit else calibration_reader(calib_inputs, prep.input_name,
                                                           prep.fixed_batch or opts.calib_batch, progress,
                                                           fixed=prep.fixed_batch is not None)
        _quantize_static(ready, out_path, reader, opts, prep.excluded, calibration_cache)
    counts = _compact_storage(out_path, opts, prep.excluded)
    return QuantizeResult(prelu_mode=opts.prelu, prelu_count=prep.n_prelu, excluded_nodes=prep.excluded,
                          calibration_images=0 if cache_hit else int(len(calib_inputs)), method=opts.method,
                          seconds=round(time.time() - start, 2),
                          quantized_ops={k: v for k, v in counts.most_common()}, keep_float=prep.keep_float)


def _quantize_static(ready: str, out_path: str | os.PathLike, reader: Any, opts: Int8Options, excluded: list[str],
                     calibration_cache: str | os.PathLike | None) -> None:
    """onnxruntime's ``quantize_static`` with the options' settings (QDQ, one batch per collect)."""
    import contextlib
    import io

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry) | ({"PRelu"} if opts.prelu == "qdq" else set()))
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.method]
    extra: dict[str, Any] = {"ActivationSymmetric": opts.activations == "int8", "WeightSymmetric": True,
                             "CalibStridedMinMax": 1}  # one batch per collect: bounded memory
    if opts.method == "percentile":
        extra["CalibPercentile"] = float(opts.percentile)
    kwargs: dict[str, Any] = {}
    if calibration_cache is not None:
        kwargs["calibration_cache_path"] = str(calibration_cache)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram collector prints per batch
            quantize_static(
                ready, str(out_path), reader,
                quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types, per_channel=opts.per_channel,
                reduce_range=opts.reduce_range,
                activation_type=QuantType.QUInt8 if opts.activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=excluded, calibrate_method=method,
                extra_options=extra, **kwargs,
            )
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"onnxruntime static quantization failed: {type(e).__name__}: {e}") from e


def _compact_storage(out_path: str | os.PathLike, opts: Int8Options, excluded: list[str]) -> Counter:
    """The quantizer's file, rewritten in place: no metadata, compact kept weights, no zero zero points,
    short names (:mod:`facedistill.export.graph_rewrites`). Returns its op counts."""
    import onnx

    quantized = onnx.load(str(out_path), load_external_data=False)
    # quantize_static copies the source's metadata (an fp32 export's says "precision: fp32"): drop it,
    # the caller writes the int8 file's own
    changed = bool(len(quantized.metadata_props))
    del quantized.metadata_props[:]
    if opts.kept_float_weights == "compact" and excluded:
        changed = bool(quantize_weights_only(quantized, excluded)) or changed
    if drop_zero_points(quantized):
        changed = True
    if opts.compact_names:
        compact_names(quantized)
        changed = True
    if changed:
        onnx.save(quantized, str(out_path))
    return Counter(n.op_type for n in quantized.graph.node)


def optimized_op_counts(path: str | os.PathLike, threads: int = 1) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (after its optimisations: QLinearConv, ...)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="facedistill-opt-") as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = out
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(out, load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def int8_options_from_cli(method: str, prelu: str, keep_float: Sequence[str] | str | None,
                          per_channel: bool = True, activations: str = "uint8",
                          percentile: float = 99.999, kept_weights: str = "compact",
                          calib_batch: int = 16, weight_bits: int = 7) -> Int8Options:
    """Build options from CLI strings (``keep_float`` as 'stem,head,...', 'none' or node names)."""
    if keep_float is None:
        parts: tuple[str, ...] = DEFAULT_KEEP_FLOAT
    elif isinstance(keep_float, str):
        parts = tuple(p.strip() for p in keep_float.split(",") if p.strip())
    else:
        parts = tuple(keep_float)
    if "none" in parts:
        parts = ()
    return Int8Options(method=method.lower(), prelu=prelu.lower(), keep_float=parts, per_channel=per_channel,
                       activations=activations.lower(), percentile=percentile,
                       kept_float_weights=kept_weights.lower(), calib_batch=int(calib_batch),
                       reduce_range=_reduce_range(weight_bits)).validate()


def _reduce_range(weight_bits: int) -> bool:
    if int(weight_bits) not in (7, 8):
        raise ExportError(f"int8 weight bits must be 7 (portable: no saturation on AVX2 x86) or 8, got {weight_bits}")
    return int(weight_bits) == 7


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Write an ONNX model, fsync'd (the caller renames it into place)."""
    data = model.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


__all__ += ["int8_options_from_cli", "save_model", "PreparedGraph", "PreprocessedImages", "prepare_graph"]
