"""Verification pair lists: LFW ``pairs.txt`` and CSV files of (image a, image b, same).

LFW format: an optional header, then pair lines. The header is ``<folds> <n>`` (View 2:
``10 300``) or just ``<n>`` (one fold); each fold has ``n`` same-person lines ``name i j`` then
``n`` different-person lines ``name1 i name2 j``. Image ``i`` of ``name`` is
``<name>/<name>_<i:04d>.jpg`` under the image folder. Fields may be separated by tabs or spaces.

CSV: three columns ``path_a, path_b, same`` with or without a header row. Headers such as
``file_x,file_y,Decision`` (deepface) or ``img1,img2,label`` are recognised; same/different may be
written 1/0, true/false, yes/no, same/different, match/mismatch, genuine/impostor.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from facedistill.errors import DataError

if TYPE_CHECKING:
    import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif")


@dataclass
class Pair:
    a: str                 # image path relative to the image root
    b: str
    same: bool
    fold: int = 1
    line: int = 0          # line number in the source file (1-based)
    name_a: str | None = None   # identity names when the format gives them (LFW)
    name_b: str | None = None


@dataclass
class PairList:
    pairs: list[Pair]
    source: str
    num_folds: int = 1
    per_fold: int | None = None          # pairs per fold (2n in LFW) when known
    folds: list[int] = field(default_factory=lambda: [1])
    problems: list[dict[str, str]] = field(default_factory=list)   # bad lines: {"path", "reason"}

    def image_paths(self) -> list[str]:
        """Unique image paths in order of first appearance."""
        seen: dict[str, None] = {}
        for p in self.pairs:
            seen.setdefault(p.a)
            seen.setdefault(p.b)
        return list(seen)


def parse_folds(spec: str | Sequence[int] | None) -> list[int] | None:
    """``"1-5"``, ``"6-7"``, ``"1,3,5-7"`` -> sorted fold numbers (1-based); None -> None."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        folds = sorted({int(x) for x in spec})
    else:
        folds_set: set[int] = set()
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise DataError(f"--folds {spec!r}: use fold numbers and ranges such as 1-5 or 1,3,6-7")
            lo = int(m.group(1))
            hi = int(m.group(2) or lo)
            if hi < lo:
                raise DataError(f"--folds {spec!r}: range {part} runs backwards")
            folds_set.update(range(lo, hi + 1))
        folds = sorted(folds_set)
    if not folds:
        raise DataError(f"--folds {spec!r}: no fold selected")
    if folds[0] < 1:
        raise DataError(f"--folds {spec!r}: folds are numbered from 1")
    return folds


def lfw_image_path(name: str, number: int, ext: str = ".jpg") -> str:
    return f"{name}/{name}_{number:04d}{ext}"


def _int(tok: str) -> int | None:
    try:
        return int(tok)
    except ValueError:
        return None


def read_lfw_pairs(path: str | os.PathLike, folds: Sequence[int] | str | None = None) -> PairList:
    """Parse an LFW-format pairs file, keeping only the selected folds (1-based)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file") from e
    lines = [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines())]
    lines = [(n, toks) for n, toks in lines if toks and not toks[0].startswith("#")]
    if not lines:
        raise DataError(f"{path}: empty pairs file")
    header = lines[0][1]
    num_folds, n = 1, None
    if all(_int(t) is not None for t in header) and len(header) in (1, 2):
        if len(header) == 2:
            num_folds, n = _int(header[0]), _int(header[1])
        else:
            n = _int(header[0])
        body = lines[1:]
        if not num_folds or num_folds < 1 or n is None or n < 1:
            raise DataError(f"{path}:{lines[0][0]}: header must be '<folds> <pairs per class>' or '<n>', "
                            f"got {' '.join(header)!r}")
        expected = num_folds * 2 * n
        if len(body) != expected:
            raise DataError(f"{path}: the header says {num_folds} fold(s) of {n} same + {n} different pairs "
                            f"({expected} lines) but the file has {len(body)} pair lines. Fix the header or "
                            "restore the missing lines.")
        per_fold = 2 * n
    else:
        body = lines
        per_fold = len(body)
    selected = parse_folds(folds) if folds is not None else list(range(1, num_folds + 1))
    assert selected is not None
    if selected[-1] > num_folds:
        raise DataError(f"{path}: asked for fold(s) {','.join(map(str, selected))} but the file has "
                        f"{num_folds} fold(s)")
    out = PairList(pairs=[], source=str(path), num_folds=num_folds, per_fold=per_fold, folds=selected)
    for k, (lineno, toks) in enumerate(body):
        fold = k // per_fold + 1 if per_fold else 1
        if fold not in selected:
            continue
        if len(toks) == 3 and _int(toks[1]) is not None and _int(toks[2]) is not None:
            name = toks[0]
            out.pairs.append(Pair(lfw_image_path(name, int(toks[1])), lfw_image_path(name, int(toks[2])),
                                  True, fold, lineno, name, name))
        elif len(toks) == 4 and _int(toks[1]) is not None and _int(toks[3]) is not None:
            out.pairs.append(Pair(lfw_image_path(toks[0], int(toks[1])), lfw_image_path(toks[2], int(toks[3])),
                                  False, fold, lineno, toks[0], toks[2]))
        else:
            out.problems.append({"path": f"{path}:{lineno}",
                                 "reason": "expected 'name i j' or 'name1 i name2 j', got "
                                           f"{' '.join(toks)[:80]!r}"})
    return out


_A_NAMES = {"path_a", "patha", "file_x", "filex", "img1", "image1", "img_a", "image_a", "a", "left", "path1",
            "file1", "first", "img_1", "image_1", "p1", "x"}
_B_NAMES = {"path_b", "pathb", "file_y", "filey", "img2", "image2", "img_b", "image_b", "b", "right", "path2",
            "file2", "second", "img_2", "image_2", "p2", "y"}
_SAME_NAMES = {"same", "decision", "label", "issame", "is_same", "match", "target", "same_person", "genuine",
               "y_true", "verified", "ground_truth"}
_TRUE = {"1", "true", "yes", "y", "same", "match", "genuine", "positive", "t"}
_FALSE = {"0", "false", "no", "n", "different", "diff", "mismatch", "impostor", "imposter", "negative", "f",
          "-1"}


def parse_same(value: str) -> bool | None:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    try:
        f = float(v)
    except ValueError:
        return None
    if f in (0.0, 1.0):
        return bool(f)
    return None


def read_pairs_csv(path: str | os.PathLike) -> PairList:
    """Parse a CSV/TSV of image pairs (see module doc)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file") from e
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(io.StringIO(text), dialect))]
    rows = [(n, r) for n, r in rows if any(r) and not r[0].startswith("#")]
    if not rows:
        raise DataError(f"{path}: empty pairs file")
    ia, ib, isame = 0, 1, 2
    first = rows[0][1]
    names = [c.strip().lower().replace(" ", "_").replace("-", "_") for c in first]
    known = sum(nm in _A_NAMES | _B_NAMES | _SAME_NAMES for nm in names)
    looks_like_header = len(first) >= 3 and (
        parse_same(first[2]) is None
        or (known >= 2 and not any(c.lower().endswith(IMAGE_EXTS) for c in first)))
    if looks_like_header:
        # a header row: map columns by name

        def find(cands: set[str], default: int) -> int:
            for j, nm in enumerate(names):
                if nm in cands:
                    return j
            return default

        ia, ib, isame = find(_A_NAMES, 0), find(_B_NAMES, 1), find(_SAME_NAMES, 2)
        if len({ia, ib, isame}) != 3:
            raise DataError(f"{path}: cannot tell which header columns are image a, image b and same; "
                            f"got {first}. Use path_a,path_b,same.")
        rows = rows[1:]
    elif len(first) < 3:
        raise DataError(f"{path}:{rows[0][0]}: expected three columns (path_a, path_b, same), got {len(first)}")
    out = PairList(pairs=[], source=str(path), num_folds=1, per_fold=None, folds=[1])
    need = max(ia, ib, isame) + 1
    for lineno, row in rows:
        if len(row) < need:
            out.problems.append({"path": f"{path}:{lineno}", "reason": f"expected {need} columns, got {len(row)}"})
            continue
        same = parse_same(row[isame])
        if same is None:
            out.problems.append({"path": f"{path}:{lineno}",
                                 "reason": f"cannot read same/different from {row[isame]!r} (use 1/0 or yes/no)"})
            continue
        if not row[ia] or not row[ib]:
            out.problems.append({"path": f"{path}:{lineno}", "reason": "empty image path"})
            continue
        out.pairs.append(Pair(row[ia].replace("\\", "/"), row[ib].replace("\\", "/"), same, 1, lineno))
    out.per_fold = len(out.pairs)
    return out


def read_pairs(path: str | os.PathLike, folds: Sequence[int] | str | None = None) -> PairList:
    """Read a pair list, choosing the parser from the extension (``.csv``/``.tsv`` -> CSV) or content."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such pairs file")
    if path.suffix.lower() in (".csv", ".tsv"):
        if folds is not None and parse_folds(folds) != [1]:
            raise DataError(f"{path}: a CSV pair list has no folds; drop --folds")
        return read_pairs_csv(path)
    return read_lfw_pairs(path, folds)


def limit_balanced(pairs: Iterable[Pair], limit: int | None) -> list[Pair]:
    """Keep at most ``limit`` pairs, half same and half different when possible, in file order."""
    pairs = list(pairs)
    if limit is None or limit >= len(pairs):
        return pairs
    same = [i for i, p in enumerate(pairs) if p.same]
    diff = [i for i, p in enumerate(pairs) if not p.same]
    n_same = min(len(same), (limit + 1) // 2)
    n_diff = min(len(diff), limit - n_same)
    n_same = min(len(same), limit - n_diff)
    keep = sorted(same[:n_same] + diff[:n_diff])
    return [pairs[i] for i in keep]


def source_fold_ids(packed_dir: str | os.PathLike) -> "np.ndarray | None":
    """Per-pair source fold numbers of a packed pair set (``pair_folds`` in its manifest), or None.

    ``facedistill prepare pairs`` records, run-length encoded, the LFW ``pairs.txt`` set / ``.bin``
    block each kept pair came from; ``evaluate --fold-scheme source`` cross-validates over them.
    """
    import json

    import numpy as np

    try:
        manifest = json.loads((Path(packed_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rle = manifest.get("pair_folds")
    if not isinstance(rle, list) or not rle:
        return None
    try:
        return np.concatenate([np.full(int(n), int(f), dtype=np.int64) for f, n in rle])
    except (TypeError, ValueError):
        raise DataError(f"{packed_dir}: manifest.json has a malformed pair_folds entry") from None


def resolve_image(root: Path, rel: str) -> Path | None:
    """Find ``rel`` under ``root``; LFW names may exist with another image extension."""
    p = root / rel
    if p.is_file():
        return p
    stem = p.with_suffix("")
    for ext in IMAGE_EXTS:
        for cand in (stem.with_suffix(ext), stem.with_suffix(ext.upper())):
            if cand.is_file():
                return cand
    return None
