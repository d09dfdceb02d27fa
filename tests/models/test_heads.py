"""Margin heads: logits against a per-element reference written with the math module."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facedistill.errors import FaceDistillError
from facedistill.models import MarginHead, create_margin_head
from facedistill.models.heads import margin_logits

EPS = 1e-7


def reference_logits(emb: torch.Tensor, weight: torch.Tensor, labels: list[int], s, m1, m2, m3) -> torch.Tensor:
    """s*cos(theta_j) for j != y, s*(cos(m1*theta_y + m2) - m3) for j == y, element by element."""
    rows = []
    for i, e in enumerate(emb.double().tolist()):
        ne = math.sqrt(sum(v * v for v in e))
        row = []
        for j, w in enumerate(weight.double().tolist()):
            nw = math.sqrt(sum(v * v for v in w))
            c = sum(a * b for a, b in zip(e, w)) / (ne * nw)
            if j == labels[i]:
                c = min(max(c, -1.0 + EPS), 1.0 - EPS)
                row.append(s * (math.cos(m1 * math.acos(c) + m2) - m3))
            else:
                row.append(s * c)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def _case(kind: str, margin: float | None = None, scale: float = 64.0):
    torch.manual_seed(3)
    head = create_margin_head(kind, num_classes=5, embedding_size=3, scale=scale, margin=margin)
    emb = torch.randn(4, 3)
    labels = torch.tensor([0, 3, 4, 3])
    return head, emb, labels


CASES = [
    ("arcface", None, (1.0, 0.5, 0.0)),
    ("cosface", None, (1.0, 0.0, 0.35)),
    ("arcface", 0.3, (1.0, 0.3, 0.0)),
]


@pytest.mark.parametrize("kind, margin, m", CASES)
def test_logits_and_loss_match_direct_formula(kind: str, margin: float | None, m: tuple[float, ...]) -> None:
    head, emb, labels = _case(kind, margin)
    assert (head.m1, head.m2, head.m3) == m
    ref = reference_logits(emb, head.weight.detach(), labels.tolist(), 64.0, *m)
    got = head.logits(emb, labels)
    assert got.dtype == torch.float32 and got.shape == (4, 5)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=2e-4)
    loss = head(emb, labels)
    assert loss.dim() == 0
    torch.testing.assert_close(loss.double(), F.cross_entropy(ref, labels), rtol=1e-5, atol=1e-4)


def test_weight_init_and_shape() -> None:
    torch.manual_seed(0)
    head = create_margin_head("arcface", num_classes=2000, embedding_size=128)
    assert isinstance(head, MarginHead) and head.weight.shape == (2000, 128)
    assert abs(head.weight.std().item() - 0.01) < 5e-4 and head.scale == 64.0


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_cosine_plus_minus_one_is_finite(kind: str) -> None:
    head = create_margin_head(kind, num_classes=3, embedding_size=4)
    cos = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.5]], requires_grad=True)
    labels = torch.tensor([0, 0])
    out = margin_logits(cos, labels, head.scale, head.m1, head.m2, head.m3)
    F.cross_entropy(out, labels).backward()
    assert torch.isfinite(out).all() and torch.isfinite(cos.grad).all()
    # full head with embeddings exactly on (and opposite to) their class centre
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 4))
    emb = torch.tensor([[2.0, 0, 0, 0], [0, -3.0, 0, 0]], requires_grad=True)
    loss = head(emb, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_ignored_labels_get_no_margin_and_no_loss() -> None:
    head, emb, _ = _case("arcface")
    labels = torch.tensor([1, -1, -1, 2])
    logits = head.logits(emb, labels)
    torch.testing.assert_close(logits[1:3], head.cosine(emb)[1:3] * 64.0)
    expected = F.cross_entropy(logits[[0, 3]], labels[[0, 3]])
    torch.testing.assert_close(head(emb, labels), expected)


def test_batch_without_any_label_gives_zero_loss_not_nan() -> None:
    # mixing labelled and unlabelled sources can draw a batch of label -1 only
    head, emb, _ = _case("arcface")
    emb = emb.detach().requires_grad_()
    loss = head(emb, torch.full((emb.shape[0],), -1))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(emb.grad) == 0
    assert torch.count_nonzero(head.weight.grad) == 0


def test_straight_through_matches_arcface_torch_gradient() -> None:
    # arcface_torch applies the angular margin under no_grad: d logits / d cos == s everywhere.
    cos = (torch.rand(3, 4) * 1.8 - 0.9).requires_grad_()
    out = margin_logits(cos, torch.tensor([0, 1, 2]), 64.0, 1.0, 0.5, 0.0, straight_through=True)
    out.sum().backward()
    torch.testing.assert_close(cos.grad, torch.full_like(cos, 64.0))
    plain = margin_logits(cos.detach(), torch.tensor([0, 1, 2]), 64.0, 1.0, 0.5, 0.0)
    torch.testing.assert_close(out.detach(), plain)


def test_bad_arguments() -> None:
    with pytest.raises(FaceDistillError, match="arcface, cosface"):
        create_margin_head("sphereface", 10, 8)
    with pytest.raises(FaceDistillError):
        create_margin_head("cosface", 0, 8)
    with pytest.raises(FaceDistillError):
        create_margin_head("arcface", 10, 8, margin=-0.1)
