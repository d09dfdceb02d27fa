"""The two public MobileFaceNet ONNX models (../shared/models) and their ensemble on real LFW faces.

foamliu's model wants ImageNet per-channel normalisation; it must score high with it and clearly
lower with a wrong scalar normalisation (SFace's mean 0, std 1; insightface's 127.5/127.5 costs only
about half a point on these pairs). The first 600 pairs of lfw112-dev (fold 1, 300 same
and 300 different) keep the test to a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
from typer.testing import CliRunner  # noqa: E402

from facedistill.cli.main import app  # noqa: E402

MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "models"
FOAMLIU = MODELS / "foamliu_mobilefacenet_relu6_128d.onnx"
PADDLEX = MODELS / "paddlex_mobilefacenet_prelu_128d.onnx"
IMAGENET = ["--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375"]


@pytest.fixture(scope="module")
def fold1(shared_data, tmp_path_factory):
    lfw = shared_data / "lfw112-dev"
    if not (lfw / "pairs.txt").exists() or not FOAMLIU.exists() or not PADDLEX.exists():
        pytest.skip(f"lfw112-dev or the public models not found under {shared_data.parent}")
    lines = (lfw / "pairs.txt").read_text().splitlines()
    path = tmp_path_factory.mktemp("lfw") / "pairs.txt"
    path.write_text("\n".join(["1\t300", *lines[1:601]]) + "\n")
    return f"{path}:{lfw / 'images'}"


def accuracies(*args: str) -> dict[str, float]:
    res = CliRunner().invoke(app, ["evaluate", *args, "--threads", "1", "--json", "-"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout[res.stdout.index("{"):])
    return {r["model"]: r["accuracy"] for r in d["results"]}


def test_foamliu_needs_per_channel_normalisation(fold1):
    right = accuracies(str(FOAMLIU), "--data", fold1, *IMAGENET)[FOAMLIU.name]
    wrong = accuracies(str(FOAMLIU), "--data", fold1, "--mean", "0", "--std", "1")[FOAMLIU.name]
    assert right >= 0.97, right
    assert right > wrong + 0.01, (right, wrong)


def test_ensemble_of_public_models(fold1):
    acc = accuracies(str(FOAMLIU), str(PADDLEX), "--data", fold1, *IMAGENET, "--ensemble", "--weights", "1,0")
    assert acc[FOAMLIU.name] >= 0.97
    ens = next(v for k, v in acc.items() if k.startswith("ensemble("))
    assert ens == acc[FOAMLIU.name]  # weight 0 drops paddlex (fed the wrong stats here) entirely
