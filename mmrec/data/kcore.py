"""Iterative k-core filtering on users and items, to a fixed point.

Removing a user can push an item below its threshold and vice versa, so the filter repeats until no row
is removed. Counts are interactions (a repeated (user, item) pair counts each time), as in RecBole and
the MLLM-MSR preprocessing. Works on integer codes; each round shrinks the arrays it scans.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mmrec.errors import DataError


def kcore(interactions: pd.DataFrame, min_user: int = 1, min_item: int = 1) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep only rows whose user has >= `min_user` and whose item has >= `min_item` interactions among the
    kept rows. Returns (filtered rows in their original order with a fresh index, report)."""
    for col in ("user_id", "item_id"):
        if col not in interactions.columns:
            raise DataError(f"k-core: the interactions have no {col!r} column")
    if min_user < 1 or min_item < 1:
        raise DataError(f"k-core: min_user and min_item must be >= 1, got {min_user} and {min_item}")
    u, users = pd.factorize(interactions["user_id"])
    i, items = pd.factorize(interactions["item_id"])
    rows = np.arange(len(u))
    rounds = 0
    while len(rows):
        uc = np.bincount(u, minlength=len(users))
        ic = np.bincount(i, minlength=len(items))
        keep = (uc[u] >= min_user) & (ic[i] >= min_item)
        if keep.all():
            break
        rounds += 1
        rows, u, i = rows[keep], u[keep], i[keep]
    filtered = interactions.iloc[rows].reset_index(drop=True)
    report = {
        "min_user": min_user,
        "min_item": min_item,
        "rounds": rounds,
        "users_before": int(len(users)),
        "items_before": int(len(items)),
        "interactions_before": int(len(interactions)),
        "users_after": int(np.count_nonzero(np.bincount(u, minlength=len(users)))),
        "items_after": int(np.count_nonzero(np.bincount(i, minlength=len(items)))),
        "interactions_after": int(len(rows)),
    }
    report["users_removed"] = report["users_before"] - report["users_after"]
    report["items_removed"] = report["items_before"] - report["items_after"]
    report["interactions_removed"] = report["interactions_before"] - report["interactions_after"]
    return filtered, report
