"""The order of the training data, a pure function of (seed, epoch, step): what makes resume exact."""

from __future__ import annotations

import numpy as np
import torch

from facedistill.data.sharding import batches_per_epoch, shard_batches


class EpochBatches(torch.utils.data.Sampler):
    """Batches of epoch ``epoch``: a permutation seeded by (seed, epoch), sharded over ranks.

    Starting at ``start_batch`` skips what a resumed run has already done in this epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    batches_per_epoch = staticmethod(batches_per_epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        yield from shard_batches(perm, self.batch_size, self.start_batch, self.rank, self.world_size)

    def __len__(self) -> int:
        return max(0, batches_per_epoch(self.n, self.batch_size, self.world_size) - self.start_batch)


def flip_mask(seed: int, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
    """Which images of step ``step`` are mirrored: seeded by the step, so a resumed run flips the same."""
    g = torch.Generator().manual_seed(seed * 7_919 + step * 131 + rank)
    return torch.rand(batch_size, generator=g) < 0.5


def view_choice(seed: int, step: int, batch_size: int, views: int, rank: int = 0) -> np.ndarray:
    """Which cached view (0..views-1) each sample of step ``step`` shows: seeded by the step, like the flips."""
    return np.random.default_rng([seed, step, rank, 2]).integers(0, views, size=batch_size, dtype=np.int64)
