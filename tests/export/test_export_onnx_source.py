"""``facedistill export model.onnx --int8 --calib SET``: int8 for ONNX face models trained elsewhere
(preprocessing from flags or our metadata, opset conversion, dynamic batch, same gates, our metadata)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from facedistill.cli.main import app
from facedistill.data.preprocessing import Preprocessing
from facedistill.errors import ExportError
from facedistill.export import check_onnx, export_model, read_metadata
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
