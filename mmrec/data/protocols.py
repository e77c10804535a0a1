"""Split protocols: a dataset's interactions, coded as integers in sequence order, become examples (a target
interaction and its history, per stage) without a Python loop per user (docs/splits.md).

- `loo`: chronological leave-one-out -- last item test, second-to-last valid, the rest is the train sequence.
- `temporal`: global temporal split -- one cut time for valid and one for test, shared by all users; each
  user's first item after a cut is the target, everything before it the history.
- `paper`: MLLM-MSR's protocol -- per user the `top_k` most popular items re-sorted by time, last one the
  target; users split at random into train/valid/test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mmrec.data.canonical import INTERACTIONS_FILE, ITEMS_FILE
from mmrec.errors import ConfigError, DataError
from mmrec.seeding import rng

if TYPE_CHECKING:
    from mmrec.data.splits import SplitConfig


@dataclass
class Coded:
    """A dataset's interactions as integer codes, in sequence order (users are contiguous blocks)."""

    user_ids: pa.Array
    item_ids: pa.Array
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    starts: np.ndarray   # first row of each user
    lengths: np.ndarray

    @classmethod
    def from_table(cls, interactions: pa.Table, item_ids: pa.Array) -> "Coded":
        import pyarrow.compute as pc

        uid = interactions["user_id"].combine_chunks()
        if len(uid) and pc.any(pc.less(uid[1:], uid[:-1])).as_py():
            raise DataError(f"{INTERACTIONS_FILE}: rows are not in sequence order (by user); "
                            "re-create it with `mmrec prep`")
        enc = pc.dictionary_encode(uid)
        user = enc.indices.to_numpy().astype(np.int64)
        item_codes = pc.index_in(interactions["item_id"], value_set=item_ids)
        if item_codes.null_count:
            raise DataError(f"{INTERACTIONS_FILE}: some interactions refer to items missing from {ITEMS_FILE}")
        n_users = len(enc.dictionary)
        lengths = np.bincount(user, minlength=n_users)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls(enc.dictionary, item_ids, user, item_codes.to_numpy(zero_copy_only=False).astype(np.int64),
                   interactions["timestamp"].to_numpy(), starts, lengths)


@dataclass
class Examples:
    """Examples as interaction indices: `target` rows, history = indices[offsets[k]:offsets[k+1]]."""

    user: np.ndarray
    stage: np.ndarray
    target: np.ndarray
    hist_offsets: np.ndarray
    hist_index: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    train_history_cut: int = 0  # history items of the train rows that `max_history` left out


def ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated aranges [lo_k, hi_k) and their offsets, vectorised."""
    n = np.maximum(hi - lo, 0)
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    idx = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - lo, n)
    return offsets, idx


def _contiguous(user: np.ndarray, stage: int, target: np.ndarray, hist_lo: np.ndarray,
                max_history: int | None) -> tuple:
    """One stage's examples: (user, stage, target, history start, history end, history items cut)."""
    capped = hist_lo if max_history is None else np.maximum(hist_lo, target - max_history)
    return user, np.full(len(user), stage, dtype=np.int8), target, capped, target, capped - hist_lo


def _assemble(parts: list[tuple], params: dict[str, Any]) -> Examples:
    user = np.concatenate([p[0] for p in parts])
    stage = np.concatenate([p[1] for p in parts])
    target = np.concatenate([p[2] for p in parts])
    lo, hi = np.concatenate([p[3] for p in parts]), np.concatenate([p[4] for p in parts])
    order = np.lexsort((stage, user))
    offsets, idx = ranges(lo[order], hi[order])
    train_cut = int(np.concatenate([p[5] for p in parts])[stage == 0].sum())
    return Examples(user[order], stage[order], target[order], offsets, idx, params, train_cut)


def loo(c: Coded, cfg: SplitConfig) -> Examples:
    """Leave-one-out; users with 2 items give a train example only, users with 1 item none."""
    users = np.arange(len(c.starts))
    s, n = c.starts, c.lengths
    full = n >= 3
    two = n == 2
    train_t = np.where(full, s + n - 3, s + 1)
    has_train = full | two
    parts = [
        _contiguous(users[has_train], 0, train_t[has_train], s[has_train], cfg.max_history),
        _contiguous(users[full], 1, (s + n - 2)[full], s[full], cfg.max_history),
        _contiguous(users[full], 2, (s + n - 1)[full], s[full], cfg.max_history),
    ]
    return _assemble(parts, {"users_train_only": int(two.sum()), "users_without_examples": int((n < 2).sum())})


def temporal(c: Coded, cfg: SplitConfig) -> Examples:
    """Global temporal split at two cut times; a target needs at least one earlier interaction."""
    tv = cfg.valid_time if cfg.valid_time is not None else int(np.ceil(np.quantile(c.ts, cfg.valid_quantile)))
    tt = cfg.test_time if cfg.test_time is not None else int(np.ceil(np.quantile(c.ts, cfg.test_quantile)))
    if tt < tv:
        raise ConfigError(f"split: test cut time {tt} is before the valid cut time {tv}")
    users = np.arange(len(c.starts))
    s, n = c.starts, c.lengths
    before_v = np.add.reduceat((c.ts < tv).astype(np.int64), s) if len(s) else s
    before_t = np.add.reduceat((c.ts < tt).astype(np.int64), s) if len(s) else s
    has_train = before_v >= 1
    vpos, tpos = s + before_v, s + before_t
    has_valid = (before_v >= 1) & (before_v < n) & (before_v < before_t)
    has_test = (before_t >= 1) & (before_t < n)
    parts = [
        _contiguous(users[has_train], 0, (s + before_v - 1)[has_train], s[has_train], cfg.max_history),
        _contiguous(users[has_valid], 1, vpos[has_valid], s[has_valid], cfg.max_history),
        _contiguous(users[has_test], 2, tpos[has_test], s[has_test], cfg.max_history),
    ]
    return _assemble(parts, {"valid_time": tv, "test_time": tt})


def paper(c: Coded, cfg: SplitConfig) -> Examples:
    """Per user the `top_k` most popular distinct items (ties: the more recent), re-sorted by time; the last is
    the target. Users are split at random into train/valid/test by `user_fractions`; each has one example."""
    pop = np.bincount(c.item, minlength=len(c.item_ids))
    rows = np.arange(len(c.user), dtype=np.int64)
    latest = ~pd.Series(c.user * len(c.item_ids) + c.item).duplicated(keep="last").to_numpy()
    cand_rows = rows[latest]
    order = np.lexsort((-cand_rows, -pop[c.item[cand_rows]], c.user[cand_rows]))
    ranked = cand_rows[order]
    block_start = np.searchsorted(c.user[ranked], c.user[ranked], side="left")
    chosen = np.sort(ranked[(np.arange(len(ranked)) - block_start) < cfg.top_k])
    per_user = np.bincount(c.user[chosen], minlength=len(c.starts))
    ok_users = np.flatnonzero(per_user >= 2)
    chosen = chosen[per_user[c.user[chosen]] >= 2]
    ends = np.cumsum(per_user[ok_users])
    starts = ends - per_user[ok_users]
    capped = starts if cfg.max_history is None else np.maximum(starts, ends - 1 - cfg.max_history)
    cut, starts = capped - starts, capped
    perm = rng(cfg.seed, "split", "paper", "users").permutation(len(ok_users))
    f = cfg.user_fractions
    n_train, n_valid = int(f[0] * len(ok_users)), int(f[1] * len(ok_users))
    stage = np.full(len(ok_users), 2, dtype=np.int8)
    stage[perm[:n_train]] = 0
    stage[perm[n_train:n_train + n_valid]] = 1
    offsets, idx = ranges(starts, ends - 1)
    return Examples(ok_users, stage, chosen[ends - 1], offsets, chosen[idx],
                    {"users_without_examples": int(len(c.starts) - len(ok_users))}, int(cut[stage == 0].sum()))


PROTOCOLS = {"loo": loo, "temporal": temporal, "paper": paper}
