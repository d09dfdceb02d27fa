"""Every ``--json`` of the CLI gives accuracies as fractions (evaluate's unit), never percent."""

from __future__ import annotations

from facedistill.cli.export import export_json
from facedistill.export.onnx_export import ArtifactReport, ExportReport


def _report() -> ExportReport:
    arts = [ArtifactReport("fp32", "s.onnx", True, accuracy=82.17),
            ArtifactReport("int8", "s.int8.onnx", True, accuracy=81.5),
            ArtifactReport("fp16", "s.fp16.onnx", True)]
    return ExportReport(source="run", arch="mobilefacenet", embedding_size=128, opset=17, batch="dynamic",
                        simplified=True, preprocessing={}, artifacts=arts,
                        verification={"set": "val", "fp32": {"accuracy": 82.17, "accuracy_std": 1.5},
                                      "int8": {"accuracy": 81.5, "accuracy_std": 2.0}, "drop_points": 0.67})


def test_export_json_gives_fractions():
    d = export_json(_report())
    assert [a["accuracy"] for a in d["artifacts"]] == [0.8217, 0.815, None]
    assert d["verification"]["fp32"] == {"accuracy": 0.8217, "accuracy_std": 0.015}
    assert d["verification"]["int8"]["accuracy"] == 0.815
    assert d["verification"]["drop_points"] == 0.67  # named in points, stays in points


def test_export_json_leaves_the_report_in_percent():
    report = _report()
    export_json(report)
    assert report.artifacts[0].accuracy == 82.17 and report.verification["fp32"]["accuracy"] == 82.17
