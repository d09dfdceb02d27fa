"""The new int8 paths run on an emulated aarch64 CPU and agree with this host: a mixed-precision
model (float islands inside an int8 graph), an all-int8 ReLU6 MobileFaceNet and an all-int8 LeakyReLU one
(`--int8-keep-float auto` on a network without PReLU; QLinearLeakyRelu), and an int8 model quantized from a foreign ONNX file.

Needs the emulated python of ../shared/arm/setup-arm64-emulator.sh (CI runs it); skips otherwise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from facedistill.bench.arm import find_arm_python, verify_arm
from facedistill.bench.latency import BenchmarkError
from facedistill.data.preprocessing import Preprocessing
from facedistill.export import Int8Options, export_model, quantize_int8
from facedistill.export.mixed_precision import search_mixed_precision


def _emulator_or_skip():
    try:
        return find_arm_python()
    except BenchmarkError as e:
        pytest.skip(f"emulated ARM python not set up: {str(e).splitlines()[0]}")


def test_new_int8_paths_agree_on_emulated_arm(tiny, tiny_export, faces, train_set, tmp_path):
    _emulator_or_skip()
    from export_helpers import settle_bn
    from facedistill.export.onnx_export import torch_to_onnx
    from facedistill.models.registry import create_backbone

    fp32, _ = tiny_export
    calib = Preprocessing().apply(faces[:24])
    mixed = tmp_path / "mixed.int8.onnx"
    res = search_mixed_precision(fp32, mixed, calib, Preprocessing().apply(faces[24:40]),
                                 Int8Options(keep_float=()), target_cosine=0.995)
    assert res.kept_float_layers and len(res.kept_float_layers) < len(res.layers)  # float islands inside int8
    torch.manual_seed(0)
    relu6 = settle_bn(create_backbone("mobilefacenet_s_relu6", 64), faces)
    src = torch_to_onnx(relu6, opset=17)
    r6 = tmp_path / "relu6.int8.onnx"
    q = quantize_int8(src, r6, calib, Int8Options())
    assert q.keep_float == [] and q.quantized_ops.get("QuantizeLinear", 0) > 40  # all int8
    leaky = settle_bn(create_backbone("mobilefacenet_s_leaky", 64), faces)
    lk = tmp_path / "leaky.int8.onnx"
    # minmax: with percentile ranges this *random* network amplifies rounding ties until the two CPUs
    # disagree (max |d| 0.26); the trained LeakyReLU LFW student's percentile int8 agrees at 0.9997
    # (`facedistill verify-arm`, docs/results.md)
    q = quantize_int8(torch_to_onnx(leaky, opset=17), lk, calib, Int8Options(method="minmax"))
    assert q.keep_float == [] and q.quantized_ops.get("QuantizeLinear", 0) > 70  # all int8, QLinearLeakyRelu
    foreign = tmp_path / "face.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny.model.eval(), (torch.zeros(1, 3, 112, 112),), str(foreign), dynamo=False,
                          input_names=["data"], output_names=["fc1"], opset_version=17)
    f8 = tmp_path / "face.int8.onnx"
    export_model(foreign, f8, int8=True, calib=train_set, calib_images=16, parity_images=8, latency=False,
                 mean=127.5, std=127.5, channel_order="RGB")
    report = verify_arm([mixed, r6, lk, f8], cpu="cortex-a72", batch=1, threads=1, timeout=900)
    assert report.target["machine"] == "aarch64"
    for r in report.results:
        assert r.passed and r.min_cosine >= max(0.999, r.threshold), r
    assert [r.precision for r in report.results][1:] == ["int8", "int8", "int8"]
    assert np.isfinite([r.min_cosine for r in report.results]).all()
