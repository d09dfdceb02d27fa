"""The packed dataset format every facedistill command reads.

A packed dataset is a folder::

    manifest.json        what it is: kind ("train" or "pairs"), source, counts, shards with sha256,
                         skipped inputs with reasons, facedistill version
    images-00000.npy     uint8 (n, 112, 112, 3) RGB, memory-mappable shards
    labels.npy           int64 (N,) identity label per image (-1 when unknown)
    names.json           source name of each image (relative path or record id)
    identities.json      identity name per label
    pairs.npy            int64 (M, 3): index_a, index_b, same (1/0); only for kind "pairs"

Shards are plain ``.npy`` files so that ``np.load(mmap_mode="r")`` reads them without copying;
a DataLoader worker opens its own memmaps lazily, so the dataset pickles cheaply to workers.
The folder is written under a temporary name and renamed when complete (see ``PackedWriter``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facedistill import __version__
from facedistill.errors import DataError
from facedistill.utils.hashing import sha256_file

FORMAT_NAME = "facedistill-packed"
FORMAT_VERSION = 1
IMAGE_SIZE = 112
MANIFEST = "manifest.json"




class PackedWriter:
    """Stream images into a packed dataset folder, atomically.

    Use as a context manager; the folder appears under ``out_dir`` only when the block finishes
    without an exception. Until then everything lives in ``.<name>.partial`` beside it.
    """

    def __init__(self, out_dir: str | os.PathLike, kind: str = "train", source: str = "",
                 shard_size: int = 2048, extra: dict[str, Any] | None = None) -> None:
        if kind not in ("train", "pairs"):
            raise ValueError(f"kind must be 'train' or 'pairs', got {kind!r}")
        self.out_dir = Path(out_dir)
        self.kind = kind
        self.source = source
        self.shard_size = shard_size
        self.extra: dict[str, Any] = dict(extra or {})
        self.tmp_dir = self.out_dir.with_name(f".{self.out_dir.name}.partial")
        self._buffer: list[np.ndarray] = []
        self._labels: list[int] = []
        self._names: list[str] = []
        self._shards: list[dict[str, Any]] = []
        self._identities: dict[int, str] = {}
        self._pairs: np.ndarray | None = None
        self.skipped: list[dict[str, str]] = []
        self._start = time.time()

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "PackedWriter":
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            return
        self._finish()

    # -- adding data -----------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return len(self._labels)

    def add(self, image: np.ndarray, label: int = -1, name: str = "") -> int:
        """Append one RGB uint8 image of 112x112x3; returns its index."""
        if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 image of shape (112, 112, 3), got {image.dtype} {image.shape}")
        self._buffer.append(image)
        self._labels.append(int(label))
        self._names.append(name)
        if len(self._buffer) >= self.shard_size:
            self._flush()
        return len(self._labels) - 1

    def add_batch(self, images: np.ndarray, labels: Sequence[int], names: Sequence[str] | None = None) -> None:
        names = names if names is not None else [""] * len(images)
        for img, lab, nm in zip(images, labels, names):
            self.add(img, lab, nm)

    def set_identity(self, label: int, name: str) -> None:
        self._identities[int(label)] = name

    def skip(self, path: str, reason: str) -> None:
        """Record an input that was not packed, with the reason (kept in the manifest)."""
        self.skipped.append({"path": str(path), "reason": reason})

    def set_pairs(self, pairs: np.ndarray) -> None:
        pairs = np.asarray(pairs, dtype=np.int64)
        if pairs.ndim != 2 or pairs.shape[1] != 3:
            raise ValueError("pairs must be an (M, 3) array of index_a, index_b, same")
        self._pairs = pairs

    # -- internals ---------------------------------------------------------------------------
    def _flush(self) -> None:
        if not self._buffer:
            return
        name = f"images-{len(self._shards):05d}.npy"
        path = self.tmp_dir / name
        np.save(path, np.stack(self._buffer))
        self._shards.append({"file": name, "count": len(self._buffer), "sha256": sha256_file(path)})
        self._buffer = []

    def _finish(self) -> None:
        self._flush()
        labels = np.asarray(self._labels, dtype=np.int64)
        np.save(self.tmp_dir / "labels.npy", labels)
        (self.tmp_dir / "names.json").write_text(json.dumps(self._names))
        (self.tmp_dir / "identities.json").write_text(
            json.dumps({str(k): v for k, v in sorted(self._identities.items())}))
        num_pairs = 0
        if self.kind == "pairs":
            if self._pairs is None:
                raise DataError(f"{self.out_dir}: a pair set needs its pair list (set_pairs was not called)")
            if len(self._pairs) and (self._pairs[:, :2].max() >= len(labels) or self._pairs[:, :2].min() < 0):
                raise DataError(f"{self.out_dir}: a pair refers to an image index outside 0..{len(labels) - 1}")
            np.save(self.tmp_dir / "pairs.npy", self._pairs)
            num_pairs = int(len(self._pairs))
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "source": self.source,
            "num_images": int(len(labels)),
            "num_identities": int(len(np.unique(labels[labels >= 0]))) if len(labels) else 0,
            "num_pairs": num_pairs,
            "image_shape": [IMAGE_SIZE, IMAGE_SIZE, 3],
            "shards": self._shards,
            "labels_sha256": sha256_file(self.tmp_dir / "labels.npy"),
            "pairs_sha256": sha256_file(self.tmp_dir / "pairs.npy") if num_pairs else None,
            "num_skipped": len(self.skipped),
            "skipped": self.skipped,
            "seconds": round(time.time() - self._start, 3),
            "facedistill_version": __version__,
            **self.extra,
        }
        (self.tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if self.out_dir.exists():
            old = self.out_dir.with_name(f".{self.out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.out_dir, old)
            os.replace(self.tmp_dir, self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp_dir, self.out_dir)
        self.manifest = manifest


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Read and check a packed dataset's manifest, with a clear error when it is not one."""
    root = Path(root)
    path = root / MANIFEST
    if not root.exists():
        raise DataError(f"{root}: no such dataset folder. Create one with `facedistill prepare ...`.")
    if not path.is_file():
        partial = root.with_name(f".{root.name}.partial")
        hint = " (an unfinished prepare left it; re-run prepare)" if partial.exists() else ""
        raise DataError(f"{root}: not a packed dataset, {MANIFEST} is missing{hint}. "
                        "Create one with `facedistill prepare ...`.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt manifest ({e}); re-run prepare.") from e
    if manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{path}: not a {FORMAT_NAME} manifest")
    return manifest


def is_packed(root: str | os.PathLike) -> bool:
    return (Path(root) / MANIFEST).is_file()


@dataclass
class _Shards:
    arrays: list[np.ndarray]
    starts: np.ndarray


def as_indices(idx: Sequence[int] | np.ndarray | slice | None, n: int) -> np.ndarray:
    """``images()``'s index argument as int64 indices into ``n`` images: None means all, slices work."""
    if idx is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(idx, slice):
        return np.arange(n, dtype=np.int64)[idx]
    return np.asarray(idx, dtype=np.int64)


class PackedDataset:
    """Random access to a packed dataset; a ``torch.utils.data.Dataset`` (map-style).

    ``dataset[i]`` returns ``(image, label, i)`` with image a uint8 tensor 3x112x112 (RGB), so the
    float conversion and normalisation happen once per batch, on the batch. ``images(idx)`` gives
    numpy NHWC uint8 arrays for inference code.
    """

    def __init__(self, root: str | os.PathLike, verify: bool = False) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.labels = np.load(self.root / "labels.npy")
        counts = [s["count"] for s in self.manifest["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if int(self._starts[-1]) != len(self.labels):
            raise DataError(f"{self.root}: shards hold {int(self._starts[-1])} images but labels.npy "
                            f"has {len(self.labels)}; the dataset is damaged, re-run prepare.")
        pairs_path = self.root / "pairs.npy"
        self.pairs: np.ndarray | None = np.load(pairs_path) if pairs_path.exists() else None
        self._shards: _Shards | None = None
        if verify:
            self.verify()

    def verify(self) -> None:
        """Check every shard's checksum against the manifest."""
        for shard in self.manifest["shards"]:
            got = sha256_file(self.root / shard["file"])
            if got != shard["sha256"]:
                raise DataError(f"{self.root / shard['file']}: checksum mismatch; the file is damaged, re-run prepare.")

    def _open(self) -> _Shards:
        if self._shards is None:
            arrays = []
            for shard in self.manifest["shards"]:
                path = self.root / shard["file"]
                try:
                    arr = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as e:
                    raise DataError(f"{path}: unreadable shard ({e}); re-run prepare.") from e
                # a plain ndarray view of the same mapping: indexing a np.memmap runs Python code
                # (__array_finalize__) on every slice, ~12% of the per-image cost of __getitem__
                arrays.append(arr.view(np.ndarray))
            self._shards = _Shards(arrays, self._starts)
        return self._shards

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = None  # each worker maps its own view
        return state

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def names(self) -> list[str]:
        return json.loads((self.root / "names.json").read_text())

    def image(self, i: int) -> np.ndarray:
        shards = self._open()
        s = int(np.searchsorted(shards.starts, i, side="right") - 1)
        return shards.arrays[s][i - shards.starts[s]]

    def images(self, idx: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Return images as a uint8 NHWC array (copies); ``None`` means all."""
        idx = as_indices(idx, len(self))
        out = np.empty((len(idx), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        shards = self._open()
        which = np.searchsorted(shards.starts, idx, side="right") - 1
        for s in np.unique(which):
            sel = which == s
            local = idx[sel] - shards.starts[s]
            order = np.argsort(local)
            out[np.flatnonzero(sel)[order]] = shards.arrays[s][local[order]]
        return out

    def __getitem__(self, i: int):
        import torch

        img = torch.from_numpy(np.ascontiguousarray(self.image(int(i)).transpose(2, 0, 1)))
        return img, int(self.labels[i]), int(i)
