"""Centring against the collapse shortcut: RunningMean and loss.distill.center_teacher/center_student."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from facedistill.errors import RecipeError
from facedistill.losses import (
    DistillConfig,
    DistillationObjective,
    RPSDConfig,
    RunningMean,
    cosine_loss,
    mean_of_unit_rows,
)

D, B, IDS = 32, 32, 16


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # k < D in these small setups
        yield


def _teacher(labels, g, common, protos):
    """Unit identity directions plus a shared direction, like SFace (impostor cosine > 0), scale 5."""
    v = F.normalize(protos[labels] + 0.5 * torch.randn(len(labels), D, generator=g), dim=1)
    return F.normalize(0.45 * common + 0.9 * v, dim=1) * 5.0


def _world(seed=0):
    g = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(D, generator=g), dim=0)
    protos = F.normalize(torch.randn(IDS, D, generator=g), dim=1)
    return g, common, protos


def test_running_mean_is_cumulative_then_ema():
    rm = RunningMean(4, momentum=0.5)
    a, b, c = torch.randn(3, 4), torch.randn(5, 4), torch.randn(2, 4)
    ua, ub, uc = (F.normalize(x, dim=1).mean(0) for x in (a, b, c))
    rm.update(a)
    assert torch.allclose(rm.mean, ua)  # the first batch alone sets it (no cold-start bias)
    rm.update(b)
    assert torch.allclose(rm.mean, (ua + ub) / 2)  # weight max(1 - 0.5, 1/2)
    rm.update(c)
    assert torch.allclose(rm.mean, 0.5 * (ua + ub) / 2 + 0.5 * uc)  # then the EMA
    assert int(rm.updates) == 3


def test_set_mean_freezes_and_checks_shape():
    rm = RunningMean(4)
    rm.set_mean(torch.ones(4))
    rm.update(torch.randn(8, 4))
    assert torch.equal(rm.mean, torch.ones(4)) and bool(rm.frozen)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        rm.set_mean(torch.ones(3))
    cache = torch.randn(10, 2, 4)  # a teacher cache: (N, flips, D)
    assert torch.allclose(mean_of_unit_rows(cache), F.normalize(cache.reshape(-1, 4), dim=1).mean(0), atol=1e-6)


def test_centred_cosine_uses_the_running_mean():
    g, common, protos = _world()
    y = torch.arange(B) % IDS
    t = _teacher(y, g, common, protos)
    s = torch.randn(B, D, generator=g, requires_grad=True)
    obj = DistillationObjective(DistillConfig(type="cosine", center_teacher=True), D)
    out = obj(s, t, y)
    mu = F.normalize(t, dim=1).mean(0)
    assert out["cosine"].item() == pytest.approx(cosine_loss(s, F.normalize(t, dim=1) - mu).item(), abs=1e-6)
    assert out["teacher_mean_norm"].item() == pytest.approx(mu.norm().item(), abs=1e-6)
    out["distill"].backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    obj.eval()  # no update in eval mode
    before = obj.teacher_mean.mean.clone()
    obj(s, _teacher(y, g, common, protos), y)
    assert torch.equal(obj.teacher_mean.mean, before)


@pytest.mark.parametrize("kind", ["rpsd", "cosine", "iled"])
def test_centring_removes_the_collapse_shortcut(kind):
    """The issue's finding: with a shared teacher direction, a constant student (every face the
    same embedding, along that direction) beats an untrained random one. Centring removes that."""
    g, common, protos = _world()
    y = torch.arange(B) % IDS
    t = _teacher(y, g, common, protos)
    const = common.expand(B, D) + 1e-3 * torch.randn(B, D, generator=g)
    rand = torch.randn(B, D, generator=g)
    losses = {}
    for center in (False, True):
        cfg = DistillConfig(type=kind, center_teacher=center,
                            rpsd=RPSDConfig(bank_size=256, hard_negatives=32, warmup_entries=0))
        obj = DistillationObjective(cfg, D)
        for _ in range(8):  # fill the bank and the running mean
            y2 = torch.randint(0, IDS, (B,), generator=g)
            obj(rand, _teacher(y2, g, common, protos), y2)
        obj.eval()
        losses[center] = (obj(const, t, y)[kind].item(), obj(rand, t, y)[kind].item())
    (c0, r0), (c1, r1) = losses[False], losses[True]
    assert c0 < r0  # the shortcut: collapsing pays without centring
    assert c1 > 0.9 * r1  # centred: a collapsed student is no better than a random one
    assert c1 / r1 > 1.5 * c0 / r0


def test_center_student_ignores_a_common_student_offset():
    g, common, protos = _world()
    y = torch.arange(B) % IDS
    t = _teacher(y, g, common, protos)
    cfg = DistillConfig(type="cosine", center_teacher=True, center_student=True)
    obj = DistillationObjective(cfg, D)
    out = obj(t.clone(), t, y)  # student == teacher: both centred the same way -> zero loss
    assert out["cosine"].item() == pytest.approx(0.0, abs=1e-6)


def test_running_means_resume_exactly():
    g, common, protos = _world()
    cfg = DistillConfig(type="unified", center_teacher=True, center_student=True,
                        rpsd=RPSDConfig(bank_size=64, k_bank=8, k_batch=4, student_negatives=4, warmup_entries=0))
    a = DistillationObjective(cfg, D)
    batches = []
    for _ in range(4):
        y = torch.randint(0, IDS, (B,), generator=g)
        batches.append((torch.randn(B, D, generator=g), _teacher(y, g, common, protos), y))
    for s, t, y in batches[:3]:
        a(s, t, y)
    state = a.state_dict()
    assert {"teacher_mean.mean", "teacher_mean.updates", "student_mean.mean", "rpsd.bank.embeddings"} <= set(state)
    b = DistillationObjective(cfg, D)
    b.load_state_dict(state)
    s, t, y = batches[3]
    oa, ob = a(s, t, y), b(s, t, y)
    assert oa["distill"].item() == ob["distill"].item()
    assert torch.equal(a.teacher_mean.mean, b.teacher_mean.mean)
    # an objective without centring has no such buffers (old checkpoints keep loading)
    assert not any("mean" in k for k in DistillationObjective(DistillConfig(type="iled"), D).state_dict())


def test_set_teacher_mean_via_objective():
    obj = DistillationObjective(DistillConfig(type="iled", center_teacher=True), D)
    obj.set_teacher_mean(torch.full((D,), 0.1))
    obj(torch.randn(4, D), torch.randn(4, D), torch.arange(4))
    assert torch.allclose(obj.teacher_mean.mean, torch.full((D,), 0.1))
    with pytest.raises(ValueError, match="center_teacher"):
        DistillationObjective(DistillConfig(type="iled"), D).set_teacher_mean(torch.zeros(D))


def test_student_pair_cos_shows_a_collapse():
    obj = DistillationObjective(DistillConfig(type="cosine"), D)
    t = torch.randn(B, D)
    collapsed = obj(torch.ones(B, D) + 1e-3 * torch.randn(B, D), t, torch.arange(B))["student_pair_cos"]
    spread = obj(torch.randn(B, D), t, torch.arange(B))["student_pair_cos"]
    assert collapsed.item() > 0.99 and abs(spread.item()) < 0.1


@pytest.mark.parametrize("cfg, key", [
    (DistillConfig(type="l2", center_teacher=True), "loss.distill.center_teacher"),
    (DistillConfig(type="sp", center_student=True), "loss.distill.center_student"),
    (DistillConfig(center_momentum=1.0), "loss.distill.center_momentum"),
    (DistillConfig(center_teacher="yes"), "loss.distill.center_teacher"),
    (DistillConfig(rpsd=RPSDConfig(k_bank=8)), "loss.distill.rpsd.k_batch"),
    (DistillConfig(rpsd=RPSDConfig(k_bank=8, k_batch=-1)), "loss.distill.rpsd.k_batch"),
    (DistillConfig(rpsd=RPSDConfig(k_bank=8, k_batch=8, use_bank=False)), "loss.distill.rpsd.k_bank"),
    (DistillConfig(rpsd=RPSDConfig(student_negatives=-2)), "loss.distill.rpsd.student_negatives"),
    (DistillConfig(rpsd=RPSDConfig(bank_size=16, k_bank=8, k_batch=0, warmup_entries=32)),
     "loss.distill.rpsd.warmup_entries"),
])
def test_new_keys_are_validated(cfg, key):
    with pytest.raises(RecipeError) as exc:
        cfg.validate()
    assert str(exc.value).startswith(key)


def test_k_bank_above_the_bank_size_takes_every_bank_anchor():
    cfg = RPSDConfig(bank_size=16, k_bank=128, k_batch=4)
    DistillConfig(rpsd=cfg).validate()
    assert cfg.effective_warmup_entries() == 16
