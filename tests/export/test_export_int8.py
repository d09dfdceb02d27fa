"""int8: the PReLU rewrites are exact, the quantized graph really runs int8 kernels, stem/head stay
float, and the accuracy gates fail loudly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import ExportError
from facedistill.export import ExportGateError, Int8Options, check_onnx, export_model, read_metadata
from facedistill.export.parity import cosine_rows, ort_session, run_onnx
from facedistill.export.quantize import (find_head_nodes, find_stem_nodes, int8_options_from_cli,
                                         optimized_op_counts, quantize_int8, rewrite_prelu)


@pytest.mark.parametrize("mode", ["relu", "linear", "fused", "fused-steep"])
def test_prelu_rewrites_are_exact(tiny_export, faces, mode, tmp_path):
    path, _ = tiny_export
    model = onnx.load(str(path))
    if mode == "fused-steep":  # a slope > 1: "fused" is not exact there and falls back to "linear"
        from onnx import numpy_helper

        prelu = next(n for n in model.graph.node if n.op_type == "PRelu")
        init = next(t for t in model.graph.initializer if t.name == prelu.input[1])
        steep = numpy_helper.to_array(init).copy()
        steep.flat[0] = 1.7
        init.CopyFrom(numpy_helper.from_array(steep, init.name))
        path = tmp_path / "steep.onnx"
        onnx.save(model, str(path))
        mode = "fused"
    n_prelu = sum(n.op_type == "PRelu" for n in model.graph.node)
    rewritten, count, mapping = rewrite_prelu(model, mode)
    assert count == n_prelu == len(mapping) == 4
    assert not any(n.op_type == "PRelu" for n in rewritten.graph.node)
    onnx.checker.check_model(rewritten)
    x = Preprocessing().apply(faces[:4])
    a = run_onnx(ort_session(path), x)
    b = run_onnx(ort_session(rewritten), x)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_stem_and_head_detection(tiny_export):
    path, _ = tiny_export
    model = onnx.load(str(path))
    stem = find_stem_nodes(model)
    head = find_head_nodes(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert [ops[s] for s in stem] == ["Conv", "PRelu"]
    assert stem[0].startswith("/stem")
    assert any("gdc" in h for h in head)  # the global 1x1 conv belongs to the head
    assert ops[head[-1]] in ("BatchNormalization", "Gemm", "MatMul", "Add")
    assert not set(stem) & set(head)


def test_default_int8_graph(tiny_export, faces, tmp_path):
    """Default: dense convs int8; stem, head, depthwise convs and PReLUs (rewritten) float."""
    path, _ = tiny_export
    out = tmp_path / "q.onnx"
    res = quantize_int8(path, out, Preprocessing().apply(faces[:24]), Int8Options())
    assert res.prelu_mode == "fused" and res.prelu_count == 4
    ops = optimized_op_counts(out)
    assert ops.get("QLinearConv", 0) == 4, ops  # conv2, block.0, block.3, down
    assert "PRelu" not in ops and ops.get("QLinearMul", 0) == 0, ops
    assert ops.get("QLinearAdd", 0) == 1, ops  # the residual add
    y = run_onnx(ort_session(out), Preprocessing().apply(faces[24:40]))
    ref = run_onnx(ort_session(path), Preprocessing().apply(faces[24:40]))
    assert cosine_rows(ref, y).mean() > 0.99
    names = [n.name for n in onnx.load(str(out)).graph.node]
    assert all(n[0] == "n" and n[1:].isdigit() for n in names)  # compacted names


def test_int8_prelu_runs_int8_kernels(tiny_export, faces, tmp_path):
    """PReLUs quantized with the fused rewrite: onnxruntime runs QLinearMul/QLinearAdd, no PRelu."""
    path, _ = tiny_export
    out = tmp_path / "q.onnx"
    calib = Preprocessing().apply(faces[:24])
    res = quantize_int8(onnx.load(str(path)), out, calib, Int8Options(keep_float=("stem", "head")))
    assert res.prelu_mode == "fused" and res.prelu_count == 4
    assert res.quantized_ops.get("QuantizeLinear", 0) > 0
    assert any("/stem" in n for n in res.excluded_nodes) and any("gdc" in n for n in res.excluded_nodes)
    ops = optimized_op_counts(out)
    # every conv but the stem's and the GDC's runs as QLinearConv; no PRelu is left (the stem's is
    # rewritten too, as float ops that onnxruntime fuses)
    assert ops.get("QLinearConv", 0) == 4, ops
    assert "PRelu" not in ops, ops
    assert ops.get("QLinearMul", 0) == 6 and ops.get("QLinearAdd", 0) >= 3, ops
    y = run_onnx(ort_session(out), Preprocessing().apply(faces[24:40]))
    ref = run_onnx(ort_session(path), Preprocessing().apply(faces[24:40]))
    assert cosine_rows(ref, y).mean() > 0.98
    # "linear" (s*x + (1-s)*relu(x)) leaves a requantizing DQ->Q pair per int8 PReLU, "fused" none
    lin = tmp_path / "lin.onnx"
    quantize_int8(onnx.load(str(path)), lin, calib, Int8Options(keep_float=("stem", "head"), prelu="linear"))
    q_lin = optimized_op_counts(lin).get("QuantizeLinear", 0)
    assert ops.get("QuantizeLinear", 0) + 3 <= q_lin, (ops, q_lin)


def test_prelu_float_mode_keeps_prelu(tiny_export, faces, tmp_path):
    path, _ = tiny_export
    out = tmp_path / "q.onnx"
    quantize_int8(path, out, Preprocessing().apply(faces[:16]), Int8Options(prelu="float", keep_float=()))
    ops = optimized_op_counts(out)
    assert ops.get("PRelu", 0) == 4 and ops.get("QLinearConv", 0) >= 5, ops


def test_keep_depthwise_float(tiny_export, faces, tmp_path):
    path, _ = tiny_export
    res = quantize_int8(path, tmp_path / "q.onnx", Preprocessing().apply(faces[:8]),
                        Int8Options(keep_float=("depthwise",)))
    assert any("gdc" in n for n in res.excluded_nodes)  # the only grouped conv of the tiny model
    assert not any("stem" in n for n in res.excluded_nodes)


def test_keep_float_by_node_name(tiny_export, faces, tmp_path):
    path, _ = tiny_export
    model = onnx.load(str(path))
    name = next(n.name for n in model.graph.node if n.op_type == "Conv" and "block" in n.name)
    res = quantize_int8(model, tmp_path / "q.onnx", Preprocessing().apply(faces[:8]),
                        Int8Options(keep_float=(name,)))
    assert res.excluded_nodes == [name]
    with pytest.raises(ExportError, match="nor a node named"):
        quantize_int8(model, tmp_path / "q2.onnx", Preprocessing().apply(faces[:8]),
                      Int8Options(keep_float=("nope",)))


def test_cli_options_parsing():
    o = int8_options_from_cli("Entropy", "float", "none")
    assert o.method == "entropy" and o.prelu == "float" and o.keep_float == ()
    assert int8_options_from_cli("minmax", "linear", "stem").keep_float == ("stem",)
    with pytest.raises(ExportError):
        int8_options_from_cli("minmax", "sigmoid", None)
    with pytest.raises(ExportError):
        int8_options_from_cli("minmax", "linear", None, activations="int4")
    assert int8_options_from_cli("minmax", "fused", None).reduce_range  # 7-bit weights by default
    assert not int8_options_from_cli("minmax", "fused", None, weight_bits=8).reduce_range
    assert int8_options_from_cli("minmax", "fused", None).keep_float == ("auto",)
    with pytest.raises(ExportError, match="weight bits"):
        int8_options_from_cli("minmax", "fused", None, weight_bits=4)


def test_export_int8_with_verify(tiny, tmp_path, train_set, pair_set):
    """The whole int8 path: calibration set, verify set, both accuracies side by side, metadata."""
    out = tmp_path / "s.onnx"
    report = export_model(None, out, loaded=tiny, int8=True, calib=train_set, calib_images=32,
                          verify=pair_set, parity_images=16, latency=True, int8_max_drop=100.0)
    assert report.passed, report.failure
    a32, a8 = report.artifact("fp32"), report.artifact("int8")
    assert a8.written and a8.path == str(tmp_path / "s.int8.onnx")
    assert a32.accuracy is not None and a8.accuracy is not None
    assert report.verification["drop_points"] == pytest.approx(a32.accuracy - a8.accuracy, abs=1e-3)
    assert a8.cosine_mean is not None and a8.cosine_mean >= 0.99
    assert a8.latency_ms_b1 > 0 and a32.latency_ms_b1 > 0
    assert a8.size_bytes < a32.size_bytes
    assert report.calibration == {"source": str(train_set), "images": 32, "method": "percentile", "batch": 16,
                                  "streamed": True}
    meta = read_metadata(a8.path)
    assert meta["precision"] == "int8" and meta["int8_prelu"] == "fused"
    assert meta["int8_keep_float"] == "stem,head,depthwise,prelu"
    assert check_onnx(a8.path).digest_checked
    d = report.to_dict()
    assert d["artifacts"][1]["precision"] == "int8" and "size_mb" in d["artifacts"][1]


def test_int8_gate_fails_loudly(tiny, tmp_path):
    out = tmp_path / "s.onnx"
    with pytest.raises(ExportGateError, match="int8 gate failed") as info:
        export_model(None, out, loaded=tiny, int8=True, calib_images=16, parity_images=8, latency=False,
                     int8_min_cosine=1.01)
    assert out.exists()  # the fp32 model passed its own gate
    assert not (tmp_path / "s.int8.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    report = info.value.report
    assert not report.passed and not report.artifact("int8").written
    assert any("synthetic" in n for n in report.notes)  # calibrated on synthetic faces: said loudly


def test_int8_rejected_model_kept_on_request(tiny, tmp_path):
    with pytest.raises(ExportGateError, match="kept for inspection"):
        export_model(None, tmp_path / "s.onnx", loaded=tiny, int8=True, calib_images=16, parity_images=8,
                     latency=False, int8_min_cosine=1.01, keep_rejected=True)
    assert not (tmp_path / "s.int8.onnx").exists()
    rejected = tmp_path / "s.int8.rejected.onnx"
    assert rejected.exists()
    assert read_metadata(rejected)["int8_gate"].startswith("FAILED")


def test_int8_accuracy_drop_gate(tiny, tmp_path, pair_set):
    """alpha 1: the bare threshold (every drop over --int8-max-drop refuses)."""
    with pytest.raises(ExportGateError, match="accuracy drops"):
        export_model(None, tmp_path / "s.onnx", loaded=tiny, int8=True, calib_images=16, parity_images=8,
                     verify=pair_set, latency=False, int8_max_drop=-100.0, int8_drop_alpha=1.0)
    assert not (tmp_path / "s.int8.onnx").exists()


def test_int8_accuracy_drop_gate_ignores_noise(tiny, tmp_path, pair_set):
    """The default gate refuses a drop only when the paired test over the pairs says it is real."""
    report = export_model(None, tmp_path / "s.onnx", loaded=tiny, int8=True, calib_images=16, parity_images=8,
                          verify=pair_set, latency=False, int8_max_drop=-100.0, int8_mixed=False)
    assert report.passed, report.failure
    v = report.verification
    paired = v["paired"]
    assert paired["pairs"] == 100 and v["drop_alpha"] == 0.05
    assert paired["p_value"] >= 0.05   # the same tiny model in int8: no real drop
    # lost - gained pairs over all pairs is the drop (equal-sized balanced folds)
    assert v["drop_points"] == pytest.approx(100 * (paired["lost"] - paired["gained"]) / paired["pairs"], abs=0.5)


@pytest.mark.parametrize("lost,gained,refused", [(10, 3, True), (12, 5, False), (7, 0, True), (3, 0, False)])
def test_accuracy_drop_problem_needs_a_real_drop(lost, gained, refused):
    from facedistill.evaluation.protocol import paired_accuracy_test
    from facedistill.export.onnx_export import accuracy_drop_problem

    n = 600
    ok32 = np.ones(n, bool)
    ok8 = ok32.copy()
    ok32[:gained] = False          # pairs int8 gets right and fp32 not
    ok8[gained:gained + lost] = False
    paired = paired_accuracy_test(ok32, ok8)
    acc32, acc8 = 100 * ok32.mean(), 100 * ok8.mean()
    problem = accuracy_drop_problem(acc32, acc8, paired, max_drop=0.5, alpha=0.05)
    assert (problem is not None) == refused
    if refused:
        assert f"{lost} pairs lost, {gained} gained" in problem
    bare = accuracy_drop_problem(acc32, acc8, paired, max_drop=0.5, alpha=1.0)  # the bare threshold
    assert (bare is not None) == (acc32 - acc8 > 0.5)


def test_fp16_export(tiny, tmp_path, faces):
    out = tmp_path / "s.onnx"
    report = export_model(None, out, loaded=tiny, fp16=True, parity_images=8, latency=False)
    art = report.artifact("fp16")
    assert art.written and art.cosine_worst >= 0.999
    model = onnx.load(art.path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert read_metadata(art.path)["precision"] == "fp16"
    assert check_onnx(art.path).precision == "fp16"


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(tiny_export, faces, tmp_path, method):
    path, _ = tiny_export
    out = tmp_path / "q.onnx"
    res = quantize_int8(path, out, Preprocessing().apply(faces[:16]), Int8Options(method=method))
    assert res.method == method
    y = run_onnx(ort_session(out), Preprocessing().apply(faces[16:24]))
    ref = run_onnx(ort_session(path), Preprocessing().apply(faces[16:24]))
    assert cosine_rows(ref, y).mean() > 0.95


# ---- calibration that fits, mixed precision ---------------------------------------------------
def test_streamed_calibration_feeds_one_batch_at_a_time(tiny_export, faces, tmp_path):
    """The calibrator is driven one batch per collect (memory capped by the batch, not by N), the
    uint8 images are preprocessed lazily, and a range cache replays the calibration without images."""
    from facedistill.export.quantize import PreprocessedImages

    path, _ = tiny_export
    seen: list[int] = []
    lazy = PreprocessedImages(faces[:40], Preprocessing().apply)
    cache = tmp_path / "ranges.json"
    res = quantize_int8(path, tmp_path / "a.onnx", lazy, Int8Options(method="percentile", calib_batch=8),
                        progress=seen.append, calibration_cache=cache)
    assert seen == [8, 8, 8, 8, 8] and res.calibration_images == 40
    assert cache.is_file()
    eager = quantize_int8(path, tmp_path / "b.onnx", Preprocessing().apply(faces[:40]),
                          Int8Options(method="percentile", calib_batch=8))
    assert eager.calibration_images == 40
    x = Preprocessing().apply(faces[40:48])
    ya, yb = run_onnx(ort_session(tmp_path / "a.onnx"), x), run_onnx(ort_session(tmp_path / "b.onnx"), x)
    assert cosine_rows(ya, yb).min() > 0.9999  # lazy and eager images calibrate the same
    replay = quantize_int8(path, tmp_path / "c.onnx", np.zeros((0, 3, 112, 112), np.float32),
                           Int8Options(method="percentile"), calibration_cache=cache)
    assert replay.calibration_images == 0
    yc = run_onnx(ort_session(tmp_path / "c.onnx"), x)
    assert cosine_rows(ya, yc).min() > 0.9999


def test_calibration_images_spread_over_identities():
    from facedistill.export.onnx_export import spread_over_identities

    labels = np.array([0] * 60 + [1] * 3 + [2] * 2 + list(range(3, 20)) + [-1, -1])
    idx = spread_over_identities(labels, 25, np.random.default_rng(0))
    assert len(idx) == 25 and len(set(idx)) == 25 and np.all(np.diff(idx) > 0)
    counts = np.unique(labels[idx], return_counts=True)[1]
    assert counts.max() - counts.min() <= 1  # round-robin: no identity gets two before all got one
    assert len(spread_over_identities(labels, 1000, np.random.default_rng(0))) == len(labels)


def test_mixed_precision_keeps_the_most_damaging_layers_float(tiny_export, faces, tmp_path):
    from facedistill.export.mixed_precision import layer_sensitivity, quantizable_layers, search_mixed_precision

    path, _ = tiny_export
    calib = Preprocessing().apply(faces[:24])
    probe = Preprocessing().apply(faces[24:40])
    opts = Int8Options(keep_float=())  # all int8: the hardest case
    layers = quantizable_layers(path, opts)
    assert len(layers) >= 5 and all(layer[0] for layer in layers)
    damage = layer_sensitivity(path, calib, probe, opts)
    assert [d.cosine for d in damage] == sorted(d.cosine for d in damage)
    assert {tuple(d.nodes) for d in damage} == {tuple(layer) for layer in layers}
    plain = tmp_path / "plain.onnx"
    quantize_int8(path, plain, calib, opts)
    ref = run_onnx(ort_session(path), probe)
    plain_cos = float(cosine_rows(ref, run_onnx(ort_session(plain), probe)).mean())
    target = plain_cos + (1 - plain_cos) * 0.5
    res = search_mixed_precision(path, tmp_path / "mixed.onnx", calib, probe, opts, target_cosine=target)
    assert res.passed and 1 <= len(res.kept_float_layers) <= len(layers)
    got = float(cosine_rows(ref, run_onnx(ort_session(tmp_path / "mixed.onnx"), probe)).mean())
    assert got == pytest.approx(res.cosine, abs=1e-4) and got >= target
    assert res.kept_float_layers == [d.nodes for d in damage[:len(res.kept_float_layers)]]
    # fewest: one layer fewer (the next smaller try) misses the target
    k = len(res.kept_float_layers)
    assert all(t["cosine"] < target for t in res.tries if t["float_layers"] < k)


def test_export_falls_back_to_mixed_precision(tiny, tmp_path, train_set):
    """Plain int8 fails the gate; the default path keeps the fewest layers float, passes, and says
    which layers and what they cost."""
    out = tmp_path / "s.onnx"
    opts = Int8Options(keep_float=())
    with pytest.raises(ExportGateError):
        export_model(None, out, loaded=tiny, int8=True, calib=train_set, calib_images=24, parity_images=16,
                     latency=False, int8_options=opts, int8_mixed=False, int8_min_cosine=0.9999)
    probe = export_model(None, out, loaded=tiny, int8=True, calib=train_set, calib_images=24, parity_images=16,
                         latency=False, int8_options=opts, int8_min_cosine=0.0)
    plain = probe.artifact("int8").cosine_mean
    gate = round(plain + (1 - plain) * 0.4, 4)
    report = export_model(None, out, loaded=tiny, int8=True, calib=train_set, calib_images=24, parity_images=16,
                          latency=False, int8_options=opts, int8_min_cosine=gate)
    assert report.passed, report.failure
    mp = report.int8["mixed_precision"]
    assert mp["kept_float_layers"] and mp["plain_failure"]
    assert report.artifact("int8").cosine_mean >= gate
    assert any("mixed precision kept" in n for n in report.notes)
    meta = read_metadata(report.artifact("int8").path)
    assert meta["int8_mixed_float_layers"] == ",".join(layer[0] for layer in mp["kept_float_layers"])


def test_auto_keep_float_quantizes_a_relu6_network_entirely(tiny_export, faces, tmp_path):
    """`auto`: stem/head/depthwise/PReLU float only in a PReLU network; a ReLU6 one goes all int8
    (every conv, the depthwise ones included, becomes a QLinearConv with the Clip fused)."""
    from torch import nn

    from export_helpers import settle_bn
    from facedistill.export.onnx_export import torch_to_onnx

    import torch

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8))
    src = torch_to_onnx(settle_bn(net, faces), opset=17)
    calib = Preprocessing().apply(faces[:16])
    res = quantize_int8(src, tmp_path / "r6.onnx", calib, Int8Options())
    assert res.keep_float == [] and res.excluded_nodes == []
    ops = optimized_op_counts(tmp_path / "r6.onnx")
    assert ops.get("QLinearConv", 0) == 3 and "Conv" not in ops and "Clip" not in ops, ops
    path, _ = tiny_export
    prelu = quantize_int8(path, tmp_path / "p.onnx", calib, Int8Options())
    assert prelu.keep_float == ["stem", "head", "depthwise", "prelu"]


def test_zero_points_of_conv_weights_are_dropped_losslessly(tiny_export, faces, tmp_path):
    """The all-zero weight/bias zero points are not stored; onnxruntime still runs QLinearConv and the
    embeddings are bit-identical to the file that keeps them."""
    from facedistill.export.quantize import drop_zero_points

    path, _ = tiny_export
    out = tmp_path / "q.onnx"
    quantize_int8(path, out, Preprocessing().apply(faces[:24]), Int8Options(keep_float=("none",)))
    model = onnx.load(str(out))
    conv_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
               and any(c.op_type == "Conv" and n.output[0] in c.input for c in model.graph.node)
               and n.input[0] in {t.name for t in model.graph.initializer}]
    assert conv_dq and all(len(n.input) == 2 for n in conv_dq)  # dropped by quantize_int8 itself
    assert drop_zero_points(model) == 0  # nothing left to drop
    # against a copy that has them back
    from onnx import numpy_helper

    restored = onnx.load(str(out))
    inits = {t.name: t for t in restored.graph.initializer}
    for k, node in enumerate(n for n in restored.graph.node if n.op_type == "DequantizeLinear" and len(n.input) == 2
                             and n.input[0] in inits):
        dtype = numpy_helper.to_array(inits[node.input[0]]).dtype
        shape = numpy_helper.to_array(inits[node.input[1]]).shape
        restored.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, dtype), f"zp_{k}"))
        node.input.append(f"zp_{k}")
    full = tmp_path / "full.onnx"
    onnx.save(restored, str(full))
    assert full.stat().st_size > out.stat().st_size
    x = Preprocessing().apply(faces[24:40])
    assert np.array_equal(run_onnx(ort_session(out), x), run_onnx(ort_session(full), x))
    assert optimized_op_counts(out).get("QLinearConv", 0) == 6


def test_leaky_student_quantizes_without_float_islands(faces, tmp_path):
    """`mobilefacenet_s_leaky`: onnxruntime runs every conv as QLinearConv and every activation as
    QLinearLeakyRelu; one Q at the input and one DQ at the output, nothing float in between."""
    import torch

    from export_helpers import settle_bn
    from facedistill.export.onnx_export import torch_to_onnx
    from facedistill.models.registry import create_backbone

    torch.manual_seed(0)
    net = settle_bn(create_backbone("mobilefacenet_s_leaky", 64), faces)
    src = torch_to_onnx(net, opset=17)
    calib = Preprocessing().apply(faces[:16])
    res = quantize_int8(src, tmp_path / "leaky.onnx", calib, Int8Options())
    assert res.keep_float == [] and res.excluded_nodes == []
    ops = optimized_op_counts(tmp_path / "leaky.onnx")
    assert ops.get("QLinearLeakyRelu") == 33 and ops.get("QLinearConv") == 49, ops
    assert ops.get("QuantizeLinear") == 1 and ops.get("DequantizeLinear") == 1, ops
    assert not {"Conv", "LeakyRelu", "Mul"} & set(ops), ops
