"""Recipe configuration of the distillation terms (``loss.distill`` in a recipe).

Plain dataclasses with simple field types (float, int, bool, str, Optional[int], nested
dataclasses) so that the recipe loader can build and type-check them by introspection.
Defaults are those of ``docs/method.md``; :meth:`DistillConfig.validate` checks value ranges and
raises :class:`~facedistill.errors.RecipeError` naming the offending key path.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Optional

from facedistill.errors import RecipeError

DISTILL_TYPES = ("none", "l2", "cosine", "rkd", "sp", "iled", "rpsd", "unified")
ILED_MINING = ("topk", "soft", "none")
RPSD_VARIANTS = ("smooth_l1", "kl")
CENTERED_TYPES = ("cosine", "iled", "rpsd", "unified")


@dataclass
class ILEDConfig:
    """Instance-level embedding distillation with dynamic hard mining (method.md section 2)."""

    mining: str = "topk"  # "topk" | "soft" | "none"
    rho: float = 0.5  # hard fraction for topk, in (0, 1]
    beta: float = 1.0  # extra weight of the hard set (topk)
    tau: float = 0.1  # softmax temperature of the soft weights
    mining_warmup_steps: int = 0  # rho anneals linearly 1.0 -> rho over this many steps


@dataclass
class RPSDConfig:
    """Relation-based pairwise similarity distillation with a memory bank (method.md section 3)."""

    bank_size: int = 8192
    hard_negatives: int = 64  # k hardest negatives per row, by teacher similarity
    mismatch_k: int = 0  # extra pairs per row with the largest |P^s - P^t|
    variant: str = "smooth_l1"  # "smooth_l1" | "kl"
    smooth_l1_beta: float = 0.01
    kl_temperature: float = 0.1
    use_bank: bool = True  # bank anchors
    use_in_batch: bool = True  # in-batch anchors
    warmup_entries: Optional[int] = None  # RPSD is active once the bank holds this many; None = bank quota
    # A quota below the embedding size is a known risk (docs/method.md, "k vs D") and RPSD warns; a
    # recipe that measured its quota and keeps it says so here (no warning; not part of the hash).
    accept_few_anchors: bool = False
    # Separate quotas of teacher-hard negatives: k_bank among the bank anchors and k_batch among the
    # in-batch ones (else the bank crowds the student-student pairs out). None/None: one joint
    # top-`hard_negatives` over the whole row (the original rule); set both to split.
    k_bank: Optional[int] = None
    k_batch: Optional[int] = None
    # Repulsion from the student's own false positives: per row, this many more non-positive
    # anchors with the largest STUDENT similarity (pairs the teacher mining never picks).
    student_negatives: int = 0

    @property
    def split_quotas(self) -> bool:
        """True when ``k_bank`` / ``k_batch`` replace the joint ``hard_negatives`` quota."""
        return self.k_bank is not None or self.k_batch is not None

    def bank_quota(self) -> int:
        """Teacher-hard negatives a row may take from the bank."""
        return int(self.k_bank or 0) if self.split_quotas else self.hard_negatives

    def anchors_per_row(self) -> int:
        """Mined non-positive anchors per row (upper bound): teacher-hard + student-hard + mismatch."""
        hard = (int(self.k_bank or 0) + int(self.k_batch or 0)) if self.split_quotas else self.hard_negatives
        return hard + self.student_negatives + self.mismatch_k

    def effective_warmup_entries(self) -> int:
        """Bank entries needed before RPSD switches on (``warmup_entries``, else the bank quota).

        With split quotas a ``k_bank`` above ``bank_size`` means "every bank anchor": the warm-up is
        then capped at the bank size (the joint ``hard_negatives`` keeps its strict check).
        """
        if self.warmup_entries is not None:
            return self.warmup_entries
        if self.split_quotas:
            return min(self.bank_quota(), self.bank_size)
        return self.hard_negatives


@dataclass
class RKDConfig:
    """Relational KD baseline (Park et al. 2019) weights."""

    distance_weight: float = 25.0
    angle_weight: float = 50.0


@dataclass
class DistillConfig:
    """Which distillation term(s) to train with, and their weights.

    ``unified`` = lambda_iled * ILED + lambda_rpsd * RPSD; ``iled`` / ``rpsd`` are the two halves
    alone (weighted by their own lambda); ``l2``, ``cosine``, ``rkd``, ``sp`` are baselines weighted
    by ``weight``; ``none`` trains with the margin loss alone.

    Collapse-shortcut fix (docs/method.md), for cosine / iled / rpsd / unified:
    ``center_teacher`` subtracts a running mean of the unit teacher embeddings from the teacher
    (targets and RPSD bank anchors); ``center_student`` subtracts the student's own running mean
    from the student (a common student direction is then neither learned nor penalised);
    ``center_momentum`` is the EMA momentum of both means.
    """

    type: str = "unified"
    lambda_iled: float = 1.0
    lambda_rpsd: float = 1.0
    weight: float = 1.0  # lambda of the baseline terms (l2, cosine, rkd, sp)
    iled: ILEDConfig = field(default_factory=ILEDConfig)
    rpsd: RPSDConfig = field(default_factory=RPSDConfig)
    rkd: RKDConfig = field(default_factory=RKDConfig)
    center_teacher: bool = False
    center_student: bool = False
    center_momentum: float = 0.99

    def validate(self, path: str = "loss.distill") -> None:
        """Raise RecipeError naming the key path of the first invalid value."""
        _choice(self.type, DISTILL_TYPES, f"{path}.type", "distillation type")
        for name in ("lambda_iled", "lambda_rpsd", "weight"):
            _number(getattr(self, name), f"{path}.{name}", low=0.0)
        _boolean(self.center_teacher, f"{path}.center_teacher")
        _boolean(self.center_student, f"{path}.center_student")
        _number(self.center_momentum, f"{path}.center_momentum", low=0.0)
        if self.center_momentum >= 1.0:
            raise RecipeError(f"{path}.center_momentum: must be in [0, 1), got {self.center_momentum!r}")
        if (self.center_teacher or self.center_student) and self.type not in CENTERED_TYPES:
            key = "center_teacher" if self.center_teacher else "center_student"
            raise RecipeError(f"{path}.{key}: centring applies to {', '.join(CENTERED_TYPES)}, not to "
                              f"type {self.type!r}; drop the key")

        _dataclass(self.iled, ILEDConfig, f"{path}.iled")
        _dataclass(self.rpsd, RPSDConfig, f"{path}.rpsd")
        _dataclass(self.rkd, RKDConfig, f"{path}.rkd")

        p = f"{path}.iled"
        c = self.iled
        _choice(c.mining, ILED_MINING, f"{p}.mining", "hard-mining mode")
        _number(c.rho, f"{p}.rho", low=0.0, low_open=True, high=1.0)
        _number(c.beta, f"{p}.beta", low=0.0)
        _number(c.tau, f"{p}.tau", low=0.0, low_open=True)
        _integer(c.mining_warmup_steps, f"{p}.mining_warmup_steps", low=0)

        p = f"{path}.rpsd"
        r = self.rpsd
        _integer(r.bank_size, f"{p}.bank_size", low=1)
        _integer(r.hard_negatives, f"{p}.hard_negatives", low=0)
        _integer(r.mismatch_k, f"{p}.mismatch_k", low=0)
        _integer(r.student_negatives, f"{p}.student_negatives", low=0)
        for key in ("k_bank", "k_batch"):
            if getattr(r, key) is not None:
                _integer(getattr(r, key), f"{p}.{key}", low=0)
        if r.split_quotas and (r.k_bank is None or r.k_batch is None):
            missing = "k_batch" if r.k_batch is None else "k_bank"
            raise RecipeError(f"{p}.{missing}: set both k_bank and k_batch (separate quotas), or neither "
                              f"(one joint quota of {p}.hard_negatives)")
        if r.split_quotas and ((r.k_bank and not r.use_bank) or (r.k_batch and not r.use_in_batch)):
            key = "k_bank" if (r.k_bank and not r.use_bank) else "k_batch"
            raise RecipeError(f"{p}.{key}: a quota for anchors that are switched off "
                              f"({'use_bank' if key == 'k_bank' else 'use_in_batch'} is false); set it to 0")
        _choice(r.variant, RPSD_VARIANTS, f"{p}.variant", "RPSD variant")
        _number(r.smooth_l1_beta, f"{p}.smooth_l1_beta", low=0.0)
        _number(r.kl_temperature, f"{p}.kl_temperature", low=0.0, low_open=True)
        _boolean(r.use_bank, f"{p}.use_bank")
        _boolean(r.use_in_batch, f"{p}.use_in_batch")
        if not (r.use_bank or r.use_in_batch):
            raise RecipeError(
                f"{p}.use_bank / {p}.use_in_batch: at least one must be true "
                "(RPSD needs bank or in-batch anchors)"
            )
        if r.warmup_entries is not None:
            _integer(r.warmup_entries, f"{p}.warmup_entries", low=0)
        if r.use_bank and r.effective_warmup_entries() > r.bank_size:
            key = "warmup_entries" if r.warmup_entries is not None else (
                "k_bank" if r.split_quotas else "hard_negatives")
            raise RecipeError(
                f"{p}.{key}: RPSD waits for {r.effective_warmup_entries()} bank entries but "
                f"{p}.bank_size is {r.bank_size}, so it would never switch on; "
                f"set {p}.warmup_entries <= bank_size"
            )

        p = f"{path}.rkd"
        _number(self.rkd.distance_weight, f"{p}.distance_weight", low=0.0)
        _number(self.rkd.angle_weight, f"{p}.angle_weight", low=0.0)


# --------------------------------------------------------------------------- helpers


def _choice(value: object, choices: tuple[str, ...], key: str, what: str) -> None:
    if isinstance(value, str) and value in choices:
        return
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, choices, n=1)
        if close:
            hint = f"; did you mean '{close[0]}'?"
    raise RecipeError(
        f"{key}: unknown {what} {value!r}{hint} (choose one of: {', '.join(choices)})"
    )


def _number(
    value: object,
    key: str,
    *,
    low: Optional[float] = None,
    low_open: bool = False,
    high: Optional[float] = None,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise RecipeError(f"{key}: must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        lo = f"> {low:g}" if low_open else f">= {low:g}"
        rng = f"in ({low:g}, {high:g}]" if (high is not None and low_open) else lo
        raise RecipeError(f"{key}: must be {rng}, got {value!r}")
    if high is not None and value > high:
        lb = "(" if low_open else "["
        rng = f"in {lb}{low:g}, {high:g}]" if low is not None else f"<= {high:g}"
        raise RecipeError(f"{key}: must be {rng}, got {value!r}")


def _integer(value: object, key: str, *, low: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"{key}: expected an integer, got {value!r}")
    if low is not None and value < low:
        raise RecipeError(f"{key}: must be >= {low}, got {value!r}")


def _boolean(value: object, key: str) -> None:
    if not isinstance(value, bool):
        raise RecipeError(f"{key}: expected true or false, got {value!r}")


def _dataclass(value: object, cls: type, key: str) -> None:
    if not isinstance(value, cls):
        raise RecipeError(f"{key}: expected a mapping of {cls.__name__} fields, got {value!r}")
