"""The training engine: a real (tiny) run, exact resume after SIGKILL, NaN stop, teacher cache, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _recipes import write_recipe

from facedistill.config import load_recipe
from facedistill.engine.trainer import TrainingDiverged, train
from facedistill.models import create_backbone


def make_recipe(tmp_path: Path, data: Path, name: str, **over) -> Path:
    recipe = {
        "name": name,
        "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data / "train"), "val": str(data / "val"), "batch_size": 8, "workers": 0},
        "student": {"arch": "mobilefacenet_s", "embedding_size": 32},
        "teacher": {"type": "none"},
        "loss": {"margin": {"type": "arcface", "scale": 16.0, "margin": 0.2}, "distill": {"type": "none"}},
        "optim": {"optimizer": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "threads": 1, "checkpoint_every": 2, "log_every": 1, "eval_every": 0},
    }
    return write_recipe(tmp_path, name, recipe, over)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = create_backbone("mobilefacenet_s", embedding_size=64).eval()
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


def distill_args(teacher_ckpt: Path) -> dict:
    return {"teacher.type": "torch", "teacher.checkpoint": str(teacher_ckpt),
            "loss.distill.type": "unified", "loss.distill.rpsd.bank_size": 16,
            "loss.distill.rpsd.hard_negatives": 4}


def test_teacher_training_run_writes_outputs(tmp_path, tiny_synthetic):
    recipe = load_recipe(make_recipe(tmp_path, tiny_synthetic, "t"))
    result = train(recipe)
    run = result.run_dir
    for name in ("recipe.yaml", "student.pt", "checkpoint.pt", "metrics.jsonl", "summary.json", "plots/training.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and 0.0 <= summary["val_accuracy"] <= 1.0
    assert -1.0 <= summary["val_impostor_cosine"] <= 1.0  # a collapse shows as this climbing to 1
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all("loss_margin" in r for r in rows)
    walls = [r["wall_s"] for r in rows]  # wall clock per step, for accuracy-against-time curves
    assert walls == sorted(walls) and walls[-1] <= summary["wall_time_s"] + 0.1
    state = torch.load(run / "student.pt", weights_only=True)
    model = create_backbone("mobilefacenet_s", 32)
    model.load_state_dict(state)  # student.pt is a plain backbone state dict
    assert yaml.safe_load((run / "recipe.yaml").read_text())["name"] == "t"
    # a second run under the same name refuses to overwrite without --resume
    with pytest.raises(Exception, match="--resume"):
        train(recipe)


def test_distillation_logs_each_term_and_reuses_cache(tmp_path, tiny_synthetic, teacher_ckpt):
    cache_dir = tiny_synthetic / "train" / "teacher-cache"
    before = set(cache_dir.glob("*.npy"))  # other tests' teachers may have cached there too
    recipe = load_recipe(make_recipe(tmp_path, tiny_synthetic, "d", **distill_args(teacher_ckpt),
                                     **{"train.epochs": 1}))
    train(recipe)
    rows = [json.loads(l) for l in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_margin", "loss_iled", "loss_rpsd", "bank_fill"} <= set(rows[-1])
    assert rows[-1]["rpsd_active"] == 1.0  # the bank (16) filled after two steps of 8
    cache = sorted(set(cache_dir.glob("*.npy")) - before)
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    recipe2 = load_recipe(make_recipe(tmp_path, tiny_synthetic, "d2", **distill_args(teacher_ckpt),
                                      **{"train.epochs": 1}))
    result = train(recipe2)
    assert cache[0].stat().st_mtime_ns == stamp
    assert set(cache_dir.glob("*.npy")) - before == set(cache)
    assert result.summary["teacher"]["cached"] and result.summary["teacher"]["embedding_size"] == 64


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "facedistill", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_sigkill_and_resume_gives_identical_weights(tmp_path, tiny_synthetic, teacher_ckpt):
    over = {**distill_args(teacher_ckpt), "train.epochs": 3, "train.checkpoint_every": 1}
    straight = make_recipe(tmp_path, tiny_synthetic, "straight", **over)
    killed = make_recipe(tmp_path, tiny_synthetic, "killed", **over)
    p = _run_cli(["distill", str(straight)])  # through a pipe: plain progress lines, a readable table
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    assert "training: steps 0..12" in out and "training: 1/12 steps" in out, out
    assert "training: 12/12 steps, 100%" in out and "steps/s" in out, out
    assert "val impostor cosine" in out, out

    ckpt = tmp_path / "runs" / "killed" / "checkpoint.pt"
    p = _run_cli(["distill", str(killed), "-q"])
    deadline = time.time() + 600
    while time.time() < deadline:
        if ckpt.is_file():
            try:
                if torch.load(ckpt, weights_only=True)["step"] >= 4:
                    break
            except Exception:
                pass
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_state = torch.load(ckpt, weights_only=True)
    step = killed_state["step"]
    assert 4 <= step < 12, "the run must be killed mid-way for this test to mean anything"
    assert killed_state["wall_time_s"] > 0
    p = _run_cli(["distill", str(killed), "-q", "--resume"])
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    a = torch.load(tmp_path / "runs" / "straight" / "student.pt", weights_only=True)
    b = torch.load(tmp_path / "runs" / "killed" / "student.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(l) for l in (tmp_path / "runs" / "killed" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 12
    resumed = [r["wall_s"] for r in rows if r["step"] > step]  # the resumed session counts on from its checkpoint
    assert resumed and min(resumed) >= killed_state["wall_time_s"]
    # The summary's wall time covers both sessions; the resumed session's own time is kept apart.
    summary = json.loads((tmp_path / "runs" / "killed" / "summary.json").read_text())
    assert summary["resumed_from_step"] == step
    assert summary["wall_time_s"] == pytest.approx(killed_state["wall_time_s"] + summary["session_wall_time_s"],
                                                   abs=0.02)
    assert json.loads((tmp_path / "runs" / "straight" / "summary.json").read_text())["resumed_from_step"] is None


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_synthetic):
    recipe = load_recipe(make_recipe(tmp_path, tiny_synthetic, "nan", **{
        "optim.lr": 1e30, "optim.grad_clip": None, "train.checkpoint_every": 1, "train.epochs": 2}))
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint: .*checkpoint.pt \(step \d+\)"):
        train(recipe)
    state = torch.load(recipe.run_dir / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["module"].values() if v.is_floating_point()) or state["step"] >= 1


def test_dimension_mismatch_without_projector_is_caught_before_training(tmp_path, tiny_synthetic, teacher_ckpt):
    from facedistill.errors import RecipeError

    recipe = load_recipe(make_recipe(tmp_path, tiny_synthetic, "dim", **distill_args(teacher_ckpt),
                                     **{"loss.projector": "none"}))
    with pytest.raises(RecipeError, match=r"loss\.projector"):
        train(recipe)
    assert not (recipe.run_dir / "checkpoint.pt").exists()


def test_ddp_two_cpu_processes(tmp_path, tiny_synthetic, teacher_ckpt):
    recipe = make_recipe(tmp_path, tiny_synthetic, "ddp", **distill_args(teacher_ckpt),
                         **{"train.epochs": 1, "data.batch_size": 4})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                        "-m", "facedistill", "distill", str(recipe), "-q"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4  # 32 images / (4 x 2 ranks)


def test_two_training_sources_keep_identities_apart_and_share_caches(tmp_path, tiny_synthetic, teacher_ckpt):
    """data.train as a list: labels offset per source, one teacher cache per source, weights honoured."""
    train_dir = str(tiny_synthetic / "train")
    over = {**distill_args(teacher_ckpt), "train.epochs": 1, "loss.distill.type": "l2",
            "data.train": [{"path": train_dir, "weight": 0.75}, {"path": train_dir, "name": "again", "weight": 0.25}],
            "train.precision": "fp32"}
    recipe = load_recipe(make_recipe(tmp_path, tiny_synthetic, "multi", **over))
    result = train(recipe)
    s = result.summary
    assert s["train_images"] == 64 and s["precision"] == "fp32"
    first, second = s["train_sources"]
    assert second["name"] == "again" and second["label_offset"] == first["identities"] == 8
    assert second["weight"] == 0.25
    assert s["steps"] == 8  # 64 draws an epoch / batch 8, drawn 3:1 from the two sources
    rows = [json.loads(l) for l in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss_margin"]) and math.isfinite(r["loss_l2"]) for r in rows)


def test_leaky_anneal_trains_leaky_and_saves_the_relu6_network(tmp_path, tiny_synthetic):
    """`student.leaky_anneal_from`: the logged slope holds at 0.25, falls to 0 by the last step, and the
    saved student is the registered ReLU6 network (loads strictly, same embeddings as the run's model)."""
    from facedistill.models.checkpoints import load_backbone

    recipe = load_recipe(make_recipe(tmp_path, tiny_synthetic, "anneal", **{
        "student.arch": "mobilefacenet_s_relu6", "student.leaky_anneal_from": 0.5, "train.epochs": 2}))
    result = train(recipe)
    rows = [json.loads(l) for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    slopes = [r["leaky_slope"] for r in rows]
    assert len(slopes) == 8 and slopes[:4] == [0.25] * 4 and slopes[-1] == 0.0
    assert all(a > b for a, b in zip(slopes[3:], slopes[4:]))
    loaded = load_backbone(result.run_dir)
    assert loaded.arch == "mobilefacenet_s_relu6"
    assert any(isinstance(m, torch.nn.ReLU6) for m in loaded.model.modules())
    assert 0.0 <= result.summary["val_accuracy"] <= 1.0


def test_frozen_layers_keep_their_weights_and_statistics(tmp_path, tiny_synthetic, teacher_ckpt):
    """`student.freeze`: a start's named modules train no parameter and keep their BatchNorm
    statistics, the rest trains; a name that is not a module is a recipe error listing real ones."""
    from facedistill.errors import RecipeError
    from facedistill.models.checkpoints import load_backbone

    torch.manual_seed(3)
    start = create_backbone("mobilefacenet_s", embedding_size=32)
    start_path = tmp_path / "start.pt"
    torch.save(start.state_dict(), start_path)
    frozen = ["layers.0", "layers.1", "layers.2"]
    recipe = load_recipe(make_recipe(tmp_path, tiny_synthetic, "freeze", **{
        **distill_args(teacher_ckpt), "student.checkpoint": str(start_path), "student.freeze": frozen,
        "train.epochs": 1}))
    result = train(recipe)
    after = load_backbone(result.run_dir).model.state_dict()
    before = start.state_dict()
    held = [k for k in before if any(k.startswith(f + ".") for f in frozen)]
    moved = [k for k in before if k.startswith("layers.5.") and k.endswith(".weight")]
    assert held and all(torch.equal(before[k], after[k]) for k in held)  # weights and BN statistics
    assert moved and not all(torch.equal(before[k], after[k]) for k in moved)
    bad = load_recipe(make_recipe(tmp_path, tiny_synthetic, "badfreeze", **{"student.freeze": ["layer.9"]}))
    with pytest.raises(RecipeError, match=r"student.freeze.*layer\.9.*layers, conv_sep, features"):
        train(bad)
