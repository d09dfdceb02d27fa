"""ILED: instance-level embedding distillation with dynamic hard mining (docs/method.md, sec. 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from facedistill.losses._util import check_pair, full_precision, unit
from facedistill.losses.config import ILEDConfig


def annealed_rho(rho: float, warmup_steps: int, step: int) -> float:
    """Hard fraction at ``step``: linear from 1.0 (step 0) to ``rho`` (step >= warmup_steps)."""
    if warmup_steps <= 0:
        return float(rho)
    frac = min(max(step, 0) / warmup_steps, 1.0)
    return 1.0 + (float(rho) - 1.0) * frac


def hard_count(rho: float, batch: int) -> int:
    """H = ceil(rho * B), clamped to [1, B]; a 1e-9 slack absorbs float error (0.3*10 -> 3)."""
    return min(max(math.ceil(rho * batch - 1e-9), 1), batch)


class ILEDLoss(nn.Module):
    """d_i = 1 - s_i.t_i on unit fp32 embeddings, with hard mining recomputed every step.

    * ``topk``: H = the ceil(rho_eff * B) largest detached d; L = mean(d) + beta * mean(d[H]).
    * ``soft``: w = B * softmax(d.detach() / tau); L = mean(w * d).
    * ``none``: L = mean(d).

    ``forward(s_raw, t_raw, step)`` returns ``(loss, stats)``; stats are detached 0-d tensors:
    ``iled_d_mean``, ``iled_hard_d_mean`` (topk: mean d of H; soft: weighted mean sum(w d)/B;
    none: mean d), ``iled_rho`` (rho_eff; 1.0 unless topk).
    The teacher is detached: only the student receives gradients.
    """

    def __init__(self, cfg: ILEDConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def rho_at(self, step: int) -> float:
        if self.cfg.mining != "topk":
            return 1.0
        return annealed_rho(self.cfg.rho, self.cfg.mining_warmup_steps, step)

    def distances(self, s_raw: Tensor, t_raw: Tensor) -> Tensor:
        """d_i = 1 - s_i . t_i (fp32; gradient to the student only)."""
        return 1.0 - (unit(s_raw) * unit(t_raw.detach())).sum(dim=1)

    def forward(self, s_raw: Tensor, t_raw: Tensor, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        check_pair(s_raw, t_raw, "ILEDLoss")
        cfg = self.cfg
        with full_precision(s_raw.device):
            d = self.distances(s_raw, t_raw)
            b = d.shape[0]
            rho = self.rho_at(step)
            dd = d.detach()
            if cfg.mining == "topk":
                h = hard_count(rho, b)
                hard = torch.topk(dd, h, largest=True, sorted=False).indices
                hard_mean = d[hard].mean()
                loss = d.mean() + cfg.beta * hard_mean
            elif cfg.mining == "soft":
                w = b * torch.softmax(dd / cfg.tau, dim=0)
                loss = (w * d).mean()
                hard_mean = loss
            elif cfg.mining == "none":
                loss = d.mean()
                hard_mean = loss
            else:  # validated by DistillConfig.validate
                raise ValueError(f"unknown ILED mining mode {cfg.mining!r}")
        stats = {
            "iled_d_mean": dd.mean(),
            "iled_hard_d_mean": hard_mean.detach(),
            "iled_rho": torch.tensor(rho, dtype=torch.float32, device=d.device),
        }
        return loss, stats
