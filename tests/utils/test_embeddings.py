"""The joint embedding rule: unit norm, and its cosine is the weighted mean of the models' cosines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facedistill.utils.embeddings import block_scales, joint_embedding


def test_joint_cosine_is_the_weighted_mean_of_the_cosines():
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(6, d)).astype(np.float32) * s for d, s in ((128, 3.0), (64, 0.2), (32, 1.0))]
    b = [x + rng.normal(size=x.shape).astype(np.float32) for x in a]
    w = [2.0, 1.0, 0.5]
    ja, jb = joint_embedding(a, w), joint_embedding(b, w)
    assert ja.shape == (6, 224) and ja.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ja, axis=1), 1.0, atol=1e-6)
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in a + b]
    cos = [np.sum(unit[i] * unit[i + 3], axis=1) for i in range(3)]
    np.testing.assert_allclose(np.sum(ja * jb, axis=1), (2 * cos[0] + cos[1] + 0.5 * cos[2]) / 3.5, atol=1e-6)
    np.testing.assert_allclose(block_scales(w) ** 2, np.asarray(w) / 3.5)


def test_torch_and_numpy_agree_and_leading_axes_are_kept():
    rng = np.random.default_rng(1)
    a = [rng.normal(size=(4, 3, d)).astype(np.float32) for d in (8, 16)]
    out = joint_embedding([torch.from_numpy(x) for x in a], [1, 3])
    assert isinstance(out, torch.Tensor) and out.shape == (4, 3, 24)
    np.testing.assert_allclose(out.numpy(), joint_embedding(a, [1, 3]), atol=1e-6)


def test_weights_are_checked():
    x = [np.ones((1, 2), np.float32)] * 2
    for bad in ([1.0], [0, 0], [-1, 2], [1, float("nan")]):
        with pytest.raises(ValueError):
            joint_embedding(x, bad)


def test_evaluate_ensemble_scores_the_same_rule():
    from facedistill.evaluation import evaluate

    assert evaluate.joint_embedding is joint_embedding
