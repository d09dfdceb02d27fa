"""benchmarks/gpu_check.sh: its CPU dry run goes through every step a GPU run takes (teacher, student,
torchrun DDP, kill + resume) and writes one report row per run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def run(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_option_is_refused(tmp_path):
    res = run("--bogus", cwd=tmp_path)
    assert res.returncode == 2 and "unknown option --bogus" in res.stderr


@pytest.mark.slow
def test_dry_run_trains_resumes_and_reports(tmp_path):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun is not installed beside this Python")
    res = run("--dry-run", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = {r["run"]: r for r in json.loads((tmp_path / "out" / "report.json").read_text())["rows"]}
    assert set(rows) == {"teacher", "student", "student_ddp", "resume"}
    assert all(r["device"] == "cpu" and r["steps"] == 12 and r["images_per_s"] for r in rows.values())
    assert rows["student_ddp"]["world_size"] == 1
    assert rows["resume"]["resumed_from_step"] is not None and rows["resume"]["resumed_from_step"] > 0
    assert 0 < rows["student"]["val_accuracy"] <= 1
