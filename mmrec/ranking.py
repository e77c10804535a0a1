"""Ranking a catalogue: the target's counts (items above, tied, masked, unscored) for every example, computed the same
way for evaluation (`mmrec score`/`mmrec eval` under `eval.protocol: full`) and for model selection during training.

One catalogue per experiment: every item of the dataset (`experiment_catalogue`). An item a model cannot score gets
the worst-case score; a target among them is a miss. Only per-example counts are kept, never the items x users matrix.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mmrec.errors import DataError
from mmrec.io import hash_json
from mmrec.metrics import counts_from_target_ranks, evaluate_counts

FULL_COLUMNS = ["user_id", "stage", "item_id", "score", "n_greater", "n_tied", "n_ranked", "n_masked", "n_invalid",
                "n_unscored"]


def target_ranks(mat: np.ndarray, target_col: np.ndarray, history: tuple[np.ndarray, np.ndarray] | None = None,
                 scored: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per row of a [rows, items] catalogue score matrix: items above / tied with the target, items ranked,
    items masked, invalid (NaN) scores and unscored items. `history` = (row, column) pairs to leave out of the
    ranking (the target itself never is). `scored` (bool per column; default all) marks the items the model can
    score; the others hold NaN in `mat` and get the worst-case score: below the target when they are not the
    target, and a target outside the catalogue (column -1), unscorable or with a NaN score ranks below every
    item. Masked items are subtracted from whole-row counts, so no second [rows, items] array is built."""
    n, m = mat.shape
    r = np.arange(n)
    inside = target_col >= 0
    t = np.where(inside, mat[r, np.where(inside, target_col, 0)], np.nan)
    scored = np.ones(m, dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
    greater = np.count_nonzero(mat > t[:, None], axis=1)
    tied = np.count_nonzero(mat == t[:, None], axis=1) - ~np.isnan(t)   # minus the target itself
    invalid = np.count_nonzero(np.isnan(mat[:, scored]), axis=1)
    unscored = np.full(n, int((~scored).sum()), dtype=np.int64)
    masked = np.zeros(n, dtype=np.int64)
    if history is not None and len(history[0]):
        hr, hc = history
        flat = np.unique(hr.astype(np.int64) * m + hc)                    # each (row, item) once
        hr, hc = flat // m, flat % m
        keep = hc != target_col[hr]
        hr, hc = hr[keep], hc[keep]
        s, th = mat[hr, hc], t[hr]
        greater -= np.bincount(hr, weights=s > th, minlength=n).astype(np.int64)
        tied -= np.bincount(hr, weights=s == th, minlength=n).astype(np.int64)
        invalid -= np.bincount(hr, weights=np.isnan(s) & scored[hc], minlength=n).astype(np.int64)
        unscored -= np.bincount(hr, weights=~scored[hc], minlength=n).astype(np.int64)
        masked = np.bincount(hr, minlength=n).astype(np.int64)
    n_ranked = m - masked + ~inside
    invalid_target = np.isnan(t)
    return {
        "score": t,
        "n_greater": np.where(invalid_target, n_ranked - 1, greater).astype(np.int64),
        "n_tied": np.where(invalid_target, 0, tied).astype(np.int64),
        "n_ranked": n_ranked.astype(np.int64),
        "n_masked": masked,
        "n_invalid": (invalid + ~inside).astype(np.int64),
        "n_unscored": unscored,
    }


def history_columns(histories: pd.Series, pos: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(row, catalogue column) of every history item that is in the catalogue, without a Python loop per row."""
    lengths = histories.map(len).to_numpy()
    items = np.concatenate([np.asarray(h, dtype=object) for h in histories]) if lengths.sum() else np.array([], object)
    cols = pos.reindex(items).fillna(-1).to_numpy(np.int64)
    rows = np.repeat(np.arange(len(histories)), lengths)
    return rows[cols >= 0], cols[cols >= 0]


def catalogue_columns(scorer_items: list[str], catalogue: list[str], run: str) -> np.ndarray:
    """Column of the experiment's catalogue for each item the model scores; an item outside it is an error."""
    cols = pd.Index(catalogue).get_indexer(pd.Index(scorer_items))
    if (cols < 0).any():
        bad = [i for i, c in zip(scorer_items, cols) if c < 0]
        raise DataError(f"model run '{run}' scores {len(bad)} item(s) not in the experiment's catalogue, e.g. "
                        f"{bad[0]!r}; it was trained on another dataset — re-run `mmrec finetune`")
    return cols


def rank_catalogue(scorer: Any, rows: pd.DataFrame, catalogue: list[str], mask_history: bool, run: str
                   ) -> pd.DataFrame:
    """Target counts (`FULL_COLUMNS`) of examples `rows` (user_id, stage, history, target, and optionally
    mask_items) ranked over the experiment's `catalogue`. Items the model cannot score (outside its `item_ids`) get
    the worst-case score: never above the target, and a target among them is a miss; their number is `n_unscored`.
    With `mask_history`, each row's `mask_items` (default: its `history`) are left out of the ranking."""
    items = list(scorer.item_ids)
    cols = catalogue_columns(items, catalogue, run)
    own = np.asarray(scorer.score_catalogue(rows[["user_id", "stage", "history"]].reset_index(drop=True)),
                     dtype=np.float64)
    if own.shape != (len(rows), len(items)):
        raise DataError(f"model run '{run}' returned a catalogue score matrix of shape {own.shape}; expected "
                        f"({len(rows)}, {len(items)}) = (examples, item_ids)")
    scored = np.zeros(len(catalogue), dtype=bool)
    scored[cols] = True
    mat = own
    if not (scored.all() and (cols == np.arange(len(cols))).all()):  # the model's columns -> the catalogue's
        mat = np.full((len(rows), len(catalogue)), np.nan)
        mat[:, cols] = own
    pos = pd.Series(np.arange(len(catalogue)), index=pd.Index(catalogue))
    tcol = pos.reindex(rows["target"].to_numpy()).fillna(-1).to_numpy(np.int64)
    masked = rows["mask_items"] if "mask_items" in rows else rows["history"]
    hist = history_columns(masked.reset_index(drop=True), pos) if mask_history else None
    out = target_ranks(mat, tcol, hist, scored)
    return pd.DataFrame({"user_id": rows["user_id"].to_numpy(), "stage": rows["stage"].to_numpy(),
                         "item_id": rows["target"].to_numpy(), **out})[FULL_COLUMNS]


def experiment_catalogue(split: Any) -> list[str]:
    """The one catalogue every model ranks under the full protocol: every item of the split's dataset
    (`items.parquet`), in its order. A model that cannot score some of them gives them the worst-case score."""
    return list(split.dataset.items["item_id"])


def catalogue_manifest(items: list[str]) -> dict[str, Any]:
    """Size and order-free hash of a ranking catalogue, as the manifests and scores metadata record it."""
    return {"items": len(items), "sha256": hash_json(sorted(items))}


def full_ranking_result(ranks: pd.DataFrame, ks: list[int], tie_policy: str, metrics: list[str]) -> Any:
    """`mmrec.metrics` evaluation of full-ranking target counts (`FULL_COLUMNS` rows)."""
    c = counts_from_target_ranks(ranks["n_greater"], ranks["n_tied"], ranks["n_ranked"],
                                 ranks["score"].isna().to_numpy())
    c.n_invalid = ranks["n_invalid"].to_numpy(np.int64)
    return evaluate_counts(c, ks, tie_policy, [m for m in metrics if m != "auc"])
