"""Baseline distillation terms for side-by-side comparison (docs/method.md, sec. 5).

All functions take the student embedding (already projected to the teacher's dimension) and the
teacher embedding, both raw (B, D); the teacher is detached, computations run in fp32.

* :func:`l2_loss`      mean_i ||f_s,i - f_t,i||^2 on raw features (sum over dims, mean over batch).
* :func:`cosine_loss`  mean_i (1 - s_i.t_i) on unit embeddings.
* :func:`rkd_loss`     Park et al. 2019, distance (Huber on mean-normalised pairwise distances)
                       and angle (Huber on triplet angle cosines), on the RAW embeddings as in the
                       paper (distances are scale-normalised by their mean; angles are scale-free).
* :func:`sp_loss`      Tung & Mori 2019: G = F F^T (B x B gram of the raw embeddings), each row
                       L2-normalised, L = ||G~_s - G~_t||_F^2 / B^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from facedistill.losses._util import check_pair, full_precision, unit

_EPS = 1e-12


def l2_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """mean_i sum_d (f_s,id - f_t,id)^2 on raw features."""
    check_pair(f_s, f_t, "l2_loss")
    with full_precision(f_s.device):
        return (f_s.float() - f_t.detach().float()).pow(2).sum(dim=1).mean()


def cosine_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """mean_i (1 - s_i . t_i), s and t the L2-normalised embeddings."""
    check_pair(f_s, f_t, "cosine_loss")
    with full_precision(f_s.device):
        return (1.0 - (unit(f_s) * unit(f_t.detach())).sum(dim=1)).mean()


def _pairwise_distances(x: Tensor) -> Tensor:
    """(B, B) Euclidean distances from the gram matrix; sqrt is clamped so the diagonal has no NaN grad."""
    g = x @ x.T
    sq = g.diagonal()
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * g).clamp(min=_EPS)
    return d2.sqrt()


def rkd_distance(f_s: Tensor, f_t: Tensor) -> Tensor:
    """RKD distance term: mean over ordered pairs i != j of Huber(d^s_ij/mu_s - d^t_ij/mu_t).

    d_ij = ||f_i - f_j||_2, mu = mean of d_ij over i != j; Huber = smooth_l1 with delta 1.
    """
    check_pair(f_s, f_t, "rkd_distance")
    b = f_s.shape[0]
    if b < 2:
        return (f_s.float() * 0.0).sum()
    with full_precision(f_s.device):
        off = ~torch.eye(b, dtype=torch.bool, device=f_s.device)
        ds = _pairwise_distances(f_s.float())[off]
        with torch.no_grad():
            dt = _pairwise_distances(f_t.detach().float())[off]
            dt = dt / dt.mean().clamp(min=_EPS)
        ds = ds / ds.mean().clamp(min=_EPS)
        return F.smooth_l1_loss(ds, dt, reduction="mean", beta=1.0)


def _triplet_cosines(x: Tensor) -> tuple[Tensor, Tensor]:
    """(cos, valid): cos[j, i, k] = cos of the angle at vertex x_j between x_i and x_k.

    Uses e_ij = (x_i - x_j)/||x_i - x_j||; cos = e_ij . e_kj, computed from the B x B x B centred
    gram (G_ik - G_ij - G_kj + G_jj) / (d_ij d_kj) to avoid a B x B x D tensor. ``valid`` marks
    pairwise-distinct (i, j, k).
    """
    b = x.shape[0]
    g = x @ x.T
    d = _pairwise_distances(x)  # d[i, j]
    # num[j, i, k] = G[i, k] - G[i, j] - G[k, j] + G[j, j]
    gd = g.diagonal()
    num = g.unsqueeze(0) - g.T.unsqueeze(2) - g.T.unsqueeze(1) + gd.view(b, 1, 1)
    den = d.T.unsqueeze(2) * d.T.unsqueeze(1)  # d[i, j] * d[k, j] at [j, i, k]
    eye = torch.eye(b, dtype=torch.bool, device=x.device)
    valid = ~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))  # j!=i, j!=k, i!=k
    # Clamped: with near-identical embeddings the gram-based numerator loses precision in fp32 and
    # the ratio can leave [-1, 1] by orders of magnitude (seen with a collapsed teacher).
    cos = (num / torch.where(valid, den, torch.ones_like(den))).clamp(-1.0, 1.0)
    return cos, valid


def rkd_angle(f_s: Tensor, f_t: Tensor) -> Tensor:
    """RKD angle term: mean over distinct triplets (i, j, k) of Huber(cos^s_ijk - cos^t_ijk)."""
    check_pair(f_s, f_t, "rkd_angle")
    if f_s.shape[0] < 3:
        return (f_s.float() * 0.0).sum()
    with full_precision(f_s.device):
        cs, valid = _triplet_cosines(f_s.float())
        with torch.no_grad():
            ct, _ = _triplet_cosines(f_t.detach().float())
        return F.smooth_l1_loss(cs[valid], ct[valid], reduction="mean", beta=1.0)


def rkd_loss(f_s: Tensor, f_t: Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> tuple[Tensor, Tensor, Tensor]:
    """(total, distance, angle) with total = distance_weight * distance + angle_weight * angle."""
    dist = rkd_distance(f_s, f_t)
    ang = rkd_angle(f_s, f_t)
    return distance_weight * dist + angle_weight * ang, dist, ang


def sp_gram(x: Tensor) -> Tensor:
    """Tung & Mori's G~: the B x B gram F F^T of the raw features with each row L2-normalised."""
    return F.normalize(x @ x.T, p=2, dim=1, eps=_EPS)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """||G~_s - G~_t||_F^2 / B^2 (similarity-preserving KD, Tung & Mori 2019, eq. 4)."""
    check_pair(f_s, f_t, "sp_loss")
    b = f_s.shape[0]
    with full_precision(f_s.device):
        gs = sp_gram(f_s.float())
        with torch.no_grad():
            gt = sp_gram(f_t.detach().float())
        return (gs - gt).pow(2).sum() / float(b * b)
