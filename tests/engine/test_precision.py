"""bf16 training on CPU: depthwise convolutions stay fp32, losses run in fp32, a real run trains."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from facedistill.config import load_recipe
from facedistill.engine.precision import Fp32DepthwiseConv2d, keep_depthwise_fp32
from facedistill.engine.train_module import TrainModule
from facedistill.engine.trainer import train
from facedistill.models import create_backbone

from test_trainer import distill_args, make_recipe


def _depthwise(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]


def test_keep_depthwise_fp32_changes_only_the_class():
    torch.manual_seed(0)
    model = create_backbone("mobilefacenet_s_leaky", embedding_size=32).eval()
    x = torch.randn(2, 3, 112, 112)
    before_keys, before_out = list(model.state_dict()), model(x)
    dw = _depthwise(model)
    assert keep_depthwise_fp32(model) == len(dw) > 10
    assert all(type(m) is Fp32DepthwiseConv2d for m in dw)
    assert list(model.state_dict()) == before_keys
    assert torch.equal(model(x), before_out)  # fp32: nothing changes
    assert keep_depthwise_fp32(model) == 0    # idempotent


def test_bf16_autocast_keeps_depthwise_in_fp32():
    torch.manual_seed(0)
    conv_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    conv_pw = nn.Conv2d(8, 8, 1, bias=False)
    net = nn.Sequential(conv_pw, conv_dw)
    keep_depthwise_fp32(net)
    seen = {}
    net[0].register_forward_hook(lambda m, i, o: seen.__setitem__("pointwise", o.dtype))
    net[1].register_forward_hook(lambda m, i, o: seen.__setitem__("depthwise", o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 8, 6, 6))
    assert seen == {"pointwise": torch.bfloat16, "depthwise": torch.float32}
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_train_module_runs_losses_in_fp32_under_bf16():
    """The student runs in bf16, the margin head (and any loss) sees an fp32 embedding."""
    torch.manual_seed(0)
    student = create_backbone("mobilefacenet_s_leaky", embedding_size=16)
    seen = {}

    class Head(nn.Module):
        def forward(self, emb, labels):
            seen["emb"] = emb.dtype
            logits = emb @ torch.ones(16, 3)
            seen["logits"] = logits.dtype
            return nn.functional.cross_entropy(logits, labels)

    module = TrainModule(student, Head(), None, None, 1.0)
    module.autocast_dtype = torch.bfloat16
    out = module(torch.randn(2, 3, 112, 112), torch.tensor([0, 1]), None, 0)
    assert seen == {"emb": torch.float32, "logits": torch.float32}
    assert out["loss"].dtype == torch.float32


@pytest.fixture(scope="module")
def own_teacher(tmp_path_factory):
    """A teacher of its own: test_trainer's (seed 1) would share its teacher cache on tiny_synthetic."""
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("bf16-teacher") / "model.pt"
    torch.save(create_backbone("mobilefacenet_s", embedding_size=64).eval().state_dict(), path)
    return path


def test_bf16_training_run(tmp_path, tiny_synthetic, own_teacher):
    """train.precision: bf16 trains a distilled student end to end (emulated where the CPU lacks bf16)."""
    over = {**distill_args(own_teacher), "train.epochs": 1, "train.precision": "bf16",
            "student.arch": "mobilefacenet_s_leaky"}
    recipe = load_recipe(make_recipe(tmp_path, tiny_synthetic, "bf16", **over))
    result = train(recipe)
    assert result.summary["precision"] == "bf16"
    rows = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    saved = torch.load(recipe.run_dir / "student.pt", weights_only=True)
    state = saved.get("state_dict", saved) if isinstance(saved, dict) else saved
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values() if torch.is_tensor(v))
