"""Running mean of unit embeddings, subtracted before distillation (the collapse-shortcut fix).

Why: a real teacher's embeddings share a common direction (SFace: mean cosine between different
people about 0.11). Terms that pull the student towards the teacher's directions (cosine, ILED) or
towards its positive pairwise similarities (RPSD) are then partly satisfied by pointing every
student embedding the same way; centring the teacher removes that direction from the targets, so
the student is trained to reproduce the teacher's identity-specific part only (docs/method.md,
"The collapse shortcut").

The mean lives in registered buffers (``mean``, ``updates``, ``frozen``): checkpoints carry it, so a
resumed run continues with the same mean, and no trainer change is needed (it updates itself from
the batches it sees in training mode). :meth:`RunningMean.set_mean` fixes it instead (e.g. to the
mean of the whole teacher cache).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from facedistill.losses._util import unit
from facedistill.losses.memory_bank import GatherFn


class RunningMean(nn.Module):
    """Mean of the unit rows of the batches seen in training, as an exponential moving average.

    Update ``n`` (0-based) blends the batch mean in with weight ``max(1 - momentum, 1 / (n + 1))``:
    a plain cumulative mean over the first ``1 / (1 - momentum)`` batches (no cold-start bias, the
    first batch alone sets it), then an EMA that follows a slowly drifting mean (the student's).
    Under DDP ``gather_fn`` (an all-gather) makes every rank update with the global batch.
    """

    mean: Tensor
    updates: Tensor
    frozen: Tensor

    def __init__(self, dim: int, momentum: float = 0.99, gather_fn: Optional[GatherFn] = None) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"RunningMean momentum must be in [0, 1), got {momentum}")
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.gather_fn = gather_fn
        self.register_buffer("mean", torch.zeros(self.dim, dtype=torch.float32))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Blend in the mean of the unit rows of ``x`` (no-op when frozen)."""
        if bool(self.frozen):
            return
        x = unit(x.detach())
        if self.gather_fn is not None:
            x = self.gather_fn(x)
        if x.shape[0] == 0:
            return
        n = int(self.updates)
        alpha = max(1.0 - self.momentum, 1.0 / (n + 1))
        self.mean.mul_(1.0 - alpha).add_(x.mean(dim=0).to(self.mean), alpha=alpha)
        self.updates.add_(1)

    @torch.no_grad()
    def set_mean(self, mean: Tensor) -> None:
        """Fix the mean (e.g. of the unit embeddings of the whole teacher cache); updates stop."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        if mean.shape != (self.dim,):
            raise ValueError(f"set_mean: expected a ({self.dim},) mean, got {tuple(mean.shape)}")
        if not torch.isfinite(mean).all():
            raise ValueError("set_mean: the mean has NaN or infinite values")
        self.mean.copy_(mean.to(self.mean.device))
        self.frozen.fill_(True)
        self.updates.fill_(max(int(self.updates), 1))

    def center(self, x: Tensor) -> Tensor:
        """``unit(x) - mean`` in fp32 (the terms re-normalise); gradients flow through ``x`` only."""
        return unit(x) - self.mean.detach().to(x.device)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, momentum={self.momentum}"


def mean_of_unit_rows(embeddings: Tensor) -> Tensor:
    """Mean of the L2-normalised rows: the fixed centre for :meth:`RunningMean.set_mean`.

    Accepts (N, D) or a teacher cache's (N, 2, D) (both flips); computed in float64 chunks.
    """
    x = torch.as_tensor(embeddings)
    x = x.reshape(-1, x.shape[-1])
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for lo in range(0, x.shape[0], 65536):
        total += unit(x[lo:lo + 65536].float()).double().sum(dim=0)
    return (total / max(x.shape[0], 1)).float()
