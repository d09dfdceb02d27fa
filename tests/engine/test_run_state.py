"""run_state: the one decision (reuse / resume / train, move a stale folder aside) every caller shares."""

from __future__ import annotations

import json

import torch

from facedistill.config import load_recipe
from facedistill.engine.run_state import prepare_run, run_state
from test_trainer import make_recipe


def _recipe(tmp_path, data, **over):
    return load_recipe(make_recipe(tmp_path, data, "r", **over))


def test_a_new_folder_trains(tmp_path, tiny_synthetic):
    state = run_state(_recipe(tmp_path, tiny_synthetic))
    assert state.action == "train" and not state.stale


def test_a_finished_run_of_the_same_recipe_is_reused(tmp_path, tiny_synthetic):
    recipe = _recipe(tmp_path, tiny_synthetic)
    recipe.run_dir.mkdir(parents=True)
    (recipe.run_dir / "summary.json").write_text(json.dumps({"recipe_hash": recipe.hash(), "val_accuracy": 0.9}))
    state = run_state(recipe)
    assert state.action == "reuse" and state.summary["val_accuracy"] == 0.9


def test_a_killed_run_of_the_same_recipe_is_resumed(tmp_path, tiny_synthetic):
    recipe = _recipe(tmp_path, tiny_synthetic)
    recipe.run_dir.mkdir(parents=True)
    torch.save({"recipe_hash": recipe.hash(), "step": 3}, recipe.run_dir / "checkpoint.pt")
    # a summary of another recipe beside it does not count as finished
    (recipe.run_dir / "summary.json").write_text(json.dumps({"recipe_hash": "other"}))
    assert run_state(recipe).action == "resume"


def test_a_run_of_another_recipe_is_moved_aside_not_mixed_in(tmp_path, tiny_synthetic):
    old = _recipe(tmp_path, tiny_synthetic)
    old.run_dir.mkdir(parents=True)
    torch.save({"recipe_hash": old.hash(), "step": 3}, old.run_dir / "checkpoint.pt")
    new = _recipe(tmp_path, tiny_synthetic, **{"optim.lr": 0.01})
    assert new.run_dir == old.run_dir and new.hash() != old.hash()
    state = run_state(new)
    assert state.action == "train" and state.stale and (old.run_dir / "checkpoint.pt").is_file()  # decided, not done
    logged: list[str] = []
    prepare_run(new, logged.append)
    assert not new.run_dir.exists()
    moved = list((new.run_dir.parent / "stale").iterdir())
    assert len(moved) == 1 and (moved[0] / "checkpoint.pt").is_file() and str(moved[0]) in logged[0]


def test_an_unreadable_checkpoint_counts_as_stale(tmp_path, tiny_synthetic):
    recipe = _recipe(tmp_path, tiny_synthetic)
    recipe.run_dir.mkdir(parents=True)
    (recipe.run_dir / "checkpoint.pt").write_bytes(b"cut by a crash")
    state = run_state(recipe)
    assert state.action == "train" and state.stale
