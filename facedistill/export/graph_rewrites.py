"""Rewrites of an ONNX graph on its way to int8, each in place and exact or lossless where it says so:

* :func:`rewrite_prelu`: PRelu as Mul/Relu/Add (onnxruntime has no quantized PReLU and a slow fp32 one);
* :func:`quantize_weights_only`: compact storage of the weights of the layers kept float;
* :func:`drop_zero_points`: the all-zero zero points of symmetric conv weights;
* :func:`compact_names`: short tensor and node names.

Why each is there, with the measurements, is in :mod:`facedistill.export.quantize`.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from facedistill.errors import ExportError
from facedistill.export.graph_parts import ensure_names

__all__ = ["DEFAULT_PRELU_MODE", "PRELU_MODES", "compact_names", "drop_zero_points", "quantize_weights_only",
           "rewrite_prelu"]

PRELU_MODES: tuple[str, ...] = ("float", "qdq", "relu", "linear", "fused")
DEFAULT_PRELU_MODE = "fused"


def rewrite_prelu(model: Any, mode: str, skip: Iterable[str] = ()) -> tuple[Any, int, dict[str, list[str]]]:
    """Rewrite the PRelu nodes of ``model`` (in place) for int8; returns (model, count, old name -> new nodes).

    ``float`` and ``qdq`` leave the graph unchanged (``qdq`` is handled by the quantizer's op list).
    ``relu``: ``Relu(x) + (-s) * Relu(-x)``. ``linear``: ``s * x + (1 - s) * Relu(x)``.
    Both are exact in float for any per-channel slope ``s``. Nodes named in ``skip`` stay PRelu.
    (Nodes kept in float are rewritten too: onnxruntime's fp32 PRelu kernel is slow, while the
    rewrite's per-channel Mul/Relu/Add become fused NCHWc ops.)
    """
    from onnx import numpy_helper

    if mode not in PRELU_MODES:
        raise ExportError(f"PReLU mode must be one of {', '.join(PRELU_MODES)}, got {mode!r}")
    ensure_names(model)
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
        p = node.name
        if node.input[1] not in inits:
            raise ExportError(f"PReLU node {p!r} has a slope that is not a constant; cannot rewrite it "
                              "(use --int8-prelu float)")
        slope = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        nodes, constants = _prelu_nodes(mode, p, node.input[0], node.output[0], slope)
        added += constants
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


def _prelu_nodes(mode: str, p: str, x: str, y: str, slope: np.ndarray) -> tuple[list[Any], list[Any]]:
    """The nodes that compute PRelu node ``p`` (input ``x``, output ``y``) in ``mode``, and their constants."""
    from onnx import helper, numpy_helper

    added: list[Any] = []
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
    return nodes, added


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
