"""Import an ONNX face model's weights into a registered backbone: a pretrained start for a student.

Exporters fold each BatchNorm into the convolution before it, so an ONNX MobileFaceNet holds
``Conv(W, b)`` where the torch backbone has ``Conv(W) -> BatchNorm``. The import gives that
BatchNorm unit statistics (running mean 0, running var ``1 - eps``, weight 1, so it is an identity)
and the conv bias as its shift: the torch model computes what the file computes, and its
BatchNorms train again when fine-tuning starts. A BatchNormalization node the exporter kept is
copied as it is.

How layers are matched: by graph order, never by name (a Paddle or torch export names nothing like
arcface_torch). The ONNX graph is read in its topological order (the ONNX spec requires it) as a
list of *units*: a convolution (with its bias and an unfolded BatchNormalization after it), a
linear layer (Gemm, MatMul + Add, or a 1x1 Conv on the 1x1 map after the GDC head), an activation
(PRelu, Relu, Clip 0..6, LeakyRelu) or a lone BatchNormalization. Residual Adds and shape plumbing
(Reshape, Flatten, Shape, Gather, ...) carry no weights and are skipped. The backbone's units come
from the order its leaf modules run in on a probe forward pass. The two lists are zipped; the first
pair that differs in kind, shape, groups, stride or padding stops the import with both sides
named. Matching weights are not proof of matching wiring (a missing shortcut), so the import then
runs the file in onnxruntime and the backbone in torch on the same probe batch and refuses a
result whose worst cosine is below :data:`PARITY_MIN_COSINE`.

Preprocessing is not in the weights: :func:`recorded_preprocessing` reads it from the file's
metadata when a facedistill export wrote it; public files rarely carry it, and then the caller must
say it (a recipe's ``student.mean``/``std``/``channel_order``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from facedistill.data.preprocessing import Preprocessing, same_preprocessing
from facedistill.errors import CheckpointError

__all__ = ["OnnxImport", "PARITY_MIN_COSINE", "import_onnx_backbone", "is_onnx_file", "onnx_parity",
           "read_onnx_units", "recorded_preprocessing"]

# An imported backbone computes the file's function up to float rounding: both public
# MobileFaceNets reach a worst cosine above 0.99999 on LFW faces (tests/models/test_onnx_import.py).
PARITY_MIN_COSINE = 0.9999
_PROBE_IMAGES = 4

# weightless ops: shape plumbing, and Add between two activations (a residual shortcut)
_SKIPPED_OPS = {"Constant", "Identity", "Dropout", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat",
                "Reshape", "Flatten", "Cast"}
_ACTIVATION_OPS = {"PRelu": "prelu", "Relu": "relu", "LeakyRelu": "leaky"}
_TORCH_ACTIVATIONS: dict[type, str] = {nn.PReLU: "prelu", nn.ReLU: "relu", nn.ReLU6: "relu6",
                                       nn.LeakyReLU: "leaky"}


def is_onnx_file(path: str | os.PathLike) -> bool:
    """An ``.onnx`` file (by suffix; content is checked when it is read)."""
    return Path(path).suffix.lower() == ".onnx" and Path(path).is_file()


# ================================================================================================
# The ONNX side
# ================================================================================================
@dataclass
class OnnxUnit:
    """One weight-carrying step of the graph, in graph order."""

    kind: str  # conv | linear | bn | prelu | relu | relu6 | leaky
    node: str  # the ONNX node's name (op and index when it has none)
    weight_name: str = ""
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    bias_name: str = ""
    groups: int = 1
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    alpha: float = 0.0  # LeakyRelu slope
    bn: dict[str, np.ndarray] | None = None  # an unfolded BatchNormalization: scale, B, mean, var, eps
    bn_node: str = ""

    def describe(self) -> str:
        what = f"ONNX node {self.node!r} ({self.kind}"
        if self.weight is not None:
            what += f", initializer {self.weight_name!r} {tuple(self.weight.shape)}"
        if self.kind == "conv":
            what += f", groups {self.groups}, stride {self.stride}, padding {self.padding}"
        return what + ")"


@dataclass
class OnnxGraph:
    units: list[OnnxUnit]
    input_name: str
    input_shape: tuple[Any, ...]
    output_dim: int | None
    skipped: dict[str, int] = field(default_factory=dict)  # op -> count
    residual_adds: int = 0


def _load(path: str | os.PathLike) -> Any:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError, truncated file, ...
        raise CheckpointError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def _dims(value_info: Any) -> tuple[Any, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def read_onnx_units(path: str | os.PathLike) -> OnnxGraph:
    """The graph of an ONNX face model as weight units in graph order (see the module docstring).

    Raises CheckpointError naming the file and node for what is not a single-image-in,
    one-embedding-out float model: several inputs or outputs, an input that is not N x 3 x H x W,
    a weight that is not a constant (a quantized graph), an op the importer has no counterpart for.
    """
    from onnx import helper, numpy_helper

    model = _load(path)
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise CheckpointError(
            f"{path}: not a face embedding model: it has {len(inputs)} image input(s) and {len(graph.output)} "
            f"output(s) ({', '.join(o.name for o in graph.output)}); a face model takes one N x 3 x H x W "
            "image batch and returns one N x D embedding")
    in_shape = _dims(inputs[0])
    if len(in_shape) != 4 or in_shape[1] != 3:
        raise CheckpointError(f"{path}: not a face embedding model: input {inputs[0].name!r} has shape "
                              f"{in_shape}, expected N x 3 x H x W")
    out_shape = _dims(graph.output[0])
    if out_shape and len(out_shape) != 2:
        raise CheckpointError(f"{path}: not a face embedding model: output {graph.output[0].name!r} has shape "
                              f"{out_shape}, expected N x D (one embedding per image)")
    output_dim = out_shape[1] if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] else None

    units: list[OnnxUnit] = []
    skipped: dict[str, int] = {}
    residual_adds = 0
    producer: dict[str, OnnxUnit] = {}  # tensor name -> the unit whose output it is

    def const(name: str, node: Any) -> np.ndarray:
        if name not in consts:
            raise CheckpointError(
                f"{path}: node {node.name or node.op_type!r} ({node.op_type}) takes {name!r} as a weight, but "
                "it is computed, not a constant initializer (a quantized or fp16-cast graph?); import the "
                "fp32 model")
        return consts[name].astype(np.float32)

    for index, node in enumerate(graph.node):
        op = node.op_type
        name = node.name or f"{op}#{index}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op in _SKIPPED_OPS:
            skipped[op] = skipped.get(op, 0) + 1
            continue
        if op == "Conv":
            weight = const(node.input[1], node)
            pads = list(attrs.get("pads", [0] * (2 * (weight.ndim - 2))))
            half = len(pads) // 2
            if pads[:half] != pads[half:] or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise CheckpointError(f"{path}: node {name!r} (Conv) pads {pads} asymmetrically or with auto_pad; "
                                      "torch convolutions pad both sides alike")
            unit = OnnxUnit("conv", name, node.input[1], weight,
                            const(node.input[2], node) if len(node.input) > 2 and node.input[2] else None,
                            node.input[2] if len(node.input) > 2 else "",
                            groups=int(attrs.get("group", 1)),
                            stride=tuple(attrs.get("strides", [1] * half)), padding=tuple(pads[:half]),
                            dilation=tuple(attrs.get("dilations", [1] * half)))
        elif op in ("Gemm", "MatMul"):
            weight = const(node.input[1], node)
            if op == "Gemm":
                if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                    raise CheckpointError(f"{path}: node {name!r} (Gemm) uses transA/alpha/beta; not importable")
                weight = weight if attrs.get("transB", 0) else weight.T
            else:
                weight = weight.T  # MatMul: x @ W with W (in, out)
            bias = const(node.input[2], node) if op == "Gemm" and len(node.input) > 2 and node.input[2] else None
            unit = OnnxUnit("linear", name, node.input[1], np.ascontiguousarray(weight), bias,
                            node.input[2] if bias is not None else "")
        elif op == "Add" and any(i in consts for i in node.input):
            source = next(i for i in node.input if i not in consts)
            prev = producer.get(source)
            if prev is None or prev.kind not in ("conv", "linear") or prev.bias is not None or prev.bn is not None:
                raise CheckpointError(f"{path}: node {name!r} (Add of a constant) does not follow a bias-free "
                                      "conv or linear layer; not importable")
            prev.bias = const(next(i for i in node.input if i in consts), node).reshape(-1)
            prev.bias_name = next(i for i in node.input if i in consts)
            producer[node.output[0]] = prev
            continue
        elif op == "Add":
            residual_adds += 1
            continue
        elif op == "BatchNormalization":
            bn = {"scale": const(node.input[1], node), "B": const(node.input[2], node),
                  "mean": const(node.input[3], node), "var": const(node.input[4], node),
                  "eps": np.float32(attrs.get("epsilon", 1e-5))}
            prev = producer.get(node.input[0])
            if prev is not None and prev.kind in ("conv", "linear") and prev.bn is None and units[-1] is prev:
                prev.bn, prev.bn_node = bn, name  # not folded by the exporter: copy it as it is
                producer[node.output[0]] = prev
                continue
            unit = OnnxUnit("bn", name, node.input[1], bn["scale"], bn=bn, bn_node=name)
        elif op in _ACTIVATION_OPS:
            kind = _ACTIVATION_OPS[op]
            weight = const(node.input[1], node).reshape(-1) if op == "PRelu" else None
            unit = OnnxUnit(kind, name, node.input[1] if op == "PRelu" else "", weight,
                            alpha=float(attrs.get("alpha", 0.01)))
        elif op == "Clip":
            def bound(key: str, position: int) -> float | None:
                # opset < 11: attributes; later: optional constant inputs
                if key in attrs:
                    return float(attrs[key])
                has = len(node.input) > position and node.input[position]
                return float(const(node.input[position], node)) if has else None

            lo, hi = bound("min", 1), bound("max", 2)
            if lo == 0.0 and hi == 6.0:
                unit = OnnxUnit("relu6", name)
            elif lo == 0.0 and hi is None:
                unit = OnnxUnit("relu", name)
            else:
                raise CheckpointError(f"{path}: node {name!r} clips to [{lo}, {hi}]; only ReLU6 (0..6) imports")
        else:
            raise CheckpointError(
                f"{path}: node {name!r} is a {op}, which has no counterpart in the backbones "
                "(the importer reads Conv, Gemm/MatMul, BatchNormalization, PRelu/Relu/Clip/LeakyRelu, Add and "
                "shape ops). Is this a face embedding model?")
        units.append(unit)
        for out in node.output:
            producer[out] = unit
    if not any(u.kind == "conv" for u in units):
        raise CheckpointError(f"{path}: not a face embedding model: the graph has no convolutions")
    return OnnxGraph(units, inputs[0].name, in_shape, output_dim, skipped, residual_adds)


# ================================================================================================
# The torch side
# ================================================================================================
@dataclass
class TorchUnit:
    kind: str  # conv | linear | bn | prelu | relu | relu6 | leaky
    name: str
    module: nn.Module
    bn_name: str = ""
    bn: nn.Module | None = None  # the BatchNorm right after a conv / linear

    def describe(self) -> str:
        if self.kind in ("conv", "linear", "bn", "prelu"):
            w = self.module.weight
            what = f"backbone parameter {self.name}.weight {tuple(w.shape)}"
        else:
            what = f"backbone module {self.name} ({type(self.module).__name__})"
        if self.kind == "conv":
            m = self.module
            what += f", groups {m.groups}, stride {tuple(m.stride)}, padding {tuple(m.padding)}"
        return what


def _torch_units(model: nn.Module, input_size: int) -> list[TorchUnit]:
    """The backbone's leaf modules in the order a forward pass runs them, grouped like the ONNX units."""
    names = {m: n for n, m in model.named_modules()}
    order: list[nn.Module] = []
    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, *_TORCH_ACTIVATIONS)
    hooks = [m.register_forward_hook(lambda mod, *_: order.append(mod))
             for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    units: list[TorchUnit] = []
    for m in order:
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            last = units[-1] if units else None
            if last is not None and last.kind in ("conv", "linear") and last.bn is None:
                last.bn, last.bn_name = m, names[m]
            else:
                units.append(TorchUnit("bn", names[m], m))
        elif isinstance(m, nn.Conv2d):
            units.append(TorchUnit("conv", names[m], m))
        elif isinstance(m, nn.Linear):
            units.append(TorchUnit("linear", names[m], m))
        else:
            units.append(TorchUnit(_TORCH_ACTIVATIONS[type(m)], names[m], m))
    return units


# ================================================================================================
# Matching and copying
# ================================================================================================
class _Mismatch(Exception):
    def __init__(self, index: int, onnx_side: str, torch_side: str, why: str) -> None:
        super().__init__(why)
        self.index, self.onnx_side, self.torch_side, self.why = index, onnx_side, torch_side, why

    def text(self) -> str:
        return (f"layer {self.index + 1} does not match ({self.why}):\n    {self.onnx_side}\n"
                f"    vs {self.torch_side}")


def _as_linear(o: OnnxUnit) -> np.ndarray | None:
    """A 1x1 Conv over the 1x1 map the GDC head leaves is a linear layer: its (out, in) weight."""
    if o.kind == "linear":
        return o.weight
    if o.kind == "conv" and o.weight is not None and o.weight.ndim == 4 and o.weight.shape[2:] == (1, 1) \
            and o.groups == 1:
        return o.weight.reshape(o.weight.shape[0], -1)
    return None


def _check(index: int, o: OnnxUnit, t: TorchUnit) -> None:
    def fail(why: str) -> None:
        raise _Mismatch(index, o.describe(), t.describe(), why)

    if t.kind == "conv":
        m = t.module
        if o.kind != "conv":
            fail(f"the file has a {o.kind} where the backbone has a convolution")
        if tuple(o.weight.shape) != tuple(m.weight.shape):
            fail("weight shapes differ")
        if o.groups != m.groups or tuple(o.stride) != tuple(m.stride) or tuple(o.padding) != tuple(m.padding) \
                or tuple(o.dilation) != tuple(m.dilation):
            fail("groups, stride, padding or dilation differ")
        if o.bias is not None and m.bias is None and t.bn is None:
            fail("the file's conv has a bias; the backbone's has neither a bias nor a BatchNorm to hold it")
        if o.bn is not None and t.bn is None:
            fail("the file has a BatchNormalization after this conv; the backbone does not")
    elif t.kind == "linear":
        weight = _as_linear(o)
        if weight is None:
            fail(f"the file has a {o.kind} where the backbone has a linear layer")
        if tuple(weight.shape) != tuple(t.module.weight.shape):
            fail("weight shapes differ")
        if o.bias is not None and t.module.bias is None and t.bn is None:
            fail("the file's layer has a bias; the backbone's has neither a bias nor a BatchNorm to hold it")
    elif t.kind == "bn":
        if o.kind != "bn":
            fail(f"the file has a {o.kind} where the backbone has a BatchNorm (not folded into a conv before it)")
        if o.weight.shape[0] != t.module.num_features:
            fail("channel counts differ")
    else:
        if o.kind != t.kind:
            fail(f"activations differ: the file's is {o.kind}, the backbone's {t.kind}")
        if t.kind == "prelu" and o.weight.size not in (1, t.module.weight.numel()):
            fail("PReLU slope counts differ")
        if t.kind == "leaky" and abs(o.alpha - t.module.negative_slope) > 1e-6:
            fail(f"LeakyReLU slopes differ ({o.alpha} vs {t.module.negative_slope})")


def _copy_bn(bn: nn.Module, source: dict[str, np.ndarray] | None, shift: np.ndarray | None) -> None:
    """Unit statistics and ``shift`` (a folded conv's bias) as the BN's bias, or a kept BN's values."""
    with torch.no_grad():
        if source is not None:
            scale = torch.from_numpy(source["scale"])
            mean = torch.from_numpy(source["mean"])
            var = torch.from_numpy(source["var"])
            # BN(conv(x) + b) == BN'(conv(x)) with the mean moved by b; the eps of the file, kept exactly
            var = var + float(source["eps"]) - bn.eps
            if shift is not None:
                mean = mean - torch.from_numpy(shift)
            bn.weight.copy_(scale)
            bn.bias.copy_(torch.from_numpy(source["B"]))
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        else:
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(shift) if shift is not None else torch.zeros_like(bn.bias))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.zero_()


def _copy(o: OnnxUnit, t: TorchUnit) -> None:
    with torch.no_grad():
        if t.kind in ("conv", "linear"):
            weight = o.weight if t.kind == "conv" else _as_linear(o)
            t.module.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            bias = o.bias
            if t.bn is not None:
                if t.module.bias is not None:
                    t.module.bias.zero_()
                _copy_bn(t.bn, o.bn, bias)
            elif t.module.bias is not None:
                t.module.bias.copy_(torch.from_numpy(bias) if bias is not None else torch.zeros_like(t.module.bias))
        elif t.kind == "bn":
            _copy_bn(t.module, o.bn, None)
        elif t.kind == "prelu":
            t.module.weight.copy_(torch.from_numpy(o.weight).expand_as(t.module.weight))


def _match(graph: OnnxGraph, units: list[TorchUnit]) -> _Mismatch | None:
    for i, (o, t) in enumerate(zip(graph.units, units)):
        try:
            _check(i, o, t)
        except _Mismatch as m:
            return m
    if len(graph.units) != len(units):
        i = min(len(graph.units), len(units))
        if len(graph.units) > len(units):
            return _Mismatch(i, graph.units[i].describe(), "the backbone has no further layers",
                             f"the file has {len(graph.units)} layers, the backbone {len(units)}")
        return _Mismatch(i, "the file has no further layers", units[i].describe(),
                         f"the file has {len(graph.units)} layers, the backbone {len(units)}")
    return None


# ================================================================================================
# Parity and preprocessing
# ================================================================================================
def onnx_parity(model: nn.Module, path: str | os.PathLike, inputs: np.ndarray, threads: int | None = 1) -> np.ndarray:
    """Per-row cosine between ``model(inputs)`` (torch, eval) and the ONNX file's output in onnxruntime.

    ``inputs``: float32 N x 3 x H x W, already preprocessed (model input space)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    rows = []
    step = fixed if isinstance(fixed, int) and fixed > 0 else len(inputs)
    for start in range(0, len(inputs), step):
        rows.append(session.run(None, {name: inputs[start:start + step].astype(np.float32)})[0])
    ref = np.concatenate(rows).reshape(len(inputs), -1).astype(np.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(inputs.astype(np.float32))).double().numpy()
    model.train(was_training)
    num = (ref * got).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    return num / np.maximum(den, 1e-30)


def recorded_preprocessing(path: str | os.PathLike) -> Preprocessing | None:
    """The preprocessing an ONNX file's metadata records (facedistill exports write it), else None."""
    model = _load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    if not any(k in meta for k in ("mean", "std", "channel_order")):
        return None
    try:
        return Preprocessing.from_metadata(meta, source=str(path))
    except Exception as exc:  # malformed values: say so rather than guess
        raise CheckpointError(str(exc)) from None


# ================================================================================================
# The import
# ================================================================================================
@dataclass
class OnnxImport:
    """A backbone holding an ONNX file's weights, and what was checked on the way."""

    model: nn.Module  # eval mode, CPU
    arch: str
    embedding_size: int
    source: Path
    input_size: int
    layers: int  # weight units matched
    residual_adds: int
    probe_min_cosine: float
    preprocessing: Preprocessing | None  # from the file's metadata; None when it records none
    info: dict[str, Any] = field(default_factory=dict)


def _try_arch(graph: OnnxGraph, arch: str, emb: int, input_size: int,
              create: Callable[[str, int], nn.Module]) -> tuple[nn.Module | None, _Mismatch | None, int]:
    model = create(arch, emb)
    units = _torch_units(model, input_size)
    mismatch = _match(graph, units)
    return (model if mismatch is None else None), mismatch, len(units)


def _candidates(exclude: str | None) -> Iterable[str]:
    from facedistill.models.registry import list_backbones

    # small models first: a MobileFaceNet file is told apart in milliseconds, an IResNet costs seconds to build
    names = sorted(list_backbones(), key=lambda n: (not n.startswith("mobilefacenet"), n))
    return [n for n in names if n != exclude]


def _last_width(graph: OnnxGraph) -> int:
    for unit in reversed(graph.units):
        if unit.kind in ("conv", "linear") and unit.weight is not None:
            return int(unit.weight.shape[0])
    raise CheckpointError("the graph has no layer that could produce the embedding")


def _input_size(graph: OnnxGraph, path: Any) -> int:
    h, w = graph.input_shape[2], graph.input_shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0:
        if h != w:
            raise CheckpointError(f"{path}: input is {h} x {w}; the backbones take square faces")
        return int(h)
    return 112


def import_onnx_backbone(path: str | os.PathLike, arch: str | None = None, embedding_size: int | None = None,
                         check: bool = True, threads: int | None = 1) -> OnnxImport:
    """Build ``arch`` (or the first registered backbone that matches) holding the file's weights.

    ``embedding_size`` must equal the file's output width when given. With ``check`` the torch model
    and onnxruntime embed the same probe batch and a worst cosine below ``PARITY_MIN_COSINE`` is refused.
    Raises CheckpointError naming the file, the first layer that does not match (node, initializer and
    shape against the backbone parameter and shape) and, when another registered backbone fits, its name.
    """
    from facedistill.models.registry import _resolve, create_backbone

    path = Path(path)
    graph = read_onnx_units(path)
    width = graph.output_dim or _last_width(graph)
    if embedding_size is not None and int(embedding_size) != width:
        raise CheckpointError(f"{path}: the file's embedding is {width}-d, not {embedding_size}-d "
                              f"(student.embedding_size: {width})")
    size = _input_size(graph, path)
    if arch is not None:
        arch = _resolve(arch)
        model, mismatch, _ = _try_arch(graph, arch, width, size, create_backbone)
        if model is None:
            hint = ""
            for other in _candidates(arch):
                if _try_arch(graph, other, width, size, create_backbone)[0] is not None:
                    hint = f"\n  hint: the file matches '{other}' (student.arch: {other})"
                    break
            raise CheckpointError(f"{path} does not import into '{arch}': {mismatch.text()}{hint}")
    else:
        model, best = None, None
        for name in _candidates(None):
            model, mismatch, _ = _try_arch(graph, name, width, size, create_backbone)
            if model is not None:
                arch = name
                break
            if best is None or mismatch.index > best[1].index:
                best = (name, mismatch)
        if model is None:
            raise CheckpointError(
                f"{path}: no registered backbone matches its layers ({len(graph.units)} weight layers, "
                f"{graph.residual_adds} residual adds). Closest: '{best[0]}', whose {best[1].text()}")
    units = _torch_units(model, size)
    for o, t in zip(graph.units, units):
        _copy(o, t)
    model.eval()
    min_cos = float("nan")
    if check:
        rng = np.random.default_rng(0)
        probe = rng.uniform(-1.0, 1.0, size=(_PROBE_IMAGES, 3, size, size)).astype(np.float32)
        cos = onnx_parity(model, path, probe, threads=threads)
        min_cos = float(cos.min())
        if not min_cos >= PARITY_MIN_COSINE:
            raise CheckpointError(
                f"{path}: every layer of '{arch}' took the file's weights, but the outputs differ (worst cosine "
                f"{min_cos:.6f} < {PARITY_MIN_COSINE} on {_PROBE_IMAGES} probe inputs): the graph wires its layers "
                f"differently ({graph.residual_adds} residual adds; skipped ops: "
                f"{', '.join(f'{k} x{v}' for k, v in sorted(graph.skipped.items())) or 'none'})")
    from facedistill.utils.hashing import sha256_file

    return OnnxImport(model=model, arch=arch, embedding_size=width, source=path, input_size=size,
                      layers=len(units), residual_adds=graph.residual_adds, probe_min_cosine=min_cos,
                      preprocessing=recorded_preprocessing(path),
                      info={"imported_from_onnx": str(path), "onnx_sha256": sha256_file(path)})



def resolve_start_preprocessing(path: str | os.PathLike, given: Preprocessing | None,
                                recorded: Preprocessing | None) -> Preprocessing:
    """What an imported start trains and embeds with: the file's metadata, else ``given``; both
    when they agree. Raises CheckpointError when they disagree or neither says anything."""
    if recorded is None and given is None:
        raise CheckpointError(
            f"{path} does not record the preprocessing it was trained with; say it (--mean, --std, --bgr/--rgb; "
            "a recipe's student.mean/std/channel_order): pixel scale 0..255, in the model's channel order, e.g. "
            "PaddleX/insightface 127.5 / 127.5, ImageNet-normalised RGB mean 123.675,116.28,103.53 std "
            "58.395,57.12,57.375")
    if recorded is not None and given is not None:
        if not same_preprocessing(recorded, dataclasses.replace(given, input_size=recorded.input_size)):
            raise CheckpointError(f"{path}: its metadata records {recorded.to_dict()}, not the given {given.to_dict()}")
    return recorded or given  # type: ignore[return-value]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-express every BatchNorm with the statistics of its input on real data, keeping the model's
    eval-mode function exactly; returns the number of BatchNorms changed.

    Why: an imported BN has unit statistics, which is exact in eval mode but not in train mode, where
    BN normalises by the batch's own statistics: there the imported PaddleX MobileFaceNet's embeddings
    have a mean cosine of about 0.08 to its eval-mode ones on LFW faces, i.e. fine-tuning would start
    from another function. With running mean ``mu`` and var ``v`` measured on ``batches`` (eval-mode
    forward passes, so each BN sees what it sees at inference), weight ``s * k`` and bias
    ``b + (mu - m) * k`` (``k = w / sqrt(var_old + eps)``, ``s = sqrt(v + eps)``) compute the same
    eval output, and a train-mode batch of 64 faces then stays at a cosine of about 0.95-0.97.
    ``batches``: preprocessed float N x 3 x H x W tensors on the model's device.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    sums: dict[nn.Module, list[Any]] = {m: [0, 0.0, 0.0] for m in bns}

    def record(mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
        x = inputs[0].double()
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        acc = sums[mod]
        acc[0] += flat.shape[1]
        acc[1] = acc[1] + flat.sum(1)
        acc[2] = acc[2] + (flat * flat).sum(1)

    hooks = [m.register_forward_hook(record) for m in bns]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    changed = 0
    for m in bns:
        count, total, squares = sums[m]
        if not count:
            continue
        mu = total / count
        var = (squares / count - mu * mu).clamp_min(0.0)
        k = m.weight.double() / torch.sqrt(m.running_var.double() + m.eps)
        s = torch.sqrt(var + m.eps)
        m.bias.copy_((m.bias.double() + (mu - m.running_mean.double()) * k).to(m.bias.dtype))
        m.weight.copy_((s * k).to(m.weight.dtype))
        m.running_mean.copy_(mu.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
        changed += 1
    return changed
