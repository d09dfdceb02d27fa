"""Models and helpers shared by the export tests (imported by conftest.py and the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from facedistill.data.preprocessing import Preprocessing
from facedistill.models.checkpoints import LoadedBackbone


class TinyFaceNet(nn.Module):
    """Stem (conv-BN-PReLU), a residual PReLU block, a GDC-like 1x1 head, Linear + BatchNorm1d:
    the op mix of the real backbones at a fraction of the cost."""

    def __init__(self, embedding_size: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8))
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16))
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16),
                                   nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 4, 1, bias=False), nn.BatchNorm2d(32), nn.PReLU(32))
        self.gdc = nn.Sequential(nn.Conv2d(32, 32, 7, 1, 0, groups=32, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, embedding_size, bias=False)
        self.features = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.stem(x))
        x = x + self.block(x)
        x = self.gdc(self.down(x))
        return self.features(self.fc(torch.flatten(x, 1)))


class FrozenBranch(nn.Module):
    """A layer whose forward branches on tensor *values* in Python: the exporter traces the branch
    taken by its all-zero example image, so the ONNX graph silently drops the gain."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("gain", torch.rand(1, channels, 1, 1, generator=g) * 2 - 0.5)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if float(image.abs().mean()) > 1e-6:  # the bug under test: a value-dependent Python branch
            return x * self.gain
        return x


class BrokenFaceNet(TinyFaceNet):
    def __init__(self) -> None:
        super().__init__()
        self.quirk = FrozenBranch(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.quirk(self.conv2(self.stem(x)), x)
        x = h + self.block(h)
        x = self.gdc(self.down(x))
        return self.features(self.fc(torch.flatten(x, 1)))


def settle_bn(model: nn.Module, images: np.ndarray) -> nn.Module:
    """Give a random model realistic BatchNorm statistics (as training would) from a few images."""
    x = torch.from_numpy(((images.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def loaded_backbone(model: nn.Module, arch: str = "tinyfacenet", embedding_size: int = 32) -> LoadedBackbone:
    return LoadedBackbone(model=model.eval(), arch=arch, embedding_size=embedding_size,
                          source=Path(f"<{arch}>"), preprocessing=Preprocessing(), recipe_hash="abc123")
