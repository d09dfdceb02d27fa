"""``facedistill export model.onnx --int8 --calib SET``: int8 for ONNX face models trained elsewhere
(preprocessing from flags or our metadata, opset conversion, dynamic batch, same gates, our metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from facedistill.cli.main import app
from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import ExportError
from facedistill.export import check_onnx, export_model, read_metadata
from facedistill.export.onnx_source import graph_opset, load_onnx_source
from facedistill.export.parity import cosine_rows, ort_session, run_onnx


@pytest.fixture(scope="module")
def foreign(tiny, tmp_path_factory):
    """The tiny model as another project would ship it: no metadata, fixed batch 1, input 'data'."""
    import warnings

    import torch

    path = tmp_path_factory.mktemp("foreign") / "face.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(tiny.model.eval(), (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False,
                          input_names=["data"], output_names=["fc1"], opset_version=17)
    return path


def test_foreign_onnx_needs_preprocessing(foreign, tmp_path, train_set):
    with pytest.raises(ExportError, match="--mean, --std and --channel-order"):
        export_model(foreign, tmp_path / "f.int8.onnx", int8=True, calib=train_set, calib_images=16,
                     parity_images=8, latency=False)
    with pytest.raises(ExportError, match="only makes sense with --int8"):
        export_model(foreign, tmp_path / "f.int8.onnx", int8=False)
    with pytest.raises(ExportError, match="needs --calib"):
        export_model(foreign, tmp_path / "f.int8.onnx", int8=True, mean=127.5, std=127.5, channel_order="RGB")
    assert not list(tmp_path.iterdir())


def test_cli_quantizes_a_foreign_onnx_model(foreign, tmp_path, train_set, pair_set):
    out = tmp_path / "f.int8.onnx"
    js = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["export", str(foreign), "--out", str(out), "--int8", "--calib", str(train_set),
                                   "--calib-images", "24", "--verify", str(pair_set), "--parity-images", "16",
                                   "--mean", "127.5", "--std", "127.5", "--channel-order", "RGB",
                                   "--int8-max-drop", "50", "--json", str(js)])
    assert res.exit_code == 0, res.output
    d = json.loads(js.read_text())
    assert [a["precision"] for a in d["artifacts"]] == ["fp32", "int8"]
    assert d["artifacts"][0]["path"] == str(foreign) and d["batch"] == "dynamic"
    assert any("made dynamic" in n for n in d["notes"])
    assert d["verification"]["int8"]["accuracy"] > 0
    meta = read_metadata(out)
    assert meta["precision"] == "int8" and meta["architecture"] == "onnx:face" and meta["mean"] == "127.5"
    assert meta["embedding_size"] == "32" and meta["source"] == "face.onnx"
    assert check_onnx(out).digest_checked
    # the int8 file runs at any batch and agrees with the source model
    from facedistill.data.synthetic import render_identities

    x = Preprocessing().apply(render_identities(range(800, 803), 2, seed=3)[0])
    y8 = run_onnx(ort_session(out), x)
    y32 = np.concatenate([run_onnx(ort_session(foreign), x[i:i + 1]) for i in range(len(x))])
    assert y8.shape == y32.shape and cosine_rows(y32, y8).mean() > 0.95


def test_metadata_gives_preprocessing_and_high_opset_is_converted(tiny_export, tmp_path, train_set):
    """Our own fp32 file (metadata present) re-quantized from ONNX; an opset-21 copy is converted."""
    src, _ = tiny_export
    m = onnx.load(str(src))
    from onnx import version_converter

    hi = version_converter.convert_version(m, 21)
    for p in list(m.metadata_props):
        e = hi.metadata_props.add()
        e.key, e.value = p.key, p.value
    hi_path = tmp_path / "hi.onnx"
    onnx.save(hi, str(hi_path))
    rep = export_model(hi_path, tmp_path / "hi.int8.onnx", int8=True, calib=train_set, calib_images=16,
                       parity_images=8, latency=False)
    assert rep.passed
    assert any("opset 21 converted" in n for n in rep.notes)
    assert any("facedistill metadata" in n for n in rep.notes)
    assert read_metadata(tmp_path / "hi.int8.onnx")["architecture"] == "tinyfacenet"
    with pytest.raises(ExportError, match="is the source model"):
        export_model(hi_path, hi_path, int8=True, calib=train_set)


# -- opsets older than per-channel int8 needs ------------------------------------------------------
MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "models"
PUBLIC = {"paddlex_mobilefacenet_prelu_128d.onnx": 9, "foamliu_mobilefacenet_relu6_128d.onnx": 12}


@pytest.fixture(scope="module")
def foreign_opset12(tiny, tmp_path_factory):
    import warnings

    import torch

    path = tmp_path_factory.mktemp("old") / "old.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny.model.eval(), (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False,
                          input_names=["data"], output_names=["fc1"], opset_version=12)
    assert graph_opset(onnx.load(str(path))) == 12
    return path


def test_opset12_source_is_converted_and_both_opsets_recorded(foreign_opset12, tmp_path, train_set):
    out = tmp_path / "old.int8.onnx"
    js = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["export", str(foreign_opset12), "--out", str(out), "--int8", "--calib",
                                   str(train_set), "--calib-images", "16", "--parity-images", "8", "--mean", "127.5",
                                   "--std", "127.5", "--channel-order", "RGB", "--no-latency", "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert "opset 12 -> 17" in " ".join(res.output.split())
    d = json.loads(js.read_text())
    assert (d["source_opset"], d["opset"]) == (12, 17)
    assert any("source opset 12 converted to 17" in n for n in d["notes"])
    meta = read_metadata(out)
    assert (meta["source_opset"], meta["opset"]) == ("12", "17")
    assert graph_opset(onnx.load(str(out))) == 17
    # per-channel DequantizeLinear carries an axis: the file loads and runs (it did not at opset 12)
    y = run_onnx(ort_session(out), Preprocessing().apply(np.zeros((2, 112, 112, 3), np.uint8)))
    assert y.shape == (2, 32)


def test_unconvertible_opset_is_refused_before_any_work(foreign_opset12, tmp_path, monkeypatch):
    from onnx import version_converter

    def fail(model, target):
        raise RuntimeError("no adapter for op Foo\nsecond line")

    monkeypatch.setattr(version_converter, "convert_version", fail)
    res = CliRunner().invoke(app, ["export", str(foreign_opset12), "--out", str(tmp_path / "x.onnx"), "--int8",
                                   "--calib", str(tmp_path / "not-read"), "--mean", "127.5", "--std", "127.5",
                                   "--channel-order", "RGB"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "has opset 12; per-channel int8 needs opset >= 13" in text and "no adapter for op Foo" in text
    assert "second line" not in text and "Re-export the model" in text
    assert not list(tmp_path.iterdir())  # the calibration set was never opened, nothing written


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_model_opset_converts_with_identical_embeddings(name):
    """The fp32 parity gate's check, on the real files: conversion changes no embedding."""
    path = MODELS / name
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/models)")
    assert graph_opset(onnx.load(str(path))) == PUBLIC[name]
    notes: list[str] = []
    model, size = load_onnx_source(path, notes)
    assert graph_opset(model) == 17 and size == 112
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    a = run_onnx(ort_session(path), x)
    b = run_onnx(ort_session(model.SerializeToString()), x)
    assert cosine_rows(a, b).min() > 0.99999
