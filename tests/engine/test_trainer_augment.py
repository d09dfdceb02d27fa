"""Training with data.augment: the student sees exactly the image the teacher embedded; resume stays exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _recipes import write_recipe

from facedistill.config import load_recipe
from facedistill.engine.monitor import Monitor
from facedistill.engine.trainer import STUDENT_MEAN, STUDENT_STD, Trainer, train
from facedistill.models import create_backbone


def make_recipe(tmp_path: Path, data: Path, name: str, **over) -> Path:
    """A tiny distillation recipe (as in test_trainer.py), ``over`` by dotted key."""
    recipe = {
        "name": name, "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data / "train"), "val": str(data / "val"), "batch_size": 8, "workers": 0},
        "student": {"arch": "mobilefacenet_s", "embedding_size": 32},
        "loss": {"margin": {"type": "arcface", "scale": 16.0, "margin": 0.2}},
        "optim": {"optimizer": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "threads": 1, "checkpoint_every": 2, "log_every": 1, "eval_every": 0},
    }
    return write_recipe(tmp_path, name, recipe, over)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    model = create_backbone("mobilefacenet_s", embedding_size=32).eval()
    path = tmp_path_factory.mktemp("aug-teacher") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


def augmented(teacher_ckpt: Path, **extra) -> dict:
    return {"teacher.type": "torch", "teacher.checkpoint": str(teacher_ckpt), "loss.distill.type": "l2",
            "data.augment": {"enabled": True, "jpeg": 0.5, "blur": 0.3}, **extra}


def shown_images(x: torch.Tensor) -> torch.Tensor:
    """Undo the student's normalisation: the uint8 images it was shown (exact: (u - 127.5) / 127.5 round-trips)."""
    return torch.round(x.float() * STUDENT_STD + STUDENT_MEAN).to(torch.uint8).contiguous()


@pytest.mark.parametrize("mode", ["views", "online"])
def test_student_sees_exactly_what_the_teacher_embedded(tmp_path, tiny_synthetic, teacher_ckpt, mode):
    """On a two-source mix (the second source is the first again, so its packed and combined indices differ)."""
    train_dir = str(tiny_synthetic / "train")
    extra = {"teacher.views": 3} if mode == "views" else {"teacher.online": True}
    over = {**augmented(teacher_ckpt, **extra), "data.train": [train_dir, {"path": train_dir, "name": "again"}]}
    trainer = Trainer(load_recipe(make_recipe(tmp_path, tiny_synthetic, f"see-{mode}", **over)))
    trainer.build(resume=False)
    assert (trainer.teacher_cache is not None) == (mode == "views")
    if mode == "views":
        assert trainer.teacher_cache.shape == (64, 3, 32)
    ds = trainer.train_set
    index = torch.tensor([0, 5, 33, 37, 40, 63, 2, 60])  # both sources
    images = torch.from_numpy(ds.images(index.numpy())).permute(0, 3, 1, 2)
    labels = torch.zeros(len(index), dtype=torch.long)
    for step in (0, 3):
        trainer.step = step
        batch = trainer.prepare_batch(images, labels, index)
        shown = shown_images(batch.x)
        assert shown.shape == images.shape
        assert sum(not torch.equal(shown[k], images[k]) for k in range(len(index))) >= 4  # most are augmented
        direct = trainer.teacher(shown)
        torch.testing.assert_close(batch.teacher_emb, direct, rtol=1e-4, atol=1e-4)
        # seeded by the step: asking again gives the very same images
        assert torch.equal(trainer.prepare_batch(images, labels, index).x, batch.x)
    trainer.step = 4
    assert not torch.equal(trainer.prepare_batch(images, labels, index).x, batch.x)  # another step, other views


class CrashAt(Monitor):
    """Stands in for a kill: raises after step ``at`` (its checkpoint not yet written)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        if step == self.at:
            raise KeyboardInterrupt(f"crash at step {step}")


@pytest.mark.parametrize("mode", ["views", "online"])
def test_resume_with_augmentation_is_exact(tmp_path, tiny_synthetic, teacher_ckpt, mode):
    extra = {"teacher.views": 4} if mode == "views" else {"teacher.online": True}
    over = {**augmented(teacher_ckpt, **extra), "train.max_steps": 6, "train.checkpoint_every": 1,
            "data.val": None, "train.precise_bn_images": 16}
    straight = train(load_recipe(make_recipe(tmp_path, tiny_synthetic, "straight", **over)))
    crashed = load_recipe(make_recipe(tmp_path, tiny_synthetic, "crashed", **over))
    with pytest.raises(KeyboardInterrupt):
        train(crashed, monitor=CrashAt(4))  # mid-epoch: 4 batches of 8 make one epoch of 32
    assert torch.load(crashed.run_dir / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed = train(crashed, resume=True)
    assert resumed.summary["resumed_from_step"] == 3 and resumed.summary["steps"] == 6
    assert resumed.summary["augment"]["teacher"] == ("cache of 4 views" if mode == "views" else "online")
    a = torch.load(straight.run_dir / "student.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "student.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
