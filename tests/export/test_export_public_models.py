"""int8 of the public MobileFaceNets (../shared/models) on real LFW faces: the PaddleX file is opset 9,
the ReLU6 one opset 12, both below the 13 that per-channel int8 needs. Each is converted, quantized
with calibration on LFW folds 1-5 and passes the export gates on the pairs of folds 6-7.

Slow (about 7 minutes on 2 cores, mostly the mixed-precision search both need); the conversion
itself is checked in the default run (tests/export/test_export_onnx_source.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facedistill.cli.main import app
from facedistill.cli.prepare import prepare_app
from facedistill.export import read_metadata

pytestmark = pytest.mark.slow

MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "models"
CASES = {
    # file: (source opset, preprocessing flags)
    "paddlex_mobilefacenet_prelu_128d.onnx": (9, ["--mean", "127.5", "--std", "127.5", "--channel-order", "BGR"]),
    "foamliu_mobilefacenet_relu6_128d.onnx": (12, ["--mean", "123.675,116.28,103.53",
                                                   "--std", "58.395,57.12,57.375", "--channel-order", "RGB"]),
}


@pytest.fixture(scope="module")
def lfw(shared_data, tmp_path_factory):
    src = shared_data / "lfw112-dev"
    if not (src / "pairs.txt").is_file():
        pytest.skip(f"{src} not found (real LFW dev folds; see shared/data/README.md)")
    root = tmp_path_factory.mktemp("lfw")
    for args in (["folder", src / "images", "--pairs-file", src / "pairs.txt", "--folds", "1-5",
                  "--out", root / "train"],
                 ["pairs", src / "pairs.txt", "--folds", "6-7", "--out", root / "val"]):
        res = CliRunner().invoke(prepare_app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
    return root


@pytest.mark.parametrize("name", sorted(CASES))
def test_public_model_quantizes_and_passes_its_gates(name, lfw, tmp_path):
    path = MODELS / name
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/models)")
    opset, flags = CASES[name]
    out, js = tmp_path / "m.int8.onnx", tmp_path / "r.json"
    res = CliRunner().invoke(app, ["export", str(path), "--out", str(out), "--int8", "--calib", str(lfw / "train"),
                                   "--verify", str(lfw / "val"), *flags, "--no-latency", "--json", str(js)])
    assert res.exit_code == 0, res.output
    d = json.loads(js.read_text())
    assert d["passed"] and (d["source_opset"], d["opset"]) == (opset, 17)
    fp32, int8 = d["verification"]["fp32"], d["verification"]["int8"]
    assert fp32["accuracy"] >= 0.985, fp32          # the public models score about 99% here
    assert int8["accuracy"] >= fp32["accuracy"] - 0.005, (fp32, int8)
    meta = read_metadata(out)
    assert (meta["precision"], meta["source_opset"], meta["opset"]) == ("int8", str(opset), "17")
