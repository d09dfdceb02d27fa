import copy
import io

import pytest
import torch

from facedistill.errors import RecipeError
from facedistill.losses import (
    DistillConfig,
    DistillationObjective,
    ILEDConfig,
    ILEDLoss,
    RKDConfig,
    RPSDConfig,
    RPSDLoss,
    cosine_loss,
    l2_loss,
    rkd_loss,
    sp_loss,
)

DIM = 8
SMALL_RPSD = RPSDConfig(bank_size=24, hard_negatives=4, warmup_entries=0)


def _batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, DIM, generator=g, requires_grad=True)
    s = (t.detach() + torch.randn(b, DIM, generator=g)).requires_grad_(True)
    y = torch.randint(0, 3, (b,), generator=g)
    return s, t, y


def test_unified_combines_terms_with_lambdas():
    cfg = DistillConfig(type="unified", lambda_iled=0.3, lambda_rpsd=2.0, rpsd=SMALL_RPSD)
    obj = DistillationObjective(cfg, DIM)
    iled, rpsd = ILEDLoss(cfg.iled), RPSDLoss(cfg.rpsd, DIM)
    for step in range(3):
        s, t, y = _batch(seed=step)
        out = obj(s, t, y, step)
        exp_iled, _ = iled(s, t, step)
        exp_rpsd, _ = rpsd(s, t, y)
        assert out["iled"].item() == pytest.approx(exp_iled.item(), abs=1e-6)
        assert out["rpsd"].item() == pytest.approx(exp_rpsd.item(), abs=1e-6)
        assert out["distill"].item() == pytest.approx(0.3 * exp_iled.item() + 2.0 * exp_rpsd.item(), abs=1e-5)
        out["distill"].backward()
        assert t.grad is None and s.grad is not None
    expected_keys = {"distill", "iled", "rpsd", "iled_d_mean", "iled_hard_d_mean", "iled_rho",
                     "rpsd_active", "rpsd_pairs", "rpsd_positives", "bank_fill", "bank_entries",
                         "rpsd_batch_pairs", "student_pair_cos"}
    assert set(out) == expected_keys
    assert all(not v.requires_grad for k, v in out.items() if k not in ("distill", "iled", "rpsd"))
    assert out["bank_entries"].item() == 12 and out["bank_fill"].item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kind, fn",
    [("l2", l2_loss), ("cosine", cosine_loss), ("sp", sp_loss),
     ("rkd", lambda s, t: rkd_loss(s, t, 2.0, 3.0)[0])],
)
def test_baselines_are_weighted(kind, fn):
    cfg = DistillConfig(type=kind, weight=0.7, rkd=RKDConfig(2.0, 3.0))
    s, t, y = _batch()
    out = DistillationObjective(cfg, DIM)(s, t, y, 0)
    ref = fn(s, t)
    assert out[kind].item() == pytest.approx(ref.item(), rel=1e-6)
    assert out["distill"].item() == pytest.approx(0.7 * ref.item(), rel=1e-6)
    out["distill"].backward()
    assert t.grad is None
    if kind == "rkd":
        assert {"rkd_distance", "rkd_angle"} <= set(out)


def test_single_halves_use_their_lambda():
    s, t, y = _batch()
    out = DistillationObjective(DistillConfig(type="iled", lambda_iled=0.5, weight=9.0), DIM)(s, t, y, 0)
    assert set(out) == {"distill", "iled", "iled_d_mean", "iled_hard_d_mean", "iled_rho", "student_pair_cos"}
    assert out["distill"].item() == pytest.approx(0.5 * out["iled"].item())
    out = DistillationObjective(DistillConfig(type="rpsd", lambda_rpsd=3.0, rpsd=SMALL_RPSD), DIM)(s, t, y, 0)
    assert "iled" not in out
    assert out["distill"].item() == pytest.approx(3.0 * out["rpsd"].item())


def test_none_returns_zero():
    s, t, y = _batch()
    obj = DistillationObjective(DistillConfig(type="none"), DIM)
    out = obj(s, t, y, 0)
    assert set(out) == {"distill"} and out["distill"].item() == 0.0
    assert not any(k.startswith("rpsd.") for k in obj.state_dict())


def test_invalid_config_and_dims_are_rejected():
    with pytest.raises(RecipeError, match=r"loss\.distill\.type"):
        DistillationObjective(DistillConfig(type="kd"), DIM)
    obj = DistillationObjective(DistillConfig(type="cosine"), DIM)
    with pytest.raises(ValueError, match="projected"):
        obj(torch.randn(4, DIM + 1), torch.randn(4, DIM), torch.zeros(4, dtype=torch.long), 0)


@pytest.mark.parametrize("variant", ["smooth_l1", "kl"])
def test_state_dict_round_trip_reproduces_next_loss(variant):
    cfg = DistillConfig(rpsd=RPSDConfig(bank_size=16, hard_negatives=4, variant=variant),
                        iled=ILEDConfig(mining_warmup_steps=10))
    obj = DistillationObjective(cfg, DIM)
    for step in range(4):  # 4 x 6 = 24 entries: the 16-slot bank has wrapped
        s, t, y = _batch(seed=step)
        obj(s, t, y, step)
    buf = io.BytesIO()
    torch.save(obj.state_dict(), buf)
    buf.seek(0)
    resumed = DistillationObjective(copy.deepcopy(cfg), DIM)
    resumed.load_state_dict(torch.load(buf))  # weights_only load
    assert resumed.rpsd.bank.filled == 16 and int(resumed.rpsd.bank.ptr) == 24 % 16
    fresh = DistillationObjective(copy.deepcopy(cfg), DIM)
    s, t, y = _batch(seed=99)
    a, b, c = obj(s, t, y, 4), resumed(s, t, y, 4), fresh(s, t, y, 4)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert c["rpsd_active"].item() == 0.0  # a fresh bank would still be warming up
    assert torch.equal(obj.rpsd.bank.embeddings, resumed.rpsd.bank.embeddings)
