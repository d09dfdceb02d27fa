"""The distillation part of the training objective, selected by ``loss.distill.type``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from facedistill.losses.baselines import cosine_loss, l2_loss, rkd_loss, sp_loss
from facedistill.losses.config import DistillConfig
from facedistill.losses.iled import ILEDLoss
from facedistill.losses.memory_bank import GatherFn
from facedistill.losses.rpsd import RPSDLoss

STATE_VERSION = 1


class DistillationObjective(nn.Module):
    """``forward(student_emb, teacher_emb, labels, step) -> dict[str, Tensor]``.

    ``student_emb`` is already projected to ``teacher_dim``; ``teacher_emb`` is the frozen
    teacher's raw embedding (it never receives gradients). The returned dict holds

    * ``"distill"``: the weighted distillation loss to add to the margin loss —
      unified: lambda_iled * iled + lambda_rpsd * rpsd; iled: lambda_iled * iled;
      rpsd: lambda_rpsd * rpsd; l2/cosine/rkd/sp: weight * term; none: 0;
    * each raw (unweighted) term under its own name: ``iled``, ``rpsd``, ``l2``, ``cosine``,
      ``rkd`` (+ ``rkd_distance``, ``rkd_angle``, unweighted by 25/50), ``sp``;
    * detached 0-d stats: ILED ``iled_d_mean``, ``iled_hard_d_mean``, ``iled_rho``; RPSD
      ``rpsd_active`` (0/1), ``rpsd_pairs`` / ``rpsd_positives`` (selected pairs / positives per
      row), ``bank_fill`` (fraction), ``bank_entries``.

    The memory bank lives in registered buffers (``rpsd.bank.*``) so ``state_dict`` /
    ``load_state_dict`` restore it exactly; ``get_extra_state`` records the type and bank shape.
    """

    def __init__(self, cfg: DistillConfig, teacher_dim: int, gather_fn: Optional[GatherFn] = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.teacher_dim = int(teacher_dim)
        kind = cfg.type
        self.iled: Optional[ILEDLoss] = ILEDLoss(cfg.iled) if kind in ("iled", "unified") else None
        self.rpsd: Optional[RPSDLoss] = (
            RPSDLoss(cfg.rpsd, self.teacher_dim, gather_fn=gather_fn) if kind in ("rpsd", "unified") else None
        )

    def forward(self, student_emb: Tensor, teacher_emb: Tensor, labels: Tensor,
                step: int = 0) -> dict[str, Tensor]:
        if student_emb.ndim != 2 or student_emb.shape[1] != self.teacher_dim:
            raise ValueError(
                f"DistillationObjective: student embedding must be (B, {self.teacher_dim}) (projected "
                f"to the teacher's dim), got {tuple(student_emb.shape)}"
            )
        cfg = self.cfg
        kind = cfg.type
        teacher_emb = teacher_emb.detach()
        out: dict[str, Tensor] = {}
        if kind == "none":
            out["distill"] = torch.zeros((), dtype=torch.float32, device=student_emb.device)
            return out

        if kind in ("iled", "rpsd", "unified"):
            total = torch.zeros((), dtype=torch.float32, device=student_emb.device)
            if self.iled is not None:
                term, stats = self.iled(student_emb, teacher_emb, step)
                out["iled"] = term
                out.update(stats)
                total = total + cfg.lambda_iled * term
            if self.rpsd is not None:
                term, stats = self.rpsd(student_emb, teacher_emb, labels)
                out["rpsd"] = term
                out.update(stats)
                total = total + cfg.lambda_rpsd * term
            out["distill"] = total
            return out

        if kind == "l2":
            term = l2_loss(student_emb, teacher_emb)
        elif kind == "cosine":
            term = cosine_loss(student_emb, teacher_emb)
        elif kind == "rkd":
            term, dist, ang = rkd_loss(student_emb, teacher_emb, cfg.rkd.distance_weight, cfg.rkd.angle_weight)
            out["rkd_distance"] = dist
            out["rkd_angle"] = ang
        elif kind == "sp":
            term = sp_loss(student_emb, teacher_emb)
        else:  # pragma: no cover - rejected by validate()
            raise ValueError(f"unknown distillation type {kind!r}")
        out[kind] = term
        out["distill"] = cfg.weight * term
        return out

    # ------------------------------------------------------------------ checkpoints

    def get_extra_state(self) -> dict:
        bank = self.rpsd.bank if self.rpsd is not None else None
        return {
            "version": STATE_VERSION,
            "type": self.cfg.type,
            "teacher_dim": self.teacher_dim,
            "bank_size": bank.size if bank is not None else 0,
        }

    def set_extra_state(self, state: dict) -> None:
        # Informational: shape mismatches of the bank itself raise CheckpointError in MemoryBank.
        self._loaded_extra_state = dict(state) if isinstance(state, dict) else {}
