"""insightface verification .bin files: read without executing anything, then packed as pair sets."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from facedistill.data.binset import SafeUnpickler, load_bin, safe_loads
from facedistill.data.packed import PackedDataset, read_manifest
from facedistill.data.prepare import prepare_pairs
from facedistill.errors import DataError


def face(i: int) -> np.ndarray:
    rng = np.random.default_rng(100 + i)
    img = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    return img


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()


def py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """The bytes Python 2's ``pickle.dump((bins, issame), f, protocol=2)`` writes (how lfw.bin was made):
    images as py2 ``str`` (SHORT_BINSTRING/BINSTRING opcodes), flags as NEWTRUE/NEWFALSE."""
    out = bytearray(b"\x80\x02")          # PROTO 2
    out += b"]("                           # EMPTY_LIST, MARK
    for b in bins:
        if len(b) < 256:
            out += b"U" + bytes([len(b)]) + b
        else:
            out += b"T" + struct.pack("<i", len(b)) + b
    out += b"e"                            # APPENDS
    out += b"]("
    for v in issame:
        out += b"\x88" if v else b"\x89"
    out += b"e"
    out += b"\x86."                        # TUPLE2, STOP
    return bytes(out)


def make_bin(tmp_path: Path, n_pairs: int = 4, name: str = "lfw.bin", py2: bool = True):
    images = [face(i) for i in range(2 * n_pairs)]
    bins = [png(im) for im in images]
    issame = [i % 2 == 0 for i in range(n_pairs)]
    path = tmp_path / name
    path.write_bytes(py2_pickle(bins, issame) if py2 else pickle.dumps((bins, issame), protocol=4))
    return path, images, issame


def test_py2_protocol2_bin_like_insightface(tmp_path):
    path, images, issame = make_bin(tmp_path, 3)
    bins, flags = load_bin(path)
    assert flags == issame
    assert len(bins) == 6 and all(isinstance(b, bytes) for b in bins)
    assert np.array_equal(cv2.imdecode(np.frombuffer(bins[5], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1], images[5])


def test_py3_bin(tmp_path):
    path, _, issame = make_bin(tmp_path, 2, py2=False)
    assert load_bin(path)[1] == issame


def test_py3_protocol2_bytes_via_codecs_encode(tmp_path):
    bins = [png(face(0)), png(face(1))]
    data = pickle.dumps((bins, [False]), protocol=2)
    assert b"_codecs" in data  # Python 3 writes bytes at protocol 2 as _codecs.encode(str, 'latin1')
    path = tmp_path / "p2.bin"
    path.write_bytes(data)
    assert load_bin(path) == (bins, [False])
    # any other use of _codecs.encode is refused
    evil = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x06\x00\x00\x00rot_13\x86R."
    with pytest.raises(Exception, match="_codecs.encode"):
        safe_loads(evil)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(([_Exploit(marker)], [True]), protocol=2)
    # sanity: a plain pickle.loads of this payload does run code
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Exploit(control)))
    assert control.exists()
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=r"refused.*(__builtin__|builtins)\.exec"):
        load_bin(path)
    assert not marker.exists()
    # also through prepare: no output, no marker
    with pytest.raises(DataError, match="refused"):
        prepare_pairs(path, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # protocol 0 (GLOBAL opcode) and os.system too
    proto0 = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    path.write_bytes(proto0)
    with pytest.raises(DataError, match="os.system|posix.system"):
        load_bin(path)
    assert not marker.exists()


def test_numpy_objects_are_refused_with_a_conversion_hint(tmp_path):
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps(([png(face(0)), png(face(1))], np.array([True])), protocol=2))
    with pytest.raises(DataError, match="numpy.*convert it once"):
        load_bin(path)


@pytest.mark.parametrize("obj, match", [
    ({"a": 1}, "expected a pickle of"),
    (([b"x", b"y", b"z"], [True]), "3 images for 1 pairs"),
    (([b"x", 5], [True]), "image 1 is a int"),
    (([b"x", b"y"], ["yes"]), "same flag 0"),
])
def test_wrong_structure(tmp_path, obj, match):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(DataError, match=match):
        load_bin(path)


def test_truncated_and_not_a_pickle(tmp_path):
    path, _, _ = make_bin(tmp_path, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt, truncated"):
        load_bin(path)
    path.write_bytes(png(face(0)))
    with pytest.raises(DataError, match="not a valid verification .bin"):
        load_bin(path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_bin(path)


def test_safe_unpickler_allows_plain_values():
    value = ([1, 2.5, "s", b"b", None, True], {"k": (1, 2)})
    assert safe_loads(pickle.dumps(value, protocol=5)) == value
    assert issubclass(SafeUnpickler, pickle.Unpickler)


def test_prepare_pairs_from_bin(tmp_path):
    path, images, issame = make_bin(tmp_path, 5)
    s = prepare_pairs(path, tmp_path / "out")
    assert (s["images"], s["pairs"], s["skipped"]) == (10, 5, 0)
    assert (s["same_pairs"], s["different_pairs"]) == (3, 2)
    ds = PackedDataset(tmp_path / "out", verify=True)
    assert ds.pairs.tolist() == [[2 * i, 2 * i + 1, int(issame[i])] for i in range(5)]
    assert np.array_equal(ds.images(), np.stack(images))
    m = read_manifest(tmp_path / "out")
    assert m["kind"] == "pairs" and m["source_kind"] == "bin" and m["source_sha256"]


def test_prepare_bin_with_a_corrupt_image_drops_that_pair(tmp_path):
    images = [face(i) for i in range(6)]
    bins = [png(im) for im in images]
    bins[3] = b"garbage"
    path = tmp_path / "x.bin"
    path.write_bytes(py2_pickle(bins, [True, False, True]))
    s = prepare_pairs(path, tmp_path / "out")
    assert (s["images"], s["pairs"]) == (5, 2)
    assert s["skipped"] == 2  # the image, and the pair it breaks
    ds = PackedDataset(tmp_path / "out")
    assert ds.pairs.tolist() == [[0, 1, 1], [3, 4, 1]]
    with pytest.raises(DataError, match="--strict"):
        prepare_pairs(path, tmp_path / "out2", strict=True)


def test_prepare_bin_folds_and_limit(tmp_path):
    path, _, issame = make_bin(tmp_path, 20)
    s = prepare_pairs(path, tmp_path / "out", folds="2")   # 10 folds of 2 pairs
    assert s["pairs"] == 2 and s["folds"] == [2]
    assert read_manifest(tmp_path / "out")["pair_folds"] == [[2, 2]]
    s = prepare_pairs(path, tmp_path / "out", limit_pairs=4)
    assert (s["pairs"], s["same_pairs"]) == (4, 2)
    with pytest.raises(DataError, match="10 fold"):
        prepare_pairs(path, tmp_path / "out", folds="11")
