"""Teacher-embedding cache: a frozen teacher's embedding of every (image, flip) computed once.

The cache lives beside the packed data, in ``<train>/teacher-cache/<fingerprint>.npy`` (float32,
shape (N, 2, D): view 0 is the image, view 1 its horizontal flip), keyed by the teacher's
fingerprint (hash of its weights and preprocessing), so every later run with the same teacher and
data reuses it. When the data folder is read-only the cache goes to ``~/.cache/facedistill``.
Written atomically: an interrupted build leaves no cache file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from facedistill.data.packed import PackedDataset
from facedistill.utils.atomic import atomic_path


def cache_path(dataset: PackedDataset, fingerprint: str) -> Path:
    folder = dataset.root / "teacher-cache"
    if os.access(dataset.root, os.W_OK) or os.access(folder, os.W_OK):
        return folder / f"{fingerprint}.npy"
    key = dataset.manifest["shards"][0]["sha256"][:16] if dataset.manifest["shards"] else "empty"
    return Path.home() / ".cache" / "facedistill" / key / f"{fingerprint}.npy"


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
    (path.with_suffix(".json")).write_text(json.dumps({"teacher": teacher.description, "images": n,
                                                       "embedding_size": teacher.embedding_size}))
    return np.load(path, mmap_mode="r"), path, True
