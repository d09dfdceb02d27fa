"""Hold identities out of a packed train set as a verification pair set; the rest stays a train set.

``split_holdout`` reads one labelled packed train set (``facedistill prepare folder``) and writes
two packed sets that share no identity:

* ``train_out`` (kind "train"): every image of the identities that stay, labels renumbered
  0..K-1 in source order, identity names and per-image statistics kept;
* ``holdout_out`` (kind "pairs"): the images of the held-out identities that some pair uses, and
  the pairs, laid out like LFW View 2: ``folds`` folds, each holding ``s`` same pairs then ``s``
  different pairs of *its own* identities only (no person appears in two folds, so every fold's
  threshold is tuned on other people). ``pairs.npy`` is in fold order and the manifest's
  ``pair_folds`` is ``[[1, 2s], [2, 2s], ...]``: ``evaluate``'s default 10 contiguous folds are
  exactly these folds (and ``--fold-scheme source`` reads them).

How the pairs are chosen (all draws from one ``numpy.random.default_rng(seed)``, so a seed gives
the same split on any machine):

1. identities with at least ``min_images`` images, sorted by name, are shuffled; the first
   ``identities`` are held out;
2. held-out identities go to folds largest first (by their number of same pairs, C(n, 2)), each to
   the fold with the fewest same pairs so far: fold totals then differ by at most one identity's;
3. per fold, ``s`` of its same pairs are sampled without replacement (every unordered pair of
   images at most once); ``s`` different pairs each take two distinct identities of the fold
   (uniformly) and one image of each (uniformly), every unordered pair at most once.

``s`` is ``pairs // (2 * folds)`` when ``pairs`` is given, else the smallest fold's same-pair count:
as many as the held-out identities give in balanced folds. Asking for more than the identities
hold is an error that says how many identities would give it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from facedistill.data.packed import PackedDataset, PackedWriter
from facedistill.errors import DataError

Progress = Callable[..., None]

CHUNK = 512  # images copied per read
_SOURCE_KEYS = ("source", "source_kind", "align", "detector", "detector_sha256", "detect_upscale", "detect_pad",
                "fill", "source_digest", "labels_sha256")
_PER_IMAGE_KEYS = ("border_fraction_per_image",)


def split_holdout(source: str | os.PathLike, train_out: str | os.PathLike, holdout_out: str | os.PathLike, *,
                  identities: int, pairs: int | None = None, folds: int = 10, min_images: int = 2, seed: int = 0,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Split ``source`` into an identity-disjoint train set and verification pair set (module doc).

    Returns a summary: counts of both outputs, the pairs per fold, the seed. Each output is
    written atomically (an interrupted run leaves earlier outputs untouched).
    """
    start = time.time()
    source, train_out, holdout_out = Path(source), Path(train_out), Path(holdout_out)
    _check_outputs(source, train_out, holdout_out)
    _check_numbers(identities, pairs, folds, min_images)
    ds = PackedDataset(source)
    names, labels = _identity_names(ds)
    plan = plan_holdout(labels, names, identities=identities, pairs=pairs, folds=folds, min_images=min_images,
                        seed=seed, where=str(source))
    held = plan["held_labels"]
    is_held = np.isin(labels, held)
    train_idx = np.flatnonzero(~is_held)
    pair_rows: np.ndarray = plan["pairs"]
    used = np.unique(pair_rows[:, :2])
    if progress is not None:
        try:
            progress(0, total=len(train_idx) + len(used))
        except TypeError:
            pass

    image_names = ds.names
    common = {"seed": int(seed), "holdout_identities": int(len(held)), "min_images": int(min_images),
              "source_dataset": str(source), "source_manifest": {k: ds.manifest.get(k) for k in _SOURCE_KEYS
                                                                   if k in ds.manifest}}
    train_extra = {"source_kind": "holdout-train", "holdout": {**common, "holdout_out": str(holdout_out)}}
    for key in _PER_IMAGE_KEYS:
        values = ds.manifest.get(key)
        if isinstance(values, list) and len(values) == len(ds):
            train_extra[key] = [values[i] for i in train_idx.tolist()]
    fold_counts = [[f + 1, 2 * plan["same_per_fold"]] for f in range(folds)]
    pairs_extra = {"source_kind": "holdout-pairs", "holdout": {**common, "train_out": str(train_out),
                                                                "same_per_fold": plan["same_per_fold"]},
                   "folds": list(range(1, folds + 1)), "num_folds": int(folds), "pair_folds": fold_counts,
                   "fold_identities": plan["fold_identities"]}
    with PackedWriter(train_out, kind="train", source=str(source), extra=train_extra) as train_w, \
            PackedWriter(holdout_out, kind="pairs", source=str(source), extra=pairs_extra) as pairs_w:
        train_labels = _copy(ds, train_idx, labels, names, image_names, train_w, progress)
        _copy(ds, used, labels, names, image_names, pairs_w, progress)
        new_index = np.full(len(ds), -1, dtype=np.int64)
        new_index[used] = np.arange(len(used))
        remapped = pair_rows.copy()
        remapped[:, 0] = new_index[pair_rows[:, 0]]
        remapped[:, 1] = new_index[pair_rows[:, 1]]
        pairs_w.set_pairs(remapped)
    same = int(pair_rows[:, 2].sum())
    return {
        "command": "split",
        "source": str(source),
        "seed": int(seed),
        "train_out": str(train_out),
        "train_identities": int(len(np.unique(train_labels[train_labels >= 0]))),
        "train_images": int(len(train_idx)),
        "holdout_out": str(holdout_out),
        "holdout_identities": int(len(held)),
        "holdout_images": int(len(used)),
        "holdout_images_unused": int(is_held.sum() - len(used)),
        "holdout_identities_in_pairs": int(len(np.unique(labels[used]))),
        "pairs": int(len(pair_rows)),
        "same_pairs": same,
        "different_pairs": int(len(pair_rows)) - same,
        "folds": int(folds),
        "pairs_per_fold": 2 * plan["same_per_fold"],
        "same_pairs_available": plan["same_available"],
        "eligible_identities": plan["eligible"],
        "seconds": round(time.time() - start, 2),
    }


def plan_holdout(labels: np.ndarray, names: Sequence[str], *, identities: int, pairs: int | None = None,
                 folds: int = 10, min_images: int = 2, seed: int = 0, where: str = "dataset") -> dict[str, Any]:
    """Choose the held-out identities and their pairs (no images read): the core of :func:`split_holdout`.

    ``labels``: per image identity label (-1 = none); ``names[label]``: the identity's name.
    Returns ``held_labels`` (sorted), ``pairs`` (M, 3) int64 rows of source image indices and
    same flag, in fold order, ``same_per_fold``, ``fold_identities`` (names per fold) and counts.
    """
    _check_numbers(identities, pairs, folds, min_images)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    eligible = sorted((names[lab], lab) for lab in np.flatnonzero(counts >= min_images).tolist())
    if len(eligible) < identities:
        raise DataError(f"{where}: --holdout-identities {identities} asks for more identities than it has with "
                        f"at least {min_images} images ({len(eligible)} of {len(counts)}). Pass "
                        f"--holdout-identities {len(eligible)} or less"
                        + (f", or lower --min-images" if min_images > 2 else "") + ".")
    order = rng.permutation(len(eligible))
    held = [eligible[i][1] for i in order[:identities]]
    images_of = {lab: np.flatnonzero(labels == lab) for lab in held}
    same_of = {lab: math.comb(len(images_of[lab]), 2) for lab in held}

    fold_members: list[list[int]] = [[] for _ in range(folds)]
    fold_same = [0] * folds
    for lab in sorted(held, key=lambda lab: -same_of[lab]):   # stable: ties keep the shuffled order
        f = int(np.argmin(fold_same))
        fold_members[f].append(lab)
        fold_same[f] += same_of[lab]
    available = min(fold_same)
    if pairs is None:
        per_fold = available
    else:
        per_fold = pairs // (2 * folds)
        if per_fold > available:
            need = math.ceil(identities * per_fold / max(available, 1) * 1.05)
            raise DataError(
                f"{where}: {identities} held-out identities give {sum(fold_same)} same pairs, at most {available} in "
                f"each of {folds} balanced folds ({2 * available * folds} pairs in all), but --holdout-pairs {pairs} "
                f"needs {per_fold} per fold. Hold out more identities (about {need}: --holdout-identities {need}) "
                f"or ask for fewer pairs (--holdout-pairs {2 * available * folds}, or leave it out to take all).")
    if per_fold < 1:
        raise DataError(f"{where}: the held-out identities give no same pair in some fold; hold out more identities "
                        f"(--holdout-identities) or use fewer folds (--folds)")

    rows: list[np.ndarray] = []
    for f, members in enumerate(fold_members):
        same = [(int(a), int(b)) for lab in members for k, a in enumerate(images_of[lab])
                for b in images_of[lab][k + 1:]]
        chosen = np.sort(rng.choice(len(same), size=per_fold, replace=False))
        rows.append(np.asarray([(same[i][0], same[i][1], 1) for i in chosen], dtype=np.int64))
        rows.append(_different_pairs(members, images_of, per_fold, rng, where, f + 1))
    return {
        "held_labels": np.asarray(sorted(held), dtype=np.int64),
        "pairs": np.concatenate(rows).reshape(-1, 3),
        "same_per_fold": int(per_fold),
        "same_available": int(sum(fold_same)),
        "eligible": len(eligible),
        "fold_identities": [sorted(names[lab] for lab in members) for members in fold_members],
    }


def _different_pairs(members: list[int], images_of: dict[int, np.ndarray], count: int, rng: np.random.Generator,
                     where: str, fold: int) -> np.ndarray:
    sizes = [len(images_of[lab]) for lab in members]
    total = sum(sizes)
    capacity = (total * total - sum(s * s for s in sizes)) // 2
    if count > capacity:
        raise DataError(f"{where}: fold {fold} has {len(members)} identities, too few for {count} different "
                        f"pairs; hold out more identities (--holdout-identities) or ask for fewer pairs")
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int, int]] = []
    while len(out) < count:
        i, j = rng.choice(len(members), size=2, replace=False)
        a = int(images_of[members[i]][rng.integers(sizes[i])])
        b = int(images_of[members[j]][rng.integers(sizes[j])])
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            out.append((a, b, 0))
    return np.asarray(out, dtype=np.int64)


def _copy(ds: PackedDataset, idx: np.ndarray, labels: np.ndarray, names: Sequence[str], image_names: list[str],
          writer: PackedWriter, progress: Progress | None) -> np.ndarray:
    """Append ``ds``'s images ``idx`` to ``writer``, labels renumbered in order of first appearance."""
    new_label: dict[int, int] = {}
    out = np.empty(len(idx), dtype=np.int64)
    for lo in range(0, len(idx), CHUNK):
        part = idx[lo:lo + CHUNK]
        images = ds.images(part)
        for k, (i, img) in enumerate(zip(part.tolist(), images)):
            lab = int(labels[i])
            if lab >= 0 and lab not in new_label:
                new_label[lab] = len(new_label)
                writer.set_identity(new_label[lab], names[lab])
            out[lo + k] = new_label[lab] if lab >= 0 else -1
            writer.add(img, int(out[lo + k]), image_names[i])
        if progress is not None:
            progress(len(part))
    return out


def _identity_names(ds: PackedDataset) -> tuple[list[str], np.ndarray]:
    import json

    if ds.manifest.get("kind") != "train":
        raise DataError(f"{ds.root}: a {ds.manifest.get('kind')!r} set; split a packed train set (`facedistill "
                        "prepare folder` with one sub-folder per identity)")
    labels = np.asarray(ds.labels, dtype=np.int64)
    if not (labels >= 0).any():
        raise DataError(f"{ds.root}: no image has an identity label (packed with --unlabeled?); holding identities "
                        "out needs them: pack the folder with one sub-folder per identity")
    try:
        table = json.loads((ds.root / "identities.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        table = {}
    k = int(labels.max()) + 1
    return [str(table.get(str(lab), lab)) for lab in range(k)], labels


def _check_numbers(identities: int, pairs: int | None, folds: int, min_images: int) -> None:
    if folds < 2:
        raise DataError(f"--folds {folds}: cross-validation needs at least 2 folds (LFW uses 10)")
    if min_images < 2:
        raise DataError(f"--min-images {min_images}: a same pair needs an identity with at least 2 images")
    if identities < 2 * folds:
        raise DataError(f"--holdout-identities {identities}: each of the {folds} folds needs at least 2 identities "
                        f"(different pairs); hold out at least {2 * folds}")
    if pairs is not None and (pairs < 2 * folds or pairs % (2 * folds)):
        raise DataError(f"--holdout-pairs {pairs}: must be a positive multiple of {2 * folds} (2 x {folds} folds) so "
                        f"that every fold holds as many same as different pairs, e.g. "
                        f"{max(1, pairs // (2 * folds)) * 2 * folds}")


def _check_outputs(source: Path, train_out: Path, holdout_out: Path) -> None:
    paths = {"SOURCE": source.resolve(), "--train-out": train_out.resolve(), "--holdout-out": holdout_out.resolve()}
    seen: dict[Path, str] = {}
    for flag, path in paths.items():
        if path in seen:
            raise DataError(f"{flag} {path}: the same folder as {seen[path]}; give each output its own folder")
        seen[path] = flag
    for flag in ("--train-out", "--holdout-out"):
        if source.resolve() in paths[flag].parents:
            raise DataError(f"{flag} {paths[flag]}: inside the source set {source}; write the outputs beside it")
