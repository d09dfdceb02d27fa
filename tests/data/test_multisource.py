"""Several packed training sources as one dataset: label offsets, -1 kept, weights, filters, caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facedistill.data.multisource import MultiSourceDataset, SourceMixBatches, open_train_set
from facedistill.data.packed import PackedDataset, PackedWriter
from facedistill.errors import DataError


def _pack(path, labels, value0=0, borders=None):
    """A packed train set whose image i is filled with value0 + i (so images are traceable)."""
    extra = {"border_fraction_per_image": borders} if borders is not None else {}
    with PackedWriter(path, kind="train", source="test", extra=extra, shard_size=3) as w:
        for i, lab in enumerate(labels):
            w.add(np.full((112, 112, 3), value0 + i, np.uint8), lab, f"img{i}.png")
    return path


@pytest.fixture()
def three(tmp_path):
    a = _pack(tmp_path / "lfw", [0, 0, 1, 2, 2], 0)                    # 3 identities
    b = _pack(tmp_path / "celeba", [1, 0, 1, 3], 100)                  # 4 identities (label 2 unused)
    c = _pack(tmp_path / "utk", [-1] * 6, 200, borders=[0.01, 0.4, 0.1, 0.35, 0.02, 0.3])
    return a, b, c


def test_labels_are_offset_per_source_and_unknown_stays_unknown(three):
    ds = MultiSourceDataset(list(three))
    assert len(ds) == 15
    assert ds.labels.tolist() == [0, 0, 1, 2, 2, 4, 3, 4, 6, -1, -1, -1, -1, -1, -1]
    assert ds.num_classes == 3 + 4 and ds.label_offsets == [0, 3, 7]
    img, label, idx = ds[7]
    assert img.dtype == torch.uint8 and img.shape == (3, 112, 112) and int(img[0, 0, 0]) == 102
    assert (label, idx) == (4, 7)
    got = ds.images([14, 0, 6, 9])
    assert got.shape == (4, 112, 112, 3) and got[:, 0, 0, 0].tolist() == [205, 0, 101, 200]
    assert ds.names[5] == "celeba/img0.png"
    summary = {s["name"]: s for s in ds.describe()}
    assert summary["utk"]["unlabeled"] == 6 and summary["celeba"]["identities"] == 3
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)
    labels = torch.cat([lab for _, lab, _ in loader])
    assert labels.tolist() == ds.labels.tolist()


def test_max_border_filter_and_fingerprint(three):
    a, b, c = three
    full = MultiSourceDataset([a, b, c])
    tight = MultiSourceDataset([a, b, {"path": str(c), "max_border": 0.2}])
    assert len(tight) == 12 and tight.images([9, 10, 11])[:, 0, 0, 0].tolist() == [200, 202, 204]
    assert full.fingerprint != tight.fingerprint
    weighted = [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 3}, {"path": str(c), "weight": 1}]
    assert full.fingerprint == MultiSourceDataset(weighted).fingerprint  # weights do not change the set
    with pytest.raises(DataError, match="per-image border"):
        MultiSourceDataset([{"path": str(a), "max_border": 0.2}])
    with pytest.raises(DataError, match="no image left"):
        MultiSourceDataset([{"path": str(c), "max_border": 0.0}])


def test_per_source_arrays_are_combined_in_order(three):
    a, b, c = three
    ds = MultiSourceDataset([a, b, {"path": str(c), "max_border": 0.2}])
    cache = ds.combine_per_source(lambda s: s.images()[:, 0, 0, 0].astype(np.float32))  # stands in for a cache
    assert cache.tolist() == ds.images()[:, 0, 0, 0].tolist()
    whole = np.asarray(cache)
    pick = np.array([len(ds) - 1, 0, 3, 3])
    np.testing.assert_array_equal(cache[pick], whole[pick])  # read from the sources, in any order
    assert cache.shape == whole.shape and cache[2] == whole[2]
    views = ds.combine_per_source(lambda s: np.stack([s.images()[:, 0, 0, 0], -s.images()[:, 0, 0, 0].astype(int)],
                                                     axis=1))
    np.testing.assert_array_equal(views[pick, np.array([0, 1, 1, 0])], np.asarray(views)[pick, [0, 1, 1, 0]])
    with pytest.raises(DataError, match="rows"):
        ds.combine_per_source(lambda s: np.zeros(1))


def test_weighted_epochs(three):
    a, b, c = three
    ds = MultiSourceDataset([{"path": str(a), "weight": 2}, {"path": str(b), "weight": 1},
                             {"path": str(c), "weight": 1}])
    sampler = SourceMixBatches(ds, batch_size=4, seed=0, epoch=0, epoch_size=400)
    draws = sampler.draws()
    share = np.bincount(ds.source_of(draws), minlength=3) / len(draws)
    np.testing.assert_allclose(share, [0.5, 0.25, 0.25])
    # every image of a source is used about equally (the stream repeats whole permutations)
    per_image = np.bincount(draws[ds.source_of(draws) == 0], minlength=5)
    assert per_image.max() - per_image.min() <= 1
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100 and all(len(x) == 4 for x in batches)
    again = list(SourceMixBatches(ds, batch_size=4, seed=0, epoch=0, start_batch=60, epoch_size=400))
    assert again == batches[60:]
    assert list(SourceMixBatches(ds, 4, seed=0, epoch=1, epoch_size=400)) != batches
    # default: proportional to size
    plain = MultiSourceDataset([a, b, c])
    np.testing.assert_allclose(plain.weights, [5 / 15, 4 / 15, 6 / 15])
    with pytest.raises(DataError, match="every training source a weight"):
        MultiSourceDataset([{"path": str(a), "weight": 1}, b])


def test_open_train_set_and_bad_specs(three, tmp_path):
    a, b, c = three
    assert isinstance(open_train_set(str(a)), PackedDataset)
    assert isinstance(open_train_set([str(a), str(c)]), MultiSourceDataset)
    only_unlabeled = open_train_set([str(c)])
    assert only_unlabeled.num_classes == 0 and (only_unlabeled.labels == -1).all()
    with pytest.raises(DataError, match="used twice"):
        open_train_set([a, a])
    with pytest.raises(DataError, match="unknown: wieght"):
        open_train_set([{"path": str(a), "wieght": 2}])
    with PackedWriter(tmp_path / "pairs", kind="pairs") as w:
        w.add(np.zeros((112, 112, 3), np.uint8))
        w.add(np.zeros((112, 112, 3), np.uint8))
        w.set_pairs(np.array([[0, 1, 1]]))
    with pytest.raises(DataError, match="must be a train set"):
        open_train_set([a, tmp_path / "pairs"])
