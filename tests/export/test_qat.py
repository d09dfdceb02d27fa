"""Quantization-aware fine-tuning: what it quantizes, what it returns, and `export --int8 --qat-steps`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facedistill.errors import ExportError
from facedistill.export import ExportGateError, export_model
from facedistill.export.qat import QATOptions, qat_finetune, quantized_convs


def test_quantized_convs_follow_the_export_parts(tiny):
    quantized, kept = quantized_convs(tiny.model)  # auto on a PReLU network: stem, head, depthwise float
    assert quantized == ["conv2.0", "block.0", "block.3", "down.0"]
    assert kept == ["stem.0", "gdc.0"]
    quantized, kept = quantized_convs(tiny.model, keep_float=("none",))
    assert kept == [] and len(quantized) == 6
    quantized, kept = quantized_convs(tiny.model, keep_float=("stem", "head"))
    assert kept == ["stem.0", "gdc.0"]


def test_qat_brings_the_int8_simulation_closer_and_returns_a_plain_model(tiny):
    from facedistill.data.synthetic import render_identities

    faces, _ = render_identities(range(0, 40), 4, seed=1)  # 160 faces: 140 to train on, 20 held out
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    model, res = qat_finetune(tiny.model, faces, tiny.preprocessing.apply,
                              QATOptions(steps=150, batch_size=8, lr=1e-4, weight_bits=7), keep_float=("none",))
    # the caller's model is untouched; the result has the same parameter names and no fake quantization left
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())
    assert list(model.state_dict()) == list(before)
    assert not any("parametrizations" in k for k in model.state_dict())
    assert not model.training
    assert res.quantized_convs == 6 and res.float_convs == 0 and res.images == 1200
    # the fine-tuned weights moved, and the simulated int8 model agrees better with fp32 on held-out faces
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # every trainable tensor learns, the PReLU slopes (quantized as constants of the fused rewrite) too
    for k in ("stem.2.weight", "block.2.weight", "conv2.0.weight", "fc.weight"):
        assert not torch.equal(before[k], model.state_dict()[k]), k
    # On this tiny, well-conditioned net (0.9926 simulated before) the held-out gain is within the noise
    # of CPU kernels: +0.0004 at lr 3e-4 and -0.00015 at lr 1e-4 on an AVX-512 Xeon, a gain on an AVX2
    # EPYC. What must hold everywhere: fine-tuning does not damage the int8 simulation. (The gain on a
    # real student is measured in docs/results.md.)
    assert res.cosine_after > res.cosine_before - 0.002


def test_qat_errors_say_what_to_do(tiny, tiny_export, train_set, tmp_path):
    with pytest.raises(ExportError, match="QAT steps"):
        QATOptions(steps=0).validate()
    with pytest.raises(ExportError, match="at least"):
        qat_finetune(tiny.model, np.zeros((10, 112, 112, 3), np.uint8), tiny.preprocessing.apply,
                     QATOptions(steps=1, batch_size=32))
    with pytest.raises(ExportError, match="needs --calib"):
        export_model(None, tmp_path / "m.onnx", loaded=tiny, int8=True, qat=QATOptions(steps=1), latency=False)
    with pytest.raises(ExportError, match="needs the trained PyTorch student"):
        export_model(tiny_export[0], tmp_path / "m.int8.onnx", int8=True, calib=train_set, qat=QATOptions(steps=1),
                     latency=False)
    with pytest.raises(ExportError, match="add --int8"):
        export_model(None, tmp_path / "m.onnx", loaded=tiny, qat=QATOptions(steps=1), latency=False)


def test_export_int8_with_qat(tiny, tmp_path, train_set, pair_set):
    """The fp32 file is the original student; the int8 file comes from the fine-tuned copy and is gated
    against the original; the report and the metadata say QAT ran."""
    import onnx

    out = tmp_path / "q.onnx"
    try:
        report = export_model(None, out, loaded=tiny, int8=True, calib=train_set, verify=pair_set,
                              qat=QATOptions(steps=10, batch_size=8), latency=False, int8_mixed=False,
                              int8_min_cosine=0.5, int8_max_drop=100.0)
    except ExportGateError as e:  # pragma: no cover - the message is the useful part when it happens
        pytest.fail(f"gate: {e}")
    assert report.qat is not None and report.qat["steps"] == 10
    assert any("QAT" in n for n in report.notes)
    assert report.artifact("fp32").cosine_worst > 0.9999  # fp32 is the original student, unchanged
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "q.int8.onnx")).metadata_props}
    assert meta["int8_qat"].startswith("10 steps of 8 faces")
    assert json.loads(json.dumps(report.to_dict()))["qat"]["quantized_convs"] == 4


def test_cli_qat_needs_calib(tmp_path):
    from typer.testing import CliRunner

    from facedistill.cli.main import app

    pt = tmp_path / "m.pt"
    from facedistill.models.registry import create_backbone

    torch.save(create_backbone("mobilefacenet_s", embedding_size=128).state_dict(), pt)
    result = CliRunner().invoke(app, ["export", str(pt), "--out", str(tmp_path / "m.onnx"), "--int8",
                                      "--qat-steps", "5", "--no-latency"])
    assert result.exit_code != 0
    assert "needs --calib" in result.output


def test_qat_simulates_a_leaky_student_as_onnxruntime_runs_it(faces, tmp_path):
    """On an all-int8 LeakyReLU MobileFaceNet (QLinearConv + QLinearLeakyRelu) the simulation's
    cosine to fp32 predicts onnxruntime's: it quantizes what onnxruntime quantizes."""
    from export_helpers import settle_bn
    from facedistill.data.preprocessing import Preprocessing
    from facedistill.export import Int8Options, quantize_int8
    from facedistill.export.onnx_export import torch_to_onnx
    from facedistill.export.parity import ort_session
    from facedistill.models.registry import create_backbone

    torch.manual_seed(0)
    pre = Preprocessing()
    net = settle_bn(create_backbone("mobilefacenet_s_leaky", 64), faces)
    _, res = qat_finetune(net, faces, pre.apply, QATOptions(steps=1, batch_size=8, lr=1e-9, calib_batches=4))
    assert res.quantized_convs == 49 and res.float_convs == 0  # auto on a network without PReLU: all int8
    # onnxruntime's int8 of the same weights, calibrated on the same kind of faces
    q = tmp_path / "leaky.int8.onnx"
    # minmax: the simulation sets its ranges MinMax-style (percentile, the export default, clips outliers
    # and scored 0.88-0.89 here against the simulation's 0.82-0.84 on three seeds, minmax 0.82-0.83)
    quantize_int8(torch_to_onnx(net, opset=17), q, pre.apply(faces[:32]), Int8Options(method="minmax"))
    x = pre.apply(faces[-16:])
    sess = ort_session(q, threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    cos = float(np.mean(np.sum(got * ref, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)))
    # (random weights amplify rounding: 0.845 simulated vs 0.831 onnxruntime here; a simulation that
    # left out the convs would say ~1, one without the LeakyReLU outputs said 0.852)
    assert abs(res.cosine_before - cos) < 0.3 * (1 - cos), (res.cosine_before, cos)


def test_a_float_stem_keeps_its_leaky_relu_float_in_the_simulation():
    """`--int8-keep-float stem`: the export runs the stem conv and its LeakyRelu in float
    (find_stem_nodes), so the simulation leaves that activation's output unquantized too."""
    from facedistill.export.qat import _following_activation, _resolve_parts, _Simulation
    from facedistill.models.registry import create_backbone

    net = create_backbone("mobilefacenet_s_leaky", 32).eval()
    leaky = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    quantized, kept = quantized_convs(net, keep_float=("stem",))
    stem_act = _following_activation(net, kept[0])
    assert stem_act is leaky[0]
    observed = []
    for floats in ([], [stem_act]):
        sim = _Simulation(net, quantized, _resolve_parts(net, ("stem",)), 8, float_modules=floats)
        observed.append(len(sim.observers))
        sim.remove()
    assert observed[0] - observed[1] == 1
