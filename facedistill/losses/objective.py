"""The distillation part of the training objective, selected by ``loss.distill.type``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from facedistill.losses._util import unit
from facedistill.losses.baselines import cosine_loss, l2_loss, rkd_loss, sp_loss
from facedistill.losses.centering import RunningMean
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

    Always (for every type but ``none``): ``student_pair_cos``, the mean cosine between the
    distinct (unit, uncentred) student embeddings of the batch -- a collapse shows as it rising to 1.

    Centring (``center_teacher`` / ``center_student``; cosine, iled, rpsd, unified): running means
    of the unit teacher / student embeddings (:class:`RunningMean`, buffers ``teacher_mean.*`` /
    ``student_mean.*``, updated in training mode before the terms are computed) are subtracted
    before the terms; RPSD also centres its bank anchors. Stat ``teacher_mean_norm``.
    :meth:`set_teacher_mean` fixes the teacher's mean instead (e.g. of the whole teacher cache).

    The memory bank and the running means live in registered buffers (``rpsd.bank.*``,
    ``teacher_mean.*``) so ``state_dict`` / ``load_state_dict`` restore them exactly (exact
    resume); ``get_extra_state`` records the type and bank shape.
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
        # Registered only when on, so checkpoints of runs without centring keep loading.
        self.teacher_mean: Optional[RunningMean] = (
            RunningMean(self.teacher_dim, cfg.center_momentum, gather_fn) if cfg.center_teacher else None
        )
        self.student_mean: Optional[RunningMean] = (
            RunningMean(self.teacher_dim, cfg.center_momentum, gather_fn) if cfg.center_student else None
        )
        if self.rpsd is not None:
            if self.teacher_mean is not None:
                self.rpsd.teacher_center = self.teacher_mean.center
            if self.student_mean is not None:
                self.rpsd.student_center = self.student_mean.center

    def set_teacher_mean(self, mean: Tensor) -> None:
        """Fix the teacher centre (D,), e.g. ``mean_of_unit_rows(teacher_cache)``; needs ``center_teacher``."""
        if self.teacher_mean is None:
            raise ValueError("set_teacher_mean needs loss.distill.center_teacher: true")
        self.teacher_mean.set_mean(mean)

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

        with torch.no_grad():
            su = unit(student_emb.detach())
            b = su.shape[0]
            off = (su @ su.T).sum() - (su * su).sum()
            out["student_pair_cos"] = off / max(b * (b - 1), 1)
        # Centred inputs of cosine / ILED (RPSD centres inside, its bank stores uncentred vectors).
        t_in, s_in = teacher_emb, student_emb
        if self.teacher_mean is not None:
            if self.training:
                self.teacher_mean.update(teacher_emb)
            t_in = self.teacher_mean.center(teacher_emb)
            out["teacher_mean_norm"] = self.teacher_mean.mean.norm().detach()
        if self.student_mean is not None:
            if self.training:
                self.student_mean.update(student_emb)
            s_in = self.student_mean.center(student_emb)

        if kind in ("iled", "rpsd", "unified"):
            total = torch.zeros((), dtype=torch.float32, device=student_emb.device)
            if self.iled is not None:
                term, stats = self.iled(s_in, t_in, step)
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
            term = cosine_loss(s_in, t_in)
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
            "center_teacher": self.teacher_mean is not None,
            "center_student": self.student_mean is not None,
        }

    def set_extra_state(self, state: dict) -> None:
        # Informational: shape mismatches of the bank itself raise CheckpointError in MemoryBank.
        self._loaded_extra_state = dict(state) if isinstance(state, dict) else {}
