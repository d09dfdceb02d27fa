"""Fixtures for the export tests: a tiny face-backbone stand-in (fast to export) and a small pair set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export_helpers import BrokenFaceNet, TinyFaceNet, loaded_backbone, settle_bn
from facedistill.models.checkpoints import LoadedBackbone


@pytest.fixture(scope="session")
def faces() -> np.ndarray:
    from facedistill.data.synthetic import render_identities

    images, _ = render_identities(range(900, 916), 3, seed=5)
    return images


@pytest.fixture(scope="session")
def tiny(faces) -> LoadedBackbone:
    torch.manual_seed(0)
    return loaded_backbone(settle_bn(TinyFaceNet(), faces))


@pytest.fixture(scope="session")
def broken(faces) -> LoadedBackbone:
    torch.manual_seed(0)
    return loaded_backbone(settle_bn(BrokenFaceNet(), faces), arch="brokenfacenet")


@pytest.fixture(scope="session")
def pair_set(tmp_path_factory) -> Path:
    """A prepared synthetic pair set: 20 identities x 4 images, 100 pairs in 10 folds."""
    from facedistill.data.packed import PackedWriter
    from facedistill.data.synthetic import make_pairs, render_identities

    root = tmp_path_factory.mktemp("pairs") / "val"
    images, labels = render_identities(range(700, 720), 4, seed=2)
    with PackedWriter(root, kind="pairs", source="test") as w:
        w.add_batch(images, labels - 700)
        w.set_pairs(make_pairs(20, 4, 100, seed=2))
    return root


@pytest.fixture(scope="session")
def train_set(tmp_path_factory) -> Path:
    """A prepared train-kind set (calibration images)."""
    from facedistill.data.packed import PackedWriter
    from facedistill.data.synthetic import render_identities

    root = tmp_path_factory.mktemp("calib") / "train"
    images, labels = render_identities(range(0, 12), 4, seed=1)
    with PackedWriter(root, kind="train", source="test") as w:
        w.add_batch(images, labels)
    return root


@pytest.fixture(scope="session")
def tiny_export(tiny, tmp_path_factory):
    """One fp32 export of the tiny model, shared by the tests that only read it."""
    from facedistill.export import export_model

    out = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    report = export_model(None, out, loaded=tiny, parity_images=8, latency=False)
    return out, report
