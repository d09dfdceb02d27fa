"""Hand-made tiny ONNX graphs (milliseconds to build) for unit tests of the benchmark code."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_model(path: Path, batch: int | str = "N", dtype: str = "float32", op: str = "Conv",
               metadata: dict[str, str] | None = None, external: bool = False) -> Path:
    """x[batch,3,8,8] -> Conv(4 ch) -> GlobalAveragePool -> Flatten -> y[batch,4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(dtype)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    inits = [numpy_helper.from_array(w, "w")]
    if op == "QLinearConv":  # a QOperator node; the graph is only parsed, never run
        nodes.append(helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["q"]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", elem, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", elem, [batch, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path
