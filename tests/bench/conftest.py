"""Fixtures of the benchmark tests: one small fp32 / int8 MobileFaceNet export per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _models import export_mobilefacenet, quantize_int8  # noqa: E402

CLI = Path(__file__).with_name("_cli.py")


@pytest.fixture(scope="session")
def bench_models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench_models")
    fp32 = export_mobilefacenet(d / "mbf.onnx", run_dir=d / "run")
    int8 = quantize_int8(fp32, d / "mbf_int8.onnx")
    return {"fp32": fp32, "int8": int8, "run": d / "run", "dir": d}


@pytest.fixture(scope="session")
def cli_app():
    """The real Typer app with every subcommand registered."""
    from facedistill.cli.main import app

    return app
