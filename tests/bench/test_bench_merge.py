import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facedistill.bench import merge_reports
from facedistill.bench.latency import BenchmarkError, BenchmarkReport, BenchmarkRow


def _report(label: str, arch: str, p50s: dict, path: Path) -> Path:
    rows = [BenchmarkRow(model=m, path=f"{m}.onnx", engine="onnxruntime", provider="CPU",
                         precision="int8" if "int8" in m else "fp32", precision_source="graph", size_mb=2.0,
                         batch=b, threads=t, runs=10, p50_ms=v, p90_ms=v * 1.1, mean_ms=v,
                         images_per_s=b * 1000 / v, peak_rss_mb=80.0)
            for (m, b, t), v in p50s.items()]
    rep = BenchmarkReport(machine={"architecture": arch, "cpu_model": f"{arch} cpu", "usable_cpus": 4,
                                   "isa": {"AVX2": arch == "x86_64"}, "onnxruntime": "1.32.0", "os": "Linux"},
                          rows=rows, label=label)
    path.write_text(json.dumps(rep.to_dict()))
    return path


def test_merge_two_targets(tmp_path: Path):
    a = _report("laptop", "x86_64", {("mbf", 1, 4): 4.0, ("mbf_int8", 1, 4): 2.0}, tmp_path / "a.json")
    b = _report("pi5", "aarch64", {("mbf", 1, 4): 12.0, ("mbf_int8", 1, 4): 5.0, ("mbf", 8, 4): 80.0},
                tmp_path / "b.json")
    rows = merge_reports([a, b])
    by = {(r["model"], r["batch"]): r for r in rows}
    assert set(by) == {("mbf", 1), ("mbf_int8", 1), ("mbf", 8)}
    assert by[("mbf", 1)]["targets"]["pi5"]["relative"] == 3.0
    assert by[("mbf", 1)]["targets"]["laptop"]["relative"] == 1.0
    assert "laptop" not in by[("mbf", 8)]["targets"]  # not run there: no made-up number
    # same label twice stays distinguishable
    rows = merge_reports([a, a])
    assert set(rows[0]["targets"]) == {"laptop", "laptop #2"}


def test_merge_cli_table(tmp_path: Path, cli_app):
    a = _report("laptop", "x86_64", {("mbf", 1, 1): 4.0}, tmp_path / "a.json")
    b = _report("pi5", "aarch64", {("mbf", 1, 1): 12.0}, tmp_path / "b.json")
    res = CliRunner().invoke(cli_app, ["benchmark", "--merge", str(a), str(b), "--json", str(tmp_path / "m.json")],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "laptop" in res.output and "pi5" in res.output and "3.00x" in res.output
    assert json.loads((tmp_path / "m.json").read_text())["rows"][0]["targets"]["pi5"]["p50_ms"] == 12.0


def test_merge_refuses_non_reports(tmp_path: Path, cli_app):
    p = tmp_path / "x.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(BenchmarkError, match="not a facedistill benchmark report"):
        merge_reports([p])
    res = CliRunner().invoke(cli_app, ["benchmark", "--merge", str(p)])
    assert res.exit_code == 2 and "not a facedistill benchmark report" in " ".join(res.output.split())
    res = CliRunner().invoke(cli_app, ["benchmark", "--merge", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "no such report" in " ".join(res.output.split())
