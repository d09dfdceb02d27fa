"""Write the arcface_torch state-dict snapshots (``<arch>_keys.txt``) used by test_backbones.py.

Why a separate generator: the snapshots must describe *arcface_torch's* modules, not ours, so
this file spells out the key layout read from insightface ``recognition/arcface_torch/backbones``
(iresnet.py, mobilefacenet.py) by hand, without importing facedistill. If our model drifts, the
snapshot test fails instead of being silently regenerated from the drifted model.

Run from the repository root:  python tests/models/data/make_arcface_keys.py
Line format: ``<state-dict key> [<dim>, <dim>, ...]`` in state-dict order (``[]`` = scalar).
"""

from __future__ import annotations

from pathlib import Path

Entry = tuple[str, tuple[int, ...]]


def _bn(prefix: str, c: int) -> list[Entry]:
    # nn.BatchNorm1d/2d: parameters (weight, bias) first, then buffers.
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def _conv(prefix: str, cin: int, cout: int, k: int, groups: int = 1) -> list[Entry]:
    return [(f"{prefix}.weight", (cout, cin // groups, k, k))]  # every conv is bias=False


def _prelu(prefix: str, c: int) -> list[Entry]:
    return [(f"{prefix}.weight", (c,))]


def iresnet_keys(layers: tuple[int, int, int, int], emb: int = 512) -> list[Entry]:
    # IResNet.__init__ registration order: conv1, bn1, prelu, layer1..4, bn2, dropout, fc, features.
    out = _conv("conv1", 3, 64, 3) + _bn("bn1", 64) + _prelu("prelu", 64)
    inplanes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            cin = inplanes if i == 0 else planes
            # IBasicBlock order: bn1, conv1, bn2, prelu, conv2 (stride), bn3, downsample.
            out += _bn(f"{p}.bn1", cin) + _conv(f"{p}.conv1", cin, planes, 3) + _bn(f"{p}.bn2", planes)
            out += _prelu(f"{p}.prelu", planes) + _conv(f"{p}.conv2", planes, planes, 3) + _bn(f"{p}.bn3", planes)
            if i == 0:  # stride 2 in every stage -> first block always has a downsample
                out += _conv(f"{p}.downsample.0", cin, planes, 1) + _bn(f"{p}.downsample.1", planes)
        inplanes = planes
    out += _bn("bn2", 512)
    out += [("fc.weight", (emb, 512 * 7 * 7)), ("fc.bias", (emb,))]
    out += _bn("features", emb)
    return out


def _convblock(p: str, cin: int, cout: int, k: int, groups: int = 1) -> list[Entry]:
    return _conv(f"{p}.layers.0", cin, cout, k, groups) + _bn(f"{p}.layers.1", cout) + _prelu(f"{p}.layers.2", cout)


def _linearblock(p: str, cin: int, cout: int, k: int, groups: int = 1) -> list[Entry]:
    return _conv(f"{p}.layers.0", cin, cout, k, groups) + _bn(f"{p}.layers.1", cout)


def _depthwise(p: str, cin: int, cout: int, groups: int) -> list[Entry]:
    return (
        _convblock(f"{p}.layers.0", cin, groups, 1)
        + _convblock(f"{p}.layers.1", groups, groups, 3, groups)
        + _linearblock(f"{p}.layers.2", groups, cout, 1)
    )


def _residual(p: str, c: int, n: int, groups: int) -> list[Entry]:
    return [e for i in range(n) for e in _depthwise(f"{p}.layers.{i}", c, c, groups)]


def mbf_keys(emb: int = 512, blocks: tuple[int, int, int, int] = (1, 4, 6, 2), scale: int = 2) -> list[Entry]:
    c1, c2 = 64 * scale, 128 * scale
    out = _convblock("layers.0", 3, c1, 3)
    out += _convblock("layers.1", c1, c1, 3, 64) if blocks[0] == 1 else _residual("layers.1", c1, blocks[0], 128)
    out += _depthwise("layers.2", c1, c1, 128) + _residual("layers.3", c1, blocks[1], 128)
    out += _depthwise("layers.4", c1, c2, 256) + _residual("layers.5", c2, blocks[2], 256)
    out += _depthwise("layers.6", c2, c2, 512) + _residual("layers.7", c2, blocks[3], 256)
    out += _convblock("conv_sep", c2, 512, 1)
    # GDC: layers.0 LinearBlock 7x7 depthwise, layers.1 Flatten (no state), layers.2 Linear no bias, layers.3 BN1d
    out += _linearblock("features.layers.0", 512, 512, 7, 512)
    out += [("features.layers.2.weight", (emb, 512))] + _bn("features.layers.3", emb)
    return out


SNAPSHOTS = {
    "iresnet18": lambda: iresnet_keys((2, 2, 2, 2)),
    "iresnet34": lambda: iresnet_keys((3, 4, 6, 3)),
    "iresnet50": lambda: iresnet_keys((3, 4, 14, 3)),
    "iresnet100": lambda: iresnet_keys((3, 13, 30, 3)),
    "mobilefacenet": mbf_keys,
}


def format_entries(entries: list[Entry]) -> str:
    return "".join(f"{k} [{', '.join(map(str, s))}]\n" for k, s in entries)


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, make in SNAPSHOTS.items():
        (here / f"{name}_keys.txt").write_text(format_entries(make()), encoding="utf-8")


if __name__ == "__main__":
    main()
