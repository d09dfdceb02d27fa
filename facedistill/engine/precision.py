"""Mixed precision for CPU training: bf16 autocast for the backbone, fp32 where bf16 is slow or lossy.

On CPUs with AVX512-BF16/AMX, oneDNN runs dense and pointwise convolutions about 5x faster in bf16,
but its bf16 *depthwise* convolution backward is about 4.5x slower than the fp32 one (stride-2,
128 channels, 56x56, batch 64: 266 ms against 58 ms on one Xeon core), and MobileFaceNet is half
depthwise. Keeping the depthwise convolutions in fp32 under autocast is what makes bf16 pay off
(``benchmarks/train_throughput.py``, "bf16" rows; docs/results.md). The losses run in fp32 outside
autocast, as arcface_torch does for its partial FC: relation terms compare cosines that differ in
the third decimal, below bf16's resolution near 1.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Fp32DepthwiseConv2d", "keep_depthwise_fp32"]


class Fp32DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` that leaves autocast: fp32 in, fp32 out, same parameters and names.

    Its output stays fp32, so the BatchNorm and activation after it run in fp32. Handing bf16 on
    instead was 1.05-1.07x faster but about a point less accurate in three side-by-side pairs
    (docs/results.md, "bf16 after the depthwise convolution").
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def keep_depthwise_fp32(module: nn.Module) -> int:
    """Turn every depthwise ``nn.Conv2d`` of ``module`` into :class:`Fp32DepthwiseConv2d`, in place.

    Only the class changes (no new parameters, identical ``state_dict``, identical fp32 output), so
    checkpoints, export and evaluation are unaffected. Returns how many convolutions it changed.
    """
    changed = 0
    for m in module.modules():
        if type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels:
            m.__class__ = Fp32DepthwiseConv2d
            changed += 1
    return changed
