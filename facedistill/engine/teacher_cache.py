"""Teacher-embedding cache: a frozen teacher's embedding of every (image, flip) computed once.

The cache lives beside the packed data, in ``<train>/teacher-cache/<fingerprint>.npy`` (float32,
shape (N, 2, D): view 0 is the image, view 1 its horizontal flip), keyed by the teacher's
fingerprint (hash of its weights and preprocessing), so every later run with the same teacher and
data reuses it. When the data folder is read-only the cache goes to ``~/.cache/facedistill``.
Written atomically: an interrupted build leaves no cache file.

With ``data.augment`` on, the cache holds K seeded views per image instead
(``<fingerprint>-views<K>-<augment key>.npy``, shape (N, K, D)): view 0 is the plain image, view
v >= 1 is ``augment_batch(..., seed=augment.seed, indices=i, views=v)`` (data/augment.py), a pure
function of the image's index in its own packed set. The file name carries the teacher fingerprint
and a hash of the augmentation parameters, ``data.flip`` and K, so another augmentation never
reads a cache built for a different one.

Sized for large sets: the build goes shard by shard (``SHARD_IMAGES`` images each) into
``<cache>.parts/``, each shard written atomically, so a killed build resumes where it stopped and
never recomputes a finished shard; the shards are then joined into the one memory-mapped file
(renamed when complete) and removed. The join gives the same bytes as an uninterrupted build, since
every shard is computed from the same batches. ``dtype="float16"`` halves the file (a ``-fp16``
name; rows are read back as float32), and ``workers`` > 1 builds shards in that many processes.
"""

from __future__ import annotations

import os
import shutil
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from facedistill.data.augment import AugmentConfig, augment_batch, describe
from facedistill.data.packed import PackedDataset
from facedistill.utils.atomic import atomic_path, write_json_atomic


SHARD_IMAGES = 4096
DTYPES = ("float32", "float16")


def cache_path(dataset: PackedDataset, fingerprint: str, suffix: str = "") -> Path:
    """Where the cache of ``fingerprint`` (plus ``suffix``: a view cache's key) lives for ``dataset``."""
    folder = dataset.root / "teacher-cache"
    name = f"{fingerprint}{suffix}.npy"
    if os.access(dataset.root, os.W_OK) or os.access(folder, os.W_OK):
        return folder / name
    key = dataset.manifest["shards"][0]["sha256"][:16] if dataset.manifest["shards"] else "empty"
    return Path.home() / ".cache" / "facedistill" / key / name


def view_cache_path(dataset: PackedDataset, fingerprint: str, augment: AugmentConfig, views: int,
                    flip: bool, dtype: str = "float32") -> Path:
    return cache_path(dataset, fingerprint, f"-views{views}-{augment.key(flip, views)}{_dtype_suffix(dtype)}")


def _dtype_suffix(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"cache dtype must be one of {DTYPES}, got {dtype!r}")
    return "" if dtype == "float32" else "-fp16"


def embed_flips(dataset: PackedDataset, teacher: Any, idx: np.ndarray) -> np.ndarray:
    """(len(idx), 2, D): the teacher on images ``idx`` and on their horizontal flips, in one call."""
    x = torch.from_numpy(dataset.images(idx)).permute(0, 3, 1, 2).contiguous()
    emb = teacher(torch.cat([x, x.flip(3)])).cpu().numpy()
    return np.stack([emb[: len(idx)], emb[len(idx):]], axis=1)


def embed_views(dataset: PackedDataset, teacher: Any, idx: np.ndarray, augment: AugmentConfig, views: int,
                flip: bool) -> np.ndarray:
    """(len(idx), views, D): the teacher on the seeded views of images ``idx`` (view 0: the plain image)."""
    plain = dataset.images(idx)
    rep_idx = np.repeat(idx, views)  # image-major: row k*views + v is view v of image idx[k]
    rep_views = np.tile(np.arange(views), len(idx))
    shown = augment_batch(np.repeat(plain, views, axis=0), augment, augment.seed, rep_idx, rep_views, flip)
    x = torch.from_numpy(shown).permute(0, 3, 1, 2).contiguous()
    return teacher(x).cpu().numpy().reshape(len(idx), views, -1)


def _cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == shape:
            return arr
    return None


def _shard_ranges(n: int, shard_images: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + shard_images)) for a in range(0, n, shard_images)]


def _build_shard(embed: Callable[[np.ndarray], np.ndarray], start: int, stop: int, chunk: int,
                 part: Path, dtype: str) -> int:
    rows = [embed(np.arange(a, min(stop, a + chunk))) for a in range(start, stop, chunk)]
    with atomic_path(part) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.concatenate(rows).astype(dtype, copy=False))
    return stop - start


def _worker_shard(factory: Callable[[], Any], root: str, kind: str, extra: tuple, start: int, stop: int,
                  chunk: int, part: str, dtype: str) -> int:
    """One shard in a worker process: the teacher and the data are opened there (nothing big is pickled)."""
    dataset, teacher = PackedDataset(root), factory()
    embed = _embedder(dataset, teacher, kind, extra)
    return _build_shard(embed, start, stop, chunk, Path(part), dtype)


def _embedder(dataset: PackedDataset, teacher: Any, kind: str, extra: tuple) -> Callable[[np.ndarray], np.ndarray]:
    if kind == "flips":
        return lambda idx: embed_flips(dataset, teacher, idx)
    augment, views, flip = extra
    return lambda idx: embed_views(dataset, teacher, idx, augment, views, flip)


def build_sharded(path: Path, dataset: PackedDataset, teacher: Any, kind: str, extra: tuple,
                  row_shape: tuple[int, int], chunk: int, dtype: str = "float32",
                  progress: Callable[[int], None] | None = None, workers: int = 1,
                  teacher_factory: Callable[[], Any] | None = None,
                  shard_images: int = SHARD_IMAGES) -> np.ndarray:
    """Build the cache at ``path`` shard by shard (resumable), then join the shards; see the module doc."""
    n = len(dataset)
    shard_images = max(chunk, shard_images // chunk * chunk)  # whole batches per shard
    parts_dir = path.with_name(path.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for k, (a, b) in enumerate(_shard_ranges(n, shard_images)):
        part = parts_dir / f"{k:05d}.npy"
        if _cached(part, (b - a, *row_shape)) is not None:
            if progress:
                progress(b - a)
        else:
            todo.append((a, b, part))
    if workers > 1 and teacher_factory is not None and len(todo) > 1:
        # spawn, not fork: a forked child inherits torch's and onnxruntime's thread pools half-made
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(_worker_shard, teacher_factory, str(dataset.root), kind, extra, a, b, chunk,
                                str(part), dtype) for a, b, part in todo]
            for job in as_completed(jobs):
                done = job.result()
                if progress:
                    progress(done)
    else:
        embed = _embedder(dataset, teacher, kind, extra)
        for a, b, part in todo:
            done = _build_shard(embed, a, b, chunk, part, dtype)
            if progress:
                progress(done)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, *row_shape))
        for k, (a, b) in enumerate(_shard_ranges(n, shard_images)):
            out[a:b] = np.load(parts_dir / f"{k:05d}.npy", mmap_mode="r")
        out.flush()
        del out
    shutil.rmtree(parts_dir, ignore_errors=True)
    return np.load(path, mmap_mode="r")


def load_or_build_views(dataset: PackedDataset, teacher, augment: AugmentConfig, views: int, flip: bool = True,
                        batch_size: int = 64, progress: Callable[[int], None] | None = None, *,
                        dtype: str = "float32", workers: int = 1, teacher_factory: Callable[[], Any] | None = None,
                        shard_images: int = SHARD_IMAGES) -> tuple[np.ndarray, Path, bool]:
    """Return (embeddings memmap (N, views, D) of the seeded views, path, built_now); see the module doc."""
    if views < 2:
        raise ValueError(f"a view cache needs at least 2 views (view 0 is the plain image), got {views}")
    path = view_cache_path(dataset, teacher.fingerprint, augment, views, flip, dtype)
    n, d = len(dataset), teacher.embedding_size
    arr = _cached(path, (n, views, d))
    if arr is not None:
        if progress:
            progress(n)
        return arr, path, False
    chunk = max(1, (2 * batch_size) // views)  # images per teacher call: about 2 x batch_size views
    arr = build_sharded(path, dataset, teacher, "views", (augment, views, flip), (views, d), chunk, dtype,
                        progress, workers, teacher_factory, shard_images)
    write_json_atomic(path.with_suffix(".json"), {"teacher": teacher.description, "images": n, "views": views,
                                                  "embedding_size": d, "dtype": dtype,
                                                  "augment": describe(augment, flip)})
    return arr, path, True


def load_or_build(dataset: PackedDataset, teacher, batch_size: int = 64,
                  progress: Callable[[int], None] | None = None, *, dtype: str = "float32", workers: int = 1,
                  teacher_factory: Callable[[], Any] | None = None,
                  shard_images: int = SHARD_IMAGES) -> tuple[np.ndarray, Path, bool]:
    """Return (embeddings memmap (N, 2, D), path, built_now)."""
    path = cache_path(dataset, teacher.fingerprint, _dtype_suffix(dtype))
    n, d = len(dataset), teacher.embedding_size
    arr = _cached(path, (n, 2, d))
    if arr is not None:
        if progress:
            progress(n)
        return arr, path, False
    arr = build_sharded(path, dataset, teacher, "flips", (), (2, d), batch_size, dtype, progress, workers,
                        teacher_factory, shard_images)
    write_json_atomic(path.with_suffix(".json"), {"teacher": teacher.description, "images": n,
                                                  "embedding_size": d, "dtype": dtype})
    return arr, path, True
