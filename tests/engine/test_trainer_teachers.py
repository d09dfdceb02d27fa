"""Training with a `teachers` list: one cache per teacher, reused; the joint target; every objective; exact resume;
two public ONNX teachers on real LFW faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _recipes import write_recipe

from facedistill.config import load_recipe
from facedistill.engine.monitor import Monitor
from facedistill.engine.trainer import Trainer, train
from facedistill.models import create_backbone
from facedistill.utils.embeddings import joint_embedding

MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "models"
PADDLEX = MODELS / "paddlex_mobilefacenet_prelu_128d.onnx"
FOAMLIU = MODELS / "foamliu_mobilefacenet_relu6_128d.onnx"


def make_recipe(tmp_path: Path, data: Path | str, name: str, teachers: list[dict], **over) -> Path:
    """A tiny distillation recipe with a `teachers` list; ``over`` by dotted key."""
    data = Path(data)
    recipe = {
        "name": name, "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data / "train"), "val": str(data / "val"), "batch_size": 8, "workers": 0},
        "student": {"arch": "mobilefacenet_s", "embedding_size": 32},
        "teachers": teachers,
        "loss": {"margin": {"type": "none"}, "distill": {"type": "l2"}},
        "optim": {"optimizer": "sgd", "lr": 0.05},
        "train": {"epochs": 1, "threads": 1, "checkpoint_every": 2, "log_every": 1, "eval_every": -1,
                  "precise_bn_images": 16, "precision": "fp32"},
    }
    return write_recipe(tmp_path, name, recipe, over)


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory) -> list[dict]:
    """Two tiny torch teachers of different widths (64-d and 32-d), weights 2 and 1."""
    folder = tmp_path_factory.mktemp("teachers")
    out = []
    for seed, dim, weight in ((3, 64, 2.0), (4, 32, 1.0)):
        torch.manual_seed(seed)
        path = folder / f"t{seed}.pt"
        torch.save(create_backbone("mobilefacenet_s", embedding_size=dim).eval().state_dict(), path)
        out.append({"type": "torch", "checkpoint": str(path), "weight": weight})
    return out


def cache_files(folder: Path) -> set[Path]:
    return set((folder / "teacher-cache").glob("*.npy"))


def test_each_teacher_keeps_its_cache_and_a_second_run_reuses_them(tmp_path, tiny_synthetic, two_teachers):
    before = cache_files(tiny_synthetic / "train")  # other tests' teachers may have cached there too
    result = train(load_recipe(make_recipe(tmp_path, tiny_synthetic, "two", two_teachers,
                                           **{"data.val": None, "train.max_steps": 2})))
    s = result.summary
    assert s["teacher"]["embedding_size"] == 96 and s["teacher"]["description"].startswith("joint(")
    assert [(t["embedding_size"], t["weight"], t["cached"]) for t in s["teachers"]] == [(64, 2.0, True), (32, 1.0, True)]
    fingerprints = [t["fingerprint"] for t in s["teachers"]]
    new = cache_files(tiny_synthetic / "train") - before
    assert sorted(p.stem for p in new) == sorted(fingerprints)  # one raw cache per teacher, as a lone teacher's
    stamps = {p: p.stat().st_mtime_ns for p in new}
    # the same teachers in another run (other weights, the second alone first): nothing is rebuilt
    swapped = [dict(two_teachers[1], weight=1.0), dict(two_teachers[0], weight=0.5)]
    again = train(load_recipe(make_recipe(tmp_path, tiny_synthetic, "again", swapped,
                                          **{"data.val": None, "train.max_steps": 1})))
    assert {p: p.stat().st_mtime_ns for p in new} == stamps
    assert cache_files(tiny_synthetic / "train") - before == new
    assert [t["fingerprint"] for t in again.summary["teachers"]] == fingerprints[::-1]
    assert again.summary["teacher"]["fingerprint"] != s["teacher"]["fingerprint"]


@pytest.mark.parametrize("mode", ["flips", "views", "online"])
def test_the_target_is_the_joint_embedding_of_the_members(tmp_path, tiny_synthetic, two_teachers, mode):
    """Cached (flips, or K augmented views per teacher) or online, the step's target is each member's
    L2-normalised embedding of exactly the shown image times sqrt(w / sum w)."""
    first = {"flips": {}, "views": {"views": 3}, "online": {"online": True}}[mode]
    teachers = [dict(two_teachers[0], **first), two_teachers[1]]  # the second takes the shared keys from [0]
    over = {"data.augment": {"enabled": True, "jpeg": 0.5}} if mode != "flips" else {}
    before = cache_files(tiny_synthetic / "train")
    trainer = Trainer(load_recipe(make_recipe(tmp_path, tiny_synthetic, f"target-{mode}", teachers, **over)))
    trainer.build(resume=False)
    assert (trainer.teacher_cache is None) == (mode == "online")
    if mode == "views":  # one K-view cache per teacher, under its own fingerprint
        assert trainer.teacher_cache.shape == (32, 3, 96)
        views = {p.name.split("-views3-")[0] for p in cache_files(tiny_synthetic / "train") - before}
        assert views == {m.fingerprint for m in trainer.members}
    index = torch.tensor([0, 3, 9, 31])
    images = torch.from_numpy(trainer.train_set.images(index.numpy())).permute(0, 3, 1, 2)
    trainer.step = 1
    batch = trainer.prepare_batch(images, torch.zeros(4, dtype=torch.long), index)
    shown, _ = trainer.augment(images, index)
    expected = joint_embedding([m(shown) for m in trainer.members], [2.0, 1.0])
    torch.testing.assert_close(batch.teacher_emb, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch.teacher_emb.norm(dim=1), torch.ones(4))
    # the cosine of two targets is the weighted mean of the teachers' cosines
    units = [torch.nn.functional.normalize(m(shown), dim=1) for m in trainer.members]
    cos = [float(u[0] @ u[1]) for u in units]
    assert float(batch.teacher_emb[0] @ batch.teacher_emb[1]) == pytest.approx((2 * cos[0] + cos[1]) / 3, abs=1e-5)


@pytest.mark.parametrize("kind", ["l2", "cosine", "iled", "rpsd", "unified", "rkd", "sp"])
def test_every_objective_trains_on_the_joint_target(tmp_path, tiny_synthetic, two_teachers, kind):
    over = {"loss.distill.type": kind, "loss.distill.rpsd": {"bank_size": 16, "hard_negatives": 4},
            "data.val": None, "train.max_steps": 3}
    if kind in ("cosine", "iled", "unified", "rpsd"):
        over["loss.distill.center_teacher"] = True
    result = train(load_recipe(make_recipe(tmp_path, tiny_synthetic, kind, two_teachers, **over)))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(r["loss"]) for r in rows)
    if kind in ("rpsd", "unified"):  # the bank holds the 96-d joint embedding
        bank = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)["module"]
        assert next(v for k, v in bank.items() if k.endswith("bank.embeddings")).shape == (16, 96)


def test_per_teacher_projector(tmp_path, tiny_synthetic, two_teachers):
    """`loss.projector: per_teacher`: one head per block, each block unit-norm times sqrt(w / sum w)."""
    over = {"loss.projector": "per_teacher", "loss.distill.type": "unified", "data.val": None, "train.max_steps": 2,
            "loss.distill.rpsd": {"bank_size": 16, "hard_negatives": 4}}
    trainer = Trainer(load_recipe(make_recipe(tmp_path, tiny_synthetic, "heads", two_teachers, **over)))
    trainer.build(resume=False)
    heads = trainer.module.projector.heads
    assert [h.out_features for h in heads] == [64, 32]
    out = trainer.module.projector(torch.randn(5, 32))
    torch.testing.assert_close(out[:, :64].norm(dim=1), torch.full((5,), (2 / 3) ** 0.5))
    torch.testing.assert_close(out[:, 64:].norm(dim=1), torch.full((5,), (1 / 3) ** 0.5))
    result = train(load_recipe(make_recipe(tmp_path, tiny_synthetic, "heads-run", two_teachers, **over)))
    assert result.summary["steps"] == 2


class CrashAt(Monitor):
    """Stands in for a kill: raises after step ``at`` (its checkpoint not yet written)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        if step == self.at:
            raise KeyboardInterrupt(f"crash at step {step}")


def test_resume_with_two_teachers_is_exact(tmp_path, tiny_synthetic, two_teachers):
    over = {"loss.distill.type": "unified", "loss.distill.rpsd": {"bank_size": 16, "hard_negatives": 4},
            "loss.distill.center_teacher": True, "data.val": None, "train.max_steps": 6, "train.checkpoint_every": 1}
    straight = train(load_recipe(make_recipe(tmp_path, tiny_synthetic, "straight", two_teachers, **over)))
    crashed = load_recipe(make_recipe(tmp_path, tiny_synthetic, "crashed", two_teachers, **over))
    with pytest.raises(KeyboardInterrupt):
        train(crashed, monitor=CrashAt(4))
    assert torch.load(crashed.run_dir / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed = train(crashed, resume=True)
    assert resumed.summary["resumed_from_step"] == 3 and resumed.summary["steps"] == 6
    a = torch.load(straight.run_dir / "student.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "student.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def real_faces(shared_data, tmp_path_factory) -> Path:
    """32 real LFW faces (8 people x 4) as a packed train set."""
    from PIL import Image

    from facedistill.data.packed import PackedWriter

    images = shared_data / "lfw112-dev" / "images"
    if not images.is_dir() or not PADDLEX.is_file() or not FOAMLIU.is_file():
        pytest.skip(f"lfw112-dev or the public models not found under {shared_data.parent} (../shared)")
    people = [d for d in sorted(images.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 4][:8]
    root = tmp_path_factory.mktemp("lfw-real")
    with PackedWriter(root / "train", kind="train", source="lfw112-dev") as w:
        for label, person in enumerate(people):
            w.set_identity(label, person.name)
            for f in sorted(person.glob("*.jpg"))[:4]:
                w.add(np.asarray(Image.open(f).convert("RGB")), label, f"{person.name}/{f.name}")
    return root


def test_two_public_onnx_teachers_on_real_faces(tmp_path, real_faces):
    """PaddleX (BGR, 127.5/127.5) and foamliu (RGB, ImageNet stats) as one 256-d target of unit norm whose
    cosines are the mean of theirs; same-person targets are closer than different-person ones."""
    teachers = [{"type": "onnx", "onnx": str(PADDLEX), "mean": 127.5, "std": 127.5, "channel_order": "BGR",
                 "embedding_size": 128},
                {"type": "onnx", "onnx": str(FOAMLIU), "mean": [123.675, 116.28, 103.53],
                 "std": [58.395, 57.12, 57.375], "channel_order": "RGB", "embedding_size": 128}]
    recipe = load_recipe(make_recipe(tmp_path, real_faces, "real", teachers, **{
        "data.val": None, "train.max_steps": 2, "student.embedding_size": 128}))
    result = train(recipe)
    assert result.summary["teacher"]["embedding_size"] == 256
    assert [t["description"] for t in result.summary["teachers"]] == [f"onnx:{PADDLEX.name}", f"onnx:{FOAMLIU.name}"]
    trainer = Trainer(recipe)
    trainer.build_data()
    trainer.build_teacher()  # both caches reused
    joint = trainer.teacher_cache[np.arange(32), np.zeros(32, dtype=np.int64)]
    np.testing.assert_allclose(np.linalg.norm(joint, axis=1), 1.0, atol=1e-5)
    per = [np.asarray(c[:, 0], dtype=np.float32) for c in trainer.teacher_cache.caches]
    per = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in per]
    np.testing.assert_allclose(joint @ joint.T, (per[0] @ per[0].T + per[1] @ per[1].T) / 2, atol=1e-5)
    labels = trainer.train_set.labels
    same = labels[:, None] == labels[None, :]
    cos = joint @ joint.T
    assert cos[same & ~np.eye(32, dtype=bool)].mean() > cos[~same].mean() + 0.3
