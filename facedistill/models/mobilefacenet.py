"""MobileFaceNet (arcface_torch ``mbf``) with arcface_torch's exact module names.

Why: ``mbf`` is the usual distillation student and arcface_torch publishes ``mbf`` checkpoints;
matching the names lets those load strictly and lets our students be read back by arcface_torch.

Naming quirks kept on purpose (they are what the checkpoints contain):

* every block wraps its modules in an inner ``layers`` Sequential, so keys look like
  ``layers.3.layers.0.layers.1.layers.0.weight`` (stage 3 -> residual 0 -> depthwise conv -> conv);
* the stem is ``layers.0`` / ``layers.1``, stages are ``layers.2`` .. ``layers.7``;
* ``conv_sep`` is the 1x1 conv to 512 channels, ``features`` the GDC head
  (``features.layers.0`` 7x7 depthwise + BN, ``.2`` Linear without bias, ``.3`` BatchNorm1d);
* group counts are hard-coded (64 for the stem depthwise conv, 128/256/512 expansion widths)
  and do *not* follow ``scale``, as in the original.

``activation``: ``prelu`` (the original), ``leaky`` or ``relu6``/``relu``. The ReLU6 variant is the design of
public int8 MobileFaceNets: onnxruntime fuses Conv+Clip/Relu into QLinearConv, so every layer runs
int8 back to back, while PReLU has no int8 kernel and costs extra ops between convs (see
``facedistill/export/quantize.py`` and docs/deploy.md). Parameter names are unchanged; the variant
simply has no PReLU weights.

``leaky``: LeakyReLU with PReLU's initial slope, 0.25, fixed. Trained PReLU students keep their slopes
near that value (LFW student: per-channel 5-95% range 0.23-0.27), so the function class is about the
same, while onnxruntime runs LeakyReLU in int8 (QLinearLeakyRelu) and fuses it into fp32 convs: the
whole graph quantizes back to back with no float islands (docs/deploy.md, int8).

``stem="separable"``: the second stem block is a depthwise 3x3 conv *and* a pointwise 1x1 conv, each
with BN and a plain ReLU (``layers.1.layers.0`` / ``layers.1.layers.1``), instead of one depthwise
ConvBlock. That is foamliu/MobileFaceNet's layout (its ``dw_conv``, a DepthwiseSeparableConv); with
``scale=1``, ReLU6 elsewhere and a 128-d head it is the public ReLU6 model's graph, so that model's
weights import into it (:mod:`facedistill.models.onnx_import`). Everything after the stem keeps
arcface_torch's names.

``early_activation``: the activation of the stem and of every layer whose convolutions run at 56x56 or
28x28 (``layers.0`` .. ``layers.4``); ``activation`` is then used from the 14x14 stage on
(``layers.5`` .. ``layers.7``, ``conv_sep``). Those early layers hold about 70% of the activation
elements of a 112x112 face, so ReLU6 there with LeakyReLU late removes most of int8's per-element
LeakyReLU table lookups while the low-resolution layers, where the identity is decided, keep the
leaky slope (docs/results.md, "int8 speed").
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MobileFaceNet", "get_mbf"]

_Pair = tuple[int, int]


ACTIVATIONS = ("prelu", "leaky", "relu6", "relu")
STEMS = ("depthwise", "separable")
LEAKY_SLOPE = 0.25  # nn.PReLU's initial slope


def _activation(kind: str, channels: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(channels)
    if kind == "leaky":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=False)
    if kind == "relu6":
        return nn.ReLU6(inplace=False)
    if kind == "relu":
        return nn.ReLU(inplace=False)
    raise ValueError(f"MobileFaceNet activation must be one of {', '.join(ACTIVATIONS)}, got {kind!r}")


class ConvBlock(nn.Module):
    """Conv (no bias) + BN + activation (PReLU in the original)."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: _Pair = (1, 1),
        stride: _Pair = (1, 1),
        padding: _Pair = (0, 0),
        groups: int = 1,
        activation: str = "prelu",
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
            _activation(activation, out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv (no bias) + BN, no activation (linear bottleneck)."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: _Pair = (1, 1),
        stride: _Pair = (1, 1),
        padding: _Pair = (0, 0),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` channels, depthwise kxk, 1x1 linear project."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        residual: bool = False,
        kernel: _Pair = (3, 3),
        stride: _Pair = (2, 2),
        padding: _Pair = (1, 1),
        groups: int = 1,
        activation: str = "prelu",
    ) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups, activation=activation),
            ConvBlock(groups, groups, kernel=kernel, stride=stride, padding=padding, groups=groups,
                      activation=activation),
            LinearBlock(groups, out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class SeparableConv(nn.Module):
    """Depthwise kxk ConvBlock then pointwise 1x1 ConvBlock, both with ``activation`` (foamliu's
    ``DepthwiseSeparableConv``, ReLU in the public model)."""

    def __init__(self, c: int, kernel: _Pair = (3, 3), padding: _Pair = (1, 1), activation: str = "relu") -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(c, c, kernel=kernel, stride=(1, 1), padding=padding, groups=c, activation=activation),
            ConvBlock(c, c, activation=activation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Residual(nn.Module):
    """``num_block`` stride-1 DepthWise blocks with identity shortcuts."""

    def __init__(
        self,
        c: int,
        num_block: int,
        groups: int,
        kernel: _Pair = (3, 3),
        stride: _Pair = (1, 1),
        padding: _Pair = (1, 1),
        activation: str = "prelu",
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, True, kernel, stride, padding, groups, activation) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: 7x7 depthwise (no padding) -> flatten -> Linear -> BatchNorm1d."""

    def __init__(self, embedding_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=(7, 7), stride=(1, 1), padding=(0, 0), groups=512),
            nn.Flatten(1),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """arcface_torch MobileFaceNet. ``fp16`` is accepted for signature compatibility and ignored
    (the original autocasts the conv trunk to fp16 on CUDA; this project keeps fp32)."""

    def __init__(
        self,
        fp16: bool = False,
        num_features: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        activation: str = "prelu",
        stem: str = "depthwise",
        stem_activation: str | None = None,
        early_activation: str | None = None,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"MobileFaceNet stem must be one of {', '.join(STEMS)}, got {stem!r}")
        for kind in (activation, early_activation or activation):
            if kind not in ACTIVATIONS:
                raise ValueError(f"MobileFaceNet activation must be one of {', '.join(ACTIVATIONS)}, got {kind!r}")
        if len(blocks) != 4:
            raise ValueError(f"MobileFaceNet needs 4 block counts, got {tuple(blocks)}")
        del fp16
        self.scale = scale
        self.activation = activation
        self.early_activation = early_activation or activation
        act, late = self.early_activation, activation
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1), activation=act))
        if stem == "separable":
            self.layers.append(SeparableConv(c1, activation=stem_activation or act))
        elif blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64,
                                         activation=act))
        else:
            self.layers.append(Residual(c1, num_block=blocks[0], groups=128, activation=act))
        self.layers.extend(
            [
                DepthWise(c1, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128, activation=act),
                Residual(c1, num_block=blocks[1], groups=128, activation=act),
                DepthWise(c1, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256, activation=act),
                Residual(c2, num_block=blocks[2], groups=256, activation=late),
                DepthWise(c2, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512, activation=late),
                Residual(c2, num_block=blocks[3], groups=256, activation=late),
            ]
        )
        self.conv_sep = ConvBlock(c2, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0), activation=late)
        self.features = GDC(num_features)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        x = self.conv_sep(x)
        return self.features(x)


def get_mbf(
    fp16: bool = False,
    num_features: int = 512,
    blocks: Sequence[int] = (1, 4, 6, 2),
    scale: int = 2,
    activation: str = "prelu",
    stem: str = "depthwise",
    stem_activation: str | None = None,
    early_activation: str | None = None,
) -> MobileFaceNet:
    """arcface_torch's ``get_mbf`` (its ``mbf`` config); embedding size ``num_features``.

    ``stem``/``stem_activation``/``early_activation``: see the module docstring (``separable`` is
    foamliu's layout)."""
    return MobileFaceNet(fp16, num_features, blocks, scale=scale, activation=activation, stem=stem,
                         stem_activation=stem_activation, early_activation=early_activation)
