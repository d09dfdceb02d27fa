"""IResNet face backbones whose parameter names and numerics match insightface ``arcface_torch``.

Why match exactly: published teachers (glint360k / ms1mv3 ``r50`` / ``r100``) are distributed as
plain ``state_dict`` files saved from ``arcface_torch``; keeping every module name, shape, BN ``eps``
and the layer order identical lets those files load with ``strict=True`` and produce the same
embeddings, bit for bit in fp32, without a conversion step.

Layout (input ``N x 3 x 112 x 112`` normalised as ``(x - 127.5) / 127.5``)::

    conv1 -> bn1 -> prelu -> layer1..layer4 (stride 2 each, 112 -> 7)
          -> bn2 -> flatten -> dropout -> fc (512*7*7 -> num_features) -> features (BatchNorm1d)

The output is the raw (un-normalised) embedding, as in ``arcface_torch``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["IBasicBlock", "IResNet", "iresnet18", "iresnet34", "iresnet50", "iresnet100"]

# BatchNorm settings of arcface_torch: eps written out as 1e-5, momentum left at PyTorch's 0.1.
_BN_EPS = 1e-5

IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of IResNet: BN-conv-BN-PReLU-conv(stride)-BN (+ shortcut).

    Note the stride sits on ``conv2`` (not ``conv1``) and there is no activation after the
    addition; both differ from torchvision's BasicBlock and both matter for loading weights.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=_BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet backbone (arcface_torch layout). ``fp16`` is accepted for signature compatibility
    with ``arcface_torch.backbones.get_model`` and ignored: this project runs backbones in fp32."""

    fc_scale = 7 * 7

    def __init__(
        self,
        layers: Sequence[int],
        dropout: float = 0.0,
        num_features: int = 512,
        zero_init_residual: bool = False,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"IResNet needs 4 stage depths, got {tuple(layers)}")
        del fp16  # fp32 only, see class docstring
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=_BN_EPS)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512 * IBasicBlock.expansion, eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * IBasicBlock.expansion * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=_BN_EPS)
        # arcface_torch freezes the embedding BN's scale at 1 (only the shift is learnt).
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0.0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * IBasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * IBasicBlock.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * IBasicBlock.expansion, eps=_BN_EPS),
            )
        modules = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * IBasicBlock.expansion
        modules += [IBasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


def _build(name: str, num_features: int, **kwargs) -> IResNet:
    return IResNet(IRESNET_LAYERS[name], num_features=num_features, **kwargs)


def iresnet18(pretrained: bool = False, num_features: int = 512, **kwargs) -> IResNet:
    """IResNet-18, stages (2, 2, 2, 2). ``pretrained`` exists only for call compatibility."""
    _no_pretrained(pretrained)
    return _build("iresnet18", num_features, **kwargs)


def iresnet34(pretrained: bool = False, num_features: int = 512, **kwargs) -> IResNet:
    """IResNet-34, stages (3, 4, 6, 3)."""
    _no_pretrained(pretrained)
    return _build("iresnet34", num_features, **kwargs)


def iresnet50(pretrained: bool = False, num_features: int = 512, **kwargs) -> IResNet:
    """IResNet-50, stages (3, 4, 14, 3); arcface_torch's ``r50``."""
    _no_pretrained(pretrained)
    return _build("iresnet50", num_features, **kwargs)


def iresnet100(pretrained: bool = False, num_features: int = 512, **kwargs) -> IResNet:
    """IResNet-100, stages (3, 13, 30, 3); arcface_torch's ``r100``."""
    _no_pretrained(pretrained)
    return _build("iresnet100", num_features, **kwargs)


def _no_pretrained(pretrained: bool) -> None:
    # No download at run time: weights come from a file via registry.load_state_dict_file.
    if pretrained:
        raise ValueError("pretrained=True is not supported; load a state dict file instead")
