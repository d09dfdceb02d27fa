"""Every shipped student recipe trains (a few steps, tiny data): each distillation type is wired up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facedistill.config import load_recipe
from facedistill.engine.trainer import train
from facedistill.models import create_backbone

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "quickstart"
TYPES = ["none", "l2", "cosine", "rkd", "sp", "iled", "rpsd", "unified"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("t") / "model.pt"
    torch.save(create_backbone("mobilefacenet_s", embedding_size=48).state_dict(), path)
    return path


@pytest.mark.parametrize("kind", TYPES)
def test_quickstart_recipe_trains(kind, tmp_path, tiny_synthetic, teacher):
    recipe = load_recipe(RECIPES / f"{kind}.yaml", [
        f"output_dir={tmp_path}", f"data.train={tiny_synthetic / 'train'}", "data.val=null",
        "data.batch_size=8", "data.workers=0", f"teacher.checkpoint={teacher}", "teacher.embedding_size=48",
        "student.embedding_size=16", "train.max_steps=3", "train.threads=1", "train.precise_bn_images=16",
        "loss.distill.rpsd.bank_size=16", "loss.distill.rpsd.hard_negatives=4",
        "loss.distill.rpsd.warmup_entries=4"])
    result = train(recipe)
    assert result.summary["loss"]["distill"] == kind and result.summary["steps"] == 3
    assert (result.run_dir / "student.pt").is_file()
    if kind != "none":
        assert result.summary["teacher"]["embedding_size"] == 48  # 16-d student through a projector
