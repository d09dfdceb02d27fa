"""Margin-softmax heads (ArcFace, CosFace) in arcface_torch's combined-margin form.

Why: a student trained or fine-tuned on identities needs the same objective the teachers were
trained with. arcface_torch expresses both losses as one formula on the cosine ``cos(theta_j)``
between the normalised embedding and the normalised class centre ``j``: the target logit becomes
``s * (cos(m1 * theta_y + m2) - m3)`` and every other logit ``s * cos(theta_j)``.
ArcFace is ``(m1, m2, m3) = (1, 0.5, 0)``, CosFace ``(1, 0, 0.35)``.

Numerics: everything runs in fp32; cosines are clamped to ``[-1 + 1e-7, 1 - 1e-7]`` before
``arccos`` so that ``cos = +-1`` (an embedding exactly on a centre) gives finite values and
gradients. When there is no angular part (``m1 == 1, m2 == 0``, i.e. CosFace) the target is
computed as ``cos - m3`` directly, without the arccos round trip, exactly like arcface_torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facedistill.errors import FaceDistillError

__all__ = ["MarginHead", "create_margin_head", "margin_logits", "MARGINS"]

# (m1, m2, m3) and the default margin value, per head kind.
MARGINS: dict[str, tuple[str, float]] = {"arcface": ("m2", 0.5), "cosface": ("m3", 0.35)}
_COS_EPS = 1e-7
IGNORE_LABEL = -1  # arcface_torch's marker for "no class centre here" (partial FC); no margin, no loss


def margin_logits(
    cosine: torch.Tensor,
    labels: torch.Tensor,
    s: float,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float = 0.0,
    straight_through: bool = False,
) -> torch.Tensor:
    """Scaled margin logits from a ``(B, C)`` cosine matrix and ``(B,)`` labels (-1 = no target).

    ``straight_through=True`` reproduces arcface_torch's gradient, which applies the angular
    margin under ``torch.no_grad`` so the target logit is differentiated as if it were ``cos``;
    the default differentiates the margin formula itself.
    """
    cosine = cosine.float()
    labels = labels.long()
    valid = labels != IGNORE_LABEL
    target_mask = F.one_hot(labels.clamp_min(0), cosine.shape[1]).bool() & valid[:, None]
    if m1 == 1.0 and m2 == 0.0:
        target = cosine - m3
    else:
        theta = torch.acos(cosine.clamp(-1.0 + _COS_EPS, 1.0 - _COS_EPS))
        target = torch.cos(m1 * theta + m2) - m3
    if straight_through:
        target = cosine + (target - cosine).detach()
    return torch.where(target_mask, target, cosine) * s


class MarginHead(nn.Module):
    """Class centres plus a combined-margin softmax loss.

    ``weight`` has shape ``(num_classes, embedding_size)`` (normal init, std 0.01, as arcface_torch's
    partial FC). ``forward(embeddings, labels)`` returns the mean cross-entropy over rows whose label
    is not -1 (0 when there is none); ``logits(...)`` returns the margin-adjusted scaled logits themselves.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        scale: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        straight_through: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.scale = float(scale)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.straight_through = straight_through
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, 0.0, 0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine between each (normalised) embedding and each (normalised) class centre, fp32."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"expected embeddings of shape (B, {self.embedding_size}), got {tuple(embeddings.shape)}"
            )
        emb = F.normalize(embeddings.float(), dim=1)
        centres = F.normalize(self.weight.float(), dim=1)
        return emb @ centres.t()

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin-adjusted, scaled logits ``(B, num_classes)``."""
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        return margin_logits(
            self.cosine(embeddings), labels, self.scale, self.m1, self.m2, self.m3, self.straight_through
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean margin cross-entropy over the labelled rows only (label -1 = unknown identity).

        A batch without any labelled row (possible when labelled and unlabelled sources are
        mixed) gives a zero loss with zero gradients, not the NaN of an empty mean.
        """
        logits = self.logits(embeddings, labels)
        if not bool((labels != IGNORE_LABEL).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_LABEL)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, s={self.scale}, "
            f"m=({self.m1}, {self.m2}, {self.m3})"
        )


def create_margin_head(
    kind: str,
    num_classes: int,
    embedding_size: int,
    scale: float = 64.0,
    margin: float | None = None,
    *,
    straight_through: bool = False,
) -> MarginHead:
    """Build an ``arcface`` (additive angular, default m=0.5) or ``cosface`` (additive cosine,
    default m=0.35) head, arcface_torch's ``margin_list`` (1, m, 0) / (1, 0, m)."""
    key = kind.strip().lower()
    if key not in MARGINS:
        raise FaceDistillError(f"Unknown margin head '{kind}'. Valid kinds: {', '.join(sorted(MARGINS))}.")
    if num_classes <= 0 or embedding_size <= 0:
        raise FaceDistillError(
            f"num_classes and embedding_size must be positive, got {num_classes} and {embedding_size}"
        )
    if scale <= 0:
        raise FaceDistillError(f"scale must be positive, got {scale}")
    which, default = MARGINS[key]
    m = default if margin is None else float(margin)
    if m < 0:
        raise FaceDistillError(f"margin must be >= 0, got {m}")
    m2, m3 = (m, 0.0) if which == "m2" else (0.0, m)
    return MarginHead(num_classes, embedding_size, scale, 1.0, m2, m3, straight_through)
