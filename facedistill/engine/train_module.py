"""Student + margin head + projector + distillation objective: one module, one forward."""

from __future__ import annotations

import torch
from torch import nn

# Loss terms a forward may return; the metrics log names them ``loss_<term>``.
LOSS_TERMS = ("margin", "iled", "rpsd", "l2", "cosine", "rkd", "rkd_distance", "rkd_angle", "sp")


class TrainModule(nn.Module):
    """Everything that trains, in one module.

    One forward keeps DDP's gradient hooks simple; the projector (student -> teacher dim) serves
    the distillation terms only and is dropped at export.
    """

    def __init__(self, student: nn.Module, head: nn.Module | None, projector: nn.Module | None,
                 objective: nn.Module | None, margin_weight: float) -> None:
        super().__init__()
        self.student = student
        self.head = head
        self.projector = projector
        self.objective = objective
        self.margin_weight = margin_weight
        # Set by the trainer: the student's forward runs under autocast to this dtype (bf16 on CPU,
        # fp16 on CUDA); heads and losses always run in fp32 (engine/precision.py says why).
        self.autocast_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor, labels: torch.Tensor, teacher_emb: torch.Tensor | None,
                step: int) -> dict[str, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            emb = self.student(x)
        emb = emb.float()
        out: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=emb.device)
        if self.head is not None:
            out["margin"] = self.head(emb, labels)
            total = total + self.margin_weight * out["margin"]
        if self.objective is not None and teacher_emb is not None:
            proj = self.projector(emb) if self.projector is not None else emb
            terms = self.objective(proj, teacher_emb.float(), labels, step)
            total = total + terms.pop("distill")
            out.update(terms)
        out["loss"] = total
        return out
