"""Face-verification protocol: the numbers match insightface's ``eval/verification.py``.

The protocol (method.md section 6):

* score of a pair = squared L2 distance between the two L2-normalised embeddings (0 .. 4);
* a pair is predicted "same" when ``score < threshold`` (strict, like insightface's ``np.less``);
* the pairs are cut into ``nfolds`` contiguous folds, exactly as ``sklearn.model_selection.KFold(
  n_splits=nfolds, shuffle=False)`` does (the first ``n % nfolds`` folds hold one pair more);
  that is right for a full insightface ``.bin`` / LFW ``pairs.txt`` in its native order, whose
  blocks each hold as many same as different pairs (see "Fold schemes" below for other orders);
* for each fold, the threshold on the grid (default ``0, 0.01, ..., 3.99``) with the best accuracy on
  the other folds is chosen (``np.argmax``: the first best on ties) and applied to the held-out fold;
* accuracy = mean of the per-fold accuracies, std = ``np.std`` (population) of them.

Unlike insightface (which loops over 400 thresholds with boolean masks per fold) this counts
true/false accepts for every threshold at once with sorting and ``np.searchsorted``: O(n log n) time
and O(n) memory, so hundreds of thousands of pairs take well under a second. The integer counts are
the same as the literal algorithm's, so the accuracies are bit-for-bit identical.

Fold schemes (``folds=``). Contiguous folds are only meaningful when every block has the same share of
same pairs. A class-pure order (all same pairs, then all different ones; or LFW folds 6-7 cut into
10 blocks of 120: [120, 120, 60, 0, 0, 120, 120, 60, 0, 0] same pairs) makes each held-out fold
one-class while its threshold is tuned on the other, majority class: random embeddings then score
about 10%, and the "std" measures the class mix, not noise. So:

* ``"contiguous"``: insightface's folds, always;
* ``"balanced"``: stratified, order-preserving folds: the i-th same pair goes to fold ``i % k``, the
  j-th different pair to fold ``(n_same + j) % k``; every fold then holds the same share of same
  pairs (to one pair) and the fold sizes differ by at most one;
* an int array of per-pair fold ids (e.g. the LFW ``pairs.txt`` sets a pair came from, stored by
  ``facedistill prepare pairs`` as ``pair_folds``): those groups are the folds (``nfolds`` is
  ignored, their number is used);
* ``"auto"`` (default): contiguous, unless the contiguous folds' same-pair counts are demonstrably
  unbalanced (chi-square homogeneity statistic above its 1e-4 quantile, :func:`contiguous_is_balanced`),
  then balanced. A full ``.bin`` / ``pairs.txt`` in its order (exactly balanced) and a shuffled
  list stay contiguous, bit-for-bit insightface; a class-pure or block-sorted list becomes balanced.

The scheme used is reported as ``fold_scheme`` with the same-pair count of each fold.

On top of the insightface accuracy this reports a ROC over all pairs (no folds), its AUC, the EER
and TAR at fixed FARs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from facedistill.errors import DataError

__all__ = [
    "DEFAULT_FAR_TARGETS",
    "MIN_PAIRS_PER_FOLD",
    "VerificationResult",
    "default_thresholds",
    "FOLD_SCHEMES",
    "assign_folds",
    "balanced_fold_ids",
    "contiguous_is_balanced",
    "far_key",
    "kfold_slices",
    "pair_scores",
    "paired_accuracy_test",
    "paired_comparison",
    "roc_curve",
    "verification_metrics",
]

DEFAULT_FAR_TARGETS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
MIN_PAIRS_PER_FOLD = 10
FOLD_SCHEMES = ("auto", "contiguous", "balanced")
_AUTO_Z = 3.719  # one-sided normal quantile of p = 1e-4 (Wilson-Hilferty chi-square quantile below)


def default_thresholds() -> np.ndarray:
    """insightface's grid: ``np.arange(0, 4, 0.01)`` (400 values, float64)."""
    return np.arange(0, 4, 0.01)


def far_key(far: float) -> str:
    """``1e-3`` -> ``"1e-3"`` (the key used in ``tar_at_far``)."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def pair_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Squared L2 distance between the L2-normalised rows of ``emb_a`` and ``emb_b`` (float64, 0..4).

    Computed as ``sum((a - b)**2)`` on the normalised vectors, like insightface (not as
    ``2 - 2 cos``), in float64.
    """
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise DataError(f"pair_scores needs two 2-D embedding arrays, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise DataError(f"pair_scores needs embeddings of the same shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("embeddings contain NaN or infinite values")
    a = _l2_normalise(a)
    b = _l2_normalise(b)
    diff = a - b
    return np.einsum("ij,ij->i", diff, diff)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    # Like sklearn.preprocessing.normalize: rows of norm 0 stay 0.
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, None]


def kfold_slices(n: int, nfolds: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` of each test fold, as ``KFold(nfolds, shuffle=False)`` cuts them.

    sklearn gives every fold ``n // nfolds`` samples and one more to each of the first
    ``n % nfolds`` folds. ``nfolds == 1`` follows insightface's ``LFold``: train = test = all.
    """
    if nfolds < 1:
        raise ValueError(f"nfolds must be >= 1, got {nfolds}")
    if nfolds == 1:
        return [(0, n)]
    sizes = np.full(nfolds, n // nfolds, dtype=np.int64)
    sizes[: n % nfolds] += 1
    stops = np.cumsum(sizes)
    starts = stops - sizes
    return [(int(s), int(e)) for s, e in zip(starts, stops)]


def contiguous_fold_ids(n: int, nfolds: int) -> np.ndarray:
    """Per-pair fold id of :func:`kfold_slices` (``nfolds == 1``: all zeros)."""
    ids = np.zeros(n, dtype=np.int64)
    for f, (start, stop) in enumerate(kfold_slices(n, nfolds)):
        ids[start:stop] = f
    return ids


def balanced_fold_ids(same: np.ndarray, nfolds: int) -> np.ndarray:
    """Stratified, order-preserving fold ids: same pairs dealt round-robin, then different pairs.

    The i-th same pair (in list order) gets fold ``i % k``; the j-th different pair gets
    ``(n_same + j) % k``. Each fold holds ``n_same // k`` or one more same pairs (likewise for
    different ones) and the fold sizes differ by at most one. Deterministic: no shuffling.
    """
    same = np.asarray(same).astype(bool).reshape(-1)
    if nfolds < 1:
        raise ValueError(f"nfolds must be >= 1, got {nfolds}")
    ids = np.empty(same.size, dtype=np.int64)
    n_pos = int(same.sum())
    ids[same] = np.arange(n_pos) % nfolds
    ids[~same] = (n_pos + np.arange(same.size - n_pos)) % nfolds
    return ids


def contiguous_is_balanced(same: np.ndarray, nfolds: int) -> bool:
    """False when the contiguous folds' same-pair counts are demonstrably unequal.

    Pearson's chi-square homogeneity statistic over the folds, sum_f (pos_f - m_f p)^2 / (m_f p (1-p)),
    is compared with the 1e-4 upper quantile of chi2(k - 1) (Wilson-Hilferty). A list in random
    order passes with probability 0.9999; an exactly balanced one (a full .bin) has statistic 0; a
    class-pure order (statistic ~ n) fails for any n >= 40 at 10 folds.
    """
    same = np.asarray(same).astype(bool).reshape(-1)
    n = same.size
    if nfolds < 2 or n == 0:
        return True
    p = float(same.mean())
    if p in (0.0, 1.0):
        return True
    stat = 0.0
    for start, stop in kfold_slices(n, nfolds):
        m = stop - start
        if m == 0:
            continue
        exp = m * p
        stat += (float(same[start:stop].sum()) - exp) ** 2 / (exp * (1.0 - p))
    df = nfolds - 1
    c = 2.0 / (9.0 * df)
    quantile = df * (1.0 - c + _AUTO_Z * math.sqrt(c)) ** 3
    return stat <= quantile


def assign_folds(same: np.ndarray, nfolds: int, folds: str | np.ndarray = "auto") -> tuple[np.ndarray, str]:
    """(per-pair fold ids 0..k-1, scheme name) for ``folds`` (see the module doc)."""
    same = np.asarray(same).astype(bool).reshape(-1)
    n = same.size
    if isinstance(folds, str):
        if folds not in FOLD_SCHEMES:
            raise DataError(f"unknown fold scheme {folds!r} (choose one of: {', '.join(FOLD_SCHEMES)}, "
                            "or pass per-pair fold ids)")
        scheme = folds
        if scheme == "auto":
            scheme = "contiguous" if contiguous_is_balanced(same, nfolds) else "balanced"
        if scheme == "contiguous":
            return contiguous_fold_ids(n, nfolds), scheme
        return balanced_fold_ids(same, nfolds), scheme
    ids = np.asarray(folds).reshape(-1)
    if ids.shape[0] != n:
        raise DataError(f"got {ids.shape[0]} fold ids for {n} pairs")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"fold ids must be integers, got dtype {ids.dtype}")
    _, dense = np.unique(ids, return_inverse=True)
    return dense.astype(np.int64).reshape(-1), "source"


@dataclass
class VerificationResult:
    """Result of :func:`verification_metrics`. ``to_dict()`` leaves out the per-pair arrays."""

    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    threshold: float
    tar_at_far: dict[str, float | None]
    tar_at_far_note: dict[str, str]
    eer: float
    auc: float
    num_pairs: int
    num_positive: int
    num_negative: int
    fold_thresholds: list[float] = field(default_factory=list)
    nfolds: int = 10
    fold_scheme: str = "contiguous"
    fold_positives: list[int] = field(default_factory=list)  # same pairs per fold
    # mean cosine of the different / same pairs, from the scores (cos = 1 - d/2 for unit vectors):
    # a collapse (every face pointing one way) shows as an impostor cosine rising towards 1
    impostor_cosine: float = float("nan")
    genuine_cosine: float = float("nan")
    scores: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    same: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    far: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    tar: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    roc_thresholds: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    # per pair: judged right at its fold's threshold (the k-fold accuracy counts exactly these), so
    # two models on the same pairs can be compared pair by pair (a paired test, not two accuracies)
    pair_correct: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (plain floats/ints/lists; the arrays are left out)."""
        return {
            "accuracy": float(self.accuracy),
            "accuracy_std": float(self.accuracy_std),
            "fold_accuracies": [float(a) for a in self.fold_accuracies],
            "threshold": float(self.threshold),
            "fold_thresholds": [float(t) for t in self.fold_thresholds],
            "nfolds": int(self.nfolds),
            "fold_scheme": self.fold_scheme,
            "fold_positives": [int(p) for p in self.fold_positives],
            "impostor_cosine": float(self.impostor_cosine),
            "genuine_cosine": float(self.genuine_cosine),
            "tar_at_far": {k: (None if v is None else float(v)) for k, v in self.tar_at_far.items()},
            "tar_at_far_note": dict(self.tar_at_far_note),
            "eer": float(self.eer),
            "auc": float(self.auc),
            "num_pairs": int(self.num_pairs),
            "num_positive": int(self.num_positive),
            "num_negative": int(self.num_negative),
        }


def _accepts_below(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t: how many of ``sorted_scores`` are ``< t`` (strict)."""
    return np.searchsorted(sorted_scores, thresholds, side="left").astype(np.int64)


def verification_metrics(
    scores: np.ndarray,
    same: np.ndarray,
    nfolds: int = 10,
    thresholds: np.ndarray | None = None,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    folds: str | np.ndarray = "auto",
) -> VerificationResult:
    """insightface's k-fold verification accuracy, plus ROC/AUC/EER/TAR@FAR over all pairs.

    ``scores``: squared L2 distances (lower = more similar), e.g. from :func:`pair_scores`.
    ``same``: bool per pair (True = same identity).
    ``folds``: ``"auto"`` | ``"contiguous"`` | ``"balanced"`` or per-pair fold ids (module doc);
    the scheme used is ``result.fold_scheme``. ``impostor_cosine`` / ``genuine_cosine`` read the
    scores as squared distances of unit vectors (cos = 1 - d/2), as :func:`pair_scores` gives.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    same_arr = np.asarray(same)
    if same_arr.dtype != np.bool_:
        if not np.isin(same_arr, (0, 1)).all():
            raise DataError("`same` must be boolean (or 0/1) per pair")
        same_arr = same_arr.astype(bool)
    same_arr = same_arr.reshape(-1)
    n = int(scores.shape[0])
    if same_arr.shape[0] != n:
        raise DataError(f"got {n} scores but {same_arr.shape[0]} same/different labels")
    if nfolds < 1:
        raise DataError(f"nfolds must be >= 1, got {nfolds}")
    fold_ids, scheme = assign_folds(same_arr, nfolds, folds)
    if scheme == "source":
        nfolds = int(fold_ids.max()) + 1 if n else 0
        if nfolds < 2:
            raise DataError(f"the given fold ids hold {nfolds} fold(s); cross-validation needs at least 2 "
                            "(use folds='balanced' to cut the pairs into nfolds stratified folds)")
    needed = MIN_PAIRS_PER_FOLD * nfolds
    if n < needed:
        raise DataError(
            f"too few pairs for {nfolds}-fold verification: got {n} pairs, need at least {needed} "
            f"({MIN_PAIRS_PER_FOLD} per fold)"
        )
    if not np.isfinite(scores).all():
        raise DataError("pair scores contain NaN or infinite values")
    n_pos = int(same_arr.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"verification needs both same and different pairs: got {n_pos} same and {n_neg} different"
        )

    thr = default_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 0:
        raise DataError("thresholds must not be empty")

    if scheme == "source":
        small = np.bincount(fold_ids, minlength=nfolds).min()
        if small < MIN_PAIRS_PER_FOLD:
            raise DataError(f"a given fold holds {small} pairs; each needs at least {MIN_PAIRS_PER_FOLD}")

    # --- k-fold accuracy (insightface calculate_roc) -------------------------------------------------
    members = [np.nonzero(fold_ids == f)[0] for f in range(nfolds)]
    sizes = [int(idx.size) for idx in members]
    fold_pos = [int(same_arr[idx].sum()) for idx in members]
    # correct[f, j] = number of pairs of fold f classified correctly at threshold j
    correct = np.empty((nfolds, thr.size), dtype=np.int64)
    for f, idx in enumerate(members):
        s = scores[idx]
        m = same_arr[idx]
        pos = np.sort(s[m])
        neg = np.sort(s[~m])
        tp = _accepts_below(pos, thr)
        fp = _accepts_below(neg, thr)
        correct[f] = tp + (neg.size - fp)  # tp + tn
    total_correct = correct.sum(axis=0)

    fold_acc = np.zeros(nfolds, dtype=np.float64)
    fold_thr = np.zeros(nfolds, dtype=np.float64)
    for f, size in enumerate(sizes):
        if nfolds == 1:
            train_correct, n_train = total_correct, n
        else:
            train_correct, n_train = total_correct - correct[f], n - size
        # Same values as insightface's float(tp + tn) / size per threshold, so argmax picks the same.
        acc_train = train_correct / float(n_train)
        best = int(np.argmax(acc_train))
        fold_thr[f] = thr[best]
        fold_acc[f] = float(correct[f, best]) / float(size)
    pair_correct = np.empty(n, dtype=bool)
    for f, idx in enumerate(members):   # accepted = distance < threshold, as _accepts_below counts
        pair_correct[idx] = (scores[idx] < fold_thr[f]) == same_arr[idx]

    # --- ROC over all pairs ---------------------------------------------------------------------------
    far_full, tar_full, thr_full = _roc_full(scores, same_arr, n_pos, n_neg)
    auc = _trapezoid(tar_full, far_full)
    eer = _eer(far_full, tar_full)

    tar_at_far: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for target in far_targets:
        target = float(target)
        key = far_key(target)
        if n_neg * target < 1.0 - 1e-9:
            need = int(math.ceil(1.0 / target - 1e-9))
            tar_at_far[key] = None
            notes[key] = f"needs >= {need} negative pairs to measure FAR {key}, got {n_neg}"
            continue
        ok = np.nonzero(far_full <= target)[0]
        # far_full starts at 0, so ok is never empty; FAR and TAR are non-decreasing along the ROC,
        # so the last point with FAR <= target (the largest threshold) has the highest TAR.
        tar_at_far[key] = float(tar_full[ok[-1]])

    far_c, tar_c, thr_c = _drop_intermediate(far_full, tar_full, thr_full)
    return VerificationResult(
        accuracy=float(np.mean(fold_acc)),
        accuracy_std=float(np.std(fold_acc)),
        fold_accuracies=[float(a) for a in fold_acc],
        threshold=float(np.mean(fold_thr)),
        fold_thresholds=[float(t) for t in fold_thr],
        nfolds=int(nfolds),
        fold_scheme=scheme,
        fold_positives=fold_pos,
        impostor_cosine=float(1.0 - scores[~same_arr].mean() / 2.0),
        genuine_cosine=float(1.0 - scores[same_arr].mean() / 2.0),
        tar_at_far=tar_at_far,
        tar_at_far_note=notes,
        eer=float(eer),
        auc=float(auc),
        num_pairs=n,
        num_positive=n_pos,
        num_negative=n_neg,
        scores=scores,
        same=same_arr,
        far=far_c,
        tar=tar_c,
        roc_thresholds=thr_c,
        pair_correct=pair_correct,
    )


def _roc_full(
    scores: np.ndarray, same: np.ndarray, n_pos: int, n_neg: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ROC operating point: accept pairs with ``score <= d`` for each distinct score ``d``.

    Starts with (0, 0) at threshold -inf. Returns (far, tar, thresholds), thresholds ascending.
    """
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    y = same[order]
    # last index of each run of equal scores
    distinct = np.nonzero(np.diff(s))[0]
    ends = np.r_[distinct, s.size - 1]
    tps = np.cumsum(y, dtype=np.int64)[ends]
    fps = (ends + 1) - tps
    far = np.r_[0.0, fps / float(n_neg)]
    tar = np.r_[0.0, tps / float(n_pos)]
    thresholds = np.r_[-np.inf, s[ends]]
    return far, tar, thresholds


def roc_curve(
    scores: np.ndarray, same: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of distance scores (lower = more similar): ``(far, tar, thresholds)``.

    Point ``i`` accepts the pairs with ``score <= thresholds[i]``; the first point is (0, 0).
    ``drop_intermediate`` removes collinear points like sklearn (the curve and its AUC are unchanged).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    same = np.asarray(same).astype(bool).reshape(-1)
    n_pos = int(same.sum())
    n_neg = int(same.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"a ROC needs both same and different pairs: got {n_pos} same and {n_neg} different")
    far, tar, thr = _roc_full(scores, same, n_pos, n_neg)
    if drop_intermediate:
        return _drop_intermediate(far, tar, thr)
    return far, tar, thr


def _drop_intermediate(far: np.ndarray, tar: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if far.size <= 2:
        return far, tar, thr
    keep = np.r_[True, np.logical_or(np.diff(far, 2) != 0, np.diff(tar, 2) != 0), True]
    return far[keep], tar[keep], thr[keep]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    fn = getattr(np, "trapezoid", None) or getattr(np, "trapz")
    return float(fn(y, x))


def _eer(far: np.ndarray, tar: np.ndarray) -> float:
    """Equal error rate: where FAR == FRR (= 1 - TAR), linearly interpolated along the ROC."""
    d = (1.0 - tar) - far  # 1 at (0, 0), -1 at (1, 1), non-increasing
    i = int(np.argmax(d <= 0.0))
    if i == 0:
        return float(far[0])
    d0, d1 = d[i - 1], d[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def paired_accuracy_test(first_correct: np.ndarray, second_correct: np.ndarray) -> dict[str, Any]:
    """Is the second model's accuracy on the same pairs really lower? One-sided exact McNemar test.

    Only pairs the two models judge differently carry information: ``lost`` (right before, wrong
    after) and ``gained``. Under "no difference" each of those ``lost + gained`` pairs goes either
    way with probability 1/2, so ``p_value`` = P(Binomial(lost + gained, 1/2) >= lost). A drop of a
    few pairs out of 600 that a coin would produce as often is not evidence (p well above 0.05).
    """
    a = np.asarray(first_correct, dtype=bool).reshape(-1)
    b = np.asarray(second_correct, dtype=bool).reshape(-1)
    if a.shape != b.shape:
        raise DataError(f"paired test needs the same pairs: got {a.size} and {b.size} judgements")
    lost, gained = int((a & ~b).sum()), int((~a & b).sum())
    n = lost + gained
    p = sum(math.comb(n, k) for k in range(lost, n + 1)) / 2 ** n if n else 1.0
    return {"pairs": int(a.size), "lost": lost, "gained": gained, "p_value": float(p),
            "drop_points": 100.0 * (lost - gained) / a.size if a.size else 0.0}


TIE_ALPHA = 0.05  # a comparison with p above this is reported as "a tie"


def paired_comparison(reference_correct: np.ndarray, model_correct: np.ndarray,
                      alpha: float = TIE_ALPHA) -> dict[str, Any]:
    """A model against a reference on the same pairs: pairs won / lost and a two-sided exact McNemar p.

    ``won``: pairs the model judges right and the reference wrong; ``lost``: the reverse. The
    two-sided p is twice the smaller one-sided p of :func:`paired_accuracy_test` (capped at 1).
    ``verdict`` is "better" / "worse" when ``p <= alpha``, else "a tie": two accuracies a point apart
    on a few hundred discordant pairs can be a coin's doing.
    """
    worse = paired_accuracy_test(reference_correct, model_correct)   # its "lost": reference right, model wrong
    better = paired_accuracy_test(model_correct, reference_correct)
    p = min(1.0, 2.0 * min(worse["p_value"], better["p_value"]))
    won, lost = worse["gained"], worse["lost"]
    verdict = "a tie" if p > alpha or won == lost else ("better" if won > lost else "worse")
    return {"pairs": worse["pairs"], "won": int(won), "lost": int(lost), "p_value": float(p), "verdict": verdict,
            "diff_points": 100.0 * (won - lost) / worse["pairs"] if worse["pairs"] else 0.0, "alpha": float(alpha)}
