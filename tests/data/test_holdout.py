"""`prepare split` / `split_holdout`: identity-disjoint train set + LFW-style dev pairs from one packed set."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facedistill.cli.prepare import prepare_app
from facedistill.data.holdout import plan_holdout, split_holdout
from facedistill.data.packed import PackedDataset, PackedWriter
from facedistill.errors import DataError
from facedistill.evaluation.protocol import verification_metrics

# identity sizes of the synthetic source: 30 x 1, 40 x 2, 25 x 3, 10 x 4, 5 x 6 images (110 identities)
SIZES = [1] * 30 + [2] * 40 + [3] * 25 + [4] * 10 + [6] * 5


def _pack(root: Path, sizes=SIZES, unlabeled: bool = False, seed: int = 0) -> Path:
    """A labelled packed train set; every image carries its identity and index so copies can be checked."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(sum(sizes))                     # identities interleaved, as a folder scan is not
    labels = np.repeat(np.arange(len(sizes)), sizes)[order]
    with PackedWriter(root, kind="train", source="synthetic",
                      extra={"border_fraction_per_image": [round(i / 1000, 4) for i in range(len(labels))]}) as w:
        for i, lab in enumerate(labels.tolist()):
            img = np.zeros((112, 112, 3), np.uint8)
            img[0, 0] = (lab % 256, lab // 256, i % 256)
            img[0, 1] = (i // 256, 0, 0)
            w.add(img, -1 if unlabeled else lab, f"id{lab:04d}/{i:05d}.jpg")
            if not unlabeled:
                w.set_identity(lab, f"id{lab:04d}")
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _pack(tmp_path_factory.mktemp("holdout") / "all")


def _split(source: Path, out: Path, **kw):
    kw.setdefault("identities", 40)
    kw.setdefault("folds", 4)
    return split_holdout(source, out / "train", out / "dev", **kw)


def _identity_names(root: Path) -> set[str]:
    return set(json.loads((root / "identities.json").read_text()).values())


def test_split_is_identity_disjoint_and_keeps_every_image(source, tmp_path):
    summary = _split(source, tmp_path, pairs=80, seed=3)
    src, train, dev = PackedDataset(source), PackedDataset(tmp_path / "train"), PackedDataset(tmp_path / "dev")
    src_id = {n: n.split("/")[0] for n in src.names}
    train_ids = {src_id[n] for n in train.names}
    dev_ids = {src_id[n] for n in dev.names}
    assert not train_ids & dev_ids
    assert _identity_names(tmp_path / "train") == train_ids and _identity_names(tmp_path / "dev") == dev_ids
    # every image of an identity that stays is in the train set, once, with its pixels
    assert sorted(train.names) == sorted(n for n in src.names if src_id[n] in train_ids)
    assert len(train) + summary["holdout_images"] + summary["holdout_images_unused"] == len(src)
    name_to_src = {n: i for i, n in enumerate(src.names)}
    for k in (0, len(train) // 2, len(train) - 1):
        assert np.array_equal(train.image(k), src.image(name_to_src[train.names[k]]))
    # labels renumbered 0..K-1 (a margin head sizes itself from them); identity names follow them
    assert sorted(set(train.labels.tolist())) == list(range(summary["train_identities"]))
    table = json.loads((tmp_path / "train" / "identities.json").read_text())
    assert all(table[str(lab)] == src_id[n] for lab, n in zip(train.labels.tolist(), train.names))
    # the per-image border statistic follows its images
    border = train.manifest["border_fraction_per_image"]
    assert border == [src.manifest["border_fraction_per_image"][name_to_src[n]] for n in train.names]
    # 40 identities held out from training, all with at least 2 images
    held = set(src_id.values()) - train_ids
    assert len(held) == summary["holdout_identities"] == 40
    counts = {i: sum(1 for n in src.names if src_id[n] == i) for i in held}
    assert min(counts.values()) >= 2
    assert summary["train_identities"] + 40 == len(SIZES)
    assert train.manifest["kind"] == "train" and dev.manifest["kind"] == "pairs"


def test_pairs_come_in_balanced_identity_disjoint_folds(source, tmp_path):
    summary = _split(source, tmp_path, pairs=80, seed=3)
    dev = PackedDataset(tmp_path / "dev")
    pairs, labels = dev.pairs, dev.labels
    assert summary["pairs"] == len(pairs) == 80 and summary["same_pairs"] == summary["different_pairs"] == 40
    assert dev.manifest["pair_folds"] == [[f, 20] for f in range(1, 5)]
    fold_people = []
    for f in range(4):
        block = pairs[20 * f:20 * (f + 1)]
        assert block[:10, 2].tolist() == [1] * 10 and block[10:, 2].tolist() == [0] * 10
        fold_people.append(set(labels[block[:, :2]].reshape(-1).tolist()))
    for a in range(4):
        for b in range(a + 1, 4):
            assert not fold_people[a] & fold_people[b], "a person appears in two folds"
    same = pairs[:, 2] == 1
    assert (labels[pairs[same, 0]] == labels[pairs[same, 1]]).all()
    assert (labels[pairs[~same, 0]] != labels[pairs[~same, 1]]).all()
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert len({(min(a, b), max(a, b)) for a, b, _ in pairs.tolist()}) == len(pairs), "a pair is repeated"
    # evaluate's default folds (auto -> 4 contiguous) are exactly these folds, each half same
    m = verification_metrics(np.random.default_rng(0).random(len(pairs)), same, nfolds=4)
    assert m.fold_scheme == "contiguous" and m.fold_positives == [10] * 4


def test_split_is_deterministic_and_the_seed_matters(source, tmp_path):
    _split(source, tmp_path / "a", seed=7)
    _split(source, tmp_path / "b", seed=7)
    _split(source, tmp_path / "c", seed=8)

    def content(root: Path):
        ds = PackedDataset(root / "dev")
        return ds.pairs.tolist(), ds.names, PackedDataset(root / "train").names

    assert content(tmp_path / "a") == content(tmp_path / "b")
    assert content(tmp_path / "a") != content(tmp_path / "c")
    assert (json.loads((tmp_path / "a" / "dev" / "manifest.json").read_text())["pairs_sha256"]
            == json.loads((tmp_path / "b" / "dev" / "manifest.json").read_text())["pairs_sha256"])


def test_default_pairs_take_what_the_balanced_folds_give():
    labels = np.repeat(np.arange(len(SIZES)), SIZES)
    names = [f"id{i}" for i in range(len(SIZES))]
    plan = plan_holdout(labels, names, identities=80, folds=4, seed=0)   # all 80 with 2+ images
    total = 40 * 1 + 25 * 3 + 10 * 6 + 5 * 15
    assert plan["same_available"] == total == 250
    # greedy largest-first packing: fold totals differ by at most one identity's pairs (15)
    per_fold = [sum(math.comb(int((labels == lab).sum()), 2) for lab in [names.index(n) for n in fold])
                for fold in plan["fold_identities"]]
    assert sum(per_fold) == total and max(per_fold) - min(per_fold) <= 15
    assert plan["same_per_fold"] == min(per_fold)
    assert len(plan["pairs"]) == 2 * 4 * min(per_fold)
    assert sorted(n for fold in plan["fold_identities"] for n in fold) == sorted(
        names[i] for i in range(len(SIZES)) if SIZES[i] >= 2)


def test_min_images_restricts_the_held_out_identities():
    labels = np.repeat(np.arange(len(SIZES)), SIZES)
    names = [f"id{i}" for i in range(len(SIZES))]
    plan = plan_holdout(labels, names, identities=40, folds=4, min_images=3, seed=1)
    assert all(SIZES[lab] >= 3 for lab in plan["held_labels"].tolist())
    with pytest.raises(DataError, match="more identities than it has with at least 3 images \\(40 of 110\\)"):
        plan_holdout(labels, names, identities=41, folds=4, min_images=3)


def run(*args):
    res = CliRunner().invoke(prepare_app, [str(a) for a in args])
    res.text = " ".join(res.output.split())
    return res


def test_cli_split_prints_both_sets_and_json(source, tmp_path):
    res = run("split", source, "--train-out", tmp_path / "train", "--holdout-out", tmp_path / "dev",
              "--holdout-identities", 40, "--holdout-pairs", 80, "--folds", 4, "--json", tmp_path / "s.json", "-q")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["pairs"] == 80 and summary["holdout_identities"] == 40 and summary["folds"] == 4
    cells = re.sub(r"[│┃\s]+", " ", res.output)
    assert "held-out pair set" in cells and "pairs per fold 20 " in cells and "identities 40 " in cells
    assert PackedDataset(tmp_path / "dev").pairs.shape == (80, 3)


@pytest.mark.parametrize("args, message", [
    (["--holdout-identities", 500], "--holdout-identities 500 asks for more identities than it has with at least 2 "
                                    "images (80 of 110). Pass --holdout-identities 80 or less"),
    (["--holdout-identities", 40, "--holdout-pairs", 70], "--holdout-pairs 70: must be a positive multiple of 8"),
    (["--holdout-identities", 40, "--holdout-pairs", 4000], "Hold out more identities"),
    (["--holdout-identities", 40, "--folds", 1], "--folds 1: cross-validation needs at least 2 folds"),
    (["--holdout-identities", 5], "each of the 4 folds needs at least 2 identities"),
    (["--holdout-identities", 40, "--min-images", 1], "--min-images 1: a same pair needs"),
])
def test_cli_split_refuses_bad_numbers_saying_what_to_do(source, tmp_path, args, message):
    folds = [] if "--folds" in args else ["--folds", 4]
    res = run("split", source, "--train-out", tmp_path / "train", "--holdout-out", tmp_path / "dev", *folds, *args)
    assert res.exit_code == 2, res.output
    assert message in res.text
    assert not (tmp_path / "train").exists() and not (tmp_path / "dev").exists()


def test_cli_split_names_the_file_when_too_many_pairs_are_asked(source, tmp_path):
    res = run("split", source, "--train-out", tmp_path / "t", "--holdout-out", tmp_path / "d", "--folds", 4,
              "--holdout-identities", 40, "--holdout-pairs", 4000)
    assert res.exit_code == 2
    assert str(source) in res.text and "--holdout-identities" in res.text and "--holdout-pairs" in res.text


def test_cli_split_refuses_unusable_sources(tmp_path):
    unlabeled = _pack(tmp_path / "unlabeled", unlabeled=True)
    res = run("split", unlabeled, "--train-out", tmp_path / "t", "--holdout-out", tmp_path / "d",
              "--holdout-identities", 40)
    assert res.exit_code == 2 and "no image has an identity label" in res.text
    with PackedWriter(tmp_path / "pairs", kind="pairs") as w:
        w.add(np.zeros((112, 112, 3), np.uint8), 0)
        w.add(np.zeros((112, 112, 3), np.uint8), 1)
        w.set_pairs(np.array([[0, 1, 0]]))
    res = run("split", tmp_path / "pairs", "--train-out", tmp_path / "t", "--holdout-out", tmp_path / "d",
              "--holdout-identities", 40)
    assert res.exit_code == 2 and "split a packed train set" in res.text
    res = run("split", tmp_path / "missing", "--train-out", tmp_path / "t", "--holdout-out", tmp_path / "d",
              "--holdout-identities", 40)
    assert res.exit_code == 2 and "no such dataset folder" in res.text
    res = run("split", unlabeled, "--train-out", tmp_path / "same", "--holdout-out", tmp_path / "same",
              "--holdout-identities", 40)
    assert res.exit_code == 2 and "give each output its own folder" in res.text
    res = run("split", unlabeled, "--train-out", unlabeled / "train", "--holdout-out", tmp_path / "d",
              "--holdout-identities", 40)
    assert res.exit_code == 2 and "inside the source set" in res.text


def test_celeba_small_gives_3000_same_and_3000_different_pairs(shared_data, tmp_path):
    """The shipped CelebA dev set: 1,300 of the 2,760 identities with 2+ images; 1,000 give too few same pairs."""
    from facedistill.data.prepare import prepare_folder

    celeba = shared_data / "celeba-small"
    if not celeba.is_dir():
        pytest.skip(f"{celeba} not found")
    prepare_folder(celeba, tmp_path / "all", align="none", workers=2)   # the pixels do not matter here
    with pytest.raises(DataError, match="Hold out more identities"):
        split_holdout(tmp_path / "all", tmp_path / "t", tmp_path / "d", identities=1000, pairs=6000)
    s = split_holdout(tmp_path / "all", tmp_path / "train", tmp_path / "dev", identities=1300, pairs=6000, seed=0)
    assert s["eligible_identities"] == 2760
    assert (s["pairs"], s["same_pairs"], s["different_pairs"], s["pairs_per_fold"]) == (6000, 3000, 3000, 600)
    assert s["train_identities"] + s["holdout_identities"] == 5262
    assert s["train_images"] + s["holdout_images"] + s["holdout_images_unused"] == 9682
    assert not _identity_names(tmp_path / "train") & _identity_names(tmp_path / "dev")
