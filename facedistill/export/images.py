"""The faces an export is proven on: calibration images (drawn across identities), parity images
(from the verify set, else the calibration set's other images, else synthetic faces) and the pair
set of the accuracy gate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from facedistill.errors import ExportError

__all__ = ["ExportImages", "gather_images", "open_set", "spread_over_identities", "synthetic_faces"]


@dataclass
class ExportImages:
    """The faces an export is checked on: calibration, parity, and the pair set to verify on."""

    calib: np.ndarray | None  # uint8 NHWC
    calib_source: str
    parity: np.ndarray
    parity_source: str
    pairs_set: Any = None  # PackedDataset with pairs, for verification
    fp32_verified: Any = None  # (accuracy dict, per-pair judgements) of the fp32 file, measured once


def open_set(path: str | os.PathLike, flag: str) -> Any:
    """The prepared set at ``path`` (``flag`` names it in errors); refuses an empty one."""
    from facedistill.data.packed import PackedDataset

    ds = PackedDataset(path)
    if len(ds) == 0:
        raise ExportError(f"{flag} {path}: the set holds no images")
    return ds


def synthetic_faces(n: int, first_identity: int, seed: int) -> np.ndarray:
    """``n`` rendered faces (4 per identity) from identity ``first_identity`` on: images when no set is given."""
    from facedistill.data.synthetic import render_identities

    per = 4
    ids = range(first_identity, first_identity + max(1, -(-n // per)))
    images, _ = render_identities(ids, per, seed=seed)
    return images[:n]


def spread_over_identities(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` image indices drawn across identities (sorted): identities in random order, one image
    of each per round, so 300 calibration images from a set of 1,000 identities come from 300
    identities instead of the few with the most images. Unknown labels (-1) count as one identity
    per image."""
    labels = np.asarray(labels).astype(np.int64)
    n = min(int(n), len(labels))
    if n <= 0:
        return np.zeros(0, np.int64)
    keys = np.where(labels >= 0, labels, -1 - np.arange(len(labels)))  # -1 labels: their own identity
    order = rng.permutation(len(labels))
    # rank of each image inside its identity (random order), then take ranks 0, 1, ... across identities
    perm_keys = keys[order]
    sort = np.argsort(perm_keys, kind="stable")
    sorted_keys = perm_keys[sort]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
    rank_sorted = np.arange(len(sorted_keys)) - np.repeat(first, np.diff(np.r_[first, len(sorted_keys)]))
    rank = np.empty(len(order), np.int64)
    rank[sort] = rank_sorted
    ident_order = {k: i for i, k in enumerate(rng.permutation(np.unique(keys)))}
    tiebreak = np.array([ident_order[k] for k in perm_keys])
    pick = np.lexsort((tiebreak, rank))[:n]
    return np.sort(order[pick])


def gather_images(calib: str | os.PathLike | None, verify: str | os.PathLike | None, int8: bool,
                   calib_images: int, parity_images: int, seed: int, notes: list[str]) -> ExportImages:
    """Calibration faces (with ``int8``), parity faces and the verify pair set, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    pairs_set = None
    if verify is not None:
        pairs_set = open_set(verify, "--verify")
        if pairs_set.pairs is None or len(pairs_set.pairs) == 0:
            raise ExportError(f"--verify {verify}: not a pair set (it has no pairs.npy); prepare one with "
                              "`facedistill prepare` (e.g. the val/ folder of `prepare synthetic`)")
    calib_arr = None
    calib_source = ""
    calib_idx: np.ndarray | None = None
    calib_ds = None
    if int8:
        if calib is not None:
            calib_ds = open_set(calib, "--calib")
            n = min(calib_images, len(calib_ds))
            calib_idx = spread_over_identities(np.asarray(calib_ds.labels), n, rng)
            calib_arr = calib_ds.images(calib_idx)
            calib_source = str(calib)
            if n < calib_images:
                notes.append(f"--calib {calib} holds {len(calib_ds)} images; calibrated on all of them "
                             f"(asked for {calib_images})")
        else:
            calib_arr = synthetic_faces(calib_images, 50_000, seed)
            calib_source = "synthetic faces"
            notes.append("no --calib set: int8 calibrated on synthetic faces; calibrate on images like the "
                         "deployment's (e.g. a prepared train set) for the best int8 accuracy")
    # parity images: from the verify set, else the calibration set's other images, else synthetic
    if pairs_set is not None:
        n = min(parity_images, len(pairs_set))
        idx = np.sort(rng.choice(len(pairs_set), size=n, replace=False))
        parity, parity_source = pairs_set.images(idx), f"{verify} ({n} images)"
    elif calib_ds is not None and len(calib_ds) - len(calib_idx) >= min(parity_images, 16):
        rest = np.setdiff1d(np.arange(len(calib_ds)), calib_idx)
        idx = np.sort(rng.choice(rest, size=min(parity_images, len(rest)), replace=False))
        parity, parity_source = calib_ds.images(idx), f"{calib} (held out from calibration, {len(idx)} images)"
    elif calib_ds is not None:
        idx = np.sort(rng.choice(len(calib_ds), size=min(parity_images, len(calib_ds)), replace=False))
        parity, parity_source = calib_ds.images(idx), f"{calib} ({len(idx)} images, also used for calibration)"
    else:
        parity, parity_source = synthetic_faces(parity_images, 60_000, seed + 1), f"synthetic faces ({parity_images})"
    return ExportImages(calib=calib_arr, calib_source=calib_source, parity=parity, parity_source=parity_source,
                   pairs_set=pairs_set)
