"""Small ONNX models for the benchmark / Docker tests (MobileFaceNet, random weights)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np


def make_backbone(arch: str = "mobilefacenet"):
    try:
        from facedistill.models import create_backbone
    except ImportError:  # stand-in while the model registry is being written
        from facedistill.models.mobilefacenet import get_mbf

        return get_mbf().eval()
    return create_backbone(arch, embedding_size=512).eval()


def calibrate_bn(model, batches: int = 1, batch: int = 8):
    """Set BatchNorm statistics from face-crop-like inputs, as training would.

    With the default statistics of a freshly initialised net the embedding hardly depends on the
    input (every image gives the same direction), which would make any parity check vacuous.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(batch, 3, 112, 112, generator=gen) * 2 - 1)
    return model.eval()


def export_mobilefacenet(path: Path, run_dir: Path | None = None) -> Path:
    """fp32 ONNX (input ``input``, output ``embedding``, dynamic batch, opset 17); optionally also
    a run folder (student.pt + summary.json) holding the same weights, for --torch baselines."""
    import torch

    torch.manual_seed(0)
    model = calibrate_bn(make_backbone())
    x = torch.randn(1, 3, 112, 112)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(model, x, str(path), input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), run_dir / "student.pt")
        (run_dir / "summary.json").write_text(json.dumps(
            {"student": {"arch": "mobilefacenet", "embedding_size": 512}}))
    return path


class _Reader:
    def __init__(self, batches: int = 2, batch: int = 4, name: str = "input"):
        rng = np.random.default_rng(0)
        self._it = iter([{name: rng.uniform(-1, 1, (batch, 3, 112, 112)).astype(np.float32)}
                         for _ in range(batches)])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # not needed for MinMax calibration
        pass


def quantize_int8(src: Path, dst: Path) -> Path:
    """Static QDQ int8 (per-channel 7-bit weights, uint8 activations) after quant_pre_process.

    7-bit weights (``reduce_range``), as ``facedistill export --int8`` writes by default: on x86
    without VNNI onnxruntime's u8s8 kernels saturate 8-bit products, so an 8-bit model computes
    differently there than on ARM and the parity tests would measure the x86 kernel, not the export.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.stem + "_pre.onnx")
    quant_pre_process(str(src), str(pre))

    class Reader(_Reader, CalibrationDataReader):
        pass

    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
    pre.unlink(missing_ok=True)
    return dst
