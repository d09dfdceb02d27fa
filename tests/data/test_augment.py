"""Seeded augmentation (data/augment.py): a view is a pure function of (seed, image, view)."""

from __future__ import annotations

import numpy as np
import pytest

from facedistill.data.augment import AugmentConfig, augment_batch, augment_view, draw_params
from facedistill.data.synthetic import render_identities
from facedistill.errors import RecipeError

ON = AugmentConfig(enabled=True)
EVERYTHING = AugmentConfig(enabled=True, greyscale=0.5, blur=0.5, jpeg=0.5)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    images, _ = render_identities(range(4), 4, seed=0)
    return images  # (16, 112, 112, 3) uint8


def test_same_key_gives_identical_bytes_whatever_the_batch(faces):
    idx = np.arange(len(faces))
    a = augment_batch(faces, EVERYTHING, 7, idx, np.full(len(faces), 3))
    b = augment_batch(faces, EVERYTHING, 7, idx, np.full(len(faces), 3))
    assert a.tobytes() == b.tobytes()
    # one image alone, or in reversed company, is the same view: results never depend on the batch
    for k in (0, 5, 15):
        assert augment_view(faces[k], EVERYTHING, 7, int(idx[k]), 3).tobytes() == a[k].tobytes()
    rev = augment_batch(faces[::-1].copy(), EVERYTHING, 7, idx[::-1], np.full(len(faces), 3))
    assert rev[::-1].tobytes() == a.tobytes()


def test_views_seeds_and_images_differ_and_view_zero_is_plain(faces):
    idx = np.arange(len(faces))
    v0 = augment_batch(faces, ON, 0, idx, np.zeros(len(faces), int))
    assert v0.tobytes() == faces.tobytes()
    v1 = augment_batch(faces, ON, 0, idx, np.ones(len(faces), int))
    v2 = augment_batch(faces, ON, 0, idx, np.full(len(faces), 2))
    other_seed = augment_batch(faces, ON, 1, idx, np.ones(len(faces), int))
    for a, b in ((v1, faces), (v1, v2), (v1, other_seed)):
        assert all(not np.array_equal(a[k], b[k]) for k in range(len(faces)))
    # the same face image under another index is another draw (keys are per image)
    shifted = augment_batch(faces, ON, 0, idx + 100, np.ones(len(faces), int))
    assert not np.array_equal(shifted, v1)


def test_views_stay_face_sized_uint8_and_close_to_the_face(faces):
    out = augment_batch(faces, EVERYTHING, 3, np.arange(len(faces)), np.arange(1, len(faces) + 1))
    assert out.shape == faces.shape and out.dtype == np.uint8
    # within alignment tolerance: the view still correlates strongly with the plain face (grey levels)
    def grey(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64).mean(axis=-1).reshape(len(x), -1)

    a, b = grey(faces), grey(out)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    corr = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    mirrored = draw_params(EVERYTHING, 3, np.arange(len(faces)), np.arange(1, len(faces) + 1)).matrix[:, 0, 0] < 0
    unflipped = corr[~mirrored]
    assert len(unflipped) and unflipped.min() > 0.6, corr


def test_every_step_applies_at_its_probability(faces):
    n = 2000
    p = draw_params(EVERYTHING, 0, np.arange(n), np.ones(n, int))
    mirrored = p.matrix[:, 0, 0] < 0
    for share, want in ((mirrored.mean(), 0.5), (p.grey.mean(), 0.5), ((p.blur_sigma > 0).mean(), 0.5),
                        ((p.jpeg_quality > 0).mean(), 0.5)):
        assert abs(share - want) < 0.05
    q = p.jpeg_quality[p.jpeg_quality > 0]
    assert q.min() >= EVERYTHING.jpeg_quality and q.max() <= 95
    no_flip = draw_params(EVERYTHING, 0, np.arange(n), np.ones(n, int), flip=False)
    assert not (no_flip.matrix[:, 0, 0] < 0).any()
    # a pure mirror (no other geometry, no colour) is exactly the flipped image
    mirror_only = AugmentConfig(enabled=True, scale=0, shift=0, rotate=0, brightness=0, contrast=0, saturation=0,
                                greyscale=0, blur=0, jpeg=0)
    out = augment_batch(faces, mirror_only, 0, np.arange(len(faces)), np.ones(len(faces), int))
    flipped = draw_params(mirror_only, 0, np.arange(len(faces)), np.ones(len(faces), int)).matrix[:, 0, 0] < 0
    assert flipped.any() and (~flipped).any()
    np.testing.assert_array_equal(out, np.where(flipped[:, None, None, None], faces[:, :, ::-1], faces))


def test_bad_values_name_the_key(faces):
    with pytest.raises(RecipeError, match=r"data\.augment\.rotate"):
        AugmentConfig(rotate=90.0).validate()
    with pytest.raises(RecipeError, match=r"data\.augment\.border"):
        AugmentConfig(border="wrap").validate()
    with pytest.raises(RecipeError, match=r"data\.augment\.jpeg_quality"):
        AugmentConfig(jpeg_quality=0).validate()
    with pytest.raises(ValueError, match="uint8 NHWC"):
        augment_batch(faces.astype(np.float32), ON, 0, [0], [1])


def test_key_changes_with_anything_that_changes_pixels():
    base = AugmentConfig(enabled=True)
    assert base.key(True, 4) == AugmentConfig(enabled=False).key(True, 4)  # `enabled` decides nothing in a view
    others = {AugmentConfig(enabled=True, rotate=6.0).key(True, 4), AugmentConfig(enabled=True, seed=1).key(True, 4),
              base.key(False, 4), base.key(True, 8)}
    assert base.key(True, 4) not in others and len(others) == 4
