"""Train a ReLU/ReLU6 network through a leaky phase: the negative slope falls to 0 before the run ends.

Why: onnxruntime runs a network whose only activations are Relu/Clip as back-to-back fused int8
convolutions (the activation folds into the QLinearConv's output range), while LeakyReLU becomes a
per-element table lookup and PReLU a float island. A ReLU network trained from scratch, though, can
lose accuracy to its leaky twin on a short budget (dead units early on). ``LeakyAnneal`` swaps every
``nn.ReLU``/``nn.ReLU6`` of a model for :class:`AnnealedReLU`, which behaves as LeakyReLU with slope
``s`` (ReLU6: capped at 6 as well) and as the plain ReLU/ReLU6 once ``s`` is 0; the trainer lowers
``s`` linearly from ``initial_slope`` (PReLU's initial 0.25) to 0 over the last part of the run. The
parameters are those of the ReLU network, so the saved weights load into the registered ReLU/ReLU6
architecture and export with Relu/Clip only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

INITIAL_SLOPE = 0.25  # nn.PReLU's initial slope, the LeakyReLU students' fixed one


class AnnealedReLU(nn.Module):
    """LeakyReLU(x, slope), capped at ``cap`` when given (ReLU6); exactly ReLU/ReLU6 at slope 0."""

    def __init__(self, cap: float | None = None, slope: float = INITIAL_SLOPE) -> None:
        super().__init__()
        self.cap = cap
        self.slope = float(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slope == 0.0:
            return F.relu(x) if self.cap is None else F.hardtanh(x, 0.0, self.cap)
        y = F.leaky_relu(x, self.slope)
        return y if self.cap is None else torch.clamp(y, max=self.cap)

    def extra_repr(self) -> str:
        return f"slope={self.slope}" + (f", cap={self.cap}" if self.cap is not None else "")


def anneal_slope(step: int, total_steps: int, start: float, initial: float = INITIAL_SLOPE) -> float:
    """The slope for training step ``step`` (0-based) of ``total_steps``: ``initial`` until the fraction
    ``start`` of the run, then falling linearly to exactly 0 at the last step (and after it)."""
    if not 0.0 <= start < 1.0:
        raise ValueError(f"the anneal start must be a fraction in [0, 1), got {start}")
    progress = (step + 1) / max(1, total_steps)
    return float(initial * min(1.0, max(0.0, (1.0 - progress) / (1.0 - start))))


class LeakyAnneal:
    """The :class:`AnnealedReLU` modules of one model and the schedule that sets their slope."""

    def __init__(self, modules: list[AnnealedReLU], start: float, initial: float = INITIAL_SLOPE) -> None:
        self.modules = modules
        self.start = float(start)
        self.initial = float(initial)
        self.slope = initial

    @classmethod
    def install(cls, model: nn.Module, start: float, initial: float = INITIAL_SLOPE) -> "LeakyAnneal":
        """Replace every ``nn.ReLU``/``nn.ReLU6`` of ``model`` in place; refuses a model with neither."""
        swapped: list[AnnealedReLU] = []
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, (nn.ReLU, nn.ReLU6)):
                    new = AnnealedReLU(cap=6.0 if isinstance(child, nn.ReLU6) else None, slope=initial)
                    setattr(parent, name, new)
                    swapped.append(new)
        if not swapped:
            raise ValueError("the model has no ReLU/ReLU6 modules to anneal from LeakyReLU; choose a ReLU or "
                             "ReLU6 architecture (e.g. mobilefacenet_s_relu6)")
        return cls(swapped, start, initial)

    def set_step(self, step: int, total_steps: int) -> float:
        """Set every module's slope for training step ``step``; returns it."""
        self.slope = anneal_slope(step, total_steps, self.start, self.initial)
        for m in self.modules:
            m.slope = self.slope
        return self.slope
