import math

import pytest
import torch

from facedistill.losses.config import ILEDConfig
from facedistill.losses.iled import ILEDLoss, annealed_rho, hard_count


def _ref_distances(s_raw, t_raw):
    """d_i = 1 - <s_i/|s_i|, t_i/|t_i|>, one row at a time."""
    out = []
    for i in range(s_raw.shape[0]):
        s = s_raw[i] / torch.sqrt((s_raw[i] ** 2).sum())
        t = t_raw[i].detach() / torch.sqrt((t_raw[i].detach() ** 2).sum())
        out.append(1.0 - (s * t).sum())
    return out


def _ref_topk(s_raw, t_raw, rho, beta):
    d = _ref_distances(s_raw, t_raw)
    b = len(d)
    h = math.ceil(round(rho * b, 9))
    order = sorted(range(b), key=lambda i: -d[i].detach().item())
    hard = sorted(order[:h])
    loss = sum(d) / b + beta * sum(d[i] for i in hard) / h
    return loss, hard


def _data(b=10, dim=7):
    s = torch.randn(b, dim, requires_grad=True)
    t = torch.randn(b, dim, requires_grad=True)  # would-be teacher grads must stay None
    return s, t


@pytest.mark.parametrize("rho, beta", [(0.5, 1.0), (0.3, 2.0), (1.0, 0.5), (0.01, 1.0)])
def test_topk_matches_loop_reference_value_and_gradient(rho, beta):
    s, t = _data()
    loss, stats = ILEDLoss(ILEDConfig(mining="topk", rho=rho, beta=beta))(s, t, step=0)
    loss.backward()
    g = s.grad.clone()
    s.grad = None
    ref, hard = _ref_topk(s, t, rho, beta)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(g, s.grad, atol=1e-6)
    assert t.grad is None
    d = _ref_distances(s, t)
    assert stats["iled_hard_d_mean"].item() == pytest.approx(sum(d[i].detach().item() for i in hard) / len(hard), abs=1e-6)
    assert stats["iled_d_mean"].item() == pytest.approx(sum(x.detach().item() for x in d) / len(d), abs=1e-6)


def test_topk_hard_set_is_the_largest_distances():
    # Samples whose gradient carries the extra beta/H weight are exactly the H largest d.
    s, t = _data(b=8)
    loss, _ = ILEDLoss(ILEDConfig(rho=0.5, beta=10.0))(s, t)
    d = torch.stack(_ref_distances(s, t)).detach()
    (grad_d,) = torch.autograd.grad(loss, s)
    expected = set(torch.argsort(d, descending=True)[:4].tolist())
    # |dL/ds_i| = w_i * |dd_i/ds_i|; compare w_i = |grad| / |dd_i/ds_i|
    dd = torch.autograd.grad(torch.stack(_ref_distances(s, t)).sum(), s)[0]
    w = grad_d.norm(dim=1) / dd.norm(dim=1)
    hard = set(torch.nonzero(w > 1.0 / 8 + 1e-4).flatten().tolist())
    assert hard == expected


def test_hard_count_is_robust_to_float_error():
    assert hard_count(0.3, 10) == 3
    assert hard_count(0.5, 7) == 4
    assert hard_count(0.01, 10) == 1
    assert hard_count(1.0, 10) == 10


def test_soft_weights_match_reference():
    s, t = _data()
    tau = 0.1
    loss, _ = ILEDLoss(ILEDConfig(mining="soft", tau=tau))(s, t)
    loss.backward()
    g = s.grad.clone()
    s.grad = None
    d = _ref_distances(s, t)
    b = len(d)
    z = sum(math.exp(x.detach().item() / tau) for x in d)
    w = [b * math.exp(x.detach().item() / tau) / z for x in d]  # detached weights
    assert sum(w) == pytest.approx(b)
    ref = sum(w[i] * d[i] for i in range(b)) / b
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert torch.allclose(g, s.grad, atol=1e-5)


def test_mining_none_is_mean_distance():
    s, t = _data()
    loss, stats = ILEDLoss(ILEDConfig(mining="none"))(s, t)
    ref = sum(_ref_distances(s, t)) / s.shape[0]
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert stats["iled_rho"].item() == 1.0


def test_rho_annealing_start_mid_end():
    assert annealed_rho(0.5, 100, 0) == 1.0
    assert annealed_rho(0.5, 100, 50) == pytest.approx(0.75)
    assert annealed_rho(0.5, 100, 100) == pytest.approx(0.5)
    assert annealed_rho(0.5, 100, 10_000) == pytest.approx(0.5)
    assert annealed_rho(0.5, 0, 0) == 0.5
    s, t = _data(b=8)
    loss_fn = ILEDLoss(ILEDConfig(rho=0.5, beta=1.0, mining_warmup_steps=100))
    for step, rho in [(0, 1.0), (50, 0.75), (100, 0.5), (400, 0.5)]:
        loss, stats = loss_fn(s, t, step=step)
        ref, _ = _ref_topk(s, t, rho, 1.0)
        assert stats["iled_rho"].item() == pytest.approx(rho)
        assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    # at step 0 every sample is hard: L = (1 + beta) mean d
    loss0, _ = loss_fn(s, t, step=0)
    assert loss0.item() == pytest.approx(2 * (sum(_ref_distances(s, t)) / 8).item(), abs=1e-6)


def test_fp32_under_autocast():
    s, t = _data()
    plain, _ = ILEDLoss(ILEDConfig())(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp, _ = ILEDLoss(ILEDConfig())(s.bfloat16().float(), t)
    assert amp.dtype == torch.float32
    assert amp.item() == pytest.approx(plain.item(), abs=1e-2)
