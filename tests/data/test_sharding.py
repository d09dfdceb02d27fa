"""Per-rank batches of an epoch: every sample of the full steps exactly once, ranks disjoint, resumable."""

import numpy as np
import torch

from facedistill.data.sharding import batches_per_epoch, shard_batches


def test_ranks_split_each_step_and_drop_the_partial_one():
    order = np.random.default_rng(0).permutation(103)
    per_rank = [list(shard_batches(order, 10, rank=r, world_size=2)) for r in range(2)]
    assert batches_per_epoch(103, 10, 2) == 5 and all(len(b) == 5 for b in per_rank)
    seen = [i for r in range(2) for batch in per_rank[r] for i in batch]
    assert sorted(seen) == sorted(order[:100].tolist())  # the last 3 samples (a partial step) are dropped
    assert per_rank[0][1] == order[20:30].tolist() and per_rank[1][1] == order[30:40].tolist()


def test_resume_skips_done_steps_and_tensors_work_like_arrays():
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    full = list(shard_batches(order, 8))
    assert list(shard_batches(order, 8, start_batch=3)) == full[3:]
    assert list(shard_batches(order.numpy(), 8)) == full
