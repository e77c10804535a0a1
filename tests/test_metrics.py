"""Metrics against hand-computed fixtures (RecBole style), brute-force tie enumeration and scikit-learn."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mmrec.metrics import (
    counts_from_target_ranks,
    evaluate_counts,
    evaluate_long,
    evaluate_matrix,
    global_auc,
)

# Fixture: 3 users x 5 candidates, one positive each (label column marked *).
#   u0: scores [0.9, 0.8*, 0.3, 0.2, 0.1]  -> one negative above: rank 2, no tie
#   u1: scores [0.5*, 0.5, 0.5, 0.1, 0.0]  -> tied with 2 negatives: pessimistic 3, optimistic 1,
#                                             expected uniform {1,2,3}
#   u2: scores [0.4, 0.3, 0.2, 0.1, 0.05*] -> last: rank 5
SCORES = np.array([[0.9, 0.8, 0.3, 0.2, 0.1],
                   [0.5, 0.5, 0.5, 0.1, 0.0],
                   [0.4, 0.3, 0.2, 0.1, 0.05]])
LABELS = np.array([[0, 1, 0, 0, 0],
                   [1, 0, 0, 0, 0],
                   [0, 0, 0, 0, 1]])


def ndcg1(rank: int) -> float:
    return 1 / math.log2(rank + 1)


def test_hand_computed_pessimistic() -> None:
    ev = evaluate_matrix(SCORES, LABELS, ks=[1, 3], tie_policy="pessimistic")
    s = ev.summary
    # ranks 2, 3, 5
    assert s["hr@1"] == pytest.approx(0.0)
    assert s["hr@3"] == pytest.approx(2 / 3)
    assert s["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert s["ndcg@3"] == pytest.approx((ndcg1(2) + ndcg1(3)) / 3)
    assert s["recall@3"] == pytest.approx(2 / 3)
    assert s["precision@3"] == pytest.approx(2 / 9)
    # GAUC: u0 3/4 below, u1 2/4 (ties lose), u2 0/4; equal weights (one positive each)
    assert s["gauc"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert ev.counts["tie_rate"] == pytest.approx(1 / 3)


def test_hand_computed_optimistic_and_expected() -> None:
    opt = evaluate_matrix(SCORES, LABELS, ks=[1, 3], tie_policy="optimistic").summary
    # ranks 2, 1, 5
    assert opt["hr@1"] == pytest.approx(1 / 3)
    assert opt["mrr@3"] == pytest.approx((1 / 2 + 1) / 3)
    exp = evaluate_matrix(SCORES, LABELS, ks=[1, 3], tie_policy="expected").summary
    # u1's rank is uniform on {1, 2, 3}: hr@1 = 1/3, mrr@3 = (1 + 1/2 + 1/3)/3, ndcg@3 = mean of 1/log2(r+1)
    assert exp["hr@1"] == pytest.approx((1 / 3) / 3)
    assert exp["hr@3"] == pytest.approx(2 / 3)
    assert exp["mrr@3"] == pytest.approx((1 / 2 + (1 + 1 / 2 + 1 / 3) / 3) / 3)
    assert exp["ndcg@3"] == pytest.approx((ndcg1(2) + (ndcg1(1) + ndcg1(2) + ndcg1(3)) / 3) / 3)
    # GAUC with midranks: u1 = (2 + 0.5*2)/4
    assert exp["gauc"] == pytest.approx((0.75 + 0.75 + 0.0) / 3)


def test_constant_scorer_gets_random_numbers_under_expected_policy() -> None:
    ev = evaluate_matrix(np.zeros((4, 101)), np.eye(4, 101, dtype=int), ks=[10], tie_policy="expected")
    assert ev.summary["hr@10"] == pytest.approx(10 / 101)
    assert ev.summary["gauc"] == pytest.approx(0.5)
    assert ev.counts["tie_rate"] == 1.0
    pess = evaluate_matrix(np.zeros((4, 101)), np.eye(4, 101, dtype=int), ks=[10], tie_policy="pessimistic")
    assert pess.summary["hr@10"] == 0.0


def test_nan_scores_are_misses_and_counted() -> None:
    scores = np.array([[np.nan, 0.1, 0.2], [0.9, np.nan, 0.1], [np.nan, np.nan, 0.3]])
    labels = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]])
    ev = evaluate_matrix(scores, labels, ks=[1, 3], tie_policy="optimistic")
    # u0: invalid positive ranks last (3); u1: NaN negative is below the valid positive: rank 1;
    # u2: invalid positive and invalid negative: the positive loses that tie even when optimistic: rank 3
    assert ev.per_row["hr@1"].tolist() == [0.0, 1.0, 0.0]
    assert ev.per_row["mrr@3"].tolist() == pytest.approx([1 / 3, 1.0, 1 / 3])
    assert ev.counts["invalid_scores"] == 4
    assert ev.counts["invalid_rate"] == pytest.approx(4 / 9)
    assert ev.counts["invalid_positive_rate"] == pytest.approx(2 / 3)
    assert ev.counts["rows_evaluated"] == 3  # nothing dropped


def _brute_force(scores: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    """Mean of each metric over every ordering of tied candidates (the definition of the expected policy)."""
    keys = [-s for s in scores]
    out = {"HR": [], "MRR": [], "NDCG": [], "Recall": []}
    groups = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    blocks = [groups[key] for key in sorted(groups)]
    for perms in itertools.product(*[itertools.permutations(b) for b in blocks]):
        order = [i for p in perms for i in p]
        ranks = [r + 1 for r, i in enumerate(order) if labels[i]]
        first = min(ranks)
        out["HR"].append(float(first <= k))
        out["MRR"].append(1 / first if first <= k else 0.0)
        dcg = sum(ndcg1(r) for r in ranks if r <= k)
        idcg = sum(ndcg1(r) for r in range(1, min(len(ranks), k) + 1))
        out["NDCG"].append(dcg / idcg)
        out["Recall"].append(sum(r <= k for r in ranks) / len(ranks))
    return {m: float(np.mean(v)) for m, v in out.items()}


def test_expected_policy_equals_enumeration_with_several_positives() -> None:
    gen = np.random.default_rng(3)
    for _ in range(25):
        n = int(gen.integers(3, 7))
        scores = gen.integers(0, 3, n).astype(float)
        labels = np.zeros(n, dtype=int)
        labels[gen.choice(n, int(gen.integers(1, min(3, n - 1) + 1)), replace=False)] = 1
        k = int(gen.integers(1, n + 1))
        ev = evaluate_matrix(scores[None], labels[None], ks=[k], tie_policy="expected")
        ref = _brute_force(scores, labels, k)
        for m in ref:
            assert ev.summary[f"{m.lower()}@{k}"] == pytest.approx(ref[m]), (scores, labels, k, m)


def test_auc_matches_sklearn_on_random_data() -> None:
    gen = np.random.default_rng(0)
    labels = gen.random(2000) < 0.2
    scores = np.round(gen.normal(size=2000) + labels, 1)  # rounding makes ties
    assert global_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    # GAUC = per-user sklearn AUC weighted by the user's number of positives
    groups = gen.integers(0, 50, 2000)
    ev = evaluate_long(groups, labels, scores, ks=[5])
    num = den = 0.0
    for g in range(50):
        sel = groups == g
        if 0 < labels[sel].sum() < sel.sum():
            num += roc_auc_score(labels[sel], scores[sel]) * labels[sel].sum()
            den += labels[sel].sum()
    assert ev.summary["gauc"] == pytest.approx(num / den)
    assert ev.summary["auc"] == pytest.approx(roc_auc_score(labels, scores))


def test_long_form_equals_matrix_and_users_without_positive_are_counted() -> None:
    groups = np.repeat(np.arange(3), 5)
    ev_long = evaluate_long(groups, LABELS.ravel(), SCORES.ravel(), ks=[1, 3])
    ev_mat = evaluate_matrix(SCORES, LABELS, ks=[1, 3])
    assert ev_long.summary == pytest.approx(ev_mat.summary)
    labels = LABELS.copy()
    labels[2] = 0
    ev = evaluate_matrix(SCORES, labels, ks=[1])
    assert ev.counts["rows_without_positive"] == 1
    assert np.isnan(ev.per_row["hr@1"][2])


def test_full_ranking_counts_match_the_matrix() -> None:
    # target counts as the full-ranking protocol stores them: items above, items tied, items ranked
    ev = evaluate_counts(counts_from_target_ranks([1, 0, 4], [0, 2, 0], [5, 5, 5]), ks=[1, 3])
    assert ev.summary == pytest.approx(evaluate_matrix(SCORES, LABELS, ks=[1, 3], metrics=["hr", "ndcg", "mrr",
                                                                                         "recall", "precision",
                                                                                         "gauc"]).summary)


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="tie_policy"):
        evaluate_matrix(SCORES, LABELS, tie_policy="random")
    with pytest.raises(ValueError, match="ks"):
        evaluate_matrix(SCORES, LABELS, ks=[0])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_matrix(SCORES, LABELS, metrics=["map"])


@pytest.mark.parametrize("policy,w", [("pessimistic", 0.0), ("expected", 0.5), ("optimistic", 1.0)])
def test_global_auc_counts_pairs_with_invalid_scores(policy, w) -> None:
    gen = np.random.default_rng(1)
    labels = gen.random(60) < 0.4
    scores = gen.integers(0, 4, 60).astype(float)
    scores[gen.random(60) < 0.2] = np.nan
    wins = 0.0
    for p in scores[labels]:
        for n in scores[~labels]:
            if np.isnan(p):
                continue  # an invalid positive loses to every negative, invalid ones included
            wins += 1.0 if np.isnan(n) or p > n else (w if p == n else 0.0)
    assert global_auc(labels, scores, policy) == pytest.approx(wins / (labels.sum() * (~labels).sum()))
