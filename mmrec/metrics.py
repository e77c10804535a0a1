"""Ranking metrics with an explicit tie policy, vectorised over users (pure numpy).

Everything is computed from four counts per positive candidate: negatives scored strictly higher
(`greater_neg`), negatives tied with it (`tied_neg`), and the same for the row's other positives. A row is
one evaluated example (a user at one stage). Those counts come from a padded score matrix
(`counts_from_matrix`), from long (group, label, score) arrays (`counts_from_long`), or directly from the
full-ranking protocol, which stores only the target's counts over the catalogue.

Tie policies decide where a positive lands among candidates with the same score:
  * ``expected`` (default): the expectation of each metric when ties are broken uniformly at random. A
    constant scorer then gets exactly a random scorer's numbers, which is the honest choice for sampled
    candidates, where fp16 logits of a VLM tie often.
  * ``pessimistic``: every tied negative ranks above the positive (a lower bound).
  * ``optimistic``: every tied negative ranks below the positive (an upper bound; never report it alone).
NaN scores are invalid: an invalid positive ranks below every negative of its row, an invalid negative below
every valid score; they are counted (`invalid_rate`), never dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import numpy as np

TiePolicy = Literal["pessimistic", "optimistic", "expected"]
TIE_POLICIES: tuple[str, ...] = ("pessimistic", "optimistic", "expected")
DEFAULT_TIE_POLICY: TiePolicy = "expected"
# Top-K metrics (one value per K) and per-row value metrics; "auc" (global) needs raw scores.
TOPK_METRICS: tuple[str, ...] = ("hr", "ndcg", "mrr", "recall", "precision")
METRICS: tuple[str, ...] = TOPK_METRICS + ("gauc", "auc")
_CELLS_PER_CHUNK = 1 << 22  # bounds the [rows, positives, candidates] comparison block (~4 M cells)


@dataclass
class PositiveCounts:
    """Per positive: its row and where it stands among its row's candidates; per row: positives/negatives."""

    row: np.ndarray          # int64 [n_positives], row index of each positive
    greater_neg: np.ndarray  # int64, negatives ranked strictly above this positive
    tied_neg: np.ndarray     # int64, negatives with an equal score
    greater_pos: np.ndarray  # int64, other positives strictly above
    tied_pos: np.ndarray     # int64, other positives with an equal score
    invalid: np.ndarray      # bool, the positive's own score is NaN
    n_pos: np.ndarray        # int64 [n_rows]
    n_neg: np.ndarray        # int64 [n_rows]
    n_invalid: np.ndarray    # int64 [n_rows], NaN scores among the row's candidates (positives and negatives)


@dataclass
class Evaluation:
    """Summary metrics (means over rows that have a positive), per-row metrics and diagnostic counts."""

    summary: dict[str, float]
    per_row: dict[str, np.ndarray]
    counts: dict[str, float] = field(default_factory=dict)


def metric_name(metric: str, k: int | None = None) -> str:
    """Key of a metric in results: `hr@10`, `ndcg@5`, `gauc`, `auc` (`display_name` gives `HR@10`)."""
    return f"{metric}@{k}" if k is not None else metric


def display_name(key: str) -> str:
    """`ndcg@10` -> `NDCG@10`, `recall@5` -> `Recall@5`, `gauc` -> `GAUC` (for printed tables)."""
    base, at, k = key.partition("@")
    pretty = {"recall": "Recall", "precision": "Precision"}.get(base, base.upper())
    return f"{pretty}{at}{k}"


def check_options(ks: Iterable[int], tie_policy: str, metrics: Iterable[str] | None = None) -> None:
    ks = list(ks)
    if not ks or any((not isinstance(k, (int, np.integer))) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {', '.join(TIE_POLICIES)}, got {tie_policy!r}")
    unknown = set(metrics or ()) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; known: {', '.join(METRICS)}")


def counts_from_matrix(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> PositiveCounts:
    """Counts from a padded [n_rows, n_candidates] score matrix, a label matrix (truthy = positive) and an
    optional mask (False = padding, ignored). Works in row chunks so memory stays bounded."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-d [rows, candidates] matrix, got shape {scores.shape}")
    labels = np.asarray(labels).astype(bool)
    if labels.shape != scores.shape or (mask is not None and np.shape(mask) != scores.shape):
        raise ValueError(f"scores {scores.shape}, labels {labels.shape} and mask {np.shape(mask)} must have one shape")
    n_rows, n_cols = scores.shape
    nan = np.isnan(scores)
    # Sort key: NaN -> -inf (below every valid score); a real -inf moves just above it; padding never compares.
    key = scores.copy()
    neg_inf = scores == -np.inf
    if neg_inf.any():
        key[neg_inf] = np.finfo(np.float64).min
    np.copyto(key, -np.inf, where=nan)
    if mask is None:
        pos, n_cells, n_invalid = labels, np.full(n_rows, n_cols), np.count_nonzero(nan, axis=1)
    else:
        mask = np.asarray(mask, dtype=bool)
        key[~mask] = np.nan
        pos, n_cells, n_invalid = labels & mask, np.count_nonzero(mask, axis=1), np.count_nonzero(nan & mask, axis=1)
    n_pos = np.count_nonzero(pos, axis=1)
    n_neg = n_cells - n_pos
    rows, cols = np.nonzero(pos)                       # row-major: positives grouped by row
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos)
    width = int(n_pos.max()) if n_rows else 0
    ps = np.full((n_rows, width), np.nan)              # positives' keys, NaN in unused slots
    ps[rows, slot] = key[rows, cols]
    gt_all = np.zeros((n_rows, width), dtype=np.int64)
    eq_all = np.zeros((n_rows, width), dtype=np.int64)
    step = max(1, _CELLS_PER_CHUNK // max(1, width * n_cols))
    for a in range(0, n_rows, step):
        k, t = key[a:a + step, None, :], ps[a:a + step, :, None]
        gt_all[a:a + step] = np.count_nonzero(k > t, axis=2)
        eq_all[a:a + step] = np.count_nonzero(k == t, axis=2)
    gt_pos = np.count_nonzero(ps[:, None, :] > ps[:, :, None], axis=2)   # [n, P, P]: small
    eq_pos = np.count_nonzero(ps[:, None, :] == ps[:, :, None], axis=2)  # includes the positive itself
    g_neg, t_neg = (gt_all - gt_pos)[rows, slot], (eq_all - eq_pos)[rows, slot]
    invalid = nan[rows, cols]
    g_neg = np.where(invalid, n_neg[rows], g_neg)      # an invalid positive ranks below every negative
    t_neg = np.where(invalid, 0, t_neg)
    return PositiveCounts(row=rows.astype(np.int64), greater_neg=g_neg.astype(np.int64),
                          tied_neg=t_neg.astype(np.int64), greater_pos=gt_pos[rows, slot].astype(np.int64),
                          tied_pos=(eq_pos[rows, slot] - 1).astype(np.int64), invalid=invalid,
                          n_pos=n_pos.astype(np.int64), n_neg=n_neg.astype(np.int64),
                          n_invalid=n_invalid.astype(np.int64))


def pad_groups(groups: np.ndarray, *columns: np.ndarray, fill: Sequence[object] | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Long arrays grouped by integer codes `groups` (0..n-1) -> (mask [n, max_len], row position of each
    input element as (row, col), padded matrices of `columns`). Order within a group is preserved."""
    groups = np.asarray(groups, dtype=np.int64)
    n = int(groups.max()) + 1 if len(groups) else 0
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups, minlength=n)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if n else np.zeros(0, dtype=np.int64)
    col = np.empty(len(groups), dtype=np.int64)
    col[order] = np.arange(len(groups)) - np.repeat(starts, sizes)
    width = int(sizes.max()) if n else 0
    mask = np.zeros((n, width), dtype=bool)
    mask[groups, col] = True
    fill = list(fill) if fill is not None else [0] * len(columns)
    out = []
    for c, f in zip(columns, fill):
        c = np.asarray(c)
        m = np.full((n, width), f, dtype=c.dtype)
        m[groups, col] = c
        out.append(m)
    return mask, np.stack([groups, col]), out


def counts_from_long(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> PositiveCounts:
    """Counts from one row per (group, candidate): integer group codes 0..n-1, labels, scores."""
    mask, _, (lab, sc) = pad_groups(groups, np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64),
                                    fill=[False, np.nan])
    return counts_from_matrix(sc, lab, mask)


def counts_from_target_ranks(greater: np.ndarray, tied: np.ndarray, n_candidates: np.ndarray,
                             invalid: np.ndarray | None = None) -> PositiveCounts:
    """Counts for one positive per row (the full-ranking protocol): items scored above / tied with the target,
    and the number of ranked items including the target."""
    greater = np.asarray(greater, dtype=np.int64)
    n = len(greater)
    n_cand = np.asarray(n_candidates, dtype=np.int64)
    invalid = np.zeros(n, dtype=bool) if invalid is None else np.asarray(invalid, dtype=bool)
    zeros = np.zeros(n, dtype=np.int64)
    return PositiveCounts(row=np.arange(n, dtype=np.int64), greater_neg=greater,
                          tied_neg=np.asarray(tied, dtype=np.int64), greater_pos=zeros, tied_pos=zeros,
                          invalid=invalid, n_pos=np.ones(n, dtype=np.int64), n_neg=n_cand - 1,
                          n_invalid=invalid.astype(np.int64))


def _placement(c: PositiveCounts, tie_policy: str) -> tuple[np.ndarray, np.ndarray]:
    """(base, width): under the policy a positive occupies one of positions base+1 .. base+width, uniformly.
    For tied positives this is exact for sums over the group, whatever their order among themselves."""
    if tie_policy == "pessimistic":
        return c.greater_neg + c.tied_neg + c.greater_pos, c.tied_pos + 1
    if tie_policy == "optimistic":
        return c.greater_neg + c.greater_pos, c.tied_pos + 1
    return c.greater_neg + c.greater_pos, c.tied_neg + c.tied_pos + 1


def _first_positive(c: PositiveCounts, tie_policy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each row's top-scored positive group: rows, negatives above (g), tied negatives (n), tied positives (m)."""
    best = np.flatnonzero(c.greater_pos == 0)
    rows, first = np.unique(c.row[best], return_index=True)
    idx = best[first]
    g, n, m = c.greater_neg[idx].copy(), c.tied_neg[idx].copy(), c.tied_pos[idx] + 1
    if tie_policy == "pessimistic":
        g, n = g + n, np.zeros_like(n)
    elif tie_policy == "optimistic":
        n = np.zeros_like(n)
    return rows, g, n, m


def _first_positive_metrics(c: PositiveCounts, tie_policy: str, n_rows: int, ks: list[int]
                            ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """HR@K and MRR@K per row: both depend on the first positive's position g + J, J being its place in the
    top positive group's ties (n negatives, m positives). P(J > j) = prod_{i<j} (n-i)/(n+m-i)."""
    rows, g, n, m = _first_positive(c, tie_policy)
    kmax = ks[-1]
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, kmax + 1))])
    hr = {k: np.zeros(n_rows) for k in ks}
    mrr = {k: np.zeros(n_rows) for k in ks}
    one = m == 1  # the usual case: J is uniform on 1..n+1, closed forms over positions g+1 .. g+n+1
    r1, lo, hi, w = rows[one], g[one], g[one] + n[one] + 1, n[one] + 1
    for k in ks:
        a, b = np.minimum(lo, k), np.minimum(hi, k)
        hr[k][r1] = (b - a) / w
        mrr[k][r1] = (harmonic[b] - harmonic[a]) / w
    many = ~one
    if many.any():  # several positives tied at the top: walk J = 1..kmax
        r, g, n, m = rows[many], g[many], n[many], m[many]
        surv = np.ones(len(r))  # P(J > j - 1)
        for j in range(1, kmax + 1):
            with np.errstate(divide="ignore", invalid="ignore"):
                nxt = surv * np.where(n - j + 1 > 0, (n - j + 1) / (n + m - j + 1), 0.0)
            p_j, position = surv - nxt, g + j
            for k in ks:
                inside = position <= k
                hr[k][r] += np.where(inside, p_j, 0.0)
                mrr[k][r] += np.where(inside, p_j / position, 0.0)
            surv = nxt
    return hr, mrr


def evaluate_counts(c: PositiveCounts, ks: Sequence[int] = (1, 3, 5, 10), tie_policy: str = DEFAULT_TIE_POLICY,
                    metrics: Sequence[str] | None = None) -> Evaluation:
    """Per-row and mean metrics from positive counts (see the module docstring for the definitions)."""
    metrics = list(metrics or [m for m in METRICS if m != "auc"])
    check_options(ks, tie_policy, metrics)
    ks = sorted(set(int(k) for k in ks))
    n_rows = len(c.n_pos)
    has_pos = c.n_pos > 0
    per_row: dict[str, np.ndarray] = {"n_pos": c.n_pos, "n_neg": c.n_neg, "n_invalid": c.n_invalid}
    tied_any = np.bincount(c.row, weights=((c.tied_neg > 0) & ~c.invalid).astype(float), minlength=n_rows) > 0
    per_row["tied"] = tied_any
    kmax = ks[-1]
    base, width = _placement(c, tie_policy)
    discount = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, kmax + 2)))])  # D[r] = sum_{i<=r}
    nan_rows = np.where(has_pos, 1.0, np.nan)

    def row_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(c.row, weights=values, minlength=n_rows)

    if "hr" in metrics or "mrr" in metrics:
        hr, mrr = _first_positive_metrics(c, tie_policy, n_rows, ks)
        for k in ks:
            if "hr" in metrics:
                per_row[metric_name("hr", k)] = hr[k] * nan_rows
            if "mrr" in metrics:
                per_row[metric_name("mrr", k)] = mrr[k] * nan_rows
    for k in ks:
        lo, hi = np.minimum(base, k), np.minimum(base + width, k)
        if "ndcg" in metrics:
            idcg = discount[np.minimum(c.n_pos, k)]
            with np.errstate(divide="ignore", invalid="ignore"):
                per_row[metric_name("ndcg", k)] = row_sum((discount[hi] - discount[lo]) / width) / idcg * nan_rows
        hits = row_sum((hi - lo) / width)
        if "recall" in metrics:
            with np.errstate(divide="ignore", invalid="ignore"):
                per_row[metric_name("recall", k)] = hits / c.n_pos * nan_rows
        if "precision" in metrics:
            per_row[metric_name("precision", k)] = hits / k * nan_rows
    gauc_rows = has_pos & (c.n_neg > 0)
    if "gauc" in metrics:
        w = {"pessimistic": 0.0, "optimistic": 1.0, "expected": 0.5}[tie_policy]
        below = c.n_neg[c.row] - c.greater_neg - c.tied_neg + w * c.tied_neg
        with np.errstate(divide="ignore", invalid="ignore"):
            auc = row_sum(below) / (c.n_pos * c.n_neg)
        per_row["auc"] = np.where(gauc_rows, auc, np.nan)
    summary: dict[str, float] = {}
    for key, values in per_row.items():
        if key in ("n_pos", "n_neg", "n_invalid", "tied", "auc"):  # per-row AUC feeds the weighted `gauc`
            continue
        summary[key] = float(np.mean(values[has_pos])) if has_pos.any() else float("nan")
    if "gauc" in metrics:
        weights = c.n_pos[gauc_rows]
        summary["gauc"] = (float(np.average(per_row["auc"][gauc_rows], weights=weights)) if weights.sum()
                           else float("nan"))
    n_positives = len(c.row)
    n_cells = int(c.n_pos.sum() + c.n_neg.sum())
    counts = {
        "rows": int(n_rows),
        "rows_evaluated": int(has_pos.sum()),
        "rows_without_positive": int((~has_pos).sum()),
        "rows_skipped_gauc": int((has_pos & ~gauc_rows).sum()),
        "positives": int(n_positives),
        "candidates": n_cells,
        "tie_rate": float(((c.tied_neg > 0) & ~c.invalid).mean()) if n_positives else 0.0,
        "invalid_scores": int(c.n_invalid.sum()),
        "invalid_rate": float(c.n_invalid.sum() / n_cells) if n_cells else 0.0,
        "invalid_positive_rate": float(c.invalid.mean()) if n_positives else 0.0,
    }
    return Evaluation(summary=summary, per_row=per_row, counts=counts)


def global_auc(labels: np.ndarray, scores: np.ndarray, tie_policy: str = DEFAULT_TIE_POLICY) -> float:
    """AUC over all (positive, negative) pairs pooled across users (RecBole's value metric); NaN scores rank
    below every valid score and lose ties. Equals scikit-learn's `roc_auc_score` for the expected policy."""
    check_options([1], tie_policy)
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(np.count_nonzero(labels))
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # One sort of every score (NaNs sort last), then per valid positive: scores below / equal to it, minus the
    # positives among them. Cheaper than masking out the negatives, which copies nearly the whole array.
    everything = np.sort(scores)
    n_valid = int(np.searchsorted(everything, np.inf, side="right"))
    everything = everything[:n_valid]
    pos = scores[labels]
    pos = np.sort(pos[~np.isnan(pos)])
    below = np.searchsorted(everything, pos, "left") - np.searchsorted(pos, pos, "left")
    upto = np.searchsorted(everything, pos, "right") - np.searchsorted(pos, pos, "right")
    n_neg_invalid = n_neg - (n_valid - len(pos))
    w = {"pessimistic": 0.0, "optimistic": 1.0, "expected": 0.5}[tie_policy]
    wins = below.sum() + w * (upto - below).sum() + n_neg_invalid * len(pos)
    return float(wins / (n_pos * n_neg))


def evaluate_long(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, ks: Sequence[int] = (1, 3, 5, 10),
                  tie_policy: str = DEFAULT_TIE_POLICY, metrics: Sequence[str] | None = None) -> Evaluation:
    """Evaluate one row per (group, candidate) — the sampled protocol; adds global `auc` when asked."""
    metrics = list(metrics or METRICS)
    check_options(ks, tie_policy, metrics)
    ev = evaluate_counts(counts_from_long(groups, labels, scores), ks, tie_policy, [m for m in metrics if m != "auc"])
    if "auc" in metrics:
        ev.summary["auc"] = global_auc(labels, scores, tie_policy)
    return ev


def evaluate_matrix(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None,
                    ks: Sequence[int] = (1, 3, 5, 10), tie_policy: str = DEFAULT_TIE_POLICY,
                    metrics: Sequence[str] | None = None) -> Evaluation:
    """Evaluate a padded [rows, candidates] score matrix; adds global `auc` when asked."""
    metrics = list(metrics or METRICS)
    check_options(ks, tie_policy, metrics)
    ev = evaluate_counts(counts_from_matrix(scores, labels, mask), ks, tie_policy, [m for m in metrics if m != "auc"])
    if "auc" in metrics:
        m = np.ones(np.shape(scores), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        ev.summary["auc"] = global_auc(np.asarray(labels)[m], np.asarray(scores)[m], tie_policy)
    return ev


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the t-interval, n) over the finite values, as numbers over seeds are reported;
    half-width NaN below two values."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), 0
    if x.size == 1:
        return float(x[0]), float("nan"), 1
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return float(x.mean()), half, int(x.size)
