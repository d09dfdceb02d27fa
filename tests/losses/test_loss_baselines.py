import itertools

import pytest
import torch

from facedistill.losses.baselines import cosine_loss, l2_loss, rkd_angle, rkd_distance, rkd_loss, sp_loss


def _huber(x):
    x = abs(x)
    return 0.5 * x * x if x < 1.0 else x - 0.5


def _data(b=6, dim=5, scale_t=3.0):
    s = torch.randn(b, dim, requires_grad=True)
    t = (scale_t * torch.randn(b, dim)).requires_grad_(True)
    return s, t


def ref_l2(s, t):
    return sum(sum((s[i, d] - t[i, d]) ** 2 for d in range(s.shape[1])) for i in range(s.shape[0])) / s.shape[0]


def ref_cosine(s, t):
    b = s.shape[0]
    return sum(1 - torch.dot(s[i] / s[i].norm(), t[i] / t[i].norm()) for i in range(b)) / b


def ref_rkd_distance(s, t):
    b = s.shape[0]
    pairs = [(i, j) for i in range(b) for j in range(b) if i != j]
    ds = {p: (s[p[0]] - s[p[1]]).norm() for p in pairs}
    dt = {p: (t[p[0]] - t[p[1]]).norm().item() for p in pairs}
    mu_s = sum(ds.values()) / len(pairs)
    mu_t = sum(dt.values()) / len(pairs)
    terms = []
    for p in pairs:
        x = ds[p] / mu_s - dt[p] / mu_t
        terms.append(0.5 * x * x if abs(x.item()) < 1 else x.abs() - 0.5)
    return sum(terms) / len(pairs)


def ref_rkd_angle(s, t):
    b = s.shape[0]
    terms = []
    for i, j, k in itertools.permutations(range(b), 3):  # vertex j, pairwise distinct
        es_ij = (s[i] - s[j]) / (s[i] - s[j]).norm()
        es_kj = (s[k] - s[j]) / (s[k] - s[j]).norm()
        et_ij = (t[i] - t[j]) / (t[i] - t[j]).norm()
        et_kj = (t[k] - t[j]) / (t[k] - t[j]).norm()
        x = torch.dot(es_ij, es_kj) - torch.dot(et_ij, et_kj).item()
        terms.append(0.5 * x * x if abs(x.item()) < 1 else x.abs() - 0.5)
    return sum(terms) / len(terms)


def ref_sp(s, t):
    b = s.shape[0]

    def gram(x):
        rows = []
        for i in range(b):
            row = torch.stack([torch.dot(x[i], x[j]) for j in range(b)])
            rows.append(row / row.norm())
        return rows

    gs, gt = gram(s), gram(t.detach())
    return sum(((gs[i][j] - gt[i][j]) ** 2) for i in range(b) for j in range(b)) / (b * b)


@pytest.mark.parametrize(
    "fn, ref",
    [(l2_loss, ref_l2), (cosine_loss, ref_cosine), (rkd_distance, ref_rkd_distance),
     (rkd_angle, ref_rkd_angle), (sp_loss, ref_sp)],
)
def test_baseline_matches_loop_reference_value_and_gradient(fn, ref):
    s, t = _data()
    out = fn(s, t)
    (g,) = torch.autograd.grad(out, s)
    expected = ref(s, t.detach())
    (g_ref,) = torch.autograd.grad(expected, s)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(g, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn", [l2_loss, cosine_loss, rkd_distance, rkd_angle, sp_loss])
def test_teacher_gets_no_gradient(fn):
    s, t = _data()
    fn(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_rkd_weights_and_scale_invariance():
    s, t = _data()
    total, dist, ang = rkd_loss(s, t, 25.0, 50.0)
    assert total.item() == pytest.approx(25 * dist.item() + 50 * ang.item(), rel=1e-6)
    # raw embeddings, but distance is mean-normalised and angles are scale-free
    total2, _, _ = rkd_loss(s, 7.0 * t)
    assert total2.item() == pytest.approx(total.item(), rel=1e-4)
    zero, _, _ = rkd_loss(t.detach().clone().requires_grad_(True), t)
    assert zero.item() == pytest.approx(0.0, abs=1e-5)


def test_huber_branch_is_exercised():
    # large relative distance differences take the linear branch of the Huber loss
    s = torch.tensor([[0.0, 0.0], [0.0, 0.01], [10.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0], [5.0, 0.0], [5.0, 0.01]])
    assert rkd_distance(s, t).item() == pytest.approx(ref_rkd_distance(s, t).item(), rel=1e-5)


def test_small_batches_are_safe():
    s, t = _data(b=2)
    assert rkd_angle(s, t).item() == 0.0
    s1, t1 = _data(b=1)
    assert rkd_distance(s1, t1).item() == 0.0


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="project the student"):
        l2_loss(torch.randn(4, 3), torch.randn(4, 5))
