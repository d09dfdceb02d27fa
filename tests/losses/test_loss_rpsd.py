import math

import pytest
import torch

from facedistill.losses.config import RPSDConfig
from facedistill.losses.memory_bank import MemoryBank
from facedistill.losses.rpsd import RPSDLoss


def _unit(v):
    return v / torch.sqrt((v * v).sum())


def _dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def ref_pairs(s_raw, t_raw, labels, bank: MemoryBank, cfg: RPSDConfig):
    """Loop reference. Returns {row: [(column, Ps, Pt), ...]} of the selected pairs.

    Columns follow the layout [bank slot 0..K-1 | in-batch 0..B-1] (bank part only if used).
    """
    b = s_raw.shape[0]
    s = [_unit(s_raw[i].detach()) for i in range(b)]
    t = [_unit(t_raw[i].detach()) for i in range(b)]
    k_cols = bank.size if cfg.use_bank else 0
    out = {}
    for i in range(b):
        anchors = []  # (column, Ps, Pt, label)
        if cfg.use_bank:
            for j in range(bank.filled):  # filled slots are 0..filled-1 (or all when full)
                q = bank.embeddings[j]
                anchors.append((j, _dot(s[i], q), _dot(t[i], q), int(bank.labels[j])))
        if cfg.use_in_batch:
            for j in range(b):
                if j != i:
                    anchors.append((k_cols + j, _dot(s[i], s[j]), _dot(t[i], t[j]), int(labels[j])))
        yi = int(labels[i])
        pos = [a for a in anchors if yi >= 0 and a[3] == yi]
        neg = [a for a in anchors if not (yi >= 0 and a[3] == yi)]
        neg.sort(key=lambda a: -a[2])
        if cfg.k_bank is not None or cfg.k_batch is not None:  # separate quotas
            chosen = (pos + [a for a in neg if a[0] < k_cols][: cfg.k_bank or 0]
                      + [a for a in neg if a[0] >= k_cols][: cfg.k_batch or 0])
        else:
            chosen = pos + neg[: cfg.hard_negatives]
        taken = {a[0] for a in chosen}
        # the student's own false positives: most similar for the STUDENT among the rest
        fp = sorted((a for a in neg if a[0] not in taken), key=lambda a: -a[1])
        chosen += fp[: cfg.student_negatives]
        taken = {a[0] for a in chosen}
        rest = [a for a in anchors if a[0] not in taken]
        rest.sort(key=lambda a: -abs(a[1] - a[2]))
        chosen += rest[: cfg.mismatch_k]
        out[i] = [(a[0], a[1], a[2]) for a in chosen]
    return out


def _smooth_l1(x, beta):
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def ref_smooth_l1(pairs, beta):
    vals = [_smooth_l1(ps - pt, beta) for row in pairs.values() for _, ps, pt in row]
    return sum(vals) / max(len(vals), 1)


def ref_kl(pairs, temp):
    rows = []
    for row in pairs.values():
        if not row:
            continue
        zt = sum(math.exp(pt / temp) for _, _, pt in row)
        zs = sum(math.exp(ps / temp) for _, ps, _ in row)
        kl = 0.0
        for _, ps, pt in row:
            p = math.exp(pt / temp) / zt
            q = math.exp(ps / temp) / zs
            kl += p * (math.log(p) - math.log(q))
        rows.append(kl)
    return sum(rows) / max(len(rows), 1)


def _setup(cfg: RPSDConfig, dim=6, b=8, prefill=10, n_ids=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    loss = RPSDLoss(cfg, dim)
    if loss.bank is not None and prefill:
        bank_t = torch.randn(prefill, dim, generator=g)
        bank_y = torch.randint(-1, n_ids, (prefill,), generator=g)
        loss.bank.enqueue(bank_t / bank_t.norm(dim=1, keepdim=True), bank_y)
    t = torch.randn(b, dim, generator=g)
    s = (t + 0.7 * torch.randn(b, dim, generator=g)).requires_grad_(True)
    t.requires_grad_(True)  # to check that the teacher never gets a gradient
    labels = torch.randint(-1, n_ids, (b,), generator=g)
    labels[0] = labels[1] = 2  # at least one in-batch positive pair
    return loss, s, t, labels


def _selected_set(loss, s, t, labels):
    _, _, sel, _ = loss.relations_and_selection(s, t, labels)
    return {(int(i), int(j)) for i, j in torch.nonzero(sel).tolist()}


CFGS = [
    RPSDConfig(bank_size=16, hard_negatives=3, warmup_entries=0),
    RPSDConfig(bank_size=16, hard_negatives=3, mismatch_k=2, warmup_entries=0),
    RPSDConfig(bank_size=16, hard_negatives=50, mismatch_k=1, warmup_entries=0),  # k > #negatives
    RPSDConfig(bank_size=16, hard_negatives=0, mismatch_k=3, warmup_entries=0),
    RPSDConfig(bank_size=16, hard_negatives=4, use_in_batch=False, warmup_entries=0),
    RPSDConfig(bank_size=16, hard_negatives=4, mismatch_k=1, use_bank=False),
    RPSDConfig(bank_size=16, k_bank=2, k_batch=2, warmup_entries=0),  # separate quotas
    RPSDConfig(bank_size=16, k_bank=3, k_batch=1, student_negatives=2, mismatch_k=1, warmup_entries=0),
    RPSDConfig(bank_size=16, hard_negatives=2, student_negatives=3, warmup_entries=0),
    RPSDConfig(bank_size=16, k_bank=0, k_batch=3, student_negatives=1, use_bank=False),
]


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("prefill", [10, 20])  # partially filled bank, and wrapped/full bank
def test_selected_pairs_match_loop_reference(cfg, prefill):
    loss, s, t, labels = _setup(cfg, prefill=prefill)
    ref = ref_pairs(s, t, labels, loss.bank if loss.bank is not None else MemoryBank(1, 6), cfg)
    expected = {(i, c) for i, row in ref.items() for c, _, _ in row}
    assert _selected_set(loss, s, t, labels) == expected


def test_positives_exclude_self_and_unknown_labels():
    cfg = RPSDConfig(bank_size=8, hard_negatives=0, warmup_entries=0)
    loss = RPSDLoss(cfg, 4)
    loss.bank.enqueue(torch.eye(4), torch.tensor([-1, 3, 3, -1]))
    s = torch.randn(3, 4)
    labels = torch.tensor([3, -1, 3])
    rs, rt, anchor_labels, valid = loss.relations(s, s, labels)
    _, pos = loss.select(rs, rt, labels, anchor_labels, valid)
    # columns: bank 0..7 (slots 4..7 empty), in-batch 8..10
    assert torch.nonzero(pos).tolist() == [[0, 1], [0, 2], [0, 10], [2, 1], [2, 2], [2, 8]]


@pytest.mark.parametrize("cfg", CFGS)
def test_smooth_l1_value_and_gradients(cfg):
    loss_fn, s, t, labels = _setup(cfg)
    ref = ref_smooth_l1(ref_pairs(s, t, labels, loss_fn.bank or MemoryBank(1, 6), cfg), cfg.smooth_l1_beta)
    loss, stats = loss_fn.compute(s, t, labels)
    assert loss.item() == pytest.approx(ref, abs=1e-5)
    assert stats["rpsd_active"].item() == 1.0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("cfg", CFGS[:3])
def test_kl_value(cfg):
    cfg = RPSDConfig(**{**cfg.__dict__, "variant": "kl", "kl_temperature": 0.1})
    loss_fn, s, t, labels = _setup(cfg)
    ref = ref_kl(ref_pairs(s, t, labels, loss_fn.bank, cfg), 0.1)
    loss, _ = loss_fn.compute(s, t, labels)
    assert loss.item() == pytest.approx(ref, rel=1e-4, abs=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and t.grad is None


def test_smooth_l1_gradient_matches_autograd_reference():
    cfg = RPSDConfig(bank_size=16, hard_negatives=3, mismatch_k=1, warmup_entries=0)
    loss_fn, s, t, labels = _setup(cfg)
    pairs = ref_pairs(s, t, labels, loss_fn.bank, cfg)
    loss, _ = loss_fn.compute(s, t, labels)
    (g,) = torch.autograd.grad(loss, s)
    # differentiable reference over the same selected pairs
    su = s / s.norm(dim=1, keepdim=True)
    tu = (t / t.norm(dim=1, keepdim=True)).detach()
    terms = []
    for i, row in pairs.items():
        for col, _, _ in row:
            if col < 16:
                q = loss_fn.bank.embeddings[col]
                d = (su[i] * q).sum() - (tu[i] * q).sum()
            else:
                j = col - 16
                d = (su[i] * su[j]).sum() - (tu[i] * tu[j]).sum()
            terms.append(torch.nn.functional.smooth_l1_loss(d, torch.zeros(()), beta=cfg.smooth_l1_beta))
    (g_ref,) = torch.autograd.grad(torch.stack(terms).mean(), s)
    assert torch.allclose(g, g_ref, atol=1e-5)


def test_warmup_gating_until_bank_holds_enough():
    cfg = RPSDConfig(bank_size=16, hard_negatives=3, warmup_entries=10)
    loss_fn = RPSDLoss(cfg, 6)
    active = []
    for step in range(5):
        s = torch.randn(4, 6, requires_grad=True)
        loss, stats = loss_fn(s, torch.randn(4, 6), torch.randint(0, 3, (4,)))
        active.append(stats["rpsd_active"].item())
        if not stats["rpsd_active"].item():
            assert loss.item() == 0.0
            loss.backward()  # graph stays connected: zero gradient, not None
            assert s.grad is not None and s.grad.abs().sum() == 0
        assert stats["bank_entries"].item() == min(4 * step, 16)
    assert active == [0.0, 0.0, 0.0, 1.0, 1.0]  # bank holds 0, 4, 8, 12, 16 entries at compute time


def test_default_warmup_is_hard_negatives():
    loss_fn = RPSDLoss(RPSDConfig(bank_size=16, hard_negatives=5), 6)
    loss_fn.bank.enqueue(torch.randn(4, 6), torch.arange(4))
    assert not loss_fn.is_active()
    loss_fn.bank.enqueue(torch.randn(1, 6), torch.arange(1))
    assert loss_fn.is_active()


def test_enqueue_happens_after_the_loss():
    cfg = RPSDConfig(bank_size=32, hard_negatives=3, warmup_entries=0)
    loss_fn, s, t, labels = _setup(cfg, prefill=5)
    before, _ = loss_fn.compute(s, t, labels)  # no side effect
    assert loss_fn.bank.filled == 5
    loss, _ = loss_fn(s, t, labels)  # computes on the 5-entry bank, then enqueues
    assert loss.item() == pytest.approx(before.item(), abs=1e-7)
    assert loss_fn.bank.filled == 5 + s.shape[0]
    emb, lab = loss_fn.bank.ordered()
    assert torch.allclose(emb[-s.shape[0]:], t.detach() / t.detach().norm(dim=1, keepdim=True))
    assert lab[-s.shape[0]:].tolist() == labels.tolist()
    # the same batch now sees itself in the bank, so its next loss differs
    after, _ = loss_fn.compute(s, t, labels)
    assert after.item() != pytest.approx(before.item(), abs=1e-7)
    loss.backward()  # in-place bank update did not break the autograd graph


def test_eval_mode_does_not_enqueue():
    loss_fn, s, t, labels = _setup(RPSDConfig(bank_size=16, hard_negatives=2, warmup_entries=0), prefill=3)
    loss_fn.eval()
    loss_fn(s, t, labels)
    assert loss_fn.bank.filled == 3


def test_fp32_under_autocast():
    cfg = RPSDConfig(bank_size=16, hard_negatives=3, warmup_entries=0)
    loss_fn, s, t, labels = _setup(cfg)
    plain, _ = loss_fn.compute(s, t, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp, _ = loss_fn.compute(s, t, labels)
    assert amp.dtype == torch.float32
    assert amp.item() == pytest.approx(plain.item(), abs=1e-6)


def test_separate_quotas_give_in_batch_pairs_their_share():
    """With one joint quota the bank crowds out the student-student pairs; k_batch guarantees them."""
    g = torch.Generator().manual_seed(1)
    dim, b = 64, 8
    bank_t = torch.randn(16, dim, generator=g)
    t = torch.randn(b, dim, generator=g)
    t = t / t.norm(dim=1, keepdim=True)
    bank_t = t.sum(0) + 0.05 * bank_t  # every bank anchor resembles the whole batch: the hardest are in the bank
    labels = torch.arange(b)  # no positives
    counts = {}
    for name, cfg in {"joint": RPSDConfig(bank_size=16, hard_negatives=4, warmup_entries=0),
                      "split": RPSDConfig(bank_size=16, k_bank=2, k_batch=2, warmup_entries=0)}.items():
        loss = RPSDLoss(cfg, dim)
        loss.bank.enqueue(bank_t / bank_t.norm(dim=1, keepdim=True), torch.full((16,), 100))
        _, _, sel, _ = loss.relations_and_selection(t.clone(), t, labels)
        counts[name] = (sel[:, :16].sum(1).tolist(), sel[:, 16:].sum(1).tolist())
        _, stats = loss.compute(t.clone(), t, labels)
        assert stats["rpsd_batch_pairs"].item() == pytest.approx(sum(counts[name][1]) / b)
    assert sum(counts["joint"][1]) == 0  # the bank took every slot
    assert counts["split"] == ([2] * b, [2] * b)


def test_student_negatives_mine_the_students_false_positives():
    """A collapsed student (all rows alike) has pairs the teacher calls dissimilar: they get mined."""
    dim, b = 6, 6
    t = torch.eye(dim)[:b]  # teacher: orthogonal identities
    s = torch.ones(b, dim) + 0.01 * torch.randn(b, dim)  # student: collapsed
    labels = torch.arange(b)
    cfg_t = RPSDConfig(bank_size=4, k_bank=0, k_batch=0, use_bank=False)
    cfg_s = RPSDConfig(bank_size=4, k_bank=0, k_batch=0, student_negatives=2, use_bank=False)
    base = RPSDLoss(cfg_t, dim).compute(s, t, labels)[0]
    loss = RPSDLoss(cfg_s, dim).compute(s, t, labels)[0]
    assert base.item() == 0.0  # teacher mining alone sees nothing wrong
    assert loss.item() > 0.5  # the student's false positives (cos ~1, target 0) are penalised


def test_warns_when_fewer_anchors_than_dimensions():
    with pytest.warns(UserWarning, match="k vs D"):
        RPSDLoss(RPSDConfig(bank_size=64, hard_negatives=8), 16)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RPSDLoss(RPSDConfig(bank_size=64, k_bank=12, k_batch=4), 16)  # 16 anchors for 16 dims: fine


def test_default_warmup_is_the_bank_quota_with_split_quotas():
    assert RPSDConfig(hard_negatives=64, k_bank=10, k_batch=5).effective_warmup_entries() == 10
