"""Backbones: arcface_torch key/shape compatibility, outputs, checkpoint loading and its errors.

The snapshots in data/ are written by data/make_arcface_keys.py from arcface_torch's layout,
independently of facedistill's model code.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from facedistill.errors import CheckpointError, FaceDistillError
from facedistill.models import (
    count_parameters,
    create_backbone,
    infer_arch,
    list_backbones,
    load_backbone_weights,
    load_state_dict_file,
)

DATA = Path(__file__).parent / "data"
ARCHS = ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet"]
# Known parameter counts of arcface_torch's models at embedding 512 (frozen features.weight included).
PARAMS = {
    "iresnet18": 24_025_600,
    "iresnet34": 34_139_328,
    "iresnet50": 43_590_848,  # the "43.6M" of the arcface_torch model zoo
    "iresnet100": 65_156_160,  # "65.2M"
    "mobilefacenet": 2_059_520,  # mbf: 2.06M (scale 2, 512-d GDC head)
}


_MODELS: dict[str, torch.nn.Module] = {}


@pytest.fixture(scope="module", autouse=True)
def _models_cache():
    """Seed, and share one 512-d instance per architecture within this module (r100 costs ~1 s
    to build); dropped afterwards so ~0.6 GB of weights do not outlive the module.

    One intra-op thread: on a small shared CI box, OpenMP threads spinning against other jobs
    cost ~2x the CPU time of running these small convolutions serially."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _MODELS.clear()


def model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        _MODELS[name] = create_backbone(name).eval()
    return _MODELS[name]


def snapshot(name: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for line in (DATA / f"{name}_keys.txt").read_text(encoding="utf-8").splitlines():
        key, shape = re.fullmatch(r"(\S+) \[([\d, ]*)\]", line).groups()
        out.append((key, tuple(int(d) for d in shape.split(",")) if shape else ()))
    return out


def snapshot_state(name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """A random arcface_torch-layout state dict built from the snapshot, not from our model."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in snapshot(name):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) >= 2:  # conv / linear: fan-in scaled so activations stay O(1)
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * (0.5 / math.sqrt(fan_in))
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def faces(n: int) -> torch.Tensor:
    img = torch.randint(0, 256, (n, 3, 112, 112), generator=torch.Generator().manual_seed(2)).float()
    return (img - 127.5) / 127.5


# --- structure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHS)
def test_state_dict_matches_arcface_torch_snapshot(name: str) -> None:
    ours = [(k, tuple(v.shape)) for k, v in model(name).state_dict().items()]
    assert ours == snapshot(name)


@pytest.mark.parametrize("name", ARCHS)
def test_parameter_count(name: str) -> None:
    assert count_parameters(model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", ["iresnet18", "iresnet100"])
def test_iresnet_features_scale_is_frozen_at_one(name: str) -> None:
    feats = model(name).features
    assert not feats.weight.requires_grad and torch.all(feats.weight == 1)
    assert feats.eps == 1e-5 and feats.momentum == 0.1


def test_list_and_aliases() -> None:
    assert set(ARCHS) <= set(list_backbones()) and list_backbones() == sorted(list_backbones())
    # the original-width MobileFaceNet: arcface_torch's get_mbf(scale=1), same parameter names
    assert infer_arch(create_backbone("mobilefacenet_s", embedding_size=8).state_dict()) == ("mobilefacenet_s", 8)
    for alias, name in [("r18", "iresnet18"), ("mbf", "mobilefacenet"), ("R50", "iresnet50")]:
        built = create_backbone(alias, embedding_size=8)
        assert infer_arch(built.state_dict()) == (name, 8)


@pytest.mark.parametrize("typo, suggestion", [("iresnt50", "iresnet50"), ("mobilefacent", "mobilefacenet")])
def test_unknown_name_suggests_close_match(typo: str, suggestion: str) -> None:
    with pytest.raises(FaceDistillError) as err:
        create_backbone(typo)
    msg = str(err.value)
    assert f"'{suggestion}'" in msg and all(a in msg for a in ARCHS)


# --- forward -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iresnet18", "iresnet34", "iresnet50", "mobilefacenet"])
def test_output_shape(name: str) -> None:
    # Shapes only: arcface_torch's init (conv weights N(0, 0.1)) with identity BN statistics makes
    # untrained IResNets blow up in eval mode (r50 ~1e26, r100 inf/nan); values are tested below.
    with torch.no_grad():
        assert model(name)(faces(2)).shape == (2, 512)
        small = create_backbone(name, embedding_size=128).eval()
        assert small(faces(2)).shape == (2, 128)


def test_iresnet100_forward_and_small_embedding_shapes() -> None:
    net = model("iresnet100")
    with torch.no_grad():
        for m in net.modules():  # tame the init (see above) so the check can include finiteness
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(0.3)
        out = net(faces(1))
    assert out.shape == (1, 512) and torch.isfinite(out).all()
    small = create_backbone("r100", embedding_size=128).state_dict()
    assert small["fc.weight"].shape == (128, 512 * 7 * 7) and small["features.weight"].shape == (128,)


# --- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    src = create_backbone(name).eval()
    src.load_state_dict(snapshot_state(name))  # non-trivial BN statistics
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = create_backbone(name).eval()
    load_backbone_weights(dst, load_state_dict_file(path), source=str(path))
    x = faces(2)
    with torch.no_grad():
        a, b = src(x), dst(x)
    assert torch.isfinite(a).all() and a.abs().max() > 1e-3
    assert torch.equal(a, b)


def test_arcface_torch_plain_state_dict_loads(tmp_path: Path) -> None:
    # arcface_torch writes model.pt with torch.save(backbone.module.state_dict(), path).
    state = snapshot_state("iresnet18")
    torch.save(state, tmp_path / "model.pt")
    loaded = load_state_dict_file(tmp_path / "model.pt")
    assert infer_arch(loaded) == ("iresnet18", 512)
    net = create_backbone("r18")
    load_backbone_weights(net, loaded)
    assert torch.equal(net.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert not net.features.weight.requires_grad


def test_wrapped_and_ddp_checkpoints_load(tmp_path: Path) -> None:
    state = snapshot_state("mobilefacenet")
    ddp = {f"module.{k}": v for k, v in state.items()}
    # arcface_torch's resume file checkpoint_gpu_N.pt, and the common {"state_dict": ...} wrapper.
    torch.save({"epoch": 3, "global_step": 10, "state_dict_backbone": ddp}, tmp_path / "a.pt")
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "b.pt")
    torch.save(ddp, tmp_path / "c.pt")
    for name in ("a.pt", "b.pt", "c.pt"):
        loaded = load_state_dict_file(tmp_path / name)
        assert list(loaded) == list(state)
        load_backbone_weights(create_backbone("mbf"), loaded, source=name)
    # a DDP-prefixed dict passed straight to load_backbone_weights is accepted too
    load_backbone_weights(create_backbone("mbf"), ddp)


def test_mismatch_lists_keys_and_suggests_arch() -> None:
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(model("iresnet18"), snapshot_state("mobilefacenet"), source="teacher.pt")
    msg = str(err.value)
    assert "teacher.pt" in msg
    assert "missing keys (187)" in msg and "conv1.weight" in msg
    assert "unexpected keys (333)" in msg and "layers.0.layers.0.weight" in msg and "more)" in msg
    assert "looks like 'mobilefacenet' with embedding_size=512" in msg


def test_deeper_checkpoint_into_shallower_model() -> None:
    state = {k: torch.zeros(s) for k, s in snapshot("iresnet100")}
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(model("iresnet50"), state)  # fails before copying
    msg = str(err.value)
    assert "unexpected keys" in msg and "missing keys" not in msg
    assert "'iresnet100'" in msg


def test_embedding_size_mismatch_reports_shapes() -> None:
    state = create_backbone("iresnet18", embedding_size=128).state_dict()
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(model("iresnet18"), state)
    msg = str(err.value)
    assert "fc.weight: checkpoint (128, 25088) vs model (512, 25088)" in msg
    assert "embedding_size=128" in msg


@pytest.mark.parametrize("name", ARCHS)
def test_infer_arch_from_snapshot(name: str) -> None:
    state = {k: torch.empty(s) for k, s in snapshot(name)}
    assert infer_arch(state) == (name, 512)
    assert infer_arch({f"module.{k}": v for k, v in state.items()}) == (name, 512)


def test_infer_arch_unknown() -> None:
    assert infer_arch({"foo.weight": torch.zeros(3)}) is None
    r18 = {k: torch.empty(s) for k, s in snapshot("iresnet18") if not k.startswith("layer4.1.")}
    assert infer_arch(r18) is None  # depths (2, 2, 2, 1) are not a registered IResNet


def test_load_state_dict_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file")
    with pytest.raises(CheckpointError, match="Could not read checkpoint"):
        load_state_dict_file(garbage)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict_file(tmp_path / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="non-tensor entries"):
        load_state_dict_file(tmp_path / "meta.pt")


def test_mobilefacenet_relu6_variant() -> None:
    """Same widths and parameter names as the PReLU MobileFaceNet minus the slopes; ReLU6 everywhere
    (what quantizes to fused int8 convs); a bare state dict is recognised as the variant."""
    prelu = create_backbone("mobilefacenet_s", embedding_size=8)
    relu6 = create_backbone("mobilefacenet_s_relu6", embedding_size=8)
    assert not any(isinstance(m, torch.nn.PReLU) for m in relu6.modules())
    assert sum(isinstance(m, torch.nn.ReLU6) for m in relu6.modules()) == \
        sum(isinstance(m, torch.nn.PReLU) for m in prelu.modules())
    slopes = {k for k, v in prelu.state_dict().items() if k not in relu6.state_dict()}
    assert slopes and all(prelu.state_dict()[k].dim() == 1 for k in slopes)
    assert infer_arch(relu6.state_dict()) == ("mobilefacenet_s_relu6", 8)
    assert infer_arch(create_backbone("mobilefacenet_relu6", embedding_size=8).state_dict()) == \
        ("mobilefacenet_relu6", 8)
    relu6.eval()
    with torch.no_grad():
        assert relu6(torch.randn(2, 3, 112, 112)).shape == (2, 8)


def test_mobilefacenet_separable_stem_variant() -> None:
    """foamliu's layout: the stem's second block is depthwise 3x3 + pointwise 1x1 with plain ReLU, ReLU6
    elsewhere; every other key is the arcface_torch one, and a bare state dict is recognised."""
    sep = create_backbone("mobilefacenet_s_relu6_sepstem", embedding_size=8)
    plain = create_backbone("mobilefacenet_s_relu6", embedding_size=8)
    extra = sorted(set(sep.state_dict()) - set(plain.state_dict()))
    assert extra and all(k.startswith("layers.1.layers.") for k in extra)
    assert {k for k in plain.state_dict() if not k.startswith("layers.1.")} <= set(sep.state_dict())
    stem = sep.layers[1].layers
    assert stem[0].layers[0].groups == 64 and stem[1].layers[0].kernel_size == (1, 1)
    assert isinstance(stem[0].layers[2], torch.nn.ReLU) and isinstance(stem[1].layers[2], torch.nn.ReLU)
    assert infer_arch(sep.state_dict()) == ("mobilefacenet_s_relu6_sepstem", 8)
    assert infer_arch(plain.state_dict()) == ("mobilefacenet_s_relu6", 8)


def test_mobilefacenet_leaky_variant() -> None:
    """LeakyReLU(0.25) where the original has PReLU: same parameter names minus the slopes, and the
    same function as a PReLU network whose slopes are all 0.25 (PReLU's initial value)."""
    from facedistill.models.mobilefacenet import LEAKY_SLOPE

    torch.manual_seed(0)
    prelu = create_backbone("mobilefacenet_s", embedding_size=8).eval()
    leaky = create_backbone("mobilefacenet_s_leaky", embedding_size=8).eval()
    acts = [m for m in leaky.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == sum(isinstance(m, torch.nn.PReLU) for m in prelu.modules()) == 33
    assert all(a.negative_slope == LEAKY_SLOPE for a in acts)
    assert set(leaky.state_dict()) == set(create_backbone("mobilefacenet_s_relu6", 8).state_dict())
    missing = leaky.load_state_dict(prelu.state_dict(), strict=False)
    assert not missing.missing_keys and all(k.endswith(".weight") for k in missing.unexpected_keys)
    for m in prelu.modules():
        if isinstance(m, torch.nn.PReLU):
            assert torch.allclose(m.weight, torch.full_like(m.weight, LEAKY_SLOPE))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(leaky(x), prelu(x), rtol=1e-4, atol=1e-4)


def test_mobilefacenet_relu6_early_variant() -> None:
    """ReLU6 in every layer that runs at 56x56 or 28x28 (layers.0-4), LeakyReLU(0.25) from the 14x14
    stage on (layers.5-7, conv_sep): the same weights as the leaky student, so a leaky run's state dict
    loads into it."""
    from facedistill.models.mobilefacenet import get_mbf

    early = create_backbone("mobilefacenet_s_relu6_early", embedding_size=8).eval()
    leaky = create_backbone("mobilefacenet_s_leaky", embedding_size=8).eval()
    assert set(early.state_dict()) == set(leaky.state_dict())
    kinds = {i: {type(m) for m in layer.modules() if isinstance(m, (torch.nn.ReLU6, torch.nn.LeakyReLU))}
             for i, layer in enumerate(early.layers)}
    assert all(kinds[i] == {torch.nn.ReLU6} for i in range(5))
    assert all(kinds[i] == {torch.nn.LeakyReLU} for i in range(5, 8))
    assert isinstance(early.conv_sep.layers[2], torch.nn.LeakyReLU)
    counts = [sum(isinstance(m, t) for m in early.modules()) for t in (torch.nn.ReLU6, torch.nn.LeakyReLU)]
    assert counts == [14, 19]  # 33 activations, as in the original
    with torch.no_grad():
        assert early(torch.randn(2, 3, 112, 112)).shape == (2, 8)
    with pytest.raises(ValueError, match="activation must be one of"):
        get_mbf(early_activation="swish")
