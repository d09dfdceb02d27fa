"""Shared fixtures: small real inputs built on the fly (synthetic faces), never downloads."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A tiny synthetic set: 8 train identities x 4 images, 20 val identities x 2 images, 100 pairs."""
    from facedistill.data.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, train_identities=8, images_per_identity=4, val_identities=20,
                    val_images_per_identity=2, val_pairs=100, seed=0)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA} (../shared/data beside the project)")
    return SHARED_DATA
