"""The whole pipeline end to end through the CLI, at a tiny size: prepare, train a teacher, two
students, evaluate, export (fp32 + int8 gate), benchmark; then a re-run that reuses every step, and
one that exports again because an exported file no longer matches its stamp."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facedistill.cli.main import app


def _run(out, json_path, *extra):
    return CliRunner().invoke(app, ["quickstart", "--size", "tiny", "--out", str(out), "--set", "train.threads=2",
                                    "--json", str(json_path), *extra])


def test_quickstart_tiny_end_to_end(tmp_path):
    out = tmp_path / "qs"
    result = _run(out, tmp_path / "qs.json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "qs.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["teacher", "student (none)", "student (unified)"]
    assert summary["models"][1]["arch"] == summary["models"][2]["arch"] == "mobilefacenet_s_leaky"
    for m in summary["models"]:
        assert 0.0 <= m["accuracy"] <= 1.0
    files = {e["file"]: e for e in summary["exports"]}
    for e in summary["exports"]:  # the same unit as the models' (and evaluate's): fractions
        assert e["accuracy"] is None or 0.0 <= e["accuracy"] <= 1.0
    assert files["student.onnx"]["accuracy"] is not None
    assert files["student.onnx"]["p50_ms"] > 0 and files["teacher.onnx"]["p50_ms"] > 0
    int8 = files.get("student.int8.onnx")
    if int8 is not None:  # written: its row says whether every layer is int8, and its speed against fp32
        assert int8["speedup_vs_fp32"] > 0
        assert int8["all_int8"] == (int8["precision"] == "int8")
    assert (out / "export" / "student.onnx").is_file() and (out / "export" / "exports.json").is_file()
    assert "verification accuracy" in result.output
    assert set(summary["timings_s"]) == {"prepare", "train_teacher", "train_none", "train_unified", "evaluate",
                                         "export", "benchmark", "total"}

    # a second run reuses every finished step, the evaluation and the exports included
    again = _run(out, tmp_path / "again.json")
    assert again.exit_code == 0, again.output
    for line in ("teacher: reusing", "unified: reusing", "evaluate: reusing", "export: reusing"):
        assert line in again.output, line
    second = json.loads((tmp_path / "again.json").read_text())
    assert [m["accuracy"] for m in second["models"]] == [m["accuracy"] for m in summary["models"]]
    assert [(e["file"], e["accuracy"]) for e in second["exports"]] == \
        [(e["file"], e["accuracy"]) for e in summary["exports"]]

    # a file that is not what was exported (here: the teacher's replaced by the student's) is made again
    export = out / "export"
    (export / "teacher.onnx").write_bytes((export / "student.onnx").read_bytes())
    third = _run(out, tmp_path / "third.json")
    assert third.exit_code == 0, third.output
    assert "export: exporting again (teacher.onnx changed since it was made)" in third.output
    assert "export: reusing" not in third.output and "evaluate: reusing" in third.output
    stamp = json.loads((export / "exports.json").read_text())
    assert stamp["key"]["unified_recipe_hash"] and stamp["key"]["teacher_weights_sha256"]
    from facedistill.export.metadata import read_metadata

    assert read_metadata(export / "teacher.onnx")["recipe_hash"] == stamp["key"]["teacher_recipe_hash"]


@pytest.mark.slow
def test_quickstart_default_shows_distillation_and_int8(tmp_path):
    """The default quickstart: the distilled student beats its undistilled twin and the int8 student is
    smaller and within 1 point of the fp32 one; when layers stayed float, the row says which.

    FACEDISTILL_QUICKSTART_DIR names a folder to run in (a finished one is reused, about 30 s)."""
    out = Path(os.environ.get("FACEDISTILL_QUICKSTART_DIR") or tmp_path / "qs")
    result = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--quiet", "--json", str(tmp_path / "qs.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "qs.json").read_text())
    acc = {m["model"]: m["accuracy"] for m in summary["models"]}
    assert acc["student (unified)"] > acc["student (none)"]
    files = {e["file"]: e for e in summary["exports"]}
    fp32, int8 = files["student.onnx"], files["student.int8.onnx"]
    assert int8["all_int8"] or int8["float_layers"], int8  # a fallback is named in the row, never silent
    assert int8["all_int8"], int8  # the quickstart's students pass the int8 gate without float layers
    assert int8["size_mb"] < fp32["size_mb"] / 2
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= 0.01
