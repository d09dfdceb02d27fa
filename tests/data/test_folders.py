"""Image folders: scanning layouts, packing aligned crops, bad inputs reported, atomic and idempotent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from facedistill.data.folders import identity_from_filename, scan_folder
from facedistill.data.packed import PackedDataset, read_manifest
from facedistill.data.prepare import prepare_folder
from facedistill.errors import DataError


def rgb(seed: int, h: int = 112, w: int = 112) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    img[h // 4: h // 2, w // 4: w // 2] = rng.integers(0, 255, 3)
    return img


def write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img[:, :, ::-1] if img.ndim == 3 else img)


def make_tree(root: Path) -> None:
    write(root / "s1" / "1.png", rgb(1))
    write(root / "s1" / "2.png", rgb(2))
    write(root / "s2" / "1.png", rgb(3))
    write(root / "s2" / "more" / "2.png", rgb(4))          # nested: still identity s2
    write(root / "s10" / "1.pgm", rgb(5)[:, :, 0])          # grey PGM
    (root / "s3").mkdir()                                    # empty identity folder
    (root / "README").write_text("about this set")           # top-level file: ignored
    (root / "s1" / "notes.txt").write_text("not an image")   # metadata: ignored
    (root / ".hidden").mkdir()


def test_scan_dirs_layout(tmp_path):
    make_tree(tmp_path)
    scan = scan_folder(tmp_path)
    assert scan.layout == "dirs"
    assert list(scan.identities) == ["s1", "s2", "s10"]      # natural order, empty s3 not an identity
    assert [it.rel for it in scan.identities["s2"]] == ["s2/1.png", "s2/more/2.png"]
    assert scan.skipped == [{"path": "s3/", "reason": "empty identity folder (no files)"}]
    assert "README" in scan.ignored and "s1/notes.txt" in scan.ignored


def test_flat_layout_and_identity_from_filename(tmp_path):
    assert identity_from_filename("subject01.happy") == "subject01"
    assert identity_from_filename("Aaron_Eckhart_0001.jpg") == "Aaron_Eckhart"
    assert identity_from_filename("img7.jpg") == "img7"
    for name, seed in [("subject01.happy", 1), ("subject01.sad", 2), ("subject02.normal", 3)]:
        write(tmp_path / (name + ".png"), rgb(seed))
        os.replace(tmp_path / (name + ".png"), tmp_path / name)   # Yale: no extension
    (tmp_path / "Readme.txt").write_text("x")
    scan = scan_folder(tmp_path)
    assert scan.layout == "flat" and {k: len(v) for k, v in scan.identities.items()} == {"subject01": 2, "subject02": 1}


def test_prepare_folder_counts_labels_pixels(tmp_path):
    make_tree(tmp_path / "src")
    write(tmp_path / "src" / "s2" / "wide.png", rgb(9, 112, 150))   # not square: resized, with a warning
    s = prepare_folder(tmp_path / "src", tmp_path / "out")
    assert (s["identities"], s["images"], s["skipped"]) == (3, 6, 1)
    assert s["skipped_by_reason"] == {"empty identity folder": 1}
    assert any("not square" in w for w in s["warnings"])
    ds = PackedDataset(tmp_path / "out", verify=True)
    assert ds.names == ["s1/1.png", "s1/2.png", "s2/1.png", "s2/wide.png", "s2/more/2.png", "s10/1.pgm"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2]
    assert json.loads((tmp_path / "out" / "identities.json").read_text()) == {"0": "s1", "1": "s2", "2": "s10"}
    assert np.array_equal(ds.image(0), rgb(1)) and np.array_equal(ds.image(4), rgb(4))
    grey = ds.image(5)
    assert np.array_equal(grey[:, :, 0], rgb(5)[:, :, 0]) and np.array_equal(grey[:, :, 0], grey[:, :, 2])
    m = read_manifest(tmp_path / "out")
    assert m["source_kind"] == "folder" and m["source_digest"] and m["skipped"][0]["path"] == "s3/"


def test_bad_files_are_reported_and_the_rest_packed(tmp_path):
    make_tree(tmp_path / "src")
    (tmp_path / "src" / "s1" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "src" / "s1" / "empty.png").write_bytes(b"")
    (tmp_path / "src" / "s2" / "link.png").symlink_to(tmp_path / "nowhere.png")   # unreadable path
    (tmp_path / "src" / "s4").mkdir()
    (tmp_path / "src" / "s4" / "x.jpg").write_bytes(b"not an image at all")        # identity with nothing usable
    s = prepare_folder(tmp_path / "src", tmp_path / "out", workers=2)
    assert s["images"] == 5 and s["identities"] == 3
    m = read_manifest(tmp_path / "out")
    reasons = {e["path"]: e["reason"] for e in m["skipped"]}
    assert reasons["s1/broken.jpg"] == "not a decodable image"
    assert reasons["s1/empty.png"] == "empty file"
    assert reasons["s2/link.png"].startswith("unreadable file")
    assert reasons["s4/"].startswith("identity dropped")
    assert s["skipped"] == len(m["skipped"]) == 6


def test_gif_through_pillow(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    (tmp_path / "src" / "p1").mkdir(parents=True)
    Image.fromarray(np.full((60, 60), 77, np.uint8)).save(tmp_path / "src" / "p1" / "a", format="GIF")
    s = prepare_folder(tmp_path / "src", tmp_path / "out")
    assert s["images"] == 1
    assert int(PackedDataset(tmp_path / "out").image(0).mean()) == 77


def test_nothing_packable_stops_and_keeps_previous_output(tmp_path):
    make_tree(tmp_path / "src")
    prepare_folder(tmp_path / "src", tmp_path / "out")
    before = read_manifest(tmp_path / "out")
    (tmp_path / "bad" / "p").mkdir(parents=True)
    (tmp_path / "bad" / "p" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="nothing could be packed.*a.jpg: not a decodable image"):
        prepare_folder(tmp_path / "bad", tmp_path / "out")
    assert read_manifest(tmp_path / "out") == before
    assert not (tmp_path / ".out.partial").exists()
    with pytest.raises(DataError, match="no such folder"):
        prepare_folder(tmp_path / "missing", tmp_path / "out2")
    (tmp_path / "emptyroot").mkdir()
    with pytest.raises(DataError, match="no image files"):
        prepare_folder(tmp_path / "emptyroot", tmp_path / "out2")


def test_strict_stops_at_first_bad_input(tmp_path):
    make_tree(tmp_path / "src")
    with pytest.raises(DataError, match="s3/: empty identity folder.*--strict"):
        prepare_folder(tmp_path / "src", tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists()


def test_idempotent_and_limit(tmp_path):
    make_tree(tmp_path / "src")
    prepare_folder(tmp_path / "src", tmp_path / "out")
    m1 = read_manifest(tmp_path / "out")
    prepare_folder(tmp_path / "src", tmp_path / "out")
    m2 = read_manifest(tmp_path / "out")
    for key in ("shards", "labels_sha256", "source_digest", "skipped", "num_images"):
        assert m1[key] == m2[key]
    s = prepare_folder(tmp_path / "src", tmp_path / "out3", limit=3)
    assert s["images"] == 3


def test_pairs_file_selects_fold_images(tmp_path):
    for name, n in {"Ann_A": 3, "Bob_B": 1, "Cid_C": 2}.items():
        for i in range(1, n + 1):
            write(tmp_path / "images" / name / f"{name}_{i:04d}.jpg", rgb(i))
    (tmp_path / "pairs.txt").write_text("2 1\nAnn_A 1 2\nAnn_A 3 Bob_B 1\nCid_C 1 2\nCid_C 2 Zed_Z 1\n")
    s = prepare_folder(tmp_path / "images", tmp_path / "f1", pairs_file=tmp_path / "pairs.txt", folds="1")
    ds = PackedDataset(tmp_path / "f1")
    assert ds.names == ["Ann_A/Ann_A_0001.jpg", "Ann_A/Ann_A_0002.jpg", "Ann_A/Ann_A_0003.jpg", "Bob_B/Bob_B_0001.jpg"]
    assert s["identities"] == 2 and s["skipped"] == 0 and s["folds"] == [1]
    s = prepare_folder(tmp_path / "images", tmp_path / "f2", pairs_file=tmp_path / "pairs.txt", folds="2")
    assert s["images"] == 2 and s["skipped"] == 1 and "Zed_Z" in s["skipped_examples"][0]
    with pytest.raises(DataError, match="--pairs-file"):
        prepare_folder(tmp_path / "images", tmp_path / "f3", folds="1")


def test_bad_options(tmp_path):
    make_tree(tmp_path / "src")
    with pytest.raises(DataError, match="--align"):
        prepare_folder(tmp_path / "src", tmp_path / "o", align="magic")
    with pytest.raises(DataError, match="needs --detector"):
        prepare_folder(tmp_path / "src", tmp_path / "o", align="yunet")
    with pytest.raises(DataError, match="detector model not found"):
        prepare_folder(tmp_path / "src", tmp_path / "o", align="yunet", detector=tmp_path / "none.onnx")
    with pytest.raises(DataError, match="--layout"):
        prepare_folder(tmp_path / "src", tmp_path / "o", layout="tree")


def test_not_enough_disk_space_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    make_tree(tmp_path / "src")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 1000))
    with pytest.raises(DataError, match="GB are free there.*--limit"):
        prepare_folder(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
