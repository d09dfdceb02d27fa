"""Projectors: `per_teacher` maps the student to each teacher block and joins the blocks like the target."""

from __future__ import annotations

import torch

from facedistill.models.projectors import BlockProjector


def test_block_projector_matches_each_block_like_the_target():
    proj = BlockProjector(12, [16, 8], [3.0, 1.0])
    out = proj(torch.randn(4, 12))
    assert out.shape == (4, 24)
    torch.testing.assert_close(out[:, :16].norm(dim=1), torch.full((4,), 0.75 ** 0.5))
    torch.testing.assert_close(out[:, 16:].norm(dim=1), torch.full((4,), 0.25 ** 0.5))
