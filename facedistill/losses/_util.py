"""Small helpers shared by the distillation losses."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast so the losses run in fp32 even inside an AMP region."""
    dev = device.type if device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    try:
        ctx = torch.autocast(device_type=dev, enabled=False)
    except RuntimeError:  # pragma: no cover - backend without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def unit(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Row-wise L2 normalisation in fp32."""
    return F.normalize(x.float(), p=2, dim=1, eps=eps)


def check_pair(student: Tensor, teacher: Tensor, who: str) -> None:
    if student.ndim != 2 or teacher.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"{who}: student and teacher embeddings must both be (B, D) with the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)} (project the student to the "
            "teacher's dimension first)"
        )
