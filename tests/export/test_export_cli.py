"""``facedistill export``: the CLI parses, calls export_model, prints the table, writes --json, and
exits non-zero when a gate fails."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from facedistill.cli.main import app


@pytest.fixture
def fake_loader(tiny, monkeypatch):
    import facedistill.models.checkpoints as artifacts

    monkeypatch.setattr(artifacts, "load_backbone", lambda path, arch=None, embedding_size=None: tiny)


def test_cli_int8_with_verify(fake_loader, tmp_path, train_set, pair_set):
    out = tmp_path / "s.onnx"
    js = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["export", "run", "--out", str(out), "--int8", "--calib", str(train_set),
                                   "--calib-images", "24", "--verify", str(pair_set), "--parity-images", "8",
                                   "--int8-max-drop", "50", "--fp16", "--json", str(js)])
    assert res.exit_code == 0, res.output
    for word in ("fp32", "fp16", "int8", "size MB", "latency"):
        assert word in res.output
    d = json.loads(js.read_text())
    assert [a["precision"] for a in d["artifacts"]] == ["fp32", "fp16", "int8"]
    assert d["verification"]["fp32"]["accuracy"] > 0 and d["verification"]["int8"]["accuracy"] > 0
    assert all(a["latency_ms_b1"] > 0 for a in d["artifacts"])
    assert (tmp_path / "s.int8.onnx").exists() and (tmp_path / "s.fp16.onnx").exists()


def test_cli_gate_failure_exits_nonzero(fake_loader, tmp_path):
    out = tmp_path / "s.onnx"
    js = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["export", "run", "--out", str(out), "--int8", "--calib-images", "16",
                                   "--parity-images", "8", "--int8-min-cosine", "1.5", "--no-latency",
                                   "--json", str(js)])
    assert res.exit_code == 2, res.output
    assert "int8 gate failed" in _text(res)
    d = json.loads(js.read_text())
    assert not d["passed"] and "int8 gate failed" in d["failure"]
    assert not (tmp_path / "s.int8.onnx").exists()


def _text(res) -> str:
    return " ".join(res.output.split())  # rich wraps long lines


def test_cli_bad_arguments(tmp_path):
    res = CliRunner().invoke(app, ["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "no such file" in _text(res)
    res = CliRunner().invoke(app, ["export", "m.pt", "--out", str(tmp_path / "x.onnx"), "--batch", "0"])
    assert res.exit_code != 0
    res = CliRunner().invoke(app, ["export", "m.pt", "--out", str(tmp_path / "x.onnx"), "--int8",
                                   "--int8-prelu", "sigmoid"])
    assert res.exit_code == 2 and "PReLU mode" in _text(res)
