"""The K-view teacher cache: row (i, v) is the teacher's embedding of exactly view v of image i."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facedistill.data.augment import AugmentConfig, augment_view
from facedistill.data.packed import PackedDataset
from facedistill.data.preprocessing import Preprocessing
from facedistill.engine.teacher_cache import load_or_build_views, view_cache_path
from facedistill.engine.teachers import TorchTeacher

AUG = AugmentConfig(enabled=True, greyscale=0.3, blur=0.3, jpeg=0.5)


def small_teacher(fingerprint: str = "tiny-teacher") -> TorchTeacher:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 16))
    return TorchTeacher(model, Preprocessing(), fingerprint, "tiny conv")


def test_view_cache_rows_are_the_teacher_on_those_views_and_are_reused(tiny_synthetic):
    ds = PackedDataset(tiny_synthetic / "train")
    teacher = small_teacher()
    seen = []
    cache, path, built = load_or_build_views(ds, teacher, AUG, views=3, flip=True, batch_size=4,
                                             progress=seen.append)
    assert built and cache.shape == (len(ds), 3, 16) and sum(seen) == len(ds)
    assert path == view_cache_path(ds, teacher.fingerprint, AUG, 3, True) and path.with_suffix(".json").is_file()
    for i, v in ((0, 0), (5, 1), (31, 2), (17, 2)):
        shown = augment_view(ds.image(i), AUG, AUG.seed, i, v)
        direct = teacher(torch.from_numpy(shown).permute(2, 0, 1)[None])[0].numpy()
        np.testing.assert_allclose(cache[i, v], direct, rtol=1e-4, atol=1e-5)
    assert not np.allclose(cache[:, 0], cache[:, 1])  # views are other images, not copies
    stamp = path.stat().st_mtime_ns
    again, path2, built2 = load_or_build_views(ds, teacher, AUG, views=3, flip=True)
    assert not built2 and path2 == path and path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again, cache)


def test_another_augmentation_or_k_never_reads_a_wrong_cache(tiny_synthetic):
    ds = PackedDataset(tiny_synthetic / "train")
    teacher = small_teacher()
    paths = {view_cache_path(ds, teacher.fingerprint, AUG, 3, True),
             view_cache_path(ds, teacher.fingerprint, AUG, 4, True),
             view_cache_path(ds, teacher.fingerprint, AUG, 3, False),
             view_cache_path(ds, teacher.fingerprint, AugmentConfig(enabled=True, rotate=2.0), 3, True),
             view_cache_path(ds, "other-teacher", AUG, 3, True)}
    assert len(paths) == 5
    with pytest.raises(ValueError, match="at least 2 views"):
        load_or_build_views(ds, teacher, AUG, views=1)
