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
reads a cache built for a different one. Built in batches into a memory-mapped temporary file,
renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from facedistill.data.augment import AugmentConfig, augment_batch, describe
from facedistill.data.packed import PackedDataset
from facedistill.utils.atomic import atomic_path, write_json_atomic


def cache_path(dataset: PackedDataset, fingerprint: str, suffix: str = "") -> Path:
    """Where the cache of ``fingerprint`` (plus ``suffix``: a view cache's key) lives for ``dataset``."""
    folder = dataset.root / "teacher-cache"
    name = f"{fingerprint}{suffix}.npy"
    if os.access(dataset.root, os.W_OK) or os.access(folder, os.W_OK):
        return folder / name
    key = dataset.manifest["shards"][0]["sha256"][:16] if dataset.manifest["shards"] else "empty"
    return Path.home() / ".cache" / "facedistill" / key / name


def view_cache_path(dataset: PackedDataset, fingerprint: str, augment: AugmentConfig, views: int,
                    flip: bool) -> Path:
    return cache_path(dataset, fingerprint, f"-views{views}-{augment.key(flip, views)}")


def load_or_build_views(dataset: PackedDataset, teacher, augment: AugmentConfig, views: int, flip: bool = True,
                        batch_size: int = 64, progress: Callable[[int], None] | None = None
                        ) -> tuple[np.ndarray, Path, bool]:
    """Return (embeddings memmap (N, views, D) of the seeded views, path, built_now); see the module doc."""
    if views < 2:
        raise ValueError(f"a view cache needs at least 2 views (view 0 is the plain image), got {views}")
    path = view_cache_path(dataset, teacher.fingerprint, augment, views, flip)
    n, d = len(dataset), teacher.embedding_size
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (n, views, d):
            if progress:
                progress(n)
            return arr, path, False
    chunk = max(1, (2 * batch_size) // views)  # images per teacher call: about 2 x batch_size views
    view_ids = np.arange(views)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, views, d))
        for start in range(0, n, chunk):
            idx = np.arange(start, min(n, start + chunk))
            plain = dataset.images(idx)
            rep_idx = np.repeat(idx, views)  # image-major: row k*views + v is view v of image idx[k]
            rep_views = np.tile(view_ids, len(idx))
            shown = augment_batch(np.repeat(plain, views, axis=0), augment, augment.seed, rep_idx, rep_views, flip)
            x = torch.from_numpy(shown).permute(0, 3, 1, 2).contiguous()
            out[idx] = teacher(x).cpu().numpy().reshape(len(idx), views, d)
            if progress:
                progress(len(idx))
        out.flush()
        del out
    write_json_atomic(path.with_suffix(".json"), {"teacher": teacher.description, "images": n, "views": views,
                                                  "embedding_size": d, "augment": describe(augment, flip)})
    return np.load(path, mmap_mode="r"), path, True


def load_or_build(dataset: PackedDataset, teacher, batch_size: int = 64,
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, Path, bool]:
    """Return (embeddings memmap (N, 2, D), path, built_now)."""
    path = cache_path(dataset, teacher.fingerprint)
    n = len(dataset)
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape[:2] == (n, 2) and arr.shape[2] == teacher.embedding_size:
            if progress:
                progress(n)
            return arr, path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, 2, teacher.embedding_size))
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            x = torch.from_numpy(dataset.images(idx)).permute(0, 3, 1, 2).contiguous()
            both = torch.cat([x, x.flip(3)])
            emb = teacher(both).cpu().numpy()
            out[idx, 0] = emb[: len(idx)]
            out[idx, 1] = emb[len(idx):]
            if progress:
                progress(len(idx))
        out.flush()
        del out
    write_json_atomic(path.with_suffix(".json"), {"teacher": teacher.description, "images": n,
                                                  "embedding_size": teacher.embedding_size})
    return np.load(path, mmap_mode="r"), path, True
