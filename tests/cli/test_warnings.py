"""Python warnings reach the user as one ``warning:`` line from the CLI, and in --json; no shipped
quickstart recipe triggers a warning about itself."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from facedistill.cli import common
from facedistill.config import load_recipe
from facedistill.losses.objective import DistillationObjective

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart"
TEACHER_DIM = 512  # recipes/quickstart/teacher.yaml student.embedding_size


@pytest.mark.parametrize("path", sorted(p for p in QUICKSTART.glob("*.yaml") if p.name not in ("base.yaml",)),
                         ids=lambda p: p.name)
def test_quickstart_recipes_raise_no_warning(path):
    recipe = load_recipe(path, check_files=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if recipe.loss.distill.type != "none" and path.name != "teacher.yaml":
            DistillationObjective(recipe.loss.distill, TEACHER_DIM)


def test_warning_becomes_one_cli_line_and_lands_in_json(tmp_path, capsys):
    original = warnings.showwarning
    common.route_warnings()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = common._show_warning
            warnings.warn("raise loss.distill.rpsd.k_bank", UserWarning)
            warnings.warn("raise loss.distill.rpsd.k_bank", UserWarning)  # shown once
        err = capsys.readouterr().err
        assert err.count("warning: raise loss.distill.rpsd.k_bank") == 1 and ".py:" not in err
        out = tmp_path / "w.json"
        common.write_json_output(out, {"x": 1, "warnings": ["earlier"]})
        assert json.loads(out.read_text())["warnings"] == ["earlier", "raise loss.distill.rpsd.k_bank"]
    finally:
        warnings.showwarning = original
        common.collected_warnings.clear()


RECIPES = QUICKSTART.parent
SFACE_DIM = 128  # the SFace teacher of recipes/sface_lfw (OpenCV Zoo, 128-d)


@pytest.mark.parametrize("path", sorted(p for p in RECIPES.rglob("*.yaml") if QUICKSTART not in p.parents),
                         ids=lambda p: str(p.relative_to(RECIPES)))
def test_shipped_recipes_raise_no_warning(path):
    """No shipped recipe warns about itself. The SFace recipes keep a joint RPSD quota of 32 below the
    embedding size by measurement (base.yaml says why) and say so (`accept_few_anchors`)."""
    recipe = load_recipe(path, check_files=False)
    if recipe.loss.distill.type == "none":
        return
    # a `teachers` list distils the joint embedding: the sum of the teachers' (stated) dims
    dim = sum(t.embedding_size or SFACE_DIM for t in recipe.teacher_sections) or SFACE_DIM
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DistillationObjective(recipe.loss.distill, dim)


def test_an_unmeasured_quota_below_the_dimension_still_warns():
    from facedistill.losses.config import DistillConfig

    cfg = DistillConfig(type="rpsd")
    cfg.rpsd.hard_negatives = 8
    with pytest.warns(UserWarning, match="accept_few_anchors"):
        DistillationObjective(cfg, 64)
    cfg.rpsd.accept_few_anchors = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DistillationObjective(cfg, 64)
