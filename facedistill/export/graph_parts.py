"""Where the parts of a face backbone's ONNX graph are: the stem (first conv, after any in-graph
input normalisation), the embedding head (from the first 2-D tensor on, plus a global 1x1 conv before
it) and the depthwise convs, by node name; and the small graph lookups the rewrites share.
"""

from __future__ import annotations

from typing import Any

__all__ = ["consumers", "ensure_names", "find_depthwise_nodes", "find_head_nodes", "find_stem_nodes",
           "graph_opset", "producers", "tensor_shapes"]


def graph_opset(model: Any) -> int:
    """The default-domain opset a model imports (0 when it names none)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def consumers(model: Any) -> dict[str, list[Any]]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def producers(model: Any) -> dict[str, Any]:
    """Tensor name -> the node that writes it."""
    return {o: node for node in model.graph.node for o in node.output}


def tensor_shapes(model: Any) -> dict[str, list[int | None]]:
    """Shapes of every tensor known to (already run) shape inference; batch dims are None."""
    shapes: dict[str, list[int | None]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def ensure_names(model: Any) -> None:
    """Give every node a unique name (in place): ``keep_float`` and the layer search address nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}_{node.output[0]}"
        seen.add(node.name)


_INPUT_PREP_OPS = ("Sub", "Mul", "Add", "Div", "Cast", "Transpose", "Identity")


def find_stem_nodes(model: Any) -> list[str]:
    """The first conv (it reads the image; after any in-graph normalisation such as Sub/Mul) and the
    activation right after it."""
    ensure_names(model)
    graph_input = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    cons = consumers(model)
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

    ensure_names(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = tensor_shapes(inferred)
    prods = producers(model)
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
    ensure_names(model)
    cons = consumers(model)
    out: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Conv" and next((a.i for a in node.attribute if a.name == "group"), 1) > 1:
            out.append(node.name)
            out += [n.name for n in cons.get(node.output[0], []) if n.op_type in ("PRelu", "Relu", "LeakyRelu")]
    return out
