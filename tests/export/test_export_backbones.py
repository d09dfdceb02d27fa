"""Every backbone exports, passes the parity gate, keeps a dynamic batch and carries its metadata.

MobileFaceNet goes through the CLI (state dict -> ``facedistill export`` -> --json), iresnet18 through
the library; the bigger IResNets are marked slow (run with ``-m slow``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facedistill.data.preprocessing import Preprocessing
from facedistill.export import check_onnx, export_model, read_metadata
from facedistill.export.parity import cosine_rows, ort_session, run_torch


def _check_backbone_file(path, model, arch, faces, emb=512):
    checked = check_onnx(path)
    assert checked.digest_checked and checked.dynamic_batch
    assert checked.input_name == "input" and checked.output_name == "embedding"
    assert checked.input_shape[1:] == [3, 112, 112] and checked.output_shape[1] == emb
    meta = read_metadata(path)
    assert meta["architecture"] == arch and meta["embedding_size"] == str(emb)
    assert meta["precision"] == "fp32" and meta["input_size"] == "112"
    sess = ort_session(path)
    x = Preprocessing().apply(faces[:7])
    ref = run_torch(model, x)
    for b in (1, 7):  # the batch axis really is dynamic
        y = np.asarray(sess.run(None, {"input": x[:b]})[0])
        assert y.shape == (b, emb)
        assert cosine_rows(ref[:b], y).min() >= 0.9999


def test_mobilefacenet_via_cli(tmp_path, faces):
    from facedistill.cli.main import app
    from facedistill.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone("mobilefacenet", 128).eval()
    ckpt = tmp_path / "mbf.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "onnx" / "student.onnx"
    js = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(out), "--parity-images", "4",
                                      "--no-latency", "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "fp32" in result.output and "pass" in result.output
    report = json.loads(js.read_text())
    assert report["passed"] and report["arch"] == "mobilefacenet" and report["embedding_size"] == 128
    assert report["artifacts"][0]["cosine_worst"] >= 0.9999
    assert report["batch_check"] == [1, 7]
    _check_backbone_file(out, model, "mobilefacenet", faces, emb=128)


def _export_arch(arch, tmp_path, faces):
    from facedistill.models.checkpoints import LoadedBackbone
    from facedistill.models import create_backbone

    from export_helpers import settle_bn

    torch.manual_seed(0)
    # BatchNorm statistics as training leaves them: an untouched deep init overflows to inf
    model = settle_bn(create_backbone(arch, 512), faces[:16])
    loaded = LoadedBackbone(model=model, arch=arch, embedding_size=512, source=tmp_path / f"{arch}.pt")
    out = tmp_path / f"{arch}.onnx"
    report = export_model(None, out, loaded=loaded, parity_images=2, latency=False)
    assert report.passed and report.artifact("fp32").cosine_worst >= 0.9999
    _check_backbone_file(out, model, arch, faces)


def test_iresnet18(tmp_path, faces):
    _export_arch("iresnet18", tmp_path, faces)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["iresnet34", "iresnet50", "iresnet100"])
def test_bigger_iresnets(arch, tmp_path, faces):
    _export_arch(arch, tmp_path, faces)


@pytest.mark.slow
def test_mobilefacenet_int8_end_to_end(tmp_path, faces, train_set, pair_set):
    """The real student through the int8 path (calibration, gates, both accuracies)."""
    from facedistill.models.checkpoints import LoadedBackbone
    from facedistill.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone("mobilefacenet", 512).eval()
    loaded = LoadedBackbone(model=model, arch="mobilefacenet", embedding_size=512, source=tmp_path / "m.pt")
    report = export_model(None, tmp_path / "m.onnx", loaded=loaded, int8=True, calib=train_set, calib_images=48,
                          verify=pair_set, parity_images=16, int8_min_cosine=0.9, int8_max_drop=100.0)
    a8 = report.artifact("int8")
    assert a8.written and a8.size_bytes * 3 < report.artifact("fp32").size_bytes
    assert a8.accuracy is not None
