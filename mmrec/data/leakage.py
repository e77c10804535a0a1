"""The leakage check run on every split (its result is recorded in split.json; a failure raises).

Works from the persisted tables and the dataset alone, so it verifies what was written, not what the
splitter meant to write. Positions are a user's interactions in sequence order (docs/artifacts.md):

1. every example's target is an interaction of that user at `target_timestamp`;
2. every history item was interacted with by the user *before* the target's position -- so no valid/test
   target and no later interaction can appear in a history (a re-consumed item may, since the user had
   already seen it);
3. a user's train target comes before their valid target, which comes before their test target, so a train
   sequence never contains a valid/test target event;
4. candidates: exactly the example's target has label 1, negatives are distinct and never an item the user
   interacted with at any time; training negatives likewise.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrec.data.candidates import UserItems
from mmrec.errors import DataError

STAGES = ("train", "valid", "test")


def _codes(values: pa.Array | pa.ChunkedArray, universe: pa.Array, what: str) -> np.ndarray:
    codes = pc.index_in(values, value_set=universe)
    if codes.null_count:
        bad = pc.filter(values, pc.is_null(codes))[0]
        raise DataError(f"leakage check: {what} {bad.as_py()!r} is not in the dataset")
    return codes.to_numpy(zero_copy_only=False).astype(np.int64)


def _fail(problem: str, n: int, user: str, stage: str) -> None:
    raise DataError(f"leakage check failed: {n} case(s) where {problem} (first: user {user!r}, stage {stage!r}); "
                    "the split is invalid -- re-create it with `mmrec split`")


def check_split(interactions: pa.Table, item_ids: pa.Array, examples: pa.Table,
                candidates: pa.Table | None = None, train_negatives: pa.Table | None = None) -> dict[str, Any]:
    """Verify a split against its dataset; returns a small report, raises DataError on any leak."""
    user_ids = pc.unique(interactions["user_id"])
    n_items = len(item_ids)
    u = _codes(interactions["user_id"], user_ids, "user")
    i = _codes(interactions["item_id"], item_ids, "item")
    ts = interactions["timestamp"].to_numpy()
    pos = np.arange(len(u), dtype=np.int64)
    key = u * n_items + i
    seen = UserItems.build(u, i, len(user_ids), n_items)
    uniq, first = np.unique(key, return_index=True)  # first position of each (user, item)

    ex_u = _codes(examples["user_id"], user_ids, "example user")
    ex_t = _codes(examples["target"], item_ids, "example target")
    ex_ts = examples["target_timestamp"].to_numpy()
    stage_names = np.array(STAGES)
    ex_stage = _codes(examples["stage"], pa.array(STAGES), "example stage")

    # 1. target event: the last position of (user, target, timestamp)
    event = np.lexsort((pos, ts, key))
    ek, ets = key[event], ts[event]
    q = ex_u * n_items + ex_t
    j = _search_pairs(ek, ets, q, ex_ts) - 1
    jc = np.clip(j, 0, max(len(ek) - 1, 0))
    ok = (j >= 0) & (ek[jc] == q) & (ets[jc] == ex_ts) if len(ek) else np.zeros(len(q), dtype=bool)
    t_pos = np.full(len(q), -1, dtype=np.int64)
    t_pos[ok] = event[j[ok]]
    missing = ~ok
    if missing.any():
        k = int(np.flatnonzero(missing)[0])
        _fail("the target is not an interaction of the user at target_timestamp", int(missing.sum()),
              user_ids[ex_u[k]].as_py(), stage_names[ex_stage[k]])

    # 2. history items seen strictly before the target position
    hist = examples["history"].combine_chunks() if isinstance(examples["history"], pa.ChunkedArray) else examples["history"]
    lengths = pc.list_value_length(hist).to_numpy(zero_copy_only=False).astype(np.int64)
    h_items = _codes(pc.list_flatten(hist), item_ids, "history item")
    h_row = np.repeat(np.arange(len(lengths)), lengths)
    hk = ex_u[h_row] * n_items + h_items
    at = np.minimum(np.searchsorted(uniq, hk), max(len(uniq) - 1, 0))
    known = uniq[at] == hk if len(uniq) else np.zeros(len(hk), dtype=bool)
    first_pos = np.where(known, first[at], np.iinfo(np.int64).max)
    late = first_pos >= t_pos[h_row]
    if late.any():
        k = int(h_row[np.flatnonzero(late)[0]])
        _fail("a history item was not interacted with before the target (a later or foreign interaction)",
              int(late.sum()), user_ids[ex_u[k]].as_py(), stage_names[ex_stage[k]])

    # 3. train < valid < test per user
    order = np.lexsort((ex_stage, ex_u))
    same_user = ex_u[order][1:] == ex_u[order][:-1]
    dup = same_user & (ex_stage[order][1:] == ex_stage[order][:-1])
    if dup.any():
        k = int(order[1:][dup][0])
        _fail("a user has two examples of the same stage", int(dup.sum()), user_ids[ex_u[k]].as_py(), stage_names[ex_stage[k]])
    backwards = same_user & (t_pos[order][1:] <= t_pos[order][:-1])
    if backwards.any():
        k = int(order[1:][backwards][0])
        _fail("a later stage's target does not come after the earlier stage's target", int(backwards.sum()),
              user_ids[ex_u[k]].as_py(), stage_names[ex_stage[k]])

    report: dict[str, Any] = {"passed": True, "examples": int(len(q)), "history_items": int(len(hk))}
    if candidates is not None:
        report["candidates"] = _check_candidates(candidates, user_ids, item_ids, seen, ex_u, ex_t, ex_stage)
    if train_negatives is not None and len(train_negatives):
        nu = _codes(train_negatives["user_id"], user_ids, "train-negative user")
        ni = _codes(train_negatives["item_id"], item_ids, "train-negative item")
        bad = seen.contains(nu, ni)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            _fail("a training negative is an item the user interacted with", int(bad.sum()),
                  user_ids[nu[k]].as_py(), "train")
        report["train_negatives"] = int(len(nu))
    return report


def _search_pairs(block: np.ndarray, ts: np.ndarray, q_block: np.ndarray, q_ts: np.ndarray) -> np.ndarray:
    """searchsorted(side='right') of (q_block, q_ts) in the lexicographically sorted pairs (block, ts)."""
    lo, hi = np.searchsorted(block, q_block, side="left"), np.searchsorted(block, q_block, side="right")
    left, right = lo.copy(), hi.copy()  # binary search inside each block, all queries at once
    while (left < right).any():
        mid = (left + right) // 2
        active = left < right
        go_right = active & (ts[np.minimum(mid, len(ts) - 1)] <= q_ts)
        left = np.where(go_right, mid + 1, left)
        right = np.where(active & ~go_right, mid, right)
    return left


def _check_candidates(candidates: pa.Table, user_ids: pa.Array, item_ids: pa.Array, seen: UserItems,
                      ex_u: np.ndarray, ex_t: np.ndarray, ex_stage: np.ndarray) -> int:
    cu = _codes(candidates["user_id"], user_ids, "candidate user")
    ci = _codes(candidates["item_id"], item_ids, "candidate item")
    cs = _codes(candidates["stage"], pa.array(STAGES), "candidate stage")
    cs_names = np.array(STAGES)[cs]
    if (cs == 0).any():
        k = int(np.flatnonzero(cs == 0)[0])
        _fail("a candidate row has stage 'train' (candidates are for valid and test)", int((cs == 0).sum()),
              user_ids[cu[k]].as_py(), "train")
    label = candidates["label"].to_numpy(zero_copy_only=False)
    n_items = seen.n_items
    group = (cu * 3 + cs)
    ex_group = ex_u * 3 + ex_stage
    ex_at = np.searchsorted(np.sort(ex_group), group)
    sorted_groups = np.sort(ex_group)
    has_example = sorted_groups[np.minimum(ex_at, len(sorted_groups) - 1)] == group
    if (~has_example).any():
        k = int(np.flatnonzero(~has_example)[0])
        _fail("a candidate row has no example of its (user, stage)", int((~has_example).sum()),
              user_ids[cu[k]].as_py(), cs_names[k])
    pos = label == 1
    positives = np.bincount(np.searchsorted(sorted_groups, group[pos]), minlength=len(sorted_groups))
    eval_groups = np.isin(sorted_groups, np.unique(group))
    if (positives[eval_groups] != 1).any():
        g = int(sorted_groups[eval_groups][positives[eval_groups] != 1][0])
        _fail("an evaluated example does not have exactly one positive candidate",
              int((positives[eval_groups] != 1).sum()), user_ids[g // 3].as_py(), STAGES[g % 3])
    order = np.argsort(ex_group)
    target_sorted = ex_t[order]
    wrong = target_sorted[np.searchsorted(sorted_groups, group[pos])] != ci[pos]
    if wrong.any():
        k = int(np.flatnonzero(pos)[np.flatnonzero(wrong)[0]])
        _fail("the positive candidate is not the example's target", int(wrong.sum()), user_ids[cu[k]].as_py(), cs_names[k])
    neg = ~pos
    leaked = seen.contains(cu[neg], ci[neg])
    if leaked.any():
        k = int(np.flatnonzero(neg)[np.flatnonzero(leaked)[0]])
        _fail("a negative candidate is an item the user interacted with", int(leaked.sum()),
              user_ids[cu[k]].as_py(), cs_names[k])
    ck = group * n_items + ci
    dupes = np.unique(ck).size != ck.size
    if dupes:
        _, idx, counts = np.unique(ck, return_index=True, return_counts=True)
        k = int(idx[counts > 1][0])
        _fail("an item appears twice among one example's candidates", int((counts > 1).sum()),
              user_ids[cu[k]].as_py(), cs_names[k])
    return int(len(cu))
