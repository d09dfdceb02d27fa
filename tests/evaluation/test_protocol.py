"""verification_metrics must give insightface's numbers (eval/verification.py, calculate_roc)."""

from __future__ import annotations

import json
import math
import time
import tracemalloc

import numpy as np
import pytest

from facedistill.errors import DataError
from facedistill.evaluation.protocol import (
    VerificationResult,
    assign_folds,
    far_key,
    kfold_slices,
    pair_scores,
    roc_curve,
    verification_metrics,
)

GRID = np.arange(0, 4, 0.01)


# ----------------------------------------------------------------------------------------------------
# Independent reference: insightface's algorithm written out literally (materialised, loops).
# ----------------------------------------------------------------------------------------------------
def ref_kfold(n: int, k: int):
    """sklearn KFold(n_splits=k, shuffle=False): contiguous, the first n % k folds one larger."""
    idx = np.arange(n)
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    cur = 0
    for size in sizes:
        test = idx[cur : cur + size]
        train = np.concatenate([idx[:cur], idx[cur + size :]])
        yield train, test
        cur += size


def ref_accuracy(threshold, dist, issame):
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, issame))
    tn = np.sum(np.logical_and(~predict, ~issame))
    return float(tp + tn) / dist.size


def ref_verification(dist, issame, nfolds=10, thresholds=GRID):
    accs, best_thrs = [], []
    for train, test in ref_kfold(len(dist), nfolds):
        acc_train = np.zeros(len(thresholds))
        for j, t in enumerate(thresholds):
            acc_train[j] = ref_accuracy(t, dist[train], issame[train])
        best = np.argmax(acc_train)
        best_thrs.append(thresholds[best])
        accs.append(ref_accuracy(thresholds[best], dist[test], issame[test]))
    accs = np.array(accs)
    return np.mean(accs), np.std(accs), accs, np.mean(best_thrs)


def ref_tar_at_far(dist, issame, far_target):
    """Brute force: over every 'accept dist <= d' operating point, the best TAR with FAR <= target."""
    n_pos, n_neg = issame.sum(), (~issame).sum()
    best = 0.0
    for d in np.unique(dist):
        acc = dist <= d
        far = np.sum(acc & ~issame) / n_neg
        if far <= far_target:
            best = max(best, np.sum(acc & issame) / n_pos)
    return best


def random_scores(n, seed, tie_fraction=0.4):
    """Scores where same pairs are closer; a large share lies exactly on grid values (ties)."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    dist = np.where(same, rng.normal(0.9, 0.35, n), rng.normal(1.6, 0.35, n)).clip(0, 3.99)
    on_grid = rng.random(n) < tie_fraction
    dist[on_grid] = GRID[np.clip(np.round(dist[on_grid] * 100).astype(int), 0, 399)]
    return dist, same


# ----------------------------------------------------------------------------------------------------
def test_kfold_matches_sklearn_layout():
    assert kfold_slices(103, 10) == [(0, 11), (11, 22), (22, 33), (33, 43), (43, 53), (53, 63), (63, 73),
                                     (73, 83), (83, 93), (93, 103)]
    assert kfold_slices(6000, 10)[0] == (0, 600)
    assert kfold_slices(50, 1) == [(0, 50)]


@pytest.mark.parametrize("n,seed,nfolds", [(1003, 0, 10), (997, 1, 10), (600, 2, 10), (257, 3, 5)])
def test_matches_literal_insightface(n, seed, nfolds):
    dist, same = random_scores(n, seed)
    assert np.isin(dist, GRID).sum() > n // 4  # many exact ties with the grid
    res = verification_metrics(dist, same, nfolds=nfolds)
    acc, std, accs, thr = ref_verification(dist, same, nfolds)
    # identical integer counts -> bit-identical floats
    assert res.accuracy == acc
    assert res.accuracy_std == std
    assert res.fold_accuracies == list(accs)
    assert res.threshold == pytest.approx(thr, abs=1e-12)
    assert res.num_pairs == n and res.num_positive == same.sum() and res.num_negative == (~same).sum()


def test_ties_on_grid_use_strict_less():
    # All same pairs exactly at 0.5 and different pairs exactly at 0.6: thresholds 0.51..0.60 separate
    # them perfectly (0.5 < t); t = 0.5 would accept nothing ('<' is strict), so the first best is 0.51.
    same = np.tile([True, False], 50)
    dist = np.where(same, GRID[50], GRID[60])
    res = verification_metrics(dist, same)
    assert res.accuracy == 1.0
    assert res.fold_thresholds == [GRID[51]] * 10
    acc, _, _, thr = ref_verification(dist, same)
    assert acc == 1.0 and thr == pytest.approx(GRID[51])


def test_hand_worked_example():
    # 20 pairs, 2 folds of 10, grid [0.5, 1.0, 1.5, 2.0].
    # fold 0: same at 0.2 0.4 0.6 1.2 1.6 | diff at 0.8 1.4 1.8 2.5 3.0
    # fold 1: same at 0.3 0.7 0.9 1.1 1.9 | diff at 1.0 1.3 1.7 2.2 2.6
    same = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0] * 2, dtype=bool)
    dist = np.array([0.2, 0.4, 0.6, 1.2, 1.6, 0.8, 1.4, 1.8, 2.5, 3.0,
                     0.3, 0.7, 0.9, 1.1, 1.9, 1.0, 1.3, 1.7, 2.2, 2.6])
    grid = np.array([0.5, 1.0, 1.5, 2.0])
    # correct counts (tp + tn) per threshold:
    #   fold 0: t=.5: 2+5=7  t=1: 3+4=7  t=1.5: 4+3=7  t=2: 5+2=7
    #   fold 1: t=.5: 1+5=6  t=1: 3+5=8  t=1.5: 4+3=7  t=2: 5+2=7   (1.0 < 1.0 is False: a tie)
    # test fold 0 <- train fold 1: best t=1.0 -> fold 0 acc 7/10
    # test fold 1 <- train fold 0: all tie at 7 -> first best t=0.5 -> fold 1 acc 6/10
    res = verification_metrics(dist, same, nfolds=2, thresholds=grid)
    assert res.fold_accuracies == [0.7, 0.6]
    assert res.fold_thresholds == [1.0, 0.5]
    assert res.accuracy == pytest.approx(0.65)
    assert res.accuracy_std == pytest.approx(0.05)
    assert res.threshold == pytest.approx(0.75)


def test_perfectly_separable():
    rng = np.random.default_rng(5)
    same = rng.random(500) < 0.5
    dist = np.where(same, rng.uniform(0.1, 0.9, 500), rng.uniform(1.2, 3.0, 500))
    res = verification_metrics(dist, same)
    assert res.accuracy == 1.0 and res.accuracy_std == 0.0
    assert res.eer == 0.0
    assert res.auc == 1.0
    assert res.tar_at_far["1e-1"] == 1.0
    assert res.far[0] == 0.0 and res.tar[-1] == 1.0


def test_roc_auc_eer_tar_at_far_against_brute_force():
    dist, same = random_scores(2500, 11)
    assert 1000 <= (~same).sum() < 10000
    res = verification_metrics(dist, same, far_targets=(1e-1, 1e-2, 1e-3, 1e-4))
    n_neg = int((~same).sum())
    for target in (1e-1, 1e-2, 1e-3):
        assert res.tar_at_far[far_key(target)] == pytest.approx(ref_tar_at_far(dist, same, target))
    assert res.tar_at_far["1e-4"] is None
    assert "needs >= 10000 negative pairs" in res.tar_at_far_note["1e-4"]
    assert str(n_neg) in res.tar_at_far_note["1e-4"]
    # AUC = P(dist_pos < dist_neg) + 0.5 P(tie)  (Mann-Whitney)
    pos, neg = dist[same], dist[~same]
    less = (pos[:, None] < neg[None, :]).mean()
    tie = (pos[:, None] == neg[None, :]).mean()
    assert res.auc == pytest.approx(less + 0.5 * tie, abs=1e-12)
    # EER lies where FAR and FRR cross; the unreduced ROC brackets it
    far, tar, _ = roc_curve(dist, same, drop_intermediate=False)
    frr = 1 - tar
    i = np.argmax(frr - far <= 0)
    assert min(far[i - 1], frr[i]) - 1e-12 <= res.eer <= max(far[i], frr[i - 1]) + 1e-12
    # dropping collinear points keeps the curve's area
    fn = getattr(np, "trapezoid", None) or np.trapz
    assert fn(res.tar, res.far) == pytest.approx(fn(tar, far))
    assert len(res.far) <= len(far)


def test_tar_at_far_none_when_too_few_negatives():
    same = np.r_[np.ones(150, bool), np.zeros(50, bool)]
    dist = np.r_[np.linspace(0, 1, 150), np.linspace(1.5, 3, 50)]
    res = verification_metrics(dist, same)
    assert res.tar_at_far["1e-1"] == 1.0
    for k in ("1e-2", "1e-3", "1e-4", "1e-5", "1e-6"):
        assert res.tar_at_far[k] is None
    assert "needs >= 100 negative pairs" in res.tar_at_far_note["1e-2"]
    assert "needs >= 1000000 negative pairs" in res.tar_at_far_note["1e-6"]
    assert "1e-1" not in res.tar_at_far_note


def test_too_few_pairs():
    dist, same = random_scores(99, 0)
    with pytest.raises(DataError, match=r"99 pairs.*100"):
        verification_metrics(dist, same)
    verification_metrics(dist, same, nfolds=9)  # 99 >= 90
    with pytest.raises(DataError, match="same and different"):
        verification_metrics(np.linspace(0, 1, 100), np.ones(100, bool))
    with pytest.raises(DataError, match="labels"):
        verification_metrics(np.zeros(100), np.ones(99, bool))


def test_pair_scores():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 8)).astype(np.float32)
    b = rng.normal(size=(50, 8)).astype(np.float32)
    s = pair_scores(a, b)
    assert s.dtype == np.float64 and s.shape == (50,)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(s, 2 - 2 * (an * bn).sum(1), atol=1e-6)
    assert np.all((s >= 0) & (s <= 4))
    np.testing.assert_allclose(pair_scores(a, 3 * a), 0, atol=1e-12)
    with pytest.raises(DataError):
        pair_scores(a, b[:10])


def test_to_dict_is_json():
    dist, same = random_scores(500, 4)
    res = verification_metrics(dist, same)
    assert isinstance(res, VerificationResult)
    d = res.to_dict()
    text = json.dumps(d)
    for k in ("scores", "same", "far", "tar"):
        assert k not in d
    for k in ("accuracy", "accuracy_std", "fold_accuracies", "threshold", "tar_at_far", "tar_at_far_note",
              "eer", "auc", "num_pairs", "num_positive", "num_negative"):
        assert k in d
    assert json.loads(text)["tar_at_far"]["1e-6"] is None


def test_large_run_fast_and_bounded():
    n = 300_000
    rng = np.random.default_rng(9)
    same = rng.random(n) < 0.5
    dist = np.where(same, rng.normal(0.8, 0.3, n), rng.normal(1.7, 0.3, n)).clip(0, 4)
    tracemalloc.start()
    t0 = time.perf_counter()
    res = verification_metrics(dist, same)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert 0.9 < res.accuracy < 1.0
    assert res.tar_at_far["1e-5"] is not None and res.tar_at_far["1e-6"] is None
    assert elapsed < 5.0, elapsed
    # a (n x 400) bool matrix alone would be 120 MB; we stay at a few copies of the n-vector
    assert peak < 60e6, peak


# ----------------------------------------------------------------------------------------------------
# Fold schemes: contiguous folds of a class-pure order are meaningless; auto detects and balances.
# ----------------------------------------------------------------------------------------------------
def _random_embedding_scores(n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 64)), rng.normal(size=(n, 64))
    return pair_scores(a, b)


def test_class_pure_order_scores_chance_on_balanced_folds():
    n = 1200
    same = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]  # all same pairs, then all different
    scores = _random_embedding_scores(n, 0)
    contiguous = verification_metrics(scores, same, folds="contiguous")
    auto = verification_metrics(scores, same)  # default: auto
    balanced = verification_metrics(scores, same, folds="balanced")
    assert contiguous.fold_scheme == "contiguous" and contiguous.accuracy < 0.2  # the artefact: ~10% or less
    assert auto.fold_scheme == "balanced" and auto.accuracy == balanced.accuracy
    assert 0.4 < auto.accuracy < 0.6
    assert auto.fold_positives == [60] * 10 and auto.to_dict()["fold_scheme"] == "balanced"


def test_lfw_folds_6_7_layout_is_rebalanced():
    # LFW pairs.txt order: per source fold 300 same then 300 different; folds 6-7 = 1,200 pairs.
    block = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    same = np.r_[block, block]
    contiguous = verification_metrics(np.zeros(1200) + 1.0, same, folds="contiguous")
    assert contiguous.fold_positives == [120, 120, 60, 0, 0, 120, 120, 60, 0, 0]
    scores = _random_embedding_scores(1200, 1)
    assert verification_metrics(scores, same).fold_scheme == "balanced"
    source = verification_metrics(scores, same, folds=np.repeat([6, 7], 600))
    assert source.fold_scheme == "source" and source.nfolds == 2 and source.fold_positives == [300, 300]


def test_auto_keeps_insightface_folds_for_a_full_bin_order():
    # A .bin/pairs.txt in native order: 10 blocks of 300 same + 300 different -> exactly balanced.
    rng = np.random.default_rng(3)
    block = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    same = np.tile(block, 10)
    dist = np.where(same, rng.normal(0.9, 0.4, same.size), rng.normal(1.6, 0.4, same.size)).clip(0, 3.99)
    got = verification_metrics(dist, same)
    acc, std, accs, thr = ref_verification(dist, same)
    assert got.fold_scheme == "contiguous"
    assert got.accuracy == acc and got.accuracy_std == std and got.fold_accuracies == list(accs)


def test_balanced_fold_ids_are_stratified():
    from facedistill.evaluation.protocol import balanced_fold_ids, contiguous_is_balanced

    rng = np.random.default_rng(0)
    same = rng.random(1003) < 0.3
    ids = balanced_fold_ids(same, 10)
    pos = np.bincount(ids[same], minlength=10)
    size = np.bincount(ids, minlength=10)
    assert pos.max() - pos.min() <= 1 and size.max() - size.min() <= 1
    assert contiguous_is_balanced(same, 10)  # a random order is not flagged
    assert not contiguous_is_balanced(np.sort(same), 10)


def test_bad_fold_scheme_and_ids():
    dist, same = random_scores(200, 0)
    with pytest.raises(DataError, match="fold scheme"):
        verification_metrics(dist, same, folds="interleaved")
    with pytest.raises(DataError, match="fold ids"):
        verification_metrics(dist, same, folds=np.zeros(10, dtype=int))
    with pytest.raises(DataError, match="at least 2"):
        verification_metrics(dist, same, folds=np.zeros(200, dtype=int))


def test_pair_correct_is_what_the_fold_accuracies_count():
    rng = np.random.default_rng(3)
    same = np.repeat([True, False], 300)
    scores = np.where(same, rng.normal(0.8, 0.3, 600), rng.normal(1.3, 0.3, 600))
    res = verification_metrics(scores, same, nfolds=10, folds="balanced")
    fold_ids, _ = assign_folds(same, 10, "balanced")
    for f, acc in enumerate(res.fold_accuracies):
        assert res.pair_correct[fold_ids == f].mean() == pytest.approx(acc)
    assert res.pair_correct.mean() == pytest.approx(res.accuracy)  # equal-sized folds


def test_paired_accuracy_test_is_an_exact_one_sided_mcnemar():
    from facedistill.evaluation.protocol import paired_accuracy_test

    first = np.ones(600, bool)
    second = first.copy()
    second[:10] = False     # 10 lost
    first[590:] = False     # 10 judged wrong by the first model only: 10 gained
    first[580:583] = False
    second[580:583] = False  # wrong in both: carry no information
    r = paired_accuracy_test(first, second)
    assert (r["lost"], r["gained"], r["pairs"]) == (10, 10, 600)
    assert r["p_value"] == pytest.approx(sum(math.comb(20, k) for k in range(10, 21)) / 2 ** 20)
    assert r["drop_points"] == 0.0
    r = paired_accuracy_test(np.ones(5, bool), np.array([0, 0, 0, 1, 1], bool))
    assert (r["lost"], r["gained"]) == (3, 0) and r["p_value"] == pytest.approx(1 / 8)
    assert paired_accuracy_test(np.ones(4, bool), np.ones(4, bool))["p_value"] == 1.0
    with pytest.raises(DataError, match="same pairs"):
        paired_accuracy_test(np.ones(4, bool), np.ones(5, bool))


def test_paired_comparison_is_two_sided_and_says_a_tie_when_p_is_above_0_05():
    from facedistill.evaluation.protocol import paired_comparison

    ref = np.ones(600, bool)
    model = ref.copy()
    model[:2] = False        # 2 lost
    ref[590:] = False        # 10 won
    r = paired_comparison(ref, model)
    p = 2 * sum(math.comb(12, k) for k in range(10, 13)) / 2 ** 12     # 2 x P(Bin(12, 1/2) >= 10) = 0.039
    assert (r["won"], r["lost"], r["pairs"]) == (10, 2, 600) and r["p_value"] == pytest.approx(p)
    assert r["verdict"] == "better" and r["diff_points"] == pytest.approx(100 * 8 / 600)
    swapped = paired_comparison(model, ref)       # symmetric: the same p, the other way round
    assert (swapped["won"], swapped["lost"], swapped["verdict"]) == (2, 10, "worse")
    assert swapped["p_value"] == pytest.approx(p)
    model[2:4] = False       # 4 lost, 10 won: p = 0.18, not evidence
    r = paired_comparison(ref, model)
    assert r["verdict"] == "a tie" and r["p_value"] == pytest.approx(
        2 * sum(math.comb(14, k) for k in range(10, 15)) / 2 ** 14)
    assert paired_comparison(ref, ref) == {**paired_comparison(ref, ref), "won": 0, "lost": 0, "p_value": 1.0,
                                           "verdict": "a tie"}
