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

When plain int8 fails the export's gate, :func:`search_mixed_precision` (per-layer damage from
:func:`layer_sensitivity`, then the fewest most-damaging layers kept float) is the default fallback
(docs/deploy.md section 6; numbers in docs/results.md).

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
  normalisation) and the embedding head (global 1x1 conv, Flatten, Linear, BN1d) stay float as the
  issue asks. Their weights are stored compactly (``kept_float_weights="compact"``): the Linear as
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

PRELU_MODES: tuple[str, ...] = ("float", "qdq", "relu", "linear", "fused")
DEFAULT_PRELU_MODE = "fused"
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


# ----------------------------------------------------------------------------------------------
# graph helpers
# ----------------------------------------------------------------------------------------------
def _consumers(model: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _producers(model: Any) -> dict[str, Any]:
    return {o: node for node in model.graph.node for o in node.output}


def _ranks(model: Any) -> dict[str, list[int | None]]:
    """Shapes of every tensor known to (already run) shape inference; batch dims are None."""
    shapes: dict[str, list[int | None]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def _ensure_names(model: Any) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}_{node.output[0]}"
        seen.add(node.name)


_INPUT_PREP_OPS = ("Sub", "Mul", "Add", "Div", "Cast", "Transpose", "Identity")


def find_stem_nodes(model: Any) -> list[str]:
    """The first conv (it reads the image; after any in-graph normalisation such as Sub/Mul) and the
    activation right after it."""
    _ensure_names(model)
    graph_input = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    cons = _consumers(model)
    prep: list[str] = []
    tensor = graph_input
    for _ in range(8):  # walk over in-graph input normalisation to the first conv
        users = cons.get(tensor, [])
        if len(users) != 1 or users[0].op_type not in _INPUT_PREP_OPS:
            break
        prep.append(users[0].name)
        tensor = users[0].output[0]
    firsts = [n for n in cons.get(tensor, []) if n.op_type == "Conv"]
    if not firsts:
        return []
    stem = prep + [firsts[0].name]
    for nxt in cons.get(firsts[0].output[0], []):
        if nxt.op_type in ("PRelu", "Relu", "LeakyRelu", "BatchNormalization"):
            stem.append(nxt.name)
            if nxt.op_type == "BatchNormalization":
                stem += [n.name for n in cons.get(nxt.output[0], []) if n.op_type in ("PRelu", "Relu")]
    return stem


def find_head_nodes(model: Any) -> list[str]:
    """The embedding head: every node from the first 2-D tensor on (Flatten, Gemm/MatMul, BN1d),
    plus a global conv/BN right before it whose output is already 1x1 (MobileFaceNet's GDC)."""
    import onnx

    _ensure_names(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = _ranks(inferred)
    prods = _producers(model)
    head: list[str] = []
    started = False
    for node in model.graph.node:
        out_shape = shapes.get(node.output[0])
        if not started and out_shape is not None and len(out_shape) == 2:
            started = True
            # walk back over 1x1-output producers (the GDC depthwise conv and its BN/activation)
            back: list[str] = []
            src = next((i for i in node.input if i in prods), None)
            while src is not None:
                p = prods[src]
                s = shapes.get(p.output[0])
                if s is None or len(s) != 4 or s[2:] != [1, 1]:
                    break
                back.append(p.name)
                src = next((i for i in p.input if i in prods), None)
            head.extend(reversed(back))
        if started:
            head.append(node.name)
    return head


def find_depthwise_nodes(model: Any) -> list[str]:
    """Depthwise convs (``group`` > 1) and the activation right after each."""
    _ensure_names(model)
    cons = _consumers(model)
    out: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Conv" and next((a.i for a in node.attribute if a.name == "group"), 1) > 1:
            out.append(node.name)
            out += [n.name for n in cons.get(node.output[0], []) if n.op_type in ("PRelu", "Relu", "LeakyRelu")]
    return out


def rewrite_prelu(model: Any, mode: str, skip: Iterable[str] = ()) -> tuple[Any, int, dict[str, list[str]]]:
    """Rewrite the PRelu nodes of ``model`` (in place) for int8; returns (model, count, old name -> new nodes).

    ``float`` and ``qdq`` leave the graph unchanged (``qdq`` is handled by the quantizer's op list).
    ``relu``: ``Relu(x) + (-s) * Relu(-x)``. ``linear``: ``s * x + (1 - s) * Relu(x)``.
    Both are exact in float for any per-channel slope ``s``. Nodes named in ``skip`` stay PRelu.
    (Nodes kept in float are rewritten too: onnxruntime's fp32 PRelu kernel is slow, while the
    rewrite's per-channel Mul/Relu/Add become fused NCHWc ops.)
    """
    from onnx import helper, numpy_helper

    if mode not in PRELU_MODES:
        raise ExportError(f"PReLU mode must be one of {', '.join(PRELU_MODES)}, got {mode!r}")
    _ensure_names(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    count = sum(1 for n in graph.node if n.op_type == "PRelu")
    skip = set(skip)
    mapping: dict[str, list[str]] = {}
    if mode in ("float", "qdq") or count == 0:
        return model, count, {n.name: [n.name] for n in graph.node if n.op_type == "PRelu"}
    new_nodes = []
    added: list[Any] = []
    for node in graph.node:
        if node.op_type != "PRelu" or node.name in skip:
            new_nodes.append(node)
            continue
        x, s_name = node.input[0], node.input[1]
        y = node.output[0]
        p = node.name
        if s_name not in inits:
            raise ExportError(f"PReLU node {p!r} has a slope that is not a constant; cannot rewrite it "
                              "(use --int8-prelu float)")
        slope = numpy_helper.to_array(inits[s_name]).astype(np.float32)
        if mode == "relu":
            neg_s = numpy_helper.from_array((-slope).astype(np.float32), f"{p}/neg_slope")
            added.append(neg_s)
            nodes = [
                helper.make_node("Relu", [x], [f"{p}/pos"], name=f"{p}/relu_pos"),
                helper.make_node("Neg", [x], [f"{p}/negx"], name=f"{p}/neg"),
                helper.make_node("Relu", [f"{p}/negx"], [f"{p}/negr"], name=f"{p}/relu_neg"),
                helper.make_node("Mul", [f"{p}/negr", neg_s.name], [f"{p}/negpart"], name=f"{p}/mul_slope"),
                helper.make_node("Add", [f"{p}/pos", f"{p}/negpart"], [y], name=f"{p}/add"),
            ]
        elif mode == "fused" and bool(np.all(slope <= 1.0)):
            # s*x + relu((1-s)*x): exact for s <= 1. The Relu reads a Mul that nobody else reads, so
            # the quantizer folds it into that Mul's output quantization (uint8 zero point 0 clips at
            # 0): QLinearMul, QLinearMul, QLinearAdd and no requantizing DQ->Q pair, unlike "linear"
            # whose Relu shares x with the first Mul and keeps its own scale.
            s = numpy_helper.from_array(slope, f"{p}/slope")
            one_minus = numpy_helper.from_array((1.0 - slope).astype(np.float32), f"{p}/one_minus_slope")
            added += [s, one_minus]
            nodes = [
                helper.make_node("Mul", [x, s.name], [f"{p}/sx"], name=f"{p}/mul_slope"),
                helper.make_node("Mul", [x, one_minus.name], [f"{p}/ax"], name=f"{p}/mul_one_minus"),
                helper.make_node("Relu", [f"{p}/ax"], [f"{p}/pos_scaled"], name=f"{p}/relu"),
                helper.make_node("Add", [f"{p}/sx", f"{p}/pos_scaled"], [y], name=f"{p}/add"),
            ]
        else:  # linear (and "fused" for a node with a slope > 1)
            s = numpy_helper.from_array(slope, f"{p}/slope")
            one_minus = numpy_helper.from_array((1.0 - slope).astype(np.float32), f"{p}/one_minus_slope")
            added += [s, one_minus]
            nodes = [
                helper.make_node("Mul", [x, s.name], [f"{p}/sx"], name=f"{p}/mul_slope"),
                helper.make_node("Relu", [x], [f"{p}/pos"], name=f"{p}/relu"),
                helper.make_node("Mul", [f"{p}/pos", one_minus.name], [f"{p}/pos_scaled"], name=f"{p}/mul_one_minus"),
                helper.make_node("Add", [f"{p}/sx", f"{p}/pos_scaled"], [y], name=f"{p}/add"),
            ]
        new_nodes.extend(nodes)
        mapping[p] = [n.name for n in nodes]
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(added)
    # drop slopes nobody reads any more
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model, count, mapping


WEIGHT_ONLY_MIN_ELEMENTS = 16384  # Gemm/MatMul weights stored int8 (weight-only) from this size on
FP16_CONV_MIN_ELEMENTS = 1024     # Conv weights stored float16 (+ Cast, folded at load) from this size on
FP16_CONST_MIN_ELEMENTS = 64      # per-channel constants of float Mul/Add (PReLU slopes) and conv biases


def quantize_weights_only(model: Any, node_names: Iterable[str],
                          min_elements: int = WEIGHT_ONLY_MIN_ELEMENTS,
                          conv_min_elements: int = FP16_CONV_MIN_ELEMENTS) -> list[str]:
    """Shrink the stored weights of the float nodes ``node_names`` (in place); compute stays float.

    * Gemm/MatMul (the embedding head's Linear): symmetric per-output-channel int8 plus a
      DequantizeLinear. onnxruntime dequantizes it on every run (it does not constant-fold DQ in
      QDQ models): cheap for a 512x512 head at batch 1.
    * Conv: float16 plus a Cast to float. onnxruntime constant-folds the Cast at load, so the conv
      still sees a constant fp32 weight and keeps its pre-packed NCHWc kernel; a DequantizeLinear
      there would stop that and was measured ~40% slower on MobileFaceNet.
    * per-channel constants of float Mul/Add nodes (the rewritten PReLU's ``s`` and ``1 - s``, 60 KB
      of a 1.24 MB MobileFaceNet int8 file) and conv biases: float16 plus a Cast, folded at load
      like the conv weights (relative rounding 2^-11, far below the int8 noise around them).

    Returns the names of the weights converted.
    """
    from onnx import TensorProto, helper, numpy_helper

    names = set(node_names)
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    converted: list[str] = []
    new_nodes = []

    def store_fp16(name: str, value: np.ndarray) -> None:
        """Replace initializer ``name`` by a float16 copy plus a Cast back to float (folded at load)."""
        h_name = f"{name}_fp16"
        model.graph.initializer.remove(inits[name])
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float16), h_name))
        new_nodes.append(helper.make_node("Cast", [h_name], [name], name=f"{name}_Cast", to=TensorProto.FLOAT))
        converted.append(name)

    for node in model.graph.node:
        w_name = node.input[1] if len(node.input) > 1 else ""
        if node.name in names and w_name in inits and uses.get(w_name) == 1:
            w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
            if node.op_type == "Conv" and w.size >= conv_min_elements:
                store_fp16(w_name, w)
            elif node.op_type in ("Gemm", "MatMul") and w.size >= min_elements and w.ndim == 2:
                if node.op_type == "Gemm":
                    axis = 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
                else:
                    axis = 1
                amax = np.abs(w).max(axis=1 - axis)
                scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
                shape = [1, 1]
                shape[axis] = -1
                q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
                q_name, s_name, z_name = f"{w_name}_w8", f"{w_name}_w8_scale", f"{w_name}_w8_zero_point"
                model.graph.initializer.remove(inits[w_name])
                model.graph.initializer.extend([numpy_helper.from_array(q, q_name),
                                                numpy_helper.from_array(scale, s_name),
                                                numpy_helper.from_array(np.zeros_like(scale, np.int8), z_name)])
                new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [w_name],
                                                  name=f"{w_name}_DequantizeLinear", axis=axis))
                converted.append(w_name)
        if node.name in names and node.op_type in ("Mul", "Add", "Conv"):
            const_inputs = [2] if node.op_type == "Conv" else range(len(node.input))
            for i in const_inputs:
                c_name = node.input[i] if i < len(node.input) else ""
                if c_name in inits and uses.get(c_name) == 1 and c_name not in converted:
                    c = numpy_helper.to_array(inits[c_name])
                    if c.dtype == np.float32 and c.size >= FP16_CONST_MIN_ELEMENTS:
                        store_fp16(c_name, c)
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return converted


def drop_zero_points(model: Any) -> int:
    """Remove (in place) the all-zero zero-point inputs of the DequantizeLinear nodes that feed a conv
    its constant weights or bias; returns how many. Lossless: a missing zero point is 0.

    The quantizer writes one int8 zero point per weight channel and one int32 per bias channel, all
    0 for symmetric weights: about 49 KB of a 1.17 MB MobileFaceNet int8 file, where the weights
    themselves are 0.98 MB. onnxruntime still fuses DQ -> Conv -> Q into QLinearConv without them
    (outputs bit-identical, tested). Gemm/MatMul weights keep theirs: without it onnxruntime leaves
    the head as DQ + float Gemm instead of QGemm.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dropped = 0
    for node in graph.node:
        if (node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[0] not in inits
                or node.input[2] not in inits):
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(u.op_type != "Conv" for u in users):
            continue
        if numpy_helper.to_array(inits[node.input[2]]).any():
            continue
        del node.input[2]
        dropped += 1
    if dropped:
        used = {name for node in graph.node for name in node.input}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return dropped


def compact_names(model: Any) -> Any:
    """Rename (in place) every tensor but the graph's inputs and outputs to ``t<i>`` and every node
    to ``n<i>``; drops ``value_info`` (shape inference recomputes it)."""
    graph = model.graph
    if any(a.type in (5, 10) for n in graph.node for a in n.attribute):  # GRAPH / GRAPHS: leave as is
        return model
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    keep -= {t.name for t in graph.initializer}
    mapping: dict[str, str] = {"": ""}

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping)}"
        return mapping[name]

    for t in graph.initializer:
        t.name = short(t.name)
    for i in graph.input:
        i.name = short(i.name)
    for k, node in enumerate(graph.node):
        node.name = f"n{k}"
        for j, name in enumerate(node.input):
            node.input[j] = short(name)
        for j, name in enumerate(node.output):
            node.output[j] = short(name)
    del graph.value_info[:]
    return model


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


# ----------------------------------------------------------------------------------------------
# quantization
# ----------------------------------------------------------------------------------------------
class PreprocessedImages:
    """Calibration images kept as uint8 faces and preprocessed one batch at a time.

    Holding N x 112 x 112 x 3 uint8 (37 KB an image) instead of the float32 tensors (150 KB) keeps
    the calibration memory of ``--calib-images 3000`` at ~110 MB; together with the streamed
    calibration (:func:`quantize_int8` feeds the calibrator one batch per collect) peak memory no
    longer grows with the number of calibration images.
    """

    def __init__(self, images: np.ndarray, preprocess: Callable[[np.ndarray], np.ndarray]) -> None:
        self.images = images
        self.preprocess = preprocess
        self.shape = (len(images), 3) + tuple(images.shape[1:3])
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> np.ndarray:
        return np.asarray(self.preprocess(self.images[index]), dtype=np.float32)


def _calib_reader(inputs: Any, input_name: str, batch: int, progress: Callable[[int], None] | None,
                  fixed: bool = False):
    """A calibration reader that onnxruntime drives in strides (``CalibStridedMinMax``): one batch
    per ``collect_data`` call, so the calibrator never holds more than one batch of intermediate
    tensors (histogram methods keep only their merged histograms between batches)."""
    from onnxruntime.quantization import CalibrationDataReader

    n_batches = -(-len(inputs) // batch)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, n_batches)

        def __len__(self) -> int:
            return n_batches

        def set_range(self, start_index: int, end_index: int) -> None:
            self._starts = iter(range(start_index * batch, min(end_index * batch, len(inputs)), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._starts, None)
            if start is None:
                return None
            chunk = np.ascontiguousarray(inputs[start:start + batch], dtype=np.float32)
            if progress is not None:
                progress(len(chunk))
            if fixed and len(chunk) < batch:  # a fixed-batch graph: repeat images to fill the batch
                chunk = np.ascontiguousarray(np.resize(chunk, (batch,) + chunk.shape[1:]))
            return {input_name: chunk}

        def rewind(self) -> None:
            self.set_range(0, n_batches)

    return _Reader()


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
class _Prepared:
    """The fp32 graph as the quantizer sees it: BatchNorm folded, PReLU rewritten, names fixed."""

    ready: Any                     # onnx.ModelProto ready for quantize_static
    pre: Any                       # after quant_pre_process, before the PReLU rewrite
    input_name: str
    fixed_batch: int | None
    n_prelu: int
    mapping: dict[str, list[str]]  # PRelu node name -> the nodes that replaced it
    excluded: list[str]            # nodes of the keep_float parts (names in ``ready``)
    keep_float: list[str] = field(default_factory=list)  # options.keep_float with "auto" resolved


def _prepare(fp32_model: Any, opts: Int8Options, tmp: str) -> _Prepared:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = fp32_model if not isinstance(fp32_model, (str, os.PathLike)) else onnx.load(str(fp32_model))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
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
    _ensure_names(pre_model)
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
    return _Prepared(ready=rewritten, pre=pre_copy, input_name=graph_input.name, fixed_batch=fixed_batch,
                     n_prelu=n_prelu, mapping=mapping, excluded=excluded, keep_float=keep)


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
        prep = _prepare(fp32_model, opts, tmp)
    return _layers(prep)


def _layers(prep: _Prepared) -> list[list[str]]:
    model = prep.pre
    cons = _consumers(model)
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
    import contextlib
    import io

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    opts = (options or Int8Options()).validate()
    cache_hit = calibration_cache is not None and os.path.isfile(calibration_cache)
    if not isinstance(calib_inputs, PreprocessedImages):
        calib_inputs = np.asarray(calib_inputs, dtype=np.float32)
    if not cache_hit and (calib_inputs.ndim != 4 or len(calib_inputs) == 0):
        raise ExportError(f"int8 calibration needs N x 3 x H x W images, got shape {calib_inputs.shape}")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="facedistill-int8-") as tmp:
        prep = _prepare(fp32_model, opts, tmp)
        excluded = prep.excluded
        ready = os.path.join(tmp, "ready.onnx")
        onnx.save(prep.ready, ready)
        op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry) | ({"PRelu"} if opts.prelu == "qdq" else set()))
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[opts.method]
        extra: dict[str, Any] = {"ActivationSymmetric": opts.activations == "int8", "WeightSymmetric": True,
                                 "CalibStridedMinMax": 1}  # one batch per collect: bounded memory
        if opts.method == "percentile":
            extra["CalibPercentile"] = float(opts.percentile)
        reader = None if cache_hit else _calib_reader(calib_inputs, prep.input_name,
                                                      prep.fixed_batch or opts.calib_batch, progress,
                                                      fixed=prep.fixed_batch is not None)
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
    counts = Counter(n.op_type for n in quantized.graph.node)
    return QuantizeResult(prelu_mode=opts.prelu, prelu_count=prep.n_prelu, excluded_nodes=excluded,
                          calibration_images=0 if cache_hit else int(len(calib_inputs)), method=opts.method,
                          seconds=round(time.time() - start, 2),
                          quantized_ops={k: v for k, v in counts.most_common()}, keep_float=prep.keep_float)


# ----------------------------------------------------------------------------------------------
# sensitivity-guided mixed precision
# ----------------------------------------------------------------------------------------------
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
        prep = _prepare(model, opts, tmp)
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


__all__ += ["int8_options_from_cli", "save_model", "LayerDamage", "MixedPrecisionResult", "PreprocessedImages",
            "layer_sensitivity", "quantizable_layers", "search_mixed_precision"]
