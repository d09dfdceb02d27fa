"""Leaky-to-ReLU annealing: the schedule, the module's function at each slope, the in-place swap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facedistill.models import create_backbone
from facedistill.models.activations import AnnealedReLU, LeakyAnneal, anneal_slope


def test_slope_holds_then_falls_linearly_to_exactly_zero_at_the_last_step():
    total = 10
    slopes = [anneal_slope(k, total, start=0.5) for k in range(total)]
    assert slopes[:4] == [0.25] * 4  # steps 1..5 of 10 (progress <= 0.5) keep the initial slope
    assert slopes[4] == 0.25
    assert all(a > b for a, b in zip(slopes[4:], slopes[5:]))  # strictly falling afterwards
    assert slopes[-1] == 0.0 and anneal_slope(total, total, 0.5) == 0.0
    assert anneal_slope(7, total, 0.5) == pytest.approx(0.25 * 0.4)  # progress 0.8: 40% of the window left
    assert anneal_slope(0, 4, start=0.0) == pytest.approx(0.25 * 0.75)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        anneal_slope(0, 10, start=1.0)


def test_annealed_relu_is_leaky_then_exactly_relu_and_relu6():
    x = torch.linspace(-8, 8, 101)
    assert torch.equal(AnnealedReLU(slope=0.25)(x), nn.functional.leaky_relu(x, 0.25))
    capped = AnnealedReLU(cap=6.0, slope=0.1)(x)
    assert torch.equal(capped, torch.clamp(nn.functional.leaky_relu(x, 0.1), max=6.0))
    assert torch.equal(AnnealedReLU(slope=0.0)(x), torch.relu(x))
    assert torch.equal(AnnealedReLU(cap=6.0, slope=0.0)(x), nn.functional.relu6(x))


def test_install_swaps_every_relu6_keeps_the_state_dict_and_ends_as_the_relu6_network():
    torch.manual_seed(0)
    model = create_backbone("mobilefacenet_s_relu6", embedding_size=32).eval()
    reference = create_backbone("mobilefacenet_s_relu6", embedding_size=32).eval()
    reference.load_state_dict(model.state_dict())
    n_relu6 = sum(isinstance(m, nn.ReLU6) for m in model.modules())
    keys = list(model.state_dict())
    anneal = LeakyAnneal.install(model, start=0.5)
    assert len(anneal.modules) == n_relu6 > 0
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert list(model.state_dict()) == keys  # no new parameters or buffers: the saved weights load as relu6
    x = torch.randn(2, 3, 112, 112)
    assert anneal.set_step(0, 10) == 0.25
    leaky_out = model(x)
    ref = reference(x)
    assert (leaky_out - ref).abs().max() > 0.05 * ref.abs().max()  # the leaky phase is another function
    assert anneal.set_step(9, 10) == 0.0
    assert torch.equal(model(x), reference(x))  # at slope 0 it is the relu6 network, bit for bit


def test_install_refuses_a_network_without_relu():
    with pytest.raises(ValueError, match="no ReLU/ReLU6"):
        LeakyAnneal.install(create_backbone("mobilefacenet_s_leaky", embedding_size=32), start=0.5)
