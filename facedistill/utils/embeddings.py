"""The joint embedding of several models: one rule, shared by ``evaluate --ensemble`` and several teachers.

Model i's embedding e_i (any norm) becomes the block ``sqrt(w_i / W) * e_i / |e_i|`` (W = sum of the
weights) and the blocks are concatenated. The joint vector has unit norm, and the cosine of two
joint embeddings is ``sum_i (w_i / W) cos_i``: the weighted mean of the models' cosines. The square
root is what makes a weight a share of the *cosine* (and of the squared distance) rather than of
the vector: weights 2 and 1 give the first model two thirds of every similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

EPS = 1e-12  # floor of a block's norm (an all-zero embedding stays a zero block)


def block_scales(weights: Sequence[float]) -> np.ndarray:
    """``sqrt(w_i / sum w)`` per model (float64); weights must be >= 0, not all 0."""
    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"joint embedding weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return np.sqrt(w / w.sum())


def joint_embedding(embeddings: Sequence[Any], weights: Sequence[float]) -> Any:
    """(..., D_i) embeddings of the same images by several models -> (..., sum D_i) float32 joint
    embeddings (see the module doc). NumPy arrays in, a NumPy array out; torch tensors in, a tensor out."""
    if len(embeddings) != len(weights):
        raise ValueError(f"{len(embeddings)} embeddings but {len(weights)} weights")
    scales = block_scales(weights)
    if all(isinstance(e, np.ndarray) for e in embeddings):
        blocks = []
        for e, s in zip(embeddings, scales):
            e = np.asarray(e, dtype=np.float32)
            norm = np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), EPS)
            blocks.append(e * (np.float32(s) / norm))
        return np.concatenate(blocks, axis=-1).astype(np.float32, copy=False)
    import torch

    blocks = [torch.nn.functional.normalize(e.float(), dim=-1, eps=EPS) * float(s) for e, s in zip(embeddings, scales)]
    return torch.cat(blocks, dim=-1)
