"""LFW pairs.txt and CSV pair lists: parsing, fold selection, packing, missing images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facedistill.data.packed import PackedDataset, read_manifest
from facedistill.data.pairs import (limit_balanced, parse_folds, parse_same, read_lfw_pairs, read_pairs,
                                    read_pairs_csv)
from facedistill.data.prepare import prepare_pairs
from facedistill.errors import DataError

PEOPLE = {"Ann_A": 3, "Bob_B": 2, "Cid_C": 1, "Dee_D": 2}


def make_lfw(root: Path, people: dict[str, int] = PEOPLE) -> dict[str, np.ndarray]:
    """images/<Name>/<Name>_<i:04d>.jpg; returns rel path -> RGB pixels as decoded from the file."""
    pixels = {}
    for k, (name, n) in enumerate(people.items()):
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            rng = np.random.default_rng(10 * k + i)
            img = np.full((112, 112, 3), rng.integers(0, 255, 3), np.uint8)
            rel = f"{name}/{name}_{i:04d}.jpg"
            cv2.imwrite(str(root / "images" / rel), img)
            pixels[rel] = cv2.imread(str(root / "images" / rel))[:, :, ::-1]
    return pixels


LFW_TXT = """2\t2
Ann_A\t1\t2
Bob_B\t1\t2
Ann_A\t3\tBob_B\t1
Cid_C\t1\tDee_D\t1
Ann_A\t1\t3
Dee_D\t1\t2
Cid_C\t1\tAnn_A\t2
Bob_B\t2\tDee_D\t2
"""


def test_parse_folds():
    assert parse_folds("1-5") == [1, 2, 3, 4, 5]
    assert parse_folds("6-7") == [6, 7]
    assert parse_folds("1,3,5-6") == [1, 3, 5, 6]
    assert parse_folds([2, 1, 2]) == [1, 2]
    assert parse_folds(None) is None
    for bad in ("a", "3-1", "0", ""):
        with pytest.raises(DataError):
            parse_folds(bad)


def test_read_lfw_pairs_folds(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text(LFW_TXT)
    pl = read_lfw_pairs(p)
    assert (pl.num_folds, pl.per_fold, len(pl.pairs)) == (2, 4, 8)
    assert pl.pairs[0].a == "Ann_A/Ann_A_0001.jpg" and pl.pairs[0].same and pl.pairs[0].line == 2
    assert pl.pairs[2].b == "Bob_B/Bob_B_0001.jpg" and not pl.pairs[2].same
    f2 = read_lfw_pairs(p, "2")
    assert [x.fold for x in f2.pairs] == [2] * 4 and f2.pairs[0].a == "Ann_A/Ann_A_0001.jpg"
    assert f2.pairs[0].b == "Ann_A/Ann_A_0003.jpg"
    with pytest.raises(DataError, match="2 fold"):
        read_lfw_pairs(p, "3")


def test_lfw_header_variants_and_errors(tmp_path):
    p = tmp_path / "pairs.txt"
    body = LFW_TXT.split("\n", 1)[1]
    p.write_text("4\n" + body)           # just n: one fold of 4 + 4
    pl = read_lfw_pairs(p)
    assert (pl.num_folds, len(pl.pairs)) == (1, 8)
    p.write_text(body)                     # no header at all
    assert len(read_lfw_pairs(p).pairs) == 8
    p.write_text("3 2\n" + body)          # header promises more lines than there are
    with pytest.raises(DataError, match="3 fold.*12 lines.*8 pair lines"):
        read_lfw_pairs(p)
    p.write_text("1 1\nAnn_A 1 2\nthis line is wrong here\n")
    pl = read_lfw_pairs(p)
    assert len(pl.pairs) == 1 and "pairs.txt:3" in pl.problems[0]["path"]


def test_csv_variants(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("file_x,file_y,Decision\nimg1.jpg,img2.jpg,Yes\nimg1.jpg,img3.jpg,No\n")
    pl = read_pairs_csv(p)
    assert [(x.a, x.b, x.same) for x in pl.pairs] == [("img1.jpg", "img2.jpg", True), ("img1.jpg", "img3.jpg", False)]
    p.write_text("a/1.png,b/2.png,1\na/1.png,a/3.png,0\n")   # no header
    assert [x.same for x in read_pairs(p).pairs] == [True, False]
    p.write_text("same;img2;img1\n1;b.png;a.png\n")          # semicolons, columns by name
    pl = read_pairs_csv(p)
    assert (pl.pairs[0].a, pl.pairs[0].b, pl.pairs[0].same) == ("a.png", "b.png", True)
    p.write_text("path_a,path_b,same\nx.png,y.png,maybe\nx.png,y.png,true\n")
    pl = read_pairs_csv(p)
    assert len(pl.pairs) == 1 and "maybe" in pl.problems[0]["reason"]
    with pytest.raises(DataError, match="no folds"):
        read_pairs(p, "2")


def test_parse_same_and_limit_balanced(tmp_path):
    assert [parse_same(v) for v in ("Yes", "no", "1", "0", "1.0", "same", "different", "x")] == [
        True, False, True, False, True, True, False, None]
    p = tmp_path / "pairs.txt"
    p.write_text(LFW_TXT)
    pairs = read_lfw_pairs(p).pairs
    kept = limit_balanced(pairs, 3)
    assert len(kept) == 3 and sum(x.same for x in kept) == 2
    assert [x.line for x in kept] == sorted(x.line for x in kept)


def test_prepare_lfw_pairs(tmp_path):
    pixels = make_lfw(tmp_path)
    (tmp_path / "pairs.txt").write_text(LFW_TXT)
    s = prepare_pairs(tmp_path / "pairs.txt", tmp_path / "out")   # images/ beside pairs.txt found by default
    assert (s["pairs"], s["same_pairs"], s["skipped"]) == (8, 4, 0)
    ds = PackedDataset(tmp_path / "out", verify=True)
    names = ds.names
    assert len(names) == len(set(names)) == s["images"] == 8   # every image once
    for i, rel in enumerate(names):
        assert np.array_equal(ds.image(i), pixels[rel])
    import json

    identities = json.loads((tmp_path / "out" / "identities.json").read_text())
    for i, rel in enumerate(names):
        assert identities[str(ds.labels[i])] == rel.split("/")[0]
    for a, b, same in ds.pairs:
        assert bool(same) == (names[a].split("/")[0] == names[b].split("/")[0])
    m = read_manifest(tmp_path / "out")
    assert m["pair_folds"] == [[1, 4], [2, 4]] and m["source_kind"] == "lfw-pairs"


def test_prepare_lfw_pairs_folds_and_missing_image(tmp_path):
    make_lfw(tmp_path)
    (tmp_path / "images" / "Dee_D" / "Dee_D_0002.jpg").unlink()
    (tmp_path / "pairs.txt").write_text(LFW_TXT)
    s = prepare_pairs(tmp_path / "pairs.txt", tmp_path / "out", images=tmp_path / "images", folds="2")
    # fold 2: Ann 1-3 same, Dee 1-2 same (Dee_0002 missing), Cid1/Ann2 diff, Bob2/Dee2 diff (missing)
    assert s["pairs"] == 2 and s["skipped"] == 3   # the missing image + 2 pairs that needed it
    assert any("Dee_D_0002.jpg: image not found" in e for e in s["skipped_examples"])
    reasons = [x["reason"] for x in read_manifest(tmp_path / "out")["skipped"]]
    assert sum("pair dropped" in r for r in reasons) == 2


def test_prepare_csv_pairs_relative_to_csv_or_images_root(tmp_path):
    for name in ("a", "b", "c"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((50, 50, 3), ord(name), np.uint8))
    (tmp_path / "pairs.csv").write_text("file_x,file_y,Decision\na.png,b.png,Yes\nb.png,c.png,No\na.png,zz.png,No\n")
    s = prepare_pairs(tmp_path / "pairs.csv", tmp_path / "out")
    assert (s["images"], s["pairs"], s["skipped"]) == (3, 2, 2)
    ds = PackedDataset(tmp_path / "out")
    assert ds.images().shape == (3, 112, 112, 3) and (ds.labels == -1).all()
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "p.csv").write_text("a.png,c.png,1\n")
    s = prepare_pairs(sub / "p.csv", tmp_path / "out2", images=tmp_path)
    assert s["pairs"] == 1
    with pytest.raises(DataError, match="nothing could be packed.*--images"):
        prepare_pairs(sub / "p.csv", tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


def test_source_fold_ids_decode_the_manifest(tmp_path):
    import json


    from facedistill.data.pairs import source_fold_ids

    (tmp_path / "manifest.json").write_text(json.dumps({"pair_folds": [[6, 3], [7, 2]]}))
    assert source_fold_ids(tmp_path).tolist() == [6, 6, 6, 7, 7]
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "pairs"}))  # packed before folds were stored
    assert source_fold_ids(tmp_path) is None
    assert source_fold_ids(tmp_path / "missing") is None
    (tmp_path / "manifest.json").write_text(json.dumps({"pair_folds": [["x", 3]]}))
    with pytest.raises(DataError, match="pair_folds"):
        source_fold_ids(tmp_path)
