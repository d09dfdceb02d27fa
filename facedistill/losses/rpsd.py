"""RPSD: relation-based pairwise similarity distillation with a memory bank (docs/method.md, sec. 3)."""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facedistill.losses._util import check_pair, full_precision, unit
from facedistill.losses.config import RPSDConfig
from facedistill.losses.memory_bank import GatherFn, MemoryBank

_MASKED_LOGIT = -1e9  # finite stand-in for -inf in the KL variant (keeps gradients NaN-free)


class RPSDLoss(nn.Module):
    """Relational distillation of student-vs-teacher similarities to bank and in-batch anchors.

    Relations of row i (unit fp32 embeddings s_i, t_i; teacher detached) to anchor j, laid out as
    one (B, K + B) matrix ``[bank | in-batch]``:

    * bank anchors q_j (unit teacher embeddings): P^s_ij = s_i.q_j, P^t_ij = t_i.q_j, valid slots only;
    * in-batch anchors (j != i): S^s_ij = s_i.s_j, S^t_ij = t_i.t_j.

    Mining per row (detached, vectorised): all positives (same label >= 0, self excluded; a label
    < 0 is "unknown" and never positive), plus the ``hard_negatives`` non-positive anchors with the
    largest teacher relation (one masked top-k over the concatenated row; or, with ``k_bank`` /
    ``k_batch`` set, that many from the bank and from the batch separately), plus
    ``student_negatives`` of the remaining non-positive anchors with the largest STUDENT relation
    (the student's own false positives), plus ``mismatch_k`` of the remaining anchors with the
    largest |R^s - R^t|.

    Centring (``center_teacher``; set by :class:`DistillationObjective`): ``teacher_center`` maps
    unit teacher vectors to ``unit(t) - mean``; it is applied to t and to the bank anchors at
    compute time (the bank stores the uncentred unit vectors, so a drifting mean never leaves stale
    anchors). ``student_center`` does the same for the student's rows.

    * ``smooth_l1``: L = sum_selected smoothL1(R^s - R^t; beta) / #selected (ordered pairs).
    * ``kl``: per row with >= 1 selected anchor, KL(softmax(R^t_i/T) || softmax(R^s_i/T)) where the
      softmax runs over the selected anchors only; L = mean over those rows (no T^2 factor).

    Warm-up: with a bank, RPSD returns a zero loss (``rpsd_active`` = 0) until the bank holds
    ``cfg.effective_warmup_entries()`` entries. ``forward`` computes the loss FIRST and enqueues the
    batch's teacher embeddings AFTER (in training mode only), so a batch is never its own bank anchor.
    """

    def __init__(self, cfg: RPSDConfig, dim: int, gather_fn: Optional[GatherFn] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = int(dim)
        self.bank: Optional[MemoryBank] = (
            MemoryBank(cfg.bank_size, dim, gather_fn=gather_fn) if cfg.use_bank else None
        )
        # Set by DistillationObjective when centring is on (callables on raw vectors -> centred vectors).
        self.teacher_center: Optional[Callable[[Tensor], Tensor]] = None
        self.student_center: Optional[Callable[[Tensor], Tensor]] = None
        per_row = cfg.anchors_per_row()
        if 0 < per_row < self.dim and not cfg.accept_few_anchors:
            warnings.warn(
                f"RPSD mines {per_row} non-positive anchors per row for {self.dim}-d embeddings: with fewer "
                f"anchors than dimensions a student can match every mined relation and still verify poorly "
                f"(docs/method.md, 'k vs D'); raise loss.distill.rpsd.k_bank / hard_negatives to >= {self.dim} "
                "where the bank allows (or set loss.distill.rpsd.accept_few_anchors: true once measured)", UserWarning,
                stacklevel=2)

    # ------------------------------------------------------------------ public API

    def is_active(self) -> bool:
        """True once the bank holds enough entries (always True without a bank)."""
        if self.bank is None:
            return True
        return self.bank.filled >= self.cfg.effective_warmup_entries()

    def forward(self, s_raw: Tensor, t_raw: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss on the current bank, THEN enqueue this batch (training mode only).

        ``t_raw`` is the uncentred teacher embedding (centring, if any, happens inside).
        """
        loss, stats = self.compute(s_raw, t_raw, labels)
        if self.training:
            self.enqueue(t_raw, labels)
        return loss, stats

    @torch.no_grad()
    def enqueue(self, t_raw: Tensor, labels: Tensor) -> None:
        """Push the unit teacher embeddings and labels of a batch into the bank."""
        if self.bank is not None:
            self.bank.enqueue(unit(t_raw.detach()), labels.detach().long())

    def compute(self, s_raw: Tensor, t_raw: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss on the current bank state; does not modify the bank."""
        check_pair(s_raw, t_raw, "RPSDLoss")
        if s_raw.shape[1] != self.dim:
            raise ValueError(f"RPSDLoss: expected embeddings of dim {self.dim}, got {s_raw.shape[1]}")
        if labels.shape != (s_raw.shape[0],):
            raise ValueError(f"RPSDLoss: labels must be ({s_raw.shape[0]},), got {tuple(labels.shape)}")
        dev = s_raw.device
        f32 = dict(dtype=torch.float32, device=dev)
        with full_precision(dev):
            if not self.is_active():
                zero = (s_raw.float() * 0.0).sum()  # keeps the graph connected (DDP-friendly)
                stats = {
                    "rpsd_active": torch.zeros((), **f32),
                    "rpsd_pairs": torch.zeros((), **f32),
                    "rpsd_positives": torch.zeros((), **f32),
                    "rpsd_batch_pairs": torch.zeros((), **f32),
                }
                stats.update(self._bank_stats(dev))
                return zero, stats

            rs, rt, sel, pos = self.relations_and_selection(s_raw, t_raw, labels)
            n_batch = s_raw.shape[0] if self.cfg.use_in_batch else 0
            if self.cfg.variant == "smooth_l1":
                per = F.smooth_l1_loss(rs, rt, reduction="none", beta=self.cfg.smooth_l1_beta)
                n = sel.sum()
                loss = torch.where(sel, per, torch.zeros_like(per)).sum() / n.clamp(min=1)
            elif self.cfg.variant == "kl":
                loss = self._kl(rs, rt, sel)
            else:  # validated by DistillConfig.validate
                raise ValueError(f"unknown RPSD variant {self.cfg.variant!r}")

        b = float(s_raw.shape[0])
        stats = {
            "rpsd_active": torch.ones((), **f32),
            "rpsd_pairs": sel.sum().to(torch.float32) / b,
            "rpsd_positives": pos.sum().to(torch.float32) / b,
            # selected in-batch (student-student) pairs per row: shows the bank crowding them out
            "rpsd_batch_pairs": sel[:, sel.shape[1] - n_batch:].sum().to(torch.float32) / b,
        }
        stats.update(self._bank_stats(dev))
        return loss, stats

    # ------------------------------------------------------------------ pieces (also used by tests)

    def relations(self, s_raw: Tensor, t_raw: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(R^s, R^t, anchor_labels, valid): relations to ``[bank | in-batch]`` anchors.

        R^s carries the student's gradient; R^t is detached. ``valid`` is (B, N) bool: filled bank
        slots and in-batch anchors j != i.
        """
        s = unit(self.student_center(s_raw) if self.student_center is not None else s_raw)
        tc = self.teacher_center
        t = unit(tc(t_raw.detach()) if tc is not None else t_raw.detach())
        b = s.shape[0]
        labels = labels.to(device=s.device, dtype=torch.int64)
        rs_parts, rt_parts, lab_parts, valid_parts = [], [], [], []
        if self.bank is not None:
            # A copy: enqueue() later overwrites the buffer in place, and autograd keeps q for
            # the backward of s @ q.T.
            q = self.bank.embeddings.detach().to(s.device).clone()
            if tc is not None:
                q = unit(tc(q))
            rs_parts.append(s @ q.T)
            rt_parts.append(t @ q.T)
            lab_parts.append(self.bank.labels.to(s.device))
            valid_parts.append(self.bank.valid_mask().to(s.device).unsqueeze(0).expand(b, -1))
        if self.cfg.use_in_batch:
            rs_parts.append(s @ s.T)
            rt_parts.append(t @ t.T)
            lab_parts.append(labels)
            valid_parts.append(~torch.eye(b, dtype=torch.bool, device=s.device))
        rs = torch.cat(rs_parts, dim=1)
        rt = torch.cat(rt_parts, dim=1)
        anchor_labels = torch.cat(lab_parts)
        valid = torch.cat(valid_parts, dim=1)
        return rs, rt, anchor_labels, valid

    @torch.no_grad()
    def select(self, rs: Tensor, rt: Tensor, labels: Tensor, anchor_labels: Tensor,
               valid: Tensor, n_batch: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """(selected, positives): (B, N) bool masks of the mined pairs (no gradient).

        ``n_batch``: how many of the last columns are in-batch anchors (needed for split quotas;
        default: B if ``use_in_batch`` else 0).
        """
        cfg = self.cfg
        labels = labels.to(device=rs.device, dtype=torch.int64)
        pos = valid & (anchor_labels.unsqueeze(0) == labels.unsqueeze(1)) & (labels.unsqueeze(1) >= 0)
        sel = pos.clone()
        n_anchors = rs.shape[1]
        if cfg.split_quotas:
            if n_batch is None:
                n_batch = rs.shape[0] if cfg.use_in_batch else 0
            in_batch = torch.zeros(n_anchors, dtype=torch.bool, device=rs.device)
            in_batch[n_anchors - n_batch:] = True
            for quota, cols in ((cfg.k_bank or 0, ~in_batch), (cfg.k_batch or 0, in_batch)):
                k = min(int(quota), int(cols.sum()))
                if k > 0:
                    sel |= _masked_topk_mask(rt, valid & ~pos & cols.unsqueeze(0), k)
        else:
            k = min(cfg.hard_negatives, n_anchors)
            if k > 0:
                sel |= _masked_topk_mask(rt, valid & ~pos, k)
        k = min(cfg.student_negatives, n_anchors)
        if k > 0:
            sel |= _masked_topk_mask(rs, valid & ~pos & ~sel, k)
        m = min(self.cfg.mismatch_k, n_anchors)
        if m > 0:
            sel |= _masked_topk_mask((rs - rt).abs(), valid & ~sel, m)
        return sel, pos

    def relations_and_selection(self, s_raw: Tensor, t_raw: Tensor,
                                labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(R^s, R^t, selected, positives); the last B columns are the in-batch anchors if used."""
        rs, rt, anchor_labels, valid = self.relations(s_raw, t_raw, labels)
        n_batch = s_raw.shape[0] if self.cfg.use_in_batch else 0
        sel, pos = self.select(rs.detach(), rt, labels, anchor_labels, valid, n_batch)
        return rs, rt, sel, pos

    # ------------------------------------------------------------------ internals

    def _kl(self, rs: Tensor, rt: Tensor, sel: Tensor) -> Tensor:
        temp = self.cfg.kl_temperature
        lt = torch.log_softmax((rt / temp).masked_fill(~sel, _MASKED_LOGIT), dim=1)
        ls = torch.log_softmax((rs / temp).masked_fill(~sel, _MASKED_LOGIT), dim=1)
        terms = lt.exp() * (lt - ls)
        per_row = torch.where(sel, terms, torch.zeros_like(terms)).sum(dim=1)
        rows = sel.any(dim=1)
        return torch.where(rows, per_row, torch.zeros_like(per_row)).sum() / rows.sum().clamp(min=1)

    def _bank_stats(self, dev: torch.device) -> dict[str, Tensor]:
        if self.bank is None:
            z = torch.zeros((), dtype=torch.float32, device=dev)
            return {"bank_fill": z, "bank_entries": z.clone()}
        entries = self.bank.count.to(device=dev, dtype=torch.float32)
        return {"bank_fill": entries / self.bank.size, "bank_entries": entries}


def _masked_topk_mask(scores: Tensor, candidates: Tensor, k: int) -> Tensor:
    """Bool mask of the (up to) k highest ``scores`` per row among ``candidates``."""
    masked = scores.masked_fill(~candidates, float("-inf"))
    vals, idx = torch.topk(masked, k, dim=1, largest=True, sorted=False)
    out = torch.zeros_like(candidates)
    out.scatter_(1, idx, torch.isfinite(vals))
    return out
