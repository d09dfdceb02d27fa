"""JointTeacher and JointRows: several teachers as one joint target, cached per teacher and joined on read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facedistill.data.preprocessing import Preprocessing
from facedistill.engine.joint_teacher import JointRows, JointTeacher
from facedistill.engine.teachers import TorchTeacher


def tiny_teacher(seed: int, dim: int) -> TorchTeacher:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 14 * 14, dim))
    return TorchTeacher(model, Preprocessing(), f"fp{seed}", f"tiny{seed}")


def test_joint_teacher_cosine_is_the_weighted_mean_of_its_members():
    members = [tiny_teacher(0, 16), tiny_teacher(1, 8)]
    joint = JointTeacher(members, [3.0, 1.0])
    assert joint.embedding_size == 24 and joint.dims == [16, 8]
    assert joint.description == "joint(tiny0*3 + tiny1)"
    images = torch.randint(0, 256, (5, 3, 112, 112), dtype=torch.uint8)
    emb = joint(images)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5))
    units = [nn.functional.normalize(m(images), dim=1) for m in members]
    member_cos = [u @ u.T for u in units]
    torch.testing.assert_close(emb @ emb.T, (3 * member_cos[0] + member_cos[1]) / 4, atol=1e-5, rtol=0)


def test_fingerprint_follows_members_and_weights():
    a, b = tiny_teacher(0, 16), tiny_teacher(1, 8)
    fp = JointTeacher([a, b], [1, 1]).fingerprint
    assert fp == JointTeacher([a, b], [1.0, 1.0]).fingerprint
    assert len({fp, JointTeacher([a, b], [2, 1]).fingerprint, JointTeacher([b, a], [1, 1]).fingerprint}) == 3
    with pytest.raises(ValueError):
        JointTeacher([a, b], [1])


def test_joint_rows_read_the_per_teacher_caches_lazily(tmp_path):
    rng = np.random.default_rng(0)
    raw = [rng.normal(size=(10, 2, d)).astype(dtype) * 5 for d, dtype in ((16, np.float32), (8, np.float16))]
    caches = []
    for k, arr in enumerate(raw):  # memory-mapped, as the teacher cache gives them
        np.save(tmp_path / f"{k}.npy", arr)
        caches.append(np.load(tmp_path / f"{k}.npy", mmap_mode="r"))
    rows = JointRows(caches, [1.0, 2.0])
    assert rows.shape == (10, 2, 24) and len(rows) == 10
    index, views = np.array([7, 0, 7, 3]), np.array([1, 0, 0, 1])
    out = rows[index, views]
    assert out.shape == (4, 24) and out.dtype == np.float32
    expected = [r[index, views].astype(np.float32) for r in raw]
    expected = [e / np.linalg.norm(e, axis=1, keepdims=True) * s for e, s in zip(expected, np.sqrt([1 / 3, 2 / 3]))]
    np.testing.assert_allclose(out, np.concatenate(expected, axis=1), atol=1e-6)
    with pytest.raises(ValueError, match="different images"):
        JointRows([caches[0], caches[1][:5]], [1, 1])

