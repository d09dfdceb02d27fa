"""The whole pipeline end to end through the CLI, at a tiny size: prepare, train a teacher, two
students, evaluate, export (fp32 + int8 gate), benchmark."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from facedistill.cli.main import app


def test_quickstart_tiny_end_to_end(tmp_path):
    out = tmp_path / "qs"
    result = CliRunner().invoke(app, ["quickstart", "--size", "tiny", "--out", str(out), "--quiet",
                                      "--set", "train.threads=2", "--json", str(tmp_path / "qs.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "qs.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["teacher", "student (none)", "student (unified)"]
    for m in summary["models"]:
        assert 0.0 <= m["accuracy"] <= 1.0
    files = {e["file"]: e for e in summary["exports"]}
    for e in summary["exports"]:  # the same unit as the models' (and evaluate's): fractions
        assert e["accuracy"] is None or 0.0 <= e["accuracy"] <= 1.0
    assert files["student.onnx"]["accuracy"] is not None
    assert files["student.onnx"]["p50_ms"] > 0 and files["teacher.onnx"]["p50_ms"] > 0
    assert (out / "export" / "student.onnx").is_file()
    assert "verification accuracy" in result.output
    # a second run reuses every finished step
    again = CliRunner().invoke(app, ["quickstart", "--size", "tiny", "--out", str(out), "--no-int8",
                                     "--set", "train.threads=2"])
    assert again.exit_code == 0, again.output
    assert "teacher: reusing" in again.output and "unified: reusing" in again.output
