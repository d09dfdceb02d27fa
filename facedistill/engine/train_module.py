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

    def forward(self, x: torch.Tensor, labels: torch.Tensor, teacher_emb: torch.Tensor | None,
                step: int) -> dict[str, torch.Tensor]:
        emb = self.student(x)
        out: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=emb.device)
        if self.head is not None:
            out["margin"] = self.head(emb.float(), labels)
            total = total + self.margin_weight * out["margin"]
        if self.objective is not None and teacher_emb is not None:
            proj = self.projector(emb.float()) if self.projector is not None else emb.float()
            terms = self.objective(proj, teacher_emb.float(), labels, step)
            total = total + terms.pop("distill")
            out.update(terms)
        out["loss"] = total
        return out
