"""insightface RecordIO (.rec/.idx) reading and `prepare recordio`, on small files written here.

The writer below follows the dmlc-core format independently of the reader under test: records
framed by the magic number and a length/flag word, split where the data holds the magic number
at an aligned position, padded to 4 bytes; an image header struct IfQQ with multi-float labels;
insightface's record 0 giving the image and identity ranges; a text .idx of offsets.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from facedistill.data.packed import PackedDataset, read_manifest
from facedistill.data.prepare import prepare_recordio
from facedistill.data.recordio import (MAGIC, InsightFaceRecord, OffsetTable, RecordIOReader, read_idx,
                                      read_idx_table, unpack)
from facedistill.errors import DataError

MAGIC_LE = struct.pack("<I", MAGIC)


# -- a tiny independent writer ------------------------------------------------------------------
def frame(data: bytes) -> bytes:
    """One record as dmlc's RecordIOWriter writes it (splitting at aligned magic numbers)."""
    out = bytearray()
    parts = []
    start = 0
    for i in range(0, len(data) - len(data) % 4, 4):
        if data[i:i + 4] == MAGIC_LE:
            parts.append(data[start:i])
            start = i + 4
    parts.append(data[start:])
    for k, part in enumerate(parts):
        if len(parts) == 1:
            flag = 0
        elif k == 0:
            flag = 1
        elif k == len(parts) - 1:
            flag = 3
        else:
            flag = 2
        out += MAGIC_LE + struct.pack("<I", (flag << 29) | len(part)) + part
    out += b"\0" * ((-len(data)) % 4)
    return bytes(out)


def header(label, payload: bytes = b"", id1: int = 0, id2: int = 0) -> bytes:
    labels = np.atleast_1d(np.asarray(label, dtype=np.float32))
    if labels.size == 1 and not isinstance(label, (list, tuple, np.ndarray)):
        return struct.pack("<IfQQ", 0, float(labels[0]), id1, id2) + payload
    return struct.pack("<IfQQ", labels.size, 0.0, id1, id2) + labels.astype("<f4").tobytes() + payload


def write_rec(folder: Path, records: list[bytes], keys: list[int] | None = None, name: str = "train") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rec, idx = folder / f"{name}.rec", folder / f"{name}.idx"
    keys = keys if keys is not None else list(range(len(records)))
    lines = []
    with open(rec, "wb") as f:
        for k, r in zip(keys, records):
            lines.append(f"{k}\t{f.tell()}\n")
            f.write(frame(r))
    idx.write_text("".join(lines))
    return rec, idx


def face(i: int) -> np.ndarray:
    """A deterministic 112x112 RGB image, different for each i."""
    rng = np.random.default_rng(i)
    img = np.zeros((112, 112, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    cv2.circle(img, (int(rng.integers(20, 92)), int(rng.integers(20, 92))), 15, (255, 255, 255), -1)
    return img


def png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    return buf.tobytes()


def insightface_rec(folder: Path, identities: list[int], multi_label: bool = False) -> tuple[Path, Path, list]:
    """Records 1..n images (PNG, lossless), then one identity record per identity, then record 0."""
    images, labels = [], []
    for ident, count in enumerate(identities):
        for _ in range(count):
            images.append(face(len(images)))
            labels.append(ident)
    n = len(images)
    recs = [b""]  # placeholder for the header record 0
    for img, lab in zip(images, labels):
        lab_v = [float(lab), 0.5] if multi_label else float(lab)
        recs.append(header(lab_v, png(img)))
    a = n + 1
    start = 1
    for ident, count in enumerate(identities):
        recs.append(header([float(start), float(start + count)]))
        start += count
    recs[0] = header([float(a), float(a + len(identities))])
    rec, idx = write_rec(folder, recs)
    return rec, idx, list(zip(images, labels))


# -- framing --------------------------------------------------------------------------------------
def test_reader_roundtrip_with_split_records_and_padding(tmp_path):
    payloads = [b"", b"a", b"abcde", MAGIC_LE, b"xxxx" + MAGIC_LE + b"yy", MAGIC_LE * 3 + b"z",
                b"ab" + MAGIC_LE + b"cd",  # unaligned magic: not split
                bytes(range(256)) * 5]
    rec, idx = write_rec(tmp_path, payloads)
    raw = rec.read_bytes()
    assert raw.count(MAGIC_LE) > len(payloads)  # split parts really were written
    offsets = read_idx(idx)
    with RecordIOReader(rec) as reader:
        for k, p in enumerate(payloads):
            assert reader.read_at(offsets[k]) == p
        scanned = list(reader.scan())
    assert [o for o, _ in scanned] == [offsets[k] for k in range(len(payloads))]
    assert [d for _, d in scanned] == payloads


def test_unpack_scalar_and_multi_float_labels():
    h, payload = unpack(header(7.0, b"IMG", 3, 4))
    assert (h.flag, h.label, h.id, h.id2, payload) == (0, 7.0, 3, 4, b"IMG")
    h, payload = unpack(header([2.0, 5.0, 9.0], b"JPEG"))
    assert h.flag == 3 and h.labels.tolist() == [2.0, 5.0, 9.0] and payload == b"JPEG"
    with pytest.raises(DataError, match="shorter"):
        unpack(b"abc")
    with pytest.raises(DataError, match="labels"):
        unpack(struct.pack("<IfQQ", 10, 0.0, 0, 0) + b"1234")


def test_header_record_ranges(tmp_path):
    rec, idx, items = insightface_rec(tmp_path, [3, 1, 2])
    r = InsightFaceRecord(tmp_path)
    assert r.header0 == (7, 10)
    assert list(r.image_keys) == [1, 2, 3, 4, 5, 6]
    assert r.identity_ranges() == [(1, 4), (4, 5), (5, 7)]
    h, payload = r.read(5)
    assert InsightFaceRecord.label_of(h) == 2
    assert np.array_equal(cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1], items[4][0])
    r.close()


# -- prepare ----------------------------------------------------------------------------------------
def test_prepare_recordio_counts_labels_pixels(tmp_path):
    _, _, items = insightface_rec(tmp_path / "src", [3, 1, 2], multi_label=True)
    calls = []
    s = prepare_recordio(tmp_path / "src", tmp_path / "out", workers=2,
                         progress=lambda n=1, total=None: calls.append((n, total)))
    assert (s["identities"], s["images"], s["skipped"]) == (3, 6, 0)
    assert calls[0] == (0, 6) and sum(n for n, _ in calls) == 6
    ds = PackedDataset(tmp_path / "out", verify=True)
    assert ds.labels.tolist() == [lab for _, lab in items]
    assert np.array_equal(ds.images(), np.stack([img for img, _ in items]))
    assert ds.names == [f"rec:{k}" for k in range(1, 7)]
    m = read_manifest(tmp_path / "out")
    assert m["header0"] == [7, 10] and m["declared_identities"] == 3 and m["source_kind"] == "recordio"
    assert m["idx_sha256"] and m["source_digest"] and m["facedistill_version"]
    # idempotent: same shards, same digests
    s2 = prepare_recordio(tmp_path / "src" / "train.rec", tmp_path / "out")
    m2 = read_manifest(tmp_path / "out")
    assert [sh["sha256"] for sh in m2["shards"]] == [sh["sha256"] for sh in m["shards"]]
    assert m2["source_digest"] == m["source_digest"] and s2["images"] == 6


def test_prepare_recordio_limit_and_non_112_images(tmp_path):
    big = cv2.resize(face(0), (128, 128))
    recs = [header(float(i % 2), png(big)) for i in range(5)]
    write_rec(tmp_path / "src", recs)  # no insightface header: every record is an image
    s = prepare_recordio(tmp_path / "src", tmp_path / "out", limit=3)
    assert (s["images"], s["identities"]) == (3, 2)
    ds = PackedDataset(tmp_path / "out")
    assert ds.images().shape == (3, 112, 112, 3)


def test_truncated_rec_reports_and_keeps_the_rest(tmp_path):
    rec, idx, items = insightface_rec(tmp_path / "src", [2, 2])
    offsets = read_idx(idx)
    # cut the file inside image record 4 (records 5.. and the identity records are lost)
    with open(rec, "r+b") as f:
        f.truncate(offsets[4] + 40)
    s = prepare_recordio(tmp_path / "src", tmp_path / "out")
    assert s["images"] == 3 and s["skipped"] == 1
    assert "truncated" in s["skipped_examples"][0]
    m = read_manifest(tmp_path / "out")
    assert m["skipped"][0]["path"] == "rec:4"


def test_mismatched_idx_is_refused_with_a_fix_and_scan_rebuilds(tmp_path):
    rec, idx, _ = insightface_rec(tmp_path / "src", [2, 2])
    offsets = read_idx(idx)
    idx.write_text("".join(f"{k}\t{o + 2}\n" for k, o in offsets.items()))
    with pytest.raises(DataError, match="--scan"):
        prepare_recordio(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    s = prepare_recordio(tmp_path / "src", tmp_path / "out", scan=True)
    assert (s["images"], s["identities"], s["idx_rebuilt_by_scan"]) == (4, 2, True)


def test_missing_idx_scans_and_bad_idx_text(tmp_path):
    rec, idx, _ = insightface_rec(tmp_path / "src", [1, 2])
    idx.unlink()
    s = prepare_recordio(rec, tmp_path / "out")
    assert s["images"] == 3 and s["idx_rebuilt_by_scan"]
    idx.write_text("0\t0\nnot a line\n")
    with pytest.raises(DataError, match=r"train.idx:2"):
        prepare_recordio(rec, tmp_path / "out2")


def test_not_a_rec_file(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"\x89PNG this is not a record file" * 10)
    with pytest.raises(DataError, match="not an mxnet RecordIO"):
        prepare_recordio(tmp_path / "train.rec", tmp_path / "out")
    with pytest.raises(DataError, match="no such"):
        prepare_recordio(tmp_path / "nothing.rec", tmp_path / "out")


def test_corrupt_image_record_is_skipped(tmp_path):
    recs = [header(0.0, png(face(0))), header(0.0, b"\xff\xd8 not a jpeg"), header(1.0, png(face(2)))]
    write_rec(tmp_path / "src", recs)
    s = prepare_recordio(tmp_path / "src", tmp_path / "out")
    assert (s["images"], s["skipped"]) == (2, 1)
    assert s["skipped_examples"][0].startswith("rec:1: not a decodable image")


def test_cli_recordio_json(tmp_path):
    from typer.testing import CliRunner

    from facedistill.cli.prepare import prepare_app

    insightface_rec(tmp_path / "src", [2, 3])
    res = CliRunner().invoke(prepare_app, ["recordio", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                                           "--json", str(tmp_path / "s.json"), "--limit", "4"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["images"], s["identities"]) == (4, 2)
    assert "identities" in res.output and "images" in res.output
    res = CliRunner().invoke(prepare_app, ["recordio", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")])
    text = " ".join(res.output.split())  # rich wraps long lines
    assert res.exit_code == 2 and "no such file" in text and "Traceback" not in text


def test_offset_table_dense_sparse_and_large_idx(tmp_path):
    t = OffsetTable(np.array([5, 1, 9]), np.array([50, 10, 90]))
    assert not t.dense and 9 in t and 2 not in t and t[1] == 10 and len(t) == 3
    assert t.contains(np.array([1, 2, 5, 10])).tolist() == [True, False, True, False]
    with pytest.raises(KeyError):
        t[2]
    n = 100_000                                  # an MS1M-like index streams into 16 bytes per record
    (tmp_path / "big.idx").write_text("".join(f"{k}\t{k * 4000}\n" for k in range(n)))
    big = read_idx_table(tmp_path / "big.idx")
    assert big.dense and len(big) == n and big[n - 1] == (n - 1) * 4000
    assert big.keys.nbytes + big.offsets.nbytes == 16 * n
    (tmp_path / "bin.idx").write_bytes(b"\x00\x01\xff\xfe garbage")
    with pytest.raises(DataError, match="binary content"):
        read_idx_table(tmp_path / "bin.idx")
