"""The slim runtime image has no torch: `facedistill --help` and `benchmark` must work without it."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import CLI


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, str(CLI), "--no-torch", *args], capture_output=True, text=True,
                          timeout=timeout, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


def test_cli_imports_without_torch():
    res = _run("--help")
    assert res.returncode == 0, res.stderr
    assert "benchmark" in res.stdout and "verify-arm" in res.stdout
    assert "[torch imported: False]" in res.stderr


def test_no_cli_module_imports_torch_at_top_level():
    code = ("import sys, importlib, pkgutil, facedistill.cli as c\n"
            "import facedistill.cli.main, facedistill.bench\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3]\n"
            "print('TORCH' if bad else 'CLEAN')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "CLEAN", (
        "importing facedistill.cli.main imported torch: some facedistill/cli/*.py module (or a module "
        "it imports at top level) imports torch at module level; import it inside the command instead")


def test_benchmark_onnx_without_torch(bench_models, tmp_path: Path):
    out = tmp_path / "r.json"
    res = _run("benchmark", str(bench_models["fp32"]), str(bench_models["int8"]), "-b", "1", "-t", "1",
               "--runs", "2", "--warmup", "0", "--json", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[torch imported: False]" in res.stderr
    rep = json.loads(out.read_text())
    assert [r["status"] for r in rep["rows"]] == ["ok", "ok"]


def test_torch_baseline_without_torch_is_a_clear_error(bench_models):
    res = _run("benchmark", str(bench_models["run"]), "--torch", "-b", "1", "-t", "1", "--runs", "1")
    assert res.returncode == 2
    assert "needs PyTorch" in " ".join(res.stderr.split()) and "Traceback" not in res.stderr
