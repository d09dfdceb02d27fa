"""Several frozen teachers as one: the joint target of a recipe's ``teachers`` list.

The target is the concatenation of each teacher's L2-normalised embedding scaled by sqrt(w_i / sum w)
(:func:`facedistill.utils.embeddings.joint_embedding`, the rule ``evaluate --ensemble --weights``
scores): unit norm, and its cosine is the weighted mean of the teachers' cosines.

Each teacher keeps its own cache (its raw embeddings under its own fingerprint, exactly as a lone
teacher), so adding a teacher to a recipe reuses the others' caches. ``JointRows`` joins them on
read: ``rows[index, views]`` gathers each teacher's rows from its memory-mapped cache, normalises
and weights them, and never holds more than the batch in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from facedistill.utils.embeddings import joint_embedding


class JointTeacher:
    """Teachers run side by side; ``__call__`` joins their embeddings (the ``teacher.online`` path)."""

    def __init__(self, members: Sequence[Any], weights: Sequence[float]) -> None:
        if len(members) != len(weights) or not members:
            raise ValueError(f"a joint teacher needs one weight per member, got {len(members)} and {len(weights)}")
        self.members = list(members)
        self.weights = [float(w) for w in weights]
        self.dims = [int(m.embedding_size) for m in self.members]
        self.embedding_size = sum(self.dims)
        blob = json.dumps({"members": [m.fingerprint for m in self.members], "weights": self.weights})
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.description = "joint(" + " + ".join(
            m.description + ("" if w == 1 else f"*{w:g}") for m, w in zip(self.members, self.weights)) + ")"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return joint_embedding([m(images).cpu() for m in self.members], self.weights)


class JointRows:
    """Per-teacher caches read as one: ``rows[index, views]`` -> (B, sum D) float32 joint targets.

    ``caches[i]`` is teacher i's cache (a memmap (N, V, D_i), or ``CombinedRows`` over several training
    sources); every cache has the same rows and views, since every teacher embedded the same images.
    """

    def __init__(self, caches: Sequence[Any], weights: Sequence[float]) -> None:
        shapes = {tuple(c.shape[:-1]) for c in caches}
        if len(shapes) != 1:
            raise ValueError(f"teacher caches cover different images or views: {[c.shape for c in caches]}")
        self.caches = list(caches)
        self.weights = [float(w) for w in weights]
        self.shape = (*caches[0].shape[:-1], sum(int(c.shape[-1]) for c in caches))
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        return joint_embedding([np.asarray(c[key], dtype=np.float32) for c in self.caches], self.weights)
