"""Projectors: how the student's embedding is matched to a teacher's dimension (dropped at export).

``loss.projector: auto | linear`` is one ``nn.Linear`` (built by the trainer). ``per_teacher`` is
:class:`BlockProjector`, for a ``teachers`` list: one linear head per teacher block, each block then
L2-normalised and scaled by sqrt(w_i / sum w) like the joint target, so the student's projection
lives on the same product of spheres as the target and no block can borrow norm from another.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from facedistill.utils.embeddings import joint_embedding


class BlockProjector(nn.Module):
    """(B, in_dim) -> (B, sum dims): one bias-free linear head per teacher, joined like the target."""

    def __init__(self, in_dim: int, dims: Sequence[int], weights: Sequence[float]) -> None:
        super().__init__()
        if len(dims) != len(weights):
            raise ValueError(f"{len(dims)} blocks but {len(weights)} weights")
        self.heads = nn.ModuleList(nn.Linear(in_dim, int(d), bias=False) for d in dims)
        self.weights = [float(w) for w in weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return joint_embedding([head(x) for head in self.heads], self.weights)
