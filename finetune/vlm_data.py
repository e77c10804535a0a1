"""Training and validation rows of the VLM recommender, read from a split.

- Training: every `train` example's target (label 1) plus `negatives` sampled items (label 0) per positive: the
  split's persisted train negatives first, then, if more are asked for, extra items the user never interacted
  with, drawn from a seeded stream. The valid and test candidates are never read here.
- Validation: the split's persisted `valid` candidates (optionally a seeded subset of users) for model selection.
- Batches: a seeded permutation per epoch cut into global batches; process k of n takes every n-th row of each
  global batch, so a run on n processes sees the same global batches as on one, and a resumed run restarts at
  the exact batch it stopped at.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pandas as pd

from mmrec.errors import DataError
from mmrec.seeding import rng


def training_rows(split: Any, negatives: int, seed: int) -> pd.DataFrame:
    """(user_id, stage, item_id, label) for the training examples: positives and `negatives` per positive."""
    train = split.examples_for("train")
    if not len(train):
        raise DataError(f"{split.root}: the split has no training examples")
    pos = pd.DataFrame({"user_id": train["user_id"].astype(str), "stage": "train",
                        "item_id": train["target"].astype(str), "label": 1})
    if negatives == 0:
        return pos
    neg = split.train_negatives.astype({"user_id": str, "item_id": str})
    neg = neg[neg["user_id"].isin(set(pos["user_id"]))]
    neg = neg.assign(rank=neg.groupby("user_id", sort=False).cumcount())
    taken = neg[neg["rank"] < negatives][["user_id", "item_id"]]
    short = negatives - taken.groupby("user_id").size().reindex(pos["user_id"], fill_value=0)
    extra = _extra_negatives(split, short[short > 0], taken, seed)
    negs = pd.concat([taken, extra], ignore_index=True).assign(stage="train", label=0)
    rows = pd.concat([pos, negs[["user_id", "stage", "item_id", "label"]]], ignore_index=True)
    return rows.astype({"label": np.int64})


def _extra_negatives(split: Any, short: pd.Series, taken: pd.DataFrame, seed: int) -> pd.DataFrame:
    """`short[u]` more items per user u, uniform over the items u is not known to have interacted with (nor
    already took), under the split's `sampling_data` rule like its persisted training negatives."""
    if short.empty:
        return pd.DataFrame(columns=["user_id", "item_id"])
    items = split.dataset.items["item_id"].astype(str).to_numpy()
    seen = known_items(split)
    already = taken.groupby("user_id")["item_id"].agg(set)
    g = rng(seed, "vlm", "extra_train_negatives")
    out_u, out_i = [], []
    for user, n in short.items():
        banned = seen.get(user, set()) | already.get(user, set())
        allowed = items[~np.isin(items, list(banned))]
        if len(allowed) < n:
            raise DataError(f"user {user} has only {len(allowed)} items left to sample {n} training negatives from; "
                            "lower train.negatives")
        out_u += [user] * int(n)
        out_i += g.choice(allowed, size=int(n), replace=False).tolist()
    return pd.DataFrame({"user_id": out_u, "item_id": out_i})


def known_items(split: Any) -> pd.Series:
    """Per user the items a training negative must avoid: with `split.sampling_data: train` what the user did up to
    and including their training target (never a later item), with `all` every interaction."""
    if split.config.sampling_data == "all":
        inter = split.dataset.interactions
        return inter.groupby(inter["user_id"].astype(str))["item_id"].agg(lambda s: set(map(str, s)))
    train = split.examples_for("train")
    return pd.Series({str(u): set(map(str, before)) | {str(t)} for u, before, t in
                      zip(train["user_id"], split.pre_target_items(train), train["target"])}, dtype=object)


def validation_rows(split: Any, max_users: int | None, seed: int) -> pd.DataFrame:
    """The persisted validation candidates, of at most `max_users` users (a seeded choice)."""
    valid = split.candidates_for("valid")[["user_id", "stage", "item_id", "label"]].astype(
        {"user_id": str, "stage": str, "item_id": str})
    if max_users is not None:
        users = valid["user_id"].drop_duplicates().to_numpy()
        if len(users) > max_users:
            keep = rng(seed, "vlm", "valid_users").choice(users, size=max_users, replace=False)
            valid = valid[valid["user_id"].isin(set(keep))]
    return valid.reset_index(drop=True)


def batches_per_epoch(n_rows: int, batch_size: int, num_processes: int) -> int:
    """Micro-batches per process and epoch (see `epoch_batches` for the dropped remainder)."""
    global_batch = batch_size * num_processes
    full, rest = divmod(n_rows, global_batch)
    return full + (1 if rest >= num_processes else 0)


def epoch_batches(n_rows: int, batch_size: int, num_processes: int, rank: int, seed: int, epoch: int,
                  start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(batch index, this process's row indices) of one epoch from batch `start` on. The last batch may be
    short; with several processes it is left out when some process would get no row (every DDP process must
    run each step), so at most `num_processes - 1` rows of an epoch go unseen."""
    order = rng(seed, "vlm", "epoch", epoch).permutation(n_rows)
    global_batch = batch_size * num_processes
    for b in range(start, batches_per_epoch(n_rows, batch_size, num_processes)):
        chunk = order[b * global_batch: (b + 1) * global_batch]
        yield b, chunk[rank::num_processes]
