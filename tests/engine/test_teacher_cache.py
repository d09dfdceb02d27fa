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


class CountingTeacher:
    """A teacher that counts the images it embeds (to prove finished shards are not recomputed)."""

    def __init__(self, inner: TorchTeacher) -> None:
        self.inner, self.images = inner, 0
        self.fingerprint, self.embedding_size, self.description = inner.fingerprint, 16, inner.description

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.inner(x)


class Killed(Exception):
    pass


def test_a_killed_build_resumes_without_recomputing_and_gives_the_same_file(tiny_synthetic, tmp_path):
    import shutil

    from facedistill.engine.teacher_cache import load_or_build

    root = tmp_path / "train"
    shutil.copytree(tiny_synthetic / "train", root)
    ds = PackedDataset(root)
    n = len(ds)
    _, path, built = load_or_build(ds, small_teacher(), batch_size=4, shard_images=8)
    whole = path.read_bytes()
    path.unlink()

    def kill_after_two_shards(done: int, seen=[]) -> None:
        seen.append(done)
        if sum(seen) >= 16:
            raise Killed

    teacher = CountingTeacher(small_teacher())
    with pytest.raises(Killed):
        load_or_build(ds, teacher, batch_size=4, progress=kill_after_two_shards, shard_images=8)
    assert not path.exists() and len(list(path.with_name(path.name + ".parts").glob("*.npy"))) == 2
    teacher.images, seen = 0, []
    cache, path2, built = load_or_build(ds, teacher, batch_size=4, progress=seen.append, shard_images=8)
    assert built and path2 == path and sum(seen) == n
    assert teacher.images == 2 * (n - 16)  # only the unfinished shards, each image with its flip
    assert path.read_bytes() == whole
    assert not path.with_name(path.name + ".parts").exists()


def test_fp16_cache_is_half_the_size_and_close(tiny_synthetic, tmp_path):
    import shutil

    from facedistill.engine.teacher_cache import load_or_build

    shutil.copytree(tiny_synthetic / "train", tmp_path / "train")
    ds = PackedDataset(tmp_path / "train")
    full, p32, _ = load_or_build(ds, small_teacher(), batch_size=4)
    half, p16, _ = load_or_build(ds, small_teacher(), batch_size=4, dtype="float16")
    assert p16 != p32 and p16.name.endswith("-fp16.npy") and half.dtype == np.float16
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    np.testing.assert_allclose(np.asarray(half, np.float32), full, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="cache dtype"):
        load_or_build(ds, small_teacher(), dtype="int8")


def test_worker_processes_build_the_same_cache(tiny_synthetic, tmp_path):
    """Shards built in two spawned processes (each opening an ONNX teacher from its recipe section)."""
    import functools
    import shutil
    import warnings

    from facedistill.config.recipe import TeacherConfig
    from facedistill.engine.teacher_cache import load_or_build
    from facedistill.engine.teachers import build_teacher

    shutil.copytree(tiny_synthetic / "train", tmp_path / "train")
    ds = PackedDataset(tmp_path / "train")
    onnx_path = tmp_path / "t.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                            nn.Linear(32, 16)).eval()
        torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(onnx_path), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    cfg = TeacherConfig(type="onnx", onnx=str(onnx_path))
    teacher = build_teacher(cfg, threads=1)
    one, path, _ = load_or_build(ds, teacher, batch_size=4, shard_images=8)
    one = np.array(one)
    path.unlink()
    seen = []
    two, _, built = load_or_build(ds, teacher, batch_size=4, progress=seen.append, shard_images=8, workers=2,
                                  teacher_factory=functools.partial(build_teacher, cfg, "cpu", 1))
    assert built and sum(seen) == len(ds)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
