"""Pure-Python reader for MXNet RecordIO files as insightface ships them (``train.rec`` + ``train.idx``).

No mxnet needed. The format, as written by dmlc-core's ``RecordIOWriter``:

* a record is ``magic`` (uint32 0xced7230a), ``lrecord`` (uint32: upper 3 bits a continuation
  flag, lower 29 bits the length), the data, then zero padding to a multiple of 4 bytes;
* flag 0 is a whole record. When the data contains the magic number at a 4-byte aligned
  position, the writer splits it there: the first part has flag 1, middle parts 2, the last 3,
  and the reader joins the parts putting the magic number back between them;
* the ``.idx`` file is text, one ``key<TAB>byte offset`` line per record;
* a record's data starts with an image header, struct ``IfQQ`` (little-endian, 24 bytes): flag,
  label, id, id2. When flag > 0 the label is the ``flag`` float32 values that follow the header
  (and the scalar ``label`` field is unused); the encoded image (JPEG) comes after.

insightface convention: record 0 is a header whose label ``(a, b)`` says that records ``1..a-1``
are images and records ``a..b-1`` are identities, each identity's label being the ``(start,
end)`` range of its image records. Without such a header every indexed record is an image.

Reads use ``os.pread`` (thread-safe, no full load), so files of tens of GB stream fine.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from facedistill.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24


class RecordError(DataError):
    """One record cannot be read (bad offset, truncated file, bad header)."""


@dataclass
class IRHeader:
    flag: int
    label: float | np.ndarray
    id: int
    id2: int

    @property
    def labels(self) -> np.ndarray:
        """The label(s) as a float32 array (one value when flag == 0)."""
        if isinstance(self.label, np.ndarray):
            return self.label
        return np.array([self.label], dtype=np.float32)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record into its image header and payload (mxnet's ``recordio.unpack``)."""
    if len(record) < IR_SIZE:
        raise RecordError(f"record of {len(record)} bytes is shorter than the {IR_SIZE}-byte image header")
    flag, label, id1, id2 = struct.unpack_from(IR_FORMAT, record, 0)
    payload = record[IR_SIZE:]
    if flag > 0:
        if flag * 4 > len(payload):
            raise RecordError(f"image header says {flag} labels but the record holds only {len(payload)} bytes")
        labels = np.frombuffer(payload, dtype="<f4", count=flag).astype(np.float32)
        return IRHeader(flag, labels, id1, id2), payload[flag * 4:]
    return IRHeader(flag, float(label), id1, id2), payload


def read_idx(path: str | os.PathLike) -> dict[int, int]:
    """Read a ``.idx`` file: ``key<TAB>offset`` lines. Raises ``DataError`` naming the bad line."""
    path = Path(path)
    out: dict[int, int] = {}
    try:
        f = open(path, "r", encoding="ascii", errors="strict")
    except OSError as e:
        raise DataError(f"{path}: cannot read the index ({e.strerror or e})") from e
    with f:
        try:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise DataError(f"{path}:{lineno}: expected 'key<TAB>offset', got {line[:60]!r}; "
                                    "this is not an mxnet .idx file")
                try:
                    key, off = int(parts[0]), int(parts[1])
                except ValueError as e:
                    raise DataError(f"{path}:{lineno}: key and offset must be integers, got {line[:60]!r}") from e
                if off < 0:
                    raise DataError(f"{path}:{lineno}: negative offset {off}")
                out[key] = off
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a text .idx file (binary content); pass the .idx that belongs "
                            "to the .rec, or --scan to rebuild the index from the .rec") from e
    return out


class OffsetTable:
    """Key -> byte offset, held in numpy arrays (16 bytes per record, so 6M records take ~100 MB).

    Lookups are O(1) when the keys are 0..N-1 (insightface files), binary search otherwise.
    Behaves like a read-only mapping: ``key in table``, ``table[key]``, ``len(table)``.
    """

    def __init__(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys = np.ascontiguousarray(keys[order], dtype=np.int64)
        self.offsets = np.ascontiguousarray(offsets[order], dtype=np.int64)
        if len(self.keys) > 1 and (np.diff(self.keys) == 0).any():
            # a repeated key: the last line wins, as in mxnet's reader
            last = np.r_[np.diff(self.keys) != 0, True]
            self.keys, self.offsets = self.keys[last], self.offsets[last]
        n = len(self.keys)
        self.dense = n > 0 and self.keys[0] == 0 and self.keys[-1] == n - 1

    @classmethod
    def from_dict(cls, d: dict[int, int]) -> "OffsetTable":
        return cls(np.fromiter(d.keys(), np.int64, len(d)), np.fromiter(d.values(), np.int64, len(d)))

    def __len__(self) -> int:
        return len(self.keys)

    def _pos(self, key: int) -> int:
        if self.dense:
            return key if 0 <= key < len(self.keys) else -1
        i = int(np.searchsorted(self.keys, key))
        return i if i < len(self.keys) and self.keys[i] == key else -1

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (int, np.integer)) and self._pos(int(key)) >= 0

    def __getitem__(self, key: int) -> int:
        i = self._pos(int(key))
        if i < 0:
            raise KeyError(key)
        return int(self.offsets[i])

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Vectorised membership for an array of keys."""
        keys = np.asarray(keys, dtype=np.int64)
        if self.dense:
            return (keys >= 0) & (keys < len(self.keys))
        i = np.clip(np.searchsorted(self.keys, keys), 0, max(len(self.keys) - 1, 0))
        return (self.keys[i] == keys) if len(self.keys) else np.zeros(len(keys), bool)


def read_idx_table(path: str | os.PathLike) -> OffsetTable:
    """Like ``read_idx`` but into an ``OffsetTable`` (compact, for files with millions of records)."""
    import array

    path = Path(path)
    keys, offs = array.array("q"), array.array("q")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read the index ({e.strerror or e})") from e
    with f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 2:
                    raise ValueError
                k, o = int(parts[0]), int(parts[1])
            except ValueError:
                text = line[:60].decode("ascii", "replace")
                if b"\0" in line or not line.isascii():
                    raise DataError(f"{path}: not a text .idx file (binary content); pass the .idx that belongs "
                                    "to the .rec, or --scan to rebuild the index from the .rec") from None
                raise DataError(f"{path}:{lineno}: expected 'key<TAB>offset' integers, got {text!r}; "
                                "this is not an mxnet .idx file") from None
            if o < 0:
                raise DataError(f"{path}:{lineno}: negative offset {o}")
            keys.append(k)
            offs.append(o)
    return OffsetTable(np.frombuffer(keys, np.int64).copy(), np.frombuffer(offs, np.int64).copy())


def _ceil4(n: int) -> int:
    return (n + 3) & ~3


class RecordIOReader:
    """Random and sequential access to the records of one ``.rec`` file.

    ``read_at(offset)`` returns the record starting at that byte offset (parts joined);
    ``scan()`` walks the file from the start, yielding ``(offset, record)``.
    Picklable (each process reopens the file), thread-safe.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such .rec file")
        self.size = self.path.stat().st_size
        self._fd: int | None = None
        self._lock = threading.Lock()

    # file handling ---------------------------------------------------------------------------
    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as e:
                raise DataError(f"{self.path}: cannot open ({e.strerror or e})") from e
        return self._fd

    def _pread(self, n: int, offset: int) -> bytes:
        fd = self._open()
        if hasattr(os, "pread"):
            chunks = []
            while n > 0:
                b = os.pread(fd, n, offset)
                if not b:
                    break
                chunks.append(b)
                n -= len(b)
                offset += len(b)
            return b"".join(chunks)
        with self._lock:  # pragma: no cover - Windows
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, n)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # reading ---------------------------------------------------------------------------------
    def _part_header(self, offset: int) -> tuple[int, int]:
        if offset + 8 > self.size:
            raise RecordError(f"offset {offset} is past the end of the .rec ({self.size} bytes): "
                              "the file is truncated or the .idx belongs to another file")
        magic, lrec = struct.unpack("<II", self._pread(8, offset))
        if magic != MAGIC:
            raise RecordError(f"no record starts at offset {offset} (magic 0x{magic:08x}, expected "
                              f"0x{MAGIC:08x}): the .idx does not match this .rec")
        return lrec >> 29, lrec & LENGTH_MASK

    def read_at_with_end(self, offset: int) -> tuple[bytes, int]:
        """Read the record at ``offset``; returns ``(data, offset of the next record)``."""
        parts: list[bytes] = []
        pos = offset
        first = True
        while True:
            cflag, length = self._part_header(pos)
            if cflag > 3:
                raise RecordError(f"corrupt record header at offset {pos} (flag {cflag})")
            if first and cflag in (2, 3):
                raise RecordError(f"offset {offset} points into the middle of a split record "
                                  "(the .idx does not match this .rec)")
            if not first and cflag in (0, 1):
                raise RecordError(f"split record at offset {offset} is missing its last part")
            end = pos + 8 + _ceil4(length)
            if pos + 8 + length > self.size:
                raise RecordError(f"record at offset {offset} needs {length} bytes at {pos + 8} but the .rec "
                                  f"ends at {self.size}: the file is truncated (incomplete download?)")
            data = self._pread(length, pos + 8)
            if len(data) != length:
                raise RecordError(f"short read at offset {pos + 8}: the .rec is truncated")
            parts.append(data)
            pos = min(end, self.size)
            if cflag in (0, 3):
                break
            first = False
        return _MAGIC_BYTES.join(parts), pos

    def read_at(self, offset: int) -> bytes:
        return self.read_at_with_end(offset)[0]

    def scan(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, record)`` for every record from ``start``, in file order.

        Stops with ``RecordError`` at the first unreadable record (truncation, garbage).
        """
        pos = start
        while pos < self.size:
            data, nxt = self.read_at_with_end(pos)
            yield pos, data
            pos = nxt


def resolve_rec(source: str | os.PathLike, idx: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """Find the ``.rec`` and ``.idx`` from a file or a dataset folder (``train.rec``/``train.idx``)."""
    src = Path(source)
    if src.is_dir():
        recs = sorted(src.glob("*.rec"))
        rec = src / "train.rec" if (src / "train.rec").is_file() else (recs[0] if len(recs) == 1 else None)
        if rec is None:
            found = ", ".join(p.name for p in recs) or "none"
            raise DataError(f"{src}: expected train.rec in this folder (found .rec files: {found}); "
                            "pass the .rec file itself")
    elif src.is_file():
        rec = src
    else:
        raise DataError(f"{src}: no such file or folder")
    if idx is not None:
        idx_path: Path | None = Path(idx)
        if not idx_path.is_file():
            raise DataError(f"{idx_path}: no such .idx file")
    else:
        cand = rec.with_suffix(".idx")
        idx_path = cand if cand.is_file() else None
    return rec, idx_path


class InsightFaceRecord:
    """An insightface training set in RecordIO: image keys, labels and identity ranges.

    ``scan=True`` (or a missing ``.idx``) builds the offsets by walking the ``.rec`` once, with keys
    0, 1, 2, ... in file order, which is what insightface's ``.idx`` files hold.
    """

    def __init__(self, source: str | os.PathLike, idx: str | os.PathLike | None = None, scan: bool = False,
                 check: int = 8) -> None:
        self.rec_path, self.idx_path = resolve_rec(source, idx)
        self.reader = RecordIOReader(self.rec_path)
        self.scanned = False
        self.scan_error: str | None = None
        self.past_end = 0
        self.offsets: OffsetTable
        if self.idx_path is None or scan:
            self.offsets = self._scan_offsets()
            self.scanned = True
        else:
            self.offsets = read_idx_table(self.idx_path)
            if not len(self.offsets):
                raise DataError(f"{self.idx_path}: the index is empty")
            self._check_idx(check)
        self.header0: tuple[int, int] | None = None
        self.image_keys: range | np.ndarray
        self.identity_keys: range = range(0)
        self._read_header0()

    def _scan_offsets(self) -> OffsetTable:
        import array

        offs = array.array("q")
        try:
            for off, _ in self.reader.scan():
                offs.append(off)
        except RecordError as e:
            self.scan_error = str(e)
        if not offs:
            raise DataError(f"{self.rec_path}: no readable record at the start of the file "
                            f"({self.scan_error}); this is not an mxnet RecordIO file")
        offsets = np.frombuffer(offs, np.int64).copy()
        return OffsetTable(np.arange(len(offsets), dtype=np.int64), offsets)

    def _check_idx(self, check: int) -> None:
        keys = self.offsets.keys.tolist() if len(self.offsets) <= 2 * check else (
            self.offsets.keys[:check].tolist() + self.offsets.keys[-check:].tolist())
        sample = sorted(set(keys))
        bad = []
        for k in sample:
            try:
                self.reader._part_header(self.offsets[k])
            except RecordError as e:
                bad.append((k, e))
        if len(bad) == len(sample):
            k, e = bad[0]
            raise DataError(f"{self.idx_path} does not match {self.rec_path}: key {k}: {e}. "
                            "Use the .idx written with this .rec, or pass --scan to rebuild the offsets "
                            "by reading the .rec once.")
        self.past_end = int((self.offsets.offsets >= self.reader.size).sum())

    def _read_header0(self) -> None:
        header = None
        if 0 in self.offsets:
            try:
                header, _ = unpack(self.reader.read_at(self.offsets[0]))
            except RecordError:
                header = None
        if header is not None and header.flag > 0 and len(header.labels) >= 2:
            a, b = int(header.labels[0]), int(header.labels[1])
            if not (1 <= a <= b):
                raise DataError(f"{self.rec_path}: record 0 claims images 1..{a - 1} and identities "
                                f"{a}..{b - 1}, which is impossible; the header record is corrupt")
            self.header0 = (a, b)
            self.image_keys = range(1, a)
            self.identity_keys = range(a, b)
        else:
            self.image_keys = self.offsets.keys

    @property
    def num_identities_declared(self) -> int | None:
        return len(self.identity_keys) if self.header0 else None

    def present_image_keys(self, limit: int | None = None) -> tuple[np.ndarray, int]:
        """Image keys (first ``limit``) that the index has, and how many promised keys it lacks."""
        keys = self.image_keys[:limit] if limit is not None else self.image_keys
        arr = np.arange(keys.start, keys.stop, dtype=np.int64) if isinstance(keys, range) else np.asarray(keys)
        mask = self.offsets.contains(arr)
        return arr[mask], int((~mask).sum())

    def missing_keys(self, limit: int | None = None) -> list[int]:
        """Image keys the header promises but the index lacks."""
        keys = self.image_keys[:limit] if limit is not None else self.image_keys
        arr = np.arange(keys.start, keys.stop, dtype=np.int64) if isinstance(keys, range) else np.asarray(keys)
        return arr[~self.offsets.contains(arr)].tolist()

    def identity_ranges(self) -> list[tuple[int, int]]:
        """Per-identity ``(start, end)`` image-key ranges from the identity records (may be empty)."""
        out = []
        for k in self.identity_keys:
            if k not in self.offsets:
                continue
            try:
                h, _ = unpack(self.reader.read_at(self.offsets[k]))
            except RecordError:
                continue
            lab = h.labels
            if len(lab) >= 2:
                out.append((int(lab[0]), int(lab[1])))
        return out

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """Image header and encoded bytes of record ``key``; ``RecordError`` if unreadable."""
        if key not in self.offsets:
            raise RecordError(f"key {key} is not in the index")
        return unpack(self.reader.read_at(self.offsets[key]))

    @staticmethod
    def label_of(header: IRHeader) -> int:
        lab = header.labels
        if lab.size == 0 or not np.isfinite(lab[0]):
            raise RecordError("image record has no usable label")
        return int(lab[0])

    def close(self) -> None:
        self.reader.close()
