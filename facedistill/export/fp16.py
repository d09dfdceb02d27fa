"""fp16: float16 weights and compute with float32 input and output (onnxruntime's own float16
converter, ``keep_io_types``), its nodes put back in topological order.
"""

from __future__ import annotations

import warnings
from typing import Any

from facedistill.errors import ExportError

__all__ = ["to_fp16"]


def to_fp16(proto: Any) -> Any:
    """float16 weights and compute with float32 input/output (onnxruntime's float16 converter)."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as e:  # pragma: no cover - shipped with onnxruntime
        raise ExportError(f"--fp16 needs onnxruntime's float16 converter: {e}") from e
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.metadata_props[:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(copy, keep_io_types=True)
    return _toposort(converted)


def _toposort(proto: Any) -> Any:
    """Order the nodes topologically (the float16 converter appends its input Casts at the end)."""
    graph = proto.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError("the converted graph has a cycle or a dangling input; cannot order its nodes")
        pending = rest
    nodes = [type(n)() for n in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)
    return proto
