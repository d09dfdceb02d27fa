"""FIFO memory bank of unit teacher embeddings and their identity labels (RPSD anchors)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from facedistill.errors import CheckpointError

GatherFn = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


class MemoryBank(nn.Module):
    """A FIFO queue of ``size`` unit teacher embeddings (fp32) with int64 labels.

    Stream invariant: the n-th embedding ever enqueued (0-based) lives in slot ``n % size``
    until it is overwritten; ``ptr`` is the slot of the next write and ``count`` the number of
    filled slots. Because the queue fills from slot 0, the valid slots before the bank is full
    are exactly ``[0, count)``, so :meth:`valid_mask` needs no host synchronisation.

    Everything is stored in registered buffers (``embeddings``, ``labels``, ``ptr``, ``count``):
    the bank moves with ``.to(device)`` and is saved/restored by ``state_dict`` /
    ``load_state_dict``, so resuming from a checkpoint reproduces the same anchors.

    Memory: ``size * (dim * 4 + 8)`` bytes (fp32 embeddings + int64 labels; the two scalar
    counters are negligible), e.g. 8192 x 512 -> 8192 * 2056 = 16,842,752 bytes (16.06 MiB).

    ``gather_fn`` (default identity) is applied to the embeddings and to the labels before they
    are enqueued; under DDP pass an all-gather so that every rank enqueues the global batch in
    the same order and all ranks keep identical banks.
    """

    embeddings: Tensor
    labels: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int, dim: int, gather_fn: Optional[GatherFn] = None) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"MemoryBank size and dim must be >= 1, got size={size}, dim={dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.gather_fn: GatherFn = gather_fn if gather_fn is not None else _identity
        self.register_buffer("embeddings", torch.zeros(self.size, self.dim, dtype=torch.float32))
        self.register_buffer("labels", torch.full((self.size,), -1, dtype=torch.int64))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    # ------------------------------------------------------------------ queries

    @property
    def filled(self) -> int:
        """Number of valid entries (host int; synchronises on GPU)."""
        return int(self.count.item())

    @property
    def is_full(self) -> bool:
        return self.filled >= self.size

    def valid_mask(self) -> Tensor:
        """Bool (size,) mask of filled slots (empty slots are False)."""
        return torch.arange(self.size, device=self.count.device) < self.count

    def memory_bytes(self) -> int:
        """Bytes held by the bank: size * (dim * 4 + 8)."""
        return self.size * (self.dim * 4 + 8)

    def ordered(self) -> tuple[Tensor, Tensor]:
        """(embeddings, labels) of the valid entries, oldest first (for inspection/tests)."""
        n = self.filled
        if n < self.size:
            idx = torch.arange(n, device=self.count.device)
        else:
            idx = (self.ptr + torch.arange(self.size, device=self.ptr.device)) % self.size
        return self.embeddings[idx], self.labels[idx]

    # ------------------------------------------------------------------ update

    @torch.no_grad()
    def enqueue(self, emb: Tensor, labels: Tensor) -> None:
        """Append a batch (after ``gather_fn``); the oldest entries are overwritten first.

        ``emb`` (n, dim) is stored as fp32 and detached; callers pass unit vectors. A batch
        larger than the bank keeps its newest ``size`` rows. Vectorised: one scatter, no loop.
        """
        emb = self.gather_fn(emb.detach())
        labels = self.gather_fn(labels.detach())
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"MemoryBank.enqueue: expected (n, {self.dim}) embeddings, got {tuple(emb.shape)}")
        if labels.shape != (emb.shape[0],):
            raise ValueError(
                f"MemoryBank.enqueue: labels shape {tuple(labels.shape)} does not match "
                f"{emb.shape[0]} embeddings"
            )
        n = emb.shape[0]
        if n == 0:
            return
        skip = max(n - self.size, 0)  # rows that would be overwritten within this same batch
        emb = emb[skip:]
        labels = labels[skip:]
        m = n - skip
        slots = (self.ptr + skip + torch.arange(m, device=self.ptr.device)) % self.size
        self.embeddings[slots] = emb.to(self.embeddings.device, torch.float32)
        self.labels[slots] = labels.to(self.labels.device, torch.int64)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    @torch.no_grad()
    def reset(self) -> None:
        self.embeddings.zero_()
        self.labels.fill_(-1)
        self.ptr.zero_()
        self.count.zero_()

    # ------------------------------------------------------------------ checkpoints

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # noqa: D401 - torch hook
        key = prefix + "embeddings"
        if key in state_dict:
            shape = tuple(state_dict[key].shape)
            if shape != (self.size, self.dim):
                raise CheckpointError(
                    f"memory bank in the checkpoint is {shape[0]} x {shape[1] if len(shape) > 1 else '?'} "
                    f"but the recipe builds {self.size} x {self.dim} "
                    "(loss.distill.rpsd.bank_size / teacher embedding dim differ)"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, bytes={self.memory_bytes()}"
