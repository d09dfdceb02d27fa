"""The fp32 parity gate: a model whose export silently differs fails, names the layer, leaves nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from facedistill.errors import FaceDistillError
from facedistill.export import ExportGateError, export_model
from facedistill.export.parity import compare_embeddings, cosine_rows, locate_divergence, ort_session, run_onnx


def test_broken_model_fails_parity_and_leaves_nothing(broken, tmp_path):
    out = tmp_path / "models" / "broken.onnx"
    with pytest.raises(ExportGateError) as info:
        export_model(None, out, loaded=broken, parity_images=8, latency=False)
    err = info.value
    assert isinstance(err, FaceDistillError)  # the CLI prints it without a traceback, exit code 2
    msg = str(err)
    assert "fp32 parity failed" in msg and "0.9999" in msg
    # it names where to look: the first diverging node and the last matching module
    assert "/block/block.0/Conv" in msg
    assert "conv2.2 (prelu)" in msg
    assert not out.exists()
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == ["broken.parity-debug.onnx"], left  # no partial file, only the debug copy
    report = err.report
    assert report is not None and not report.passed
    assert report.divergence["op_type"] == "Conv"
    art = report.artifact("fp32")
    assert not art.written and art.cosine_worst < 0.9999
    # the debug copy exposes every node output
    dbg = onnx.load(str(out.parent / "broken.parity-debug.onnx"))
    assert len(dbg.graph.output) > 10


def test_no_debug_copy_when_not_wanted(broken, tmp_path):
    out = tmp_path / "broken.onnx"
    with pytest.raises(ExportGateError):
        export_model(None, out, loaded=broken, parity_images=4, latency=False, keep_debug=False)
    assert list(tmp_path.iterdir()) == []


def test_locate_divergence_finds_a_tampered_weight(tiny_export, tiny, faces):
    """Change one conv's weights in a good export: the localiser points at exactly that conv."""
    from facedistill.data.preprocessing import Preprocessing

    path, _ = tiny_export
    model = onnx.load(str(path))
    target = next(n for n in model.graph.node if n.op_type == "Conv" and "down" in n.name)
    init = next(t for t in model.graph.initializer if t.name == target.input[1])
    w = onnx.numpy_helper.to_array(init).copy()
    w *= np.random.default_rng(0).uniform(-1, 1, size=w.shape).astype(np.float32)
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    x = Preprocessing().apply(faces[:2])
    div = locate_divergence(tiny.model, model, x)
    assert div is not None
    assert div.node == target.name and div.op_type == "Conv"
    assert div.cosine < 0.999
    assert div.last_matching_module == "<model> (add)", div.last_matching_module


def test_locate_divergence_none_for_good_export(tiny_export, tiny, faces):
    from facedistill.data.preprocessing import Preprocessing

    path, _ = tiny_export
    assert locate_divergence(tiny.model, path, Preprocessing().apply(faces[:1])) is None


def test_threshold_is_configurable(broken, tmp_path):
    """A gate set to -1 accepts anything: the threshold really is the one given."""
    report = export_model(None, tmp_path / "b.onnx", loaded=broken, parity_images=4, latency=False,
                          fp32_min_cosine=-1.0)
    assert report.passed and (tmp_path / "b.onnx").exists()


def test_cosine_helpers():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, -1.0], [np.nan, 0.0]])
    cos = cosine_rows(a, b)
    assert cos[0] == pytest.approx(1.0) and cos[1] == 1.0 and cos[2] == pytest.approx(-1.0) and cos[3] == -1.0
    res = compare_embeddings(a[:1], b[:1], 0.9999)
    assert res.passed and res.images == 1
    res = compare_embeddings(a, b, 0.5, "mean")
    assert not res.passed and res.worst_index in (2, 3)


def test_dynamic_batch_runs_1_and_7(tiny_export, tiny, faces):
    from facedistill.data.preprocessing import Preprocessing
    from facedistill.export.parity import run_torch

    path, report = tiny_export
    assert report.batch_check == [1, 7]
    sess = ort_session(path)
    assert not isinstance(sess.get_inputs()[0].shape[0], int)
    x = Preprocessing().apply(faces[:7])
    ref = run_torch(tiny.model, x)
    for b in (1, 7):
        y = np.asarray(sess.run(None, {"input": x[:b]})[0])
        assert y.shape == (b, 32)
        assert cosine_rows(ref[:b], y).min() > 0.9999
    assert run_onnx(sess, x, batch=3).shape == (7, 32)


def test_fp32_prelu_rewrite_passes_parity(tiny, tmp_path):
    from facedistill.errors import ExportError

    out = tmp_path / "s.onnx"
    report = export_model(None, out, loaded=tiny, fp32_prelu="linear", int8=True, calib_images=16,
                          parity_images=8, latency=False)
    assert report.passed and report.artifact("fp32").cosine_worst >= 0.9999
    assert not any(n.op_type == "PRelu" for n in onnx.load(str(out)).graph.node)
    assert report.int8["prelu_count"] == 4  # int8 starts from the graph with the PRelu nodes
    with pytest.raises(ExportError, match="--fp32-prelu"):
        export_model(None, out, loaded=tiny, fp32_prelu="fast", latency=False)
