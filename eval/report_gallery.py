"""The report gallery: for a seeded sample of users, their history (images + item summaries), the recurrent
preference at every step, and the candidates as each model ranked them, the true item marked.

Display ranks sort by score (higher first), invalid (NaN) scores last, equal scores in candidate-file order;
they are for reading, the metrics' tie policy is what the numbers use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from eval.report_images import Thumbnails
from mmrec.progress import progress
from mmrec.seeding import rng


@dataclass
class GalleryItem:
    item_id: str
    title: str
    summary: str | None = None
    thumb: bytes | None = None


@dataclass
class GalleryCandidate:
    item: GalleryItem
    label: int
    scores: dict[str, float] = field(default_factory=dict)  # run -> score
    ranks: dict[str, int] = field(default_factory=dict)     # run -> 1-based display rank


@dataclass
class GalleryUser:
    user_id: str
    stage: str
    history: list[GalleryItem]
    history_total: int
    preference: str | None
    steps: list[str]
    candidates: list[GalleryCandidate]  # ordered by the ranking run, cut to the top N (+ the target if below)
    n_candidates: int
    ranking_run: str | None
    runs: list[str]
    user_metric: tuple[str, float] | None = None  # (metric, value) the ranking run got on this user, from eval


def display_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks by descending score; NaN last; ties keep input order."""
    key = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((np.arange(len(scores)), np.isnan(scores), -key))
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def sample_users(candidates: pd.DataFrame, stage: str, n: int, seed: int) -> list[str]:
    """`n` users with candidates in `stage`, drawn with the seeded stream ("report", "gallery"), in id order."""
    users = sorted(candidates.loc[candidates["stage"] == stage, "user_id"].astype(str).unique())
    if n <= 0 or not users:
        return []
    picked = rng(seed, "report", "gallery", stage).choice(len(users), size=min(n, len(users)), replace=False)
    return sorted(users[i] for i in picked)


class _ItemLookup:
    def __init__(self, items: pd.DataFrame, summaries: pd.DataFrame | None, thumbs: Thumbnails | None):
        self.items = items.assign(item_id=items["item_id"].astype(str)).set_index("item_id")
        self.summaries = ({} if summaries is None else
                          dict(zip(summaries["item_id"].astype(str), summaries["summary"])))
        self.thumbs = thumbs

    def __call__(self, item_id: str) -> GalleryItem:
        row = self.items.loc[item_id] if item_id in self.items.index else None
        title = str(row["title"]) if row is not None and isinstance(row.get("title"), str) else ""
        image = row.get("image") if row is not None else None
        summary = self.summaries.get(item_id)
        return GalleryItem(item_id=item_id, title=title,
                           summary=summary if isinstance(summary, str) else None,
                           thumb=self.thumbs.get(image) if self.thumbs is not None else None)


def _preference(user_summaries: pd.DataFrame | None, user: str, stage: str) -> tuple[str | None, list[str]]:
    if user_summaries is None:
        return None, []
    rows = user_summaries[user_summaries["user_id"].astype(str) == user]
    if "stage" in rows.columns and (rows["stage"] == stage).any():
        rows = rows[rows["stage"] == stage]
    if rows.empty:
        return None, []
    row = rows.iloc[0]
    steps = row.get("steps")
    steps = [str(s) for s in steps] if steps is not None and not isinstance(steps, str) else []
    pref = row.get("preference")
    return (pref if isinstance(pref, str) else None), steps


def build_gallery(*, users: list[str], stage: str, examples: pd.DataFrame, candidates: pd.DataFrame,
                  items: pd.DataFrame, scores: dict[str, pd.DataFrame], ranking_run: str | None,
                  item_summaries: pd.DataFrame | None = None, user_summaries: pd.DataFrame | None = None,
                  thumbs: Thumbnails | None = None, max_history: int = 10,
                  max_candidates: int = 10) -> list[GalleryUser]:
    """One `GalleryUser` per id in `users`. `scores` maps run id -> its scores table
    (user_id, stage, item_id, score)."""
    lookup = _ItemLookup(items, item_summaries, thumbs)
    ex = examples[examples["stage"] == stage].assign(user_id=lambda d: d["user_id"].astype(str)).set_index("user_id")
    cands = candidates[candidates["stage"] == stage].assign(user_id=lambda d: d["user_id"].astype(str),
                                                           item_id=lambda d: d["item_id"].astype(str))
    per_run = {run: df[(df["stage"] == stage) & df["user_id"].isin(users)]
               .drop_duplicates(["user_id", "item_id"]).set_index(["user_id", "item_id"])["score"]
               for run, df in scores.items()}
    out = []
    for user in progress(users, desc="report gallery", unit="user"):
        uc = cands[cands["user_id"] == user].reset_index(drop=True)
        history = list(ex.loc[user, "history"]) if user in ex.index else []
        shown = [str(i) for i in history[-max_history:]] if max_history > 0 else []
        run_scores, run_ranks = {}, {}
        for run, s in per_run.items():
            keys = pd.MultiIndex.from_arrays([[user] * len(uc), uc["item_id"]])
            vals = s.reindex(keys).to_numpy(np.float64)
            run_scores[run], run_ranks[run] = vals, display_ranks(vals)
        order = np.argsort(run_ranks[ranking_run], kind="stable") if ranking_run in run_ranks else np.arange(len(uc))
        keep = list(order[:max_candidates])
        keep += [i for i in order[max_candidates:] if int(uc.at[i, "label"]) == 1]  # the true item is always shown
        rows = [GalleryCandidate(item=lookup(uc.at[i, "item_id"]), label=int(uc.at[i, "label"]),
                                 scores={r: float(v[i]) for r, v in run_scores.items()},
                                 ranks={r: int(v[i]) for r, v in run_ranks.items()}) for i in keep]
        pref, steps = _preference(user_summaries, user, stage)
        out.append(GalleryUser(user_id=user, stage=stage, history=[lookup(i) for i in shown],
                               history_total=len(history), preference=pref, steps=steps, candidates=rows,
                               n_candidates=len(uc), ranking_run=ranking_run if ranking_run in run_ranks else None,
                               runs=list(per_run)))
    return out


def fmt_score(v: float) -> str:
    return "invalid" if v is None or not math.isfinite(v) else f"{v:.4g}"
