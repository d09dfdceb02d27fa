import json
from pathlib import Path

from typer.testing import CliRunner

WIDE = {"COLUMNS": "220"}


def _text(res) -> str:
    return " ".join(res.output.split())


def test_benchmark_table_and_json(bench_models, tmp_path: Path, cli_app):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli_app, ["benchmark", str(bench_models["fp32"]), str(bench_models["int8"]),
                                       "-b", "1", "-t", "1", "--runs", "3", "--warmup", "1", "--json", str(out),
                                       "--label", "ci-box"], env=WIDE)
    assert res.exit_code == 0, res.output
    text = _text(res)
    for needle in ("mbf_int8", "int8", "fp32", "p50", "img/s", "Peak RSS", "onnxruntime", "ISA"):
        assert needle in text, needle
    rep = json.loads(out.read_text())
    assert rep["schema"] == "facedistill.benchmark/1" and rep["label"] == "ci-box" and len(rep["rows"]) == 2
    assert rep["machine"]["cpu_model"] and rep["settings"]["inter_op_threads"] == 1


def test_json_to_stdout_is_pure_json(bench_models, cli_app):
    res = CliRunner().invoke(cli_app, ["benchmark", str(bench_models["int8"]), "-b", "1", "-t", "1",
                                       "--runs", "2", "--warmup", "0", "--json", "-"])
    assert res.exit_code == 0, res.output
    start = res.stdout.index("{")
    assert json.loads(res.stdout[start:])["rows"][0]["precision"] == "int8"


def test_max_latency_gate_exit_codes(bench_models, cli_app):
    base = ["benchmark", str(bench_models["int8"]), "-b", "1", "-t", "1", "--runs", "2", "--warmup", "0"]
    ok = CliRunner().invoke(cli_app, base + ["--max-latency", "100000"], env=WIDE)
    assert ok.exit_code == 0 and "latency gate passed" in _text(ok)
    bad = CliRunner().invoke(cli_app, base + ["--max-latency", "0.001"], env=WIDE)
    assert bad.exit_code == 1 and "latency gate failed" in _text(bad) and "mbf_int8 batch 1" in _text(bad)
    unmeasured = CliRunner().invoke(cli_app, base + ["--max-latency", "8=50"], env=WIDE)
    assert unmeasured.exit_code == 2 and "add it to --batch" in _text(unmeasured)


def test_user_errors_have_no_traceback(bench_models, tmp_path: Path, cli_app):
    res = CliRunner().invoke(cli_app, ["benchmark", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2 and "no such file" in _text(res) and "Traceback" not in res.output
    res = CliRunner().invoke(cli_app, ["benchmark", str(bench_models["run"])])
    assert res.exit_code == 2 and "--torch" in _text(res)
    res = CliRunner().invoke(cli_app, ["benchmark", str(bench_models["fp32"]), "-b", "1,x"])
    assert res.exit_code == 2 and "not an integer" in _text(res)
    report = tmp_path / "r.json"
    report.write_text("{}")
    res = CliRunner().invoke(cli_app, ["benchmark", str(report)])
    assert res.exit_code == 2 and "--merge" in _text(res)


def test_profile_prints_top_ops(bench_models, tmp_path: Path, cli_app):
    res = CliRunner().invoke(cli_app, ["benchmark", str(bench_models["fp32"]), "-b", "1", "-t", "1", "--runs", "2",
                                       "--warmup", "0", "--profile", "--profile-dir", str(tmp_path / "p")],
                             env=WIDE)
    assert res.exit_code == 0, res.output
    assert "Top ops: mbf batch 1 threads 1" in _text(res) and (tmp_path / "p" / "mbf_b1_t1.json").is_file()


def test_three_models_through_a_pipe_keep_a_readable_table(bench_models, tmp_path: Path):
    """`docker run` without -t, CI, nohup: no terminal, no COLUMNS; rich alone would squeeze to 80 columns."""
    import os
    import shutil
    import subprocess
    import sys

    cli = Path(__file__).with_name("_cli.py")  # the CLI in a subprocess, as a user's pipe sees it
    third = shutil.copy(bench_models["fp32"], tmp_path / "student_with_a_long_name_fp32.onnx")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, str(cli), "benchmark", str(bench_models["fp32"]), str(bench_models["int8"]),
                           str(third), "-b", "1", "-t", "1", "--runs", "2", "--warmup", "0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in ("mbf_int8", "student_with_a_long_name_fp32"):
        assert any(name in line for line in lines), f"{name} is broken over lines:\n{proc.stdout}"
    header = next(line for line in lines if "p50" in line)
    assert "Model" in header and "img/s" in header and "Peak RSS MB" in header, proc.stdout
