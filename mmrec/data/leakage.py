"""The leakage check run on every split (its result is recorded in split.json; a failure raises).

Works from the persisted tables and the dataset alone, so it verifies what was written, not what the
splitter meant to write. Positions are a user's interactions in time order -- by timestamp, equal timestamps in
file order (docs/splits.md) -- whatever the row order of the interactions table:

1. every example's target is an interaction of that user at `target_timestamp`;
2. every history item was interacted with by the user *before* the target's position -- so no valid/test
   target and no later interaction can appear in a history (a re-consumed item may, since the user had
   already seen it);
3. one example per (user, stage), and a user's train target comes before their valid target, which comes
   before their test target, so a train sequence never contains a valid/test target event;
4. candidates (valid/test only): exactly the example's target has label 1, an example's candidates are
   distinct, and no negative is an item the user interacted with at any time; a training negative is not an
   item the user interacted with up to their train target (a later item may be one: the model cannot know it).

All of it is sorting and searching on integer codes; histories and candidates are checked in chunks so
memory stays bounded on large splits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrec.data.candidates import UserItems, sorted_unique
from mmrec.errors import DataError

STAGES = ("train", "valid", "test")
_CHUNK = 2_000_000  # history items per step


def _codes(values: pa.Array | pa.ChunkedArray, universe: pa.Array, what: str) -> np.ndarray:
    """Positions of `values` in `universe` (dictionary-encoded input is mapped through its dictionary)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    out = []
    for arr in chunks:
        if pa.types.is_dictionary(arr.type):
            mapped = _codes(arr.dictionary, universe, what)
            out.append(mapped[arr.indices.to_numpy(zero_copy_only=False)])
            continue
        codes = pc.index_in(arr, value_set=universe)
        if codes.null_count:
            bad = pc.filter(arr, pc.is_null(codes))[0]
            raise DataError(f"leakage check: {what} {bad.as_py()!r} is not in the dataset")
        out.append(codes.to_numpy(zero_copy_only=False).astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _fail(problem: str, n: int, user: Any, stage: str) -> None:
    raise DataError(f"leakage check failed: {n} case(s) where {problem} (first: user {user!r}, stage {stage!r}); "
                    "the split is invalid -- re-create it with `mmrec split`")


def _lookup(sorted_keys: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found mask, index) of each query in a sorted array."""
    if not len(sorted_keys):
        return np.zeros(len(q), dtype=bool), np.zeros(len(q), dtype=np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
    return sorted_keys[at] == q, at


def check_split(interactions: pa.Table, item_ids: pa.Array, examples: pa.Table,
                candidates: pa.Table | str | Path | None = None,
                train_negatives: pa.Table | None = None) -> dict[str, Any]:
    """Verify a split against its dataset; returns a small report, raises DataError on any leak.
    `candidates` may be a table or the path of candidates.parquet (then read row group by row group)."""
    user_ids = pc.unique(interactions["user_id"])
    name = lambda u: user_ids[int(u)].as_py()  # noqa: E731
    n_items = len(item_ids)
    u = _codes(interactions["user_id"], user_ids, "user")
    i = _codes(interactions["item_id"], item_ids, "item")
    ts = interactions["timestamp"].to_numpy()
    order = _time_order(u, ts)
    if order is not None:
        u, i, ts = u[order], i[order], ts[order]
    key = u * n_items + i
    seen = UserItems.build(u, i, len(user_ids), n_items)
    # rows are in sequence order, so a stable sort by key orders each (user, item) block by position
    event = np.argsort(key, kind="stable")
    ek, ets = key[event], ts[event]
    block = np.r_[True, ek[1:] != ek[:-1]] if len(ek) else np.zeros(0, dtype=bool)
    uniq, first = ek[block], event[block]  # first position of each (user, item)
    del key, u, i

    ex_u = _codes(examples["user_id"], user_ids, "example user")
    ex_t = _codes(examples["target"], item_ids, "example target")
    ex_ts = examples["target_timestamp"].to_numpy()
    ex_stage = _codes(examples["stage"], pa.array(STAGES), "example stage")

    # 1. the target event: the last position of (user, target) at target_timestamp
    q = ex_u * n_items + ex_t
    j = _search_pairs(ek, ets, q, ex_ts) - 1
    jc = np.clip(j, 0, max(len(ek) - 1, 0))
    ok = (j >= 0) & (ek[jc] == q) & (ets[jc] == ex_ts) if len(ek) else np.zeros(len(q), dtype=bool)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        _fail("the target is not an interaction of the user at target_timestamp", int((~ok).sum()),
              name(ex_u[k]), STAGES[ex_stage[k]])
    t_pos = event[j]
    del event, ek, ets

    # 2. history items seen strictly before the target position
    n_hist = 0
    for lo, hi, flat in _history_chunks(examples["history"]):
        h_items = _codes(flat, item_ids, "history item")
        lengths = np.diff(hi)
        h_row = np.repeat(np.arange(lo, lo + len(lengths)), lengths)
        known, at = _lookup(uniq, ex_u[h_row] * n_items + h_items)
        late = ~known | (first[at] >= t_pos[h_row])
        if late.any():
            k = int(h_row[np.flatnonzero(late)[0]])
            _fail("a history item was not interacted with before the target (a later or foreign interaction)",
                  int(late.sum()), name(ex_u[k]), STAGES[ex_stage[k]])
        n_hist += len(h_items)

    # 3. one example per (user, stage); train < valid < test per user
    order = np.lexsort((ex_stage, ex_u))
    same_user = ex_u[order][1:] == ex_u[order][:-1]
    dup = same_user & (ex_stage[order][1:] == ex_stage[order][:-1])
    if dup.any():
        k = int(order[1:][dup][0])
        _fail("a user has two examples of the same stage", int(dup.sum()), name(ex_u[k]), STAGES[ex_stage[k]])
    backwards = same_user & (t_pos[order][1:] <= t_pos[order][:-1])
    if backwards.any():
        k = int(order[1:][backwards][0])
        _fail("a later stage's target does not come after the earlier stage's target", int(backwards.sum()),
              name(ex_u[k]), STAGES[ex_stage[k]])

    report: dict[str, Any] = {"passed": True, "examples": int(len(q)), "history_items": n_hist}
    if candidates is not None:
        report["candidates"] = _check_candidates(_pieces(candidates), item_ids, seen, ex_u, ex_t, ex_stage,
                                                 user_ids, name)
    if train_negatives is not None and len(train_negatives):
        nu = _codes(train_negatives["user_id"], user_ids, "train-negative user")
        ni = _codes(train_negatives["item_id"], item_ids, "train-negative item")
        train = ex_stage == 0
        train_pos = np.full(len(user_ids), -1, dtype=np.int64)
        train_pos[ex_u[train]] = t_pos[train]
        orphan = train_pos[nu] < 0
        if orphan.any():
            k = int(np.flatnonzero(orphan)[0])
            _fail("a training negative belongs to a user without a train example", int(orphan.sum()), name(nu[k]),
                  "train")
        known, at = _lookup(uniq, nu * n_items + ni)
        bad = known & (first[at] <= train_pos[nu])
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            _fail("a training negative is an item the user interacted with by their train target", int(bad.sum()),
                  name(nu[k]), "train")
        report["train_negatives"] = int(len(nu))
    return report


def _time_order(u: np.ndarray, ts: np.ndarray) -> np.ndarray | None:
    """Stable order by (user, timestamp), or None when the rows are already in it (the usual case)."""
    if len(u) < 2:
        return None
    back = (u[1:] < u[:-1]) | ((u[1:] == u[:-1]) & (ts[1:] < ts[:-1]))
    return np.lexsort((ts, u)) if back.any() else None


def _history_chunks(history: pa.ChunkedArray | pa.Array) -> Iterator[tuple[int, np.ndarray, pa.Array]]:
    """(first example, offsets relative to the chunk, flattened items) for runs of examples of ~_CHUNK items."""
    arr = history.combine_chunks() if isinstance(history, pa.ChunkedArray) else history
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    ends = np.cumsum(lengths)
    lo = 0
    while lo < len(lengths):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + _CHUNK, side="right")))
        part = arr.slice(lo, hi - lo)
        yield lo, np.r_[0, ends[lo:hi] - base], pc.list_flatten(part)
        lo = hi


def _search_pairs(block: np.ndarray, ts: np.ndarray, q_block: np.ndarray, q_ts: np.ndarray) -> np.ndarray:
    """searchsorted(side='right') of (q_block, q_ts) in the lexicographically sorted pairs (block, ts)."""
    left = np.searchsorted(block, q_block, side="left")
    right = np.searchsorted(block, q_block, side="right")
    while (left < right).any():  # binary search inside each block, all queries at once
        mid = (left + right) // 2
        active = left < right
        go_right = active & (ts[np.minimum(mid, len(ts) - 1)] <= q_ts)
        left = np.where(go_right, mid + 1, left)
        right = np.where(active & ~go_right, mid, right)
    return left


def _pieces(candidates: pa.Table | str | Path) -> Iterator[pa.Table]:
    if isinstance(candidates, pa.Table):
        yield candidates
        return
    f = pq.ParquetFile(candidates, read_dictionary=["user_id", "stage", "item_id"])
    for k in range(f.num_row_groups):
        yield f.read_row_group(k)


def _check_candidates(pieces: Iterator[pa.Table], item_ids: pa.Array, seen: UserItems, ex_u: np.ndarray,
                      ex_t: np.ndarray, ex_stage: np.ndarray, user_ids: pa.Array, name) -> int:
    n_items = seen.n_items
    ex_group = ex_u * 3 + ex_stage
    eg_order = np.argsort(ex_group, kind="stable")
    eg_sorted = ex_group[eg_order]
    positives = np.zeros(len(eg_sorted), dtype=np.int64)
    present, rows = [], 0
    for piece in pieces:
        cu = _codes(piece["user_id"], user_ids, "candidate user")
        ci = _codes(piece["item_id"], item_ids, "candidate item")
        cs = _codes(piece["stage"], pa.array(STAGES), "candidate stage")
        label = piece["label"].to_numpy()
        if (cs == 0).any():
            k = int(np.flatnonzero(cs == 0)[0])
            _fail("a candidate row has stage 'train' (candidates are for valid and test)", int((cs == 0).sum()),
                  name(cu[k]), "train")
        pos = label == 1
        found, at = _lookup(eg_sorted, cu[pos] * 3 + cs[pos])
        if not found.all():
            k = int(np.flatnonzero(pos)[np.flatnonzero(~found)[0]])
            _fail("a candidate row has no example of its (user, stage)", int((~found).sum()), name(cu[k]),
                  STAGES[cs[k]])
        target_ok = ex_t[eg_order[at]] == ci[pos]
        if not target_ok.all():
            k = int(np.flatnonzero(pos)[np.flatnonzero(~target_ok)[0]])
            _fail("the positive candidate is not the example's target", int((~target_ok).sum()), name(cu[k]),
                  STAGES[cs[k]])
        np.add.at(positives, at, 1)
        ck = np.sort((cu * 3 + cs) * n_items + ci)
        same = ck[1:] == ck[:-1]
        if same.any():
            g = int(ck[1:][same][0] // n_items)
            _fail("an item appears twice among one example's candidates", int(same.sum()), name(g // 3), STAGES[g % 3])
        groups = sorted_unique(ck // n_items)
        known, _ = _lookup(eg_sorted, groups)
        if not known.all():
            g = int(groups[~known][0])
            _fail("a candidate row has no example of its (user, stage)", int((~known).sum()), name(g // 3),
                  STAGES[g % 3])
        present.append(groups)
        # positives are targets, hence the user's items; any further hit is a leaked negative
        hits = int(seen.contains(ck // n_items // 3, ck % n_items).sum())
        if hits != int(pos.sum()):
            neg = ~pos
            leaked = seen.contains(cu[neg], ci[neg])
            k = int(np.flatnonzero(neg)[np.flatnonzero(leaked)[0]])
            _fail("a negative candidate is an item the user interacted with", int(leaked.sum()), name(cu[k]),
                  STAGES[cs[k]])
        rows += len(cu)
    groups = np.sort(np.concatenate(present)) if present else np.zeros(0, dtype=np.int64)
    if len(groups) > 1 and (groups[1:] == groups[:-1]).any():
        g = int(groups[1:][groups[1:] == groups[:-1]][0])
        _fail("one example's candidates are split across row groups (must be contiguous)", 1, name(g // 3),
              STAGES[g % 3])
    _, at = _lookup(eg_sorted, groups)
    wrong = positives[at] != 1
    if wrong.any():
        g = int(groups[wrong][0])
        _fail("an evaluated example does not have exactly one positive candidate", int(wrong.sum()), name(g // 3),
              STAGES[g % 3])
    return rows
