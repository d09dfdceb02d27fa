"""Train on several packed sets at once: identities stay apart, unknown stays unknown.

``MultiSourceDataset`` concatenates ``PackedDataset`` s (e.g. LFW folds 1-5, CelebA, UTKFace).
Each source's labels are shifted by the number of identities of the sources before it, so
identity 0 of CelebA never merges with identity 0 of LFW; label -1 (a face without an identity,
as in ``prepare folder --unlabeled``) stays -1. It offers what training reads from a
``PackedDataset``: ``len``, ``ds[i] -> (uint8 CHW tensor, label, i)``, ``labels``,
``num_classes``, ``images(idx)``, ``image(i)``, ``names``, ``manifest``.

Per-source options: ``weight`` (share of each epoch drawn from that source, see
``SourceMixBatches``; by default a source contributes its size) and ``max_border`` (drop faces
whose aligned crop lies more than that fraction outside the source photo, using the per-image
statistic ``prepare`` stores; UTKFace's tight chips are about 0.3).

Per-image side data (the teacher-embedding cache) is built per source, beside that source's data,
and combined with ``combine_per_source``: a cache is then reused by every mix of its source.

    train = open_train_set(["data/lfw112/train", {"path": "/tmp/utkface", "weight": 0.2}])
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from facedistill.data.packed import IMAGE_SIZE, PackedDataset, as_indices
from facedistill.data.sharding import batches_per_epoch, shard_batches
from facedistill.errors import DataError


@dataclass
class SourceSpec:
    """One training source: a packed train set plus how much of it to use and how often."""

    path: str
    weight: float | None = None     # share of each epoch; None: proportional to its (kept) size
    max_border: float = 1.0         # drop faces whose aligned crop is more than this fraction outside the photo
    name: str | None = None         # shown in summaries and identity names; default: the folder name

    @classmethod
    def parse(cls, spec: Any) -> "SourceSpec":
        """A path, a mapping ``{path, weight, max_border, name}``, or any object with those attributes."""
        if isinstance(spec, SourceSpec):
            return spec
        if isinstance(spec, (str, os.PathLike)):
            return cls(str(spec))
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"path", "weight", "max_border", "name"}
            if unknown or "path" not in spec:
                raise DataError(f"training source {dict(spec)!r}: expected keys path (required), weight, "
                                f"max_border, name{'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}")
            return cls(str(spec["path"]), spec.get("weight"), float(spec.get("max_border", 1.0)), spec.get("name"))
        if hasattr(spec, "path"):
            return cls(str(spec.path), getattr(spec, "weight", None), float(getattr(spec, "max_border", 1.0)),
                       getattr(spec, "name", None))
        raise DataError(f"training source {spec!r}: expected a path or a mapping with `path`")


def _kept_indices(ds: PackedDataset, spec: SourceSpec) -> np.ndarray:
    n = len(ds)
    if spec.max_border >= 1.0:
        return np.arange(n, dtype=np.int64)
    border = ds.manifest.get("border_fraction_per_image")
    if border is None or len(border) != n:
        raise DataError(f"{ds.root}: max_border needs the per-image border statistic, which this set lacks; "
                        "prepare it again with `facedistill prepare folder ... --align yunet` (or drop max_border)")
    return np.flatnonzero(np.asarray(border, dtype=np.float64) <= spec.max_border).astype(np.int64)


class MultiSourceDataset:
    """Several packed train sets as one map-style dataset with per-source label offsets (see module doc)."""

    def __init__(self, specs: Sequence[Any], verify: bool = False) -> None:
        if not specs:
            raise DataError("no training source given")
        self.specs = [SourceSpec.parse(s) for s in specs]
        self.sources: list[PackedDataset] = []
        self.kept: list[np.ndarray] = []        # per source: its packed indices in use, ascending
        names_seen: set[str] = set()
        for spec in self.specs:
            ds = PackedDataset(spec.path, verify=verify)
            if ds.manifest.get("kind") != "train":
                raise DataError(f"{spec.path}: a training source must be a train set, this one is "
                                f"{ds.manifest.get('kind')!r}")
            if spec.weight is not None and not (spec.weight >= 0 and np.isfinite(spec.weight)):
                raise DataError(f"{spec.path}: weight must be a finite number >= 0, got {spec.weight}")
            if not 0.0 <= spec.max_border <= 1.0:
                raise DataError(f"{spec.path}: max_border must be between 0 and 1, got {spec.max_border}")
            spec.name = spec.name or Path(spec.path).name
            if spec.name in names_seen:
                raise DataError(f"training source name {spec.name!r} is used twice; give one a `name`")
            names_seen.add(spec.name)
            kept = _kept_indices(ds, spec)
            if len(kept) == 0:
                raise DataError(f"{spec.path}: no image left after max_border {spec.max_border}")
            self.sources.append(ds)
            self.kept.append(kept)
        sizes = [len(k) for k in self.kept]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.label_offsets: list[int] = []
        labels, offset = [], 0
        for ds, kept in zip(self.sources, self.kept):
            lab = ds.labels[kept].astype(np.int64)
            self.label_offsets.append(offset)
            labels.append(np.where(lab >= 0, lab + offset, -1))
            offset += ds.num_classes  # the source's whole label range, so offsets do not depend on filters
        self.labels = np.concatenate(labels)
        self._num_classes = offset
        if all(s.weight is None for s in self.specs):
            self.weights = np.asarray(sizes, np.float64) / sum(sizes)
        else:
            w = np.asarray([s.weight if s.weight is not None else 0.0 for s in self.specs], np.float64)
            if any(s.weight is None for s in self.specs):
                raise DataError("give every training source a weight, or none (then each counts by its size)")
            if w.sum() <= 0:
                raise DataError("the training source weights add up to 0")
            self.weights = w / w.sum()

    # -- what training reads ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def num_classes(self) -> int:
        """Identities over all sources (label offsets included); 0 when no source has labels."""
        return self._num_classes if (self.labels >= 0).any() else 0

    def locate(self, i: int) -> tuple[int, int]:
        """Combined index -> (source number, index in that source's packed set)."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        s = int(np.searchsorted(self.starts, i, side="right") - 1)
        return s, int(self.kept[s][i - self.starts[s]])

    def source_of(self, idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """Source number of each combined index (for per-source statistics)."""
        return np.searchsorted(self.starts, np.asarray(idx, np.int64), side="right") - 1

    def local_indices(self, idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """Each combined index's index in its own source's packed set (what per-source caches and
        seeded augmentation views are keyed by, so they do not depend on the mix)."""
        idx = np.asarray(idx, np.int64)
        which = self.source_of(idx)
        out = np.empty_like(idx)
        for s in np.unique(which):
            sel = which == s
            out[sel] = self.kept[s][idx[sel] - self.starts[s]]
        return out

    def image(self, i: int) -> np.ndarray:
        s, j = self.locate(int(i))
        return self.sources[s].image(j)

    def images(self, idx: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Images as uint8 NHWC (copies), in the order asked; ``None`` means all."""
        idx = as_indices(idx, len(self))
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} images")
        out = np.empty((len(idx), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        which = self.source_of(idx)
        for s in np.unique(which):
            sel = np.flatnonzero(which == s)
            out[sel] = self.sources[s].images(self.kept[s][idx[sel] - self.starts[s]])
        return out

    def __getitem__(self, i: int):
        import torch

        img = torch.from_numpy(np.ascontiguousarray(self.image(int(i)).transpose(2, 0, 1)))
        return img, int(self.labels[i]), int(i)

    @property
    def names(self) -> list[str]:
        out: list[str] = []
        for spec, ds, kept in zip(self.specs, self.sources, self.kept):
            names = ds.names
            out.extend(f"{spec.name}/{names[j]}" for j in kept.tolist())
        return out

    @property
    def manifest(self) -> dict[str, Any]:
        """A train-set manifest for the combination (counts, sources, and the sources' shards)."""
        return {"kind": "train", "num_images": len(self), "num_identities": int(len(np.unique(self.labels[self.labels >= 0]))),
                "shards": [sh for ds in self.sources for sh in ds.manifest["shards"]],
                "sources": self.describe(), "fingerprint": self.fingerprint}

    @property
    def fingerprint(self) -> str:
        """Stable hash of what the combination holds: each source's content digests and the kept images.

        Weights are left out on purpose: they change how often an image is drawn, not the set.
        """
        h = hashlib.sha256()
        for ds, kept in zip(self.sources, self.kept):
            m = ds.manifest
            h.update(json.dumps([m.get("labels_sha256"), [s["sha256"] for s in m["shards"]]]).encode())
            h.update(hashlib.sha256(kept.tobytes()).digest())
        return h.hexdigest()[:32]

    def describe(self) -> list[dict[str, Any]]:
        """Per source: path, images packed and kept, identities, label offset, unlabeled share, weight."""
        out = []
        for spec, ds, kept, off, w in zip(self.specs, self.sources, self.kept, self.label_offsets, self.weights):
            lab = ds.labels[kept]
            out.append({"name": spec.name, "path": str(spec.path), "images": int(len(ds)), "kept": int(len(kept)),
                        "max_border": spec.max_border, "identities": int(len(np.unique(lab[lab >= 0]))),
                        "unlabeled": int((lab < 0).sum()), "label_offset": int(off), "weight": round(float(w), 6)})
        return out

    def combine_per_source(self, build: Callable[[PackedDataset], np.ndarray]) -> "CombinedRows":
        """Per-image arrays built per source (``build(source) -> (len(source), ...)``), in combined order.

        For the teacher-embedding cache: each source keeps its own cache beside its data, and a
        mix reads the kept rows of each: ``ds.combine_per_source(lambda s: load_or_build(s, t)[0])``.
        The result reads rows from the per-source arrays on demand (memory-mapped caches stay on disk).
        """
        arrays = []
        for ds in self.sources:
            arr = build(ds)
            if len(arr) != len(ds):
                raise DataError(f"{ds.root}: per-source array has {len(arr)} rows for {len(ds)} images")
            arrays.append(arr)
        return CombinedRows(arrays, self.kept)


class CombinedRows:
    """Rows ``kept[s]`` of ``arrays[s]``, one source after another, read lazily: ``rows[index, views]``
    gathers from each source's array (a memmap stays a memmap) instead of one concatenated copy."""

    def __init__(self, arrays: list[np.ndarray], kept: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.source = np.repeat(np.arange(len(arrays), dtype=np.int32), [len(k) for k in kept])
        self.row = np.concatenate([np.asarray(k, dtype=np.int64) for k in kept])
        self.shape = (len(self.row), *arrays[0].shape[1:])
        self.dtype = arrays[0].dtype

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, key: Any) -> np.ndarray:
        index, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        index = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        scalar = index.ndim == 0
        index = np.atleast_1d(index)
        src, row = self.source[index], self.row[index]
        out: np.ndarray | None = None
        for s in np.unique(src):
            mask = src == s
            part_rest = tuple(np.atleast_1d(np.asarray(r))[mask] if np.ndim(r) else r for r in rest)
            part = np.asarray(self.arrays[s][(row[mask], *part_rest)])
            if out is None:
                out = np.empty((len(index), *part.shape[1:]), dtype=part.dtype)
            out[mask] = part
        if out is None:
            out = np.empty((0, *self.shape[1 + len(rest):]), dtype=self.dtype)
        return out[0] if scalar else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def tolist(self) -> list:
        return np.asarray(self).tolist()


def open_train_set(spec: Any, verify: bool = False) -> PackedDataset | MultiSourceDataset:
    """A training set from a recipe's ``data.train``: one path (a ``PackedDataset``, as before) or a list
    of sources (paths or ``{path, weight, max_border, name}``) as a ``MultiSourceDataset``.
    """
    if isinstance(spec, (str, os.PathLike)):
        return PackedDataset(spec, verify=verify)
    if isinstance(spec, (list, tuple)):
        return MultiSourceDataset(spec, verify=verify)
    return MultiSourceDataset([spec], verify=verify)


class SourceMixBatches:
    """Epoch batches that draw each source at its weight (a ``batch_sampler``, same shape as the trainer's).

    An epoch is ``len(dataset)`` draws: ``round(weight_k * len)`` from source k, taken from a
    stream of that source's shuffled images (a source drawn more than its size repeats itself in
    new orders, one drawn less is subsampled differently each epoch), then shuffled together.
    Seeded by (seed, epoch): reproducible, and ``start_batch`` resumes inside an epoch. Sharded
    over ``world_size`` ranks like ``EpochBatches``.
    """

    def __init__(self, dataset: MultiSourceDataset, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1, epoch_size: int | None = None) -> None:
        self.dataset, self.batch_size, self.seed, self.epoch = dataset, batch_size, seed, epoch
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size
        self.epoch_size = epoch_size or len(dataset)

    batches_per_epoch = staticmethod(batches_per_epoch)

    def draws(self) -> np.ndarray:
        """The epoch's combined indices, in order (before batching)."""
        ds = self.dataset
        counts = np.floor(ds.weights * self.epoch_size).astype(np.int64)
        short = self.epoch_size - counts.sum()   # largest remainders get the leftover draws
        if short > 0:
            counts[np.argsort(-(ds.weights * self.epoch_size - counts), kind="stable")[:short]] += 1
        parts = []
        for k, c in enumerate(counts):
            size = len(ds.kept[k])
            if c == 0:
                continue
            reps = -(-int(c) // size)
            rng = np.random.default_rng([self.seed, self.epoch, k])
            stream = np.concatenate([rng.permutation(size) for _ in range(reps)])[:c]
            parts.append(stream + ds.starts[k])
        draws = np.concatenate(parts)
        return draws[np.random.default_rng([self.seed, self.epoch, 1_000_003]).permutation(len(draws))]

    def __iter__(self) -> Iterator[list[int]]:
        yield from shard_batches(self.draws(), self.batch_size, self.start_batch, self.rank, self.world_size)

    def __len__(self) -> int:
        return max(0, batches_per_epoch(self.epoch_size, self.batch_size, self.world_size) - self.start_batch)
