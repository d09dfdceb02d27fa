"""The built-in procedural synthetic face set (facedistill.data.synthetic)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from facedistill.data.packed import PackedDataset
from facedistill.data.synthetic import (
    face_identity,
    make_pairs,
    render_face,
    render_identities,
    write_synthetic,
)


def test_shape_dtype_and_size():
    img = render_face(0, 0)
    assert img.dtype == np.uint8 and img.shape == (112, 112, 3)
    assert img.flags.c_contiguous
    small = render_face(0, 0, size=64)
    assert small.dtype == np.uint8 and small.shape == (64, 64, 3)
    images, labels = render_identities([3, 1], 2, difficulty=0.5)
    assert images.shape == (4, 112, 112, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [3, 3, 1, 1]


@pytest.mark.parametrize("difficulty", [0.0, 1.0, 2.0])
def test_deterministic_and_subset_independent(difficulty):
    a = render_face(5, 3, seed=7, difficulty=difficulty)
    b = render_face(5, 3, seed=7, difficulty=difficulty)
    assert a.tobytes() == b.tobytes()
    # identity 5 alone equals its slice in a batch with other identities, in any order
    batch, labels = render_identities([9, 5, 2], 4, seed=7, difficulty=difficulty)
    alone, _ = render_identities([5], 4, seed=7, difficulty=difficulty)
    assert np.array_equal(batch[labels == 5], alone)
    assert np.array_equal(alone[3], a)


def test_identity_parameters_depend_only_on_seed_and_id():
    face_identity.cache_clear()
    p1 = face_identity(12, 3)
    face_identity.cache_clear()
    face_identity(11, 3)
    p2 = face_identity(12, 3)
    assert p1.a == p2.a and p1.skin == p2.skin and p1.hair_style == p2.hair_style
    assert face_identity(12, 4).a != p1.a     # another seed is another population


def test_identities_and_images_differ():
    imgs = [render_face(k, 0) for k in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(imgs[i], imgs[j])
    same = [render_face(2, j) for j in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(same[i], same[j])
    # seed and difficulty change the picture
    assert not np.array_equal(render_face(2, 0, seed=1), render_face(2, 0, seed=0))
    assert not np.array_equal(render_face(2, 0, difficulty=0.0), render_face(2, 0, difficulty=1.0))


def test_images_look_non_degenerate():
    images, _ = render_identities(range(10), 3)
    # not blank, not saturated, with colour and spatial structure
    assert 40 < images.mean() < 215
    assert images.std(axis=(1, 2, 3)).min() > 12
    assert np.abs(images[..., 0].astype(int) - images[..., 2]).mean() > 5


def _pair_correlations(difficulty: float) -> tuple[float, float]:
    ids, per = 16, 4
    images, labels = render_identities(range(200, 200 + ids), per, seed=0, difficulty=difficulty)
    x = images[:, 16:104, 20:92].reshape(len(images), -1).astype(np.float32)   # the face region
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = x @ x.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(x), dtype=bool)
    return float(c[same & off].mean()), float(c[~same].mean())


def test_identity_signal_exists_at_difficulty_zero():
    same, diff = _pair_correlations(0.0)
    assert same > diff + 0.2, (same, diff)


def test_nuisance_grows_with_difficulty():
    same0, _ = _pair_correlations(0.0)
    same2, _ = _pair_correlations(2.0)
    assert same2 < same0 - 0.1


def test_progress_counts_images():
    seen = []
    render_identities(range(3), 2, progress=seen.append)
    assert sum(seen) == 6


def test_speed_smoke():
    render_face(0, 0)                      # warm caches
    t = time.perf_counter()
    render_identities(range(20), 10)
    elapsed = time.perf_counter() - t
    # ~300+ images/s on a free core; the bound is generous for loaded CI machines
    assert elapsed < 15.0, f"200 images took {elapsed:.1f}s"


def test_make_pairs_layout_balanced_and_distinct():
    pairs = make_pairs(30, 5, 600, seed=3)
    assert pairs.shape == (600, 3) and pairs.dtype == np.int64
    ident = np.arange(30 * 5) // 5
    for f, block in enumerate(np.split(pairs, 10)):
        assert block[:30, 2].tolist() == [1] * 30 and block[30:, 2].tolist() == [0] * 30
        assert np.all(ident[block[:, 0]][:30] == ident[block[:, 1]][:30])
        assert np.all(ident[block[:, 0]][30:] != ident[block[:, 1]][30:])
    assert np.all(pairs[:, 0] != pairs[:, 1])
    keys = {(min(a, b), max(a, b)) for a, b, _ in pairs.tolist()}
    assert len(keys) == 600
    # folds share no identity when there are >= 20 identities
    fold_ids = [set(ident[b[:, :2].ravel()].tolist()) for b in np.split(pairs, 10)]
    for i in range(10):
        for j in range(i + 1, 10):
            assert not fold_ids[i] & fold_ids[j]
    assert np.array_equal(pairs, make_pairs(30, 5, 600, seed=3))
    assert not np.array_equal(pairs, make_pairs(30, 5, 600, seed=4))


def test_write_synthetic_round_trip(tmp_path):
    seen = []
    summary = write_synthetic(tmp_path / "synth", train_identities=6, images_per_identity=3,
                              val_identities=5, val_images_per_identity=2, val_pairs=40, seed=2,
                              difficulty=0.7, progress=seen.append)
    assert sum(seen) == 6 * 3 + 5 * 2
    assert summary["train_images"] == 18 and summary["val_images"] == 10 and summary["val_pairs"] == 40
    train = PackedDataset(summary["train"], verify=True)
    val = PackedDataset(summary["val"], verify=True)
    assert len(train) == 18 and train.num_classes == 6
    assert train.labels.tolist() == np.repeat(np.arange(6), 3).tolist()
    assert len(val) == 10 and val.num_classes == 5 and val.manifest["kind"] == "pairs"
    assert train.manifest["kind"] == "train"
    meta = train.manifest["synthetic"]
    assert meta["seed"] == 2 and meta["difficulty"] == 0.7 and meta["identities"] == 6
    assert val.manifest["synthetic"]["first_identity"] == 6
    # identity-disjoint: val holds ids 6..10 relabelled 0..4
    train_names = set(json.loads((tmp_path / "synth/train/identities.json").read_text()).values())
    val_names = json.loads((tmp_path / "synth/val/identities.json").read_text())
    assert val_names == {str(i): f"synth-{6 + i:06d}" for i in range(5)}
    assert not train_names & set(val_names.values())
    # the images are the renderer's images
    assert np.array_equal(train.images([4])[0], render_face(1, 1, seed=2, difficulty=0.7))
    assert np.array_equal(val.images([3])[0], render_face(7, 1, seed=2, difficulty=0.7))
    pairs = val.pairs
    assert pairs.shape == (40, 3)
    assert np.array_equal(val.labels[pairs[:, 0]] == val.labels[pairs[:, 1]], pairs[:, 2] == 1)
    for block in np.split(pairs, 10):
        assert block[:, 2].sum() == 2


def test_write_synthetic_is_reproducible(tmp_path):
    kw = dict(train_identities=2, images_per_identity=2, val_identities=2, val_images_per_identity=2,
              val_pairs=20, seed=5)
    write_synthetic(tmp_path / "a", **kw)
    write_synthetic(tmp_path / "b", **kw)
    for part in ("train", "val"):
        a, b = PackedDataset(tmp_path / "a" / part), PackedDataset(tmp_path / "b" / part)
        assert np.array_equal(a.images(), b.images())
        if part == "val":
            assert np.array_equal(a.pairs, b.pairs)


@pytest.mark.parametrize("kwargs", [
    dict(train_identities=0),
    dict(images_per_identity=0),
    dict(val_identities=1),
    dict(val_images_per_identity=1),
    dict(val_pairs=30),
    dict(val_pairs=0),
    dict(seed=-1),
    dict(difficulty=-0.5),
    dict(difficulty=float("nan")),
])
def test_write_synthetic_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_synthetic(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad" / "train").exists()


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError):
        render_identities([], 3)
    with pytest.raises(ValueError):
        render_identities(range(2), 0)
    with pytest.raises(ValueError):
        render_face(-1, 0)
    with pytest.raises(ValueError):
        render_face(0, 0, size=8)
    with pytest.raises(ValueError):
        render_face(0, 0, difficulty=-1)


def test_make_pairs_small_pool_still_distinct():
    pairs = make_pairs(4, 6, 100, seed=0)      # < 20 identities: every fold uses the whole pool
    assert len({(min(a, b), max(a, b)) for a, b, _ in pairs.tolist()}) == 100
    assert pairs[:, 2].sum() == 50
