"""Negative sampling for persisted candidate sets and training negatives.

Vectorised rejection sampling over integer item codes: each round draws a block of candidates for every row
still short of negatives, rejects items the row's user ever interacted with and duplicates within the row,
and keeps the first survivors in draw order. Rows are processed in fixed-size chunks so memory is bounded
and the result depends only on the seed (never on the machine).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from mmrec.errors import DataError

CHUNK_ROWS = 20_000   # rows per sampling chunk: fixed, because the draws depend on it
_MAX_ROUNDS = 64      # vectorised rounds before the exact per-row fallback (only tiny allowed sets get there)


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique for integer arrays by sort + compare (numpy's hash-based unique is far slower at 10^7)."""
    s = np.sort(a)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


@dataclass
class UserItems:
    """Which items each user interacted with, as sorted int64 keys `user * n_items + item`."""

    keys: np.ndarray
    n_users: int
    n_items: int

    @classmethod
    def build(cls, user: np.ndarray, item: np.ndarray, n_users: int, n_items: int) -> "UserItems":
        return cls(sorted_unique(user.astype(np.int64) * n_items + item), n_users, n_items)

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        q = user.astype(np.int64) * self.n_items + item
        pos = np.minimum(np.searchsorted(self.keys, q), max(len(self.keys) - 1, 0))
        return self.keys[pos] == q if len(self.keys) else np.zeros(q.shape, dtype=bool)

    def counts(self) -> np.ndarray:
        """Distinct items per user."""
        return np.bincount(self.keys // self.n_items, minlength=self.n_users)

    def items_of(self, user: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.keys, [user * self.n_items, (user + 1) * self.n_items])
        return self.keys[lo:hi] - user * self.n_items


def item_weights(sampling: Literal["uniform", "popularity"], item_counts: np.ndarray,
                 alpha: float = 1.0) -> np.ndarray | None:
    """None for uniform sampling, else count**alpha per item (items never interacted with get weight 0)."""
    if sampling == "uniform":
        return None
    w = item_counts.astype(np.float64) ** alpha
    w[item_counts == 0] = 0.0
    return w


def check_feasible(users: np.ndarray, n: int, seen: UserItems, weights: np.ndarray | None,
                   user_names: Sequence[Any], what: str) -> None:
    """Raise a DataError naming a user who has fewer than `n` items left to draw from."""
    if n <= 0 or len(users) == 0:
        return
    if weights is None:
        available = seen.n_items - seen.counts()
    else:
        drawable = weights > 0
        seen_drawable = np.bincount(seen.keys[drawable[seen.keys % seen.n_items]] // seen.n_items,
                                    minlength=seen.n_users)
        available = int(drawable.sum()) - seen_drawable
    short = users[available[users] < n]
    if len(short):
        u = int(short[0])
        name = user_names[u].as_py() if hasattr(user_names[u], "as_py") else user_names[u]
        kind = "items" if weights is None else "items with non-zero popularity"
        hint = "" if weights is None else ", use uniform sampling"
        raise DataError(
            f"cannot draw {n} {what} negatives: {len(np.unique(short))} user(s) have fewer than {n} {kind} they never "
            f"interacted with (e.g. user {name!r} has {int(available[u])}); lower the number of negatives{hint} "
            "or filter such users out")


def _draw(g: np.random.Generator, shape: tuple[int, int], n_items: int, cdf: np.ndarray | None) -> np.ndarray:
    if cdf is None:
        return g.integers(0, n_items, size=shape, dtype=np.int64)
    return np.minimum(np.searchsorted(cdf, g.random(shape) * cdf[-1], side="right"), n_items - 1)


def _first_distinct(cur: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Clear `valid` on later copies of a value within each row, so the earliest copy is the one kept."""
    masked = np.where(valid, cur, -1 - np.arange(cur.shape[1])[None, :])  # invalid entries never equal anything
    srt = np.sort(masked, axis=1)
    rows = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))  # duplicates are rare: argsort only those rows
    if len(rows):
        sub = masked[rows]
        order = np.argsort(sub, axis=1, kind="stable")
        ordered = np.take_along_axis(sub, order, axis=1)
        dup = np.zeros(sub.shape, dtype=bool)
        np.put_along_axis(dup, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
        valid[rows] &= ~dup
    return valid


def _sample_chunk(g: np.random.Generator, users: np.ndarray, n: int, seen: UserItems,
                  weights: np.ndarray | None, cdf: np.ndarray | None) -> np.ndarray:
    rows = len(users)
    out = np.zeros((rows, n), dtype=np.int64)
    have = np.zeros(rows, dtype=np.int64)
    pending = np.arange(rows)
    extra = max(8, n // 8)
    for attempt in range(_MAX_ROUNDS):
        if not len(pending):
            return out
        draws = _draw(g, (len(pending), n + extra), seen.n_items, cdf)
        valid = ~seen.contains(users[pending][:, None], draws)
        cur = draws
        if attempt:  # rows short of negatives keep what they have and append the new draws
            cur = np.concatenate([out[pending], draws], axis=1)
            valid = np.concatenate([np.arange(n)[None, :] < have[pending, None], valid], axis=1)
        valid = _first_distinct(cur, valid)
        rank = np.cumsum(valid, axis=1, dtype=np.int32) - 1
        r, c = np.nonzero(valid & (rank < n))
        out[pending[r], rank[r, c]] = cur[r, c]
        have[pending] = np.minimum(valid.sum(axis=1), n)
        pending = pending[have[pending] < n]
    for row in pending:  # exact fallback: the allowed set is so small that rejection keeps missing it
        allowed = np.setdiff1d(np.arange(seen.n_items),
                               np.concatenate([seen.items_of(int(users[row])), out[row, :have[row]]]))
        p = None
        if weights is not None:
            allowed = allowed[weights[allowed] > 0]
            p = weights[allowed] / weights[allowed].sum()
        out[row, have[row]:] = g.choice(allowed, n - have[row], replace=False, p=p)
    return out


def sample_negatives(g: np.random.Generator, users: np.ndarray, n: int, seen: UserItems,
                     weights: np.ndarray | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (row slice, [rows, n] item codes) chunk by chunk: `n` distinct items per row, none of them an item
    the row's user ever interacted with, drawn uniformly or in proportion to `weights`.

    Call `check_feasible` first; this assumes every user has at least `n` drawable items left.
    """
    cdf = None if weights is None else np.cumsum(weights)
    for lo in range(0, len(users), CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, len(users))
        yield slice(lo, hi), _sample_chunk(g, users[lo:hi], n, seen, weights, cdf)
