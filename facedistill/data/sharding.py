"""Cutting one epoch's order of samples into per-rank batches (shared by every training sampler).

Each global step takes ``batch_size * world_size`` consecutive samples of the epoch's order; rank r
gets the r-th slice of them. A partial last step is dropped, so every rank runs the same number of
steps, and ``start_batch`` skips the steps a resumed run has already done in this epoch.
"""

from __future__ import annotations

from typing import Any, Iterator


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Full global steps in an epoch of ``n`` samples."""
    return n // (batch_size * world_size)


def shard_batches(order: Any, batch_size: int, start_batch: int = 0, rank: int = 0,
                  world_size: int = 1) -> Iterator[list[int]]:
    """This rank's batches (lists of sample indices) of an epoch whose samples come in ``order``
    (a 1-d numpy array or torch tensor), from step ``start_batch`` on."""
    per_step = batch_size * world_size
    for b in range(start_batch, batches_per_epoch(len(order), batch_size, world_size)):
        lo = b * per_step + rank * batch_size
        yield order[lo: lo + batch_size].tolist()
