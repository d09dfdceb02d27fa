"""Open a verification pair set that ``facedistill evaluate`` is pointed at.

* a packed pair set (folder with ``manifest.json``, kind ``pairs``; ``facedistill prepare``);
* an insightface ``.bin`` file (``lfw.bin``, ``cfp_fp.bin``, ...), read without unpickling code;
* an LFW-style ``pairs.txt`` (or a pairs ``.csv``) with its folder of aligned 112x112 images:
  ``PAIRS.txt:IMAGES_DIR``, or ``PAIRS.txt`` alone (images from ``images_dir`` when given,
  else ``images/`` beside the pairs file, else the pairs file's folder), or a folder holding
  ``pairs.txt`` (and ``images/``).

Images are read lazily, batch by batch (:meth:`PairSet.images`), so sets of any size use bounded
memory; only the images some pair uses are embedded, each once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from facedistill.errors import DataError

__all__ = ["PairSet", "open_pair_set"]

BIN_SUFFIXES = (".bin",)
PAIRS_SUFFIXES = (".txt", ".csv")
_MAX_LISTED = 10

# ================================================================================================
# pair sets
# ================================================================================================
@dataclass
class PairSet:
    """A verification pair set: ``pairs`` (M, 3) int64 rows ``a, b, same`` indexing ``images(idx)``."""

    name: str
    path: str
    kind: str  # "packed", "bin" or "pairs"
    pairs: np.ndarray
    num_images: int
    image_size: int | None
    loader: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    describe: Callable[[int], str] | None = field(default=None, repr=False)
    spec: str = ""  # what the caller passed, verbatim: scripts match results by it

    def images(self, idx: np.ndarray) -> np.ndarray:
        """uint8 (len(idx), H, W, 3) RGB images."""
        return self.loader(np.asarray(idx, dtype=np.int64))

    def used_images(self) -> np.ndarray:
        """Sorted unique image indices that some pair refers to (the only ones embedded)."""
        return np.unique(self.pairs[:, :2])

    def image_name(self, i: int) -> str:
        return self.describe(int(i)) if self.describe is not None else f"image {int(i)}"

    def to_dict(self) -> dict[str, Any]:
        same = self.pairs[:, 2].astype(bool)
        return {
            "name": self.name, "spec": self.spec, "path": self.path, "kind": self.kind, "pairs": int(len(self.pairs)),
            "num_positive": int(same.sum()), "num_negative": int((~same).sum()),
            "images": int(len(self.used_images())), "image_size": self.image_size,
            "missing": list(self.missing), "notes": list(self.notes),
        }


def _check_pairs(pairs: Any, num_images: int, source: str) -> np.ndarray:
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{source}: the pair list must be (M, 3) integers (a, b, same); got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    if len(arr) == 0:
        raise DataError(f"{source}: the pair list is empty")
    if arr[:, :2].min() < 0 or arr[:, :2].max() >= num_images:
        raise DataError(f"{source}: a pair refers to an image outside 0..{num_images - 1}; the set is damaged, "
                        "re-run `facedistill prepare`.")
    if not np.isin(arr[:, 2], (0, 1)).all():
        raise DataError(f"{source}: the 'same' column must be 0 or 1")
    return arr


def _set_name(path: Path) -> str:
    if path.is_file() and path.suffix.lower() in PAIRS_SUFFIXES:
        return path.parent.name or path.stem
    if path.is_file():
        return path.stem
    return path.name or str(path)


def _split_pairs_spec(spec: str) -> tuple[Path, Path | None]:
    """``PAIRS[:IMAGES_DIR]`` -> (pairs path, images dir or None). A path that exists is never split."""
    if Path(spec).exists() or ":" not in spec:
        return Path(spec), None
    for i, ch in enumerate(spec):
        if ch == ":" and i > 0 and Path(spec[:i]).is_file():
            return Path(spec[:i]), Path(spec[i + 1:])
    return Path(spec), None


def open_pair_set(
    spec: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    allow_missing: bool = False,
) -> PairSet:
    """Open a packed pair set, an insightface ``.bin`` or a ``pairs.txt``/``.csv`` (+ image folder).

    Missing images of a pairs file raise :class:`DataError` listing them, unless ``allow_missing``:
    then the pairs that use them are dropped, and listed in ``PairSet.missing``.
    """
    path, img_dir = _split_pairs_spec(os.fspath(spec))
    if not path.exists():
        raise DataError(f"{path}: no such pair set. Pass a packed pair set (`facedistill prepare ...`), an "
                        "insightface .bin file, or PAIRS.txt[:IMAGES_DIR].")
    if path.is_dir():
        from facedistill.data.packed import is_packed

        if is_packed(path):
            return _open_packed(path)
        for candidate in ("pairs.txt", "pairs.csv"):
            if (path / candidate).is_file():
                return _open_pairs_file(path / candidate, img_dir or images_dir, allow_missing)
        raise DataError(f"{path}: neither a packed pair set (no manifest.json) nor a folder with pairs.txt. "
                        "Create a pair set with `facedistill prepare ...`, or pass a .bin file or "
                        "PAIRS.txt:IMAGES_DIR.")
    suffix = path.suffix.lower()
    if suffix in BIN_SUFFIXES:
        return _open_bin(path)
    if suffix in PAIRS_SUFFIXES:
        return _open_pairs_file(path, img_dir or images_dir, allow_missing)
    raise DataError(f"{path}: not a pair set this command reads. Pass a packed pair set folder, an insightface "
                    ".bin file, or an LFW pairs.txt / pairs .csv with its image folder (PAIRS.txt:IMAGES_DIR).")


def _open_packed(path: Path) -> PairSet:
    from facedistill.data.packed import PackedDataset

    ds = PackedDataset(path)
    if ds.pairs is None or ds.manifest.get("kind") != "pairs":
        raise DataError(f"{path}: a {ds.manifest.get('kind', 'train')} set, not a pair set (no pairs.npy). Evaluate "
                        "on a pair set: `facedistill prepare` writes one (e.g. the val/ of `prepare synthetic`).")
    pairs = _check_pairs(ds.pairs, len(ds), str(path))
    shape = ds.manifest.get("image_shape") or [112, 112, 3]
    names: list[str] | None = None

    def describe(i: int) -> str:
        nonlocal names
        if names is None:
            try:
                names = ds.names
            except Exception:  # noqa: BLE001
                names = []
        return names[i] if i < len(names) and names[i] else f"image {i}"

    return PairSet(name=_set_name(path), path=str(path), kind="packed", pairs=pairs, num_images=len(ds),
                   image_size=int(shape[0]), loader=ds.images, describe=describe)


# -- insightface .bin -------------------------------------------------------------------------------
def _bgr_to_rgb(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, :, ::-1])


def _open_bin(path: Path) -> PairSet:
    """An insightface ``.bin`` (read without unpickling code): pair ``k`` is images ``2k`` and ``2k+1``.

    The encoded images stay in memory (the size of the file); they are decoded batch by batch.
    """
    from facedistill.data.align import decode_image
    from facedistill.data.binset import load_bin

    images, flags = load_bin(path)
    n = len(images)
    same = np.asarray(flags, dtype=np.int64).reshape(-1)
    pairs = np.stack([np.arange(0, n, 2), np.arange(1, n, 2), same], axis=1).astype(np.int64)
    pairs = _check_pairs(pairs, n, str(path))

    def load(idx: np.ndarray) -> np.ndarray:
        out = []
        for i in idx:
            try:
                out.append(_bgr_to_rgb(decode_image(images[int(i)], f"{path.name}[{int(i)}]")))
            except DataError as e:
                raise DataError(f"{path}: image {int(i)} (pair {int(i) // 2}): {e}; the file is damaged, "
                                "re-download it") from e
        return _stack(out, str(path), [f"{path.name}[{int(i)}]" for i in idx])

    first = load(np.array([0]))
    return PairSet(name=_set_name(path), path=str(path), kind="bin", pairs=pairs, num_images=n,
                   image_size=int(first.shape[1]), loader=load, describe=lambda i: f"{path.name}[{i}]")


def _stack(images: Sequence[np.ndarray], source: str, names: Sequence[str] | None = None) -> np.ndarray:
    if not images:
        return np.zeros((0, 112, 112, 3), dtype=np.uint8)
    first = images[0].shape
    for k, im in enumerate(images):
        if im.shape != first or im.shape[0] != im.shape[1]:
            bad = names[k] if names else f"image {k}"
            raise DataError(
                f"{source}: {bad} is {im.shape[1]}x{im.shape[0]} but others are {first[1]}x{first[0]}; evaluation "
                "needs faces aligned to one square size (112x112, the insightface standard).\n  fix: align them "
                "first: `facedistill prepare pairs PAIRS --align yunet --out DIR`, then evaluate DIR.")
    return np.stack(images).astype(np.uint8, copy=False)


# -- pairs.txt / .csv + image folder ----------------------------------------------------------------
def _default_images_dir(pairs_path: Path) -> Path:
    """As ``facedistill prepare pairs``: ``images/`` beside a pairs.txt, else the file's folder."""
    beside = pairs_path.parent / "images"
    if pairs_path.suffix.lower() not in (".csv", ".tsv") and beside.is_dir():
        return beside
    return pairs_path.parent


def _listing_text(items: Sequence[str]) -> str:
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"    {shown}{more}"


def _open_pairs_file(pairs_path: Path, images_dir: str | os.PathLike | None, allow_missing: bool) -> PairSet:
    from facedistill.data.align import read_image
    from facedistill.data.pairs import read_pairs, resolve_image

    root = Path(images_dir) if images_dir is not None else _default_images_dir(pairs_path)
    if not root.is_dir():
        raise DataError(f"{root}: image folder of {pairs_path} not found.\n  fix: pass it as "
                        f"{pairs_path}:IMAGES_DIR (or --images IMAGES_DIR).")
    plist = read_pairs(pairs_path)
    notes: list[str] = []
    if plist.problems:
        bad_lines = [f"{p['path']}: {p['reason']}" for p in plist.problems]
        if not allow_missing:
            raise DataError(f"{pairs_path}: {len(bad_lines)} line(s) cannot be read as pairs:\n"
                            f"{_listing_text(bad_lines)}\n  fix: correct those lines, or pass --allow-missing to "
                            "evaluate the other pairs (the folds then shift).")
        notes.append(f"{pairs_path}: skipped {len(bad_lines)} unreadable line(s) (folds shifted)")
    if not plist.pairs:
        raise DataError(f"{pairs_path}: no pairs in the file")
    # unique images, in first-use order
    rels = plist.image_paths()
    index = {rel: k for k, rel in enumerate(rels)}
    files = [resolve_image(root, rel) for rel in rels]
    missing = [str(root / rel) for rel, f in zip(rels, files) if f is None]
    a = np.array([index[p.a] for p in plist.pairs], dtype=np.int64)
    b = np.array([index[p.b] for p in plist.pairs], dtype=np.int64)
    same = np.array([int(p.same) for p in plist.pairs], dtype=np.int64)
    if missing:
        exists = np.array([f is not None for f in files], dtype=bool)
        bad = ~(exists[a] & exists[b])
        if not allow_missing:
            raise DataError(
                f"{pairs_path}: {len(missing)} image(s) used by {int(bad.sum())} of {len(a)} pairs are missing "
                f"under {root}:\n{_listing_text(missing)}\n  fix: point at the right image folder "
                f"({pairs_path}:IMAGES_DIR or --images), or pass --allow-missing to evaluate the remaining pairs "
                "(the folds then shift: the accuracy is not comparable with published numbers).")
        notes.append(f"{pairs_path}: {len(missing)} missing image(s) under {root}; dropped the {int(bad.sum())} "
                     f"pair(s) that use them (folds shifted): {', '.join(missing[:_MAX_LISTED])}"
                     f"{' ...' if len(missing) > _MAX_LISTED else ''}")
        a, b, same = a[~bad], b[~bad], same[~bad]
        if len(a) == 0:
            raise DataError(f"{pairs_path}: every pair uses a missing image under {root}")
    pairs = _check_pairs(np.stack([a, b, same], axis=1), len(rels), str(pairs_path))

    def load(idx: np.ndarray) -> np.ndarray:
        out = []
        for i in idx:
            f = files[int(i)]
            try:
                out.append(_bgr_to_rgb(read_image(f)))
            except DataError as e:
                raise DataError(f"{f}: {e} (an image of {pairs_path}); replace the file or pass --allow-missing "
                                "after removing it") from e
        return _stack(out, str(pairs_path), [str(files[int(i)]) for i in idx])

    used = np.unique(pairs[:, :2])
    first = load(used[:1])
    return PairSet(name=_set_name(pairs_path), path=str(pairs_path), kind="pairs", pairs=pairs,
                   num_images=len(rels), image_size=int(first.shape[1]), loader=load, notes=notes,
                   missing=missing, describe=lambda i: str(files[i]))
