"""Splits and persisted candidate sets (`split` section of an experiment; `mmrec split`): the protocol's examples
(`mmrec/data/protocols.py`: loo, temporal, paper; docs/splits.md), their candidates and training negatives, written
atomically with the leakage check's result and read back by `load_split`.

Sequence order: by user, then timestamp, equal timestamps in file order (stable sort). `mmrec prep` writes
interactions in that order; a hand-written file that is not is sorted here and counted in split.json
(`sequence_order`), or refused with `unsorted: error`. Everything is computed on integer codes with numpy (no
Python loop per interaction or per user).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmrec.config import from_dict, option, to_dict
from mmrec.data import candidates as cand
from mmrec.data.canonical import (
    INTERACTIONS_FILE,
    ITEMS_FILE,
    REMAKE,
    CanonicalDataset,
    load_dataset,
    sort_interactions,
)
from mmrec.data.leakage import STAGES, check_split
from mmrec.data.protocols import PROTOCOLS, Coded, Examples, ranges
from mmrec.errors import ConfigError, DataError
from mmrec.io import atomic_dir, atomic_path, read_json, read_table, sha256_file, write_json
from mmrec.progress import get_logger, progress
from mmrec.seeding import rng

log = get_logger(__name__)
EXAMPLES_FILE, CANDIDATES_FILE, TRAIN_NEG_FILE, SPLIT_FILE = (
    "examples.parquet", "candidates.parquet", "train_negatives.parquet", "split.json")
TIE_BREAK = "equal timestamps keep the dataset's source order (stable sort by user, then timestamp)"
UNSORTED_HINT = "set split.unsorted: sort (`mmrec split --unsorted sort`) to sort it stably by time, or re-import it"


@dataclass
class SplitConfig:
    """How to split a dataset and sample its candidates; every draw is seeded."""

    protocol: Literal["loo", "temporal", "paper"] = option(
        "loo", "loo (leave-one-out), temporal (global cut times) or paper (MLLM-MSR)")
    name: str | None = option(None, "split name, the directory under splits/ (default: the protocol)")
    seed: int = option(0, "seed of every draw")
    negatives: int = option(20, "test negatives per evaluated example (target + N candidates)")
    valid_negatives: int | None = option(None, "valid negatives (default: negatives, or 1 for the paper protocol)")
    sampling: Literal["uniform", "popularity"] = option("uniform", "negatives drawn uniformly or by popularity")
    popularity_alpha: float = option(1.0, "popularity sampling weight = count ** alpha")
    train_negatives: int = option(1, "negatives per train example, from a separate seeded stream")
    sampling_data: Literal["train", "all"] = option(
        "train", "what the samplers may know: train = popularity counted on training interactions and training "
        "negatives avoiding only the user's training items; all = every interaction (MLLM-MSR's training "
        "negatives, RecBole's popN)")
    max_history: int | None = option(None, "keep only the last N history items of every example (default: all)")
    valid_quantile: float = option(0.8, "temporal: valid cut time as a quantile of all timestamps")
    test_quantile: float = option(0.9, "temporal: test cut time as a quantile of all timestamps")
    valid_time: int | None = option(None, "temporal: absolute valid cut timestamp (instead of the quantile)")
    test_time: int | None = option(None, "temporal: absolute test cut timestamp (instead of the quantile)")
    top_k: int = option(6, "paper: most popular items kept per user (6 MicroLens, 11 Amazon)")
    user_fractions: list[float] = option([0.8, 0.1, 0.1], "paper: user fractions train valid test")
    unsorted: Literal["sort", "error"] = option(
        "sort", "interactions not in time order per user: sort them stably (counted in split.json) or stop")

    def __post_init__(self) -> None:
        if self.negatives < 0 or self.train_negatives < 0 or (self.valid_negatives or 0) < 0:
            raise ValueError("negatives, valid_negatives and train_negatives must be >= 0")
        if self.max_history is not None and self.max_history < 1:
            raise ValueError(f"max_history must be >= 1 or null, got {self.max_history}")
        if not 0.0 < self.valid_quantile <= self.test_quantile < 1.0:
            raise ValueError("need 0 < valid_quantile <= test_quantile < 1")
        if self.top_k < 2:
            raise ValueError(f"top_k must be >= 2 (history + target), got {self.top_k}")
        if len(self.user_fractions) != 3 or min(self.user_fractions) < 0 or abs(sum(self.user_fractions) - 1) > 1e-6:
            raise ValueError(f"user_fractions must be three non-negative numbers summing to 1, "
                             f"got {self.user_fractions}")

    @property
    def dir_name(self) -> str:
        return self.name or self.protocol

    @property
    def n_valid_negatives(self) -> int:
        if self.valid_negatives is not None:
            return self.valid_negatives
        return 1 if self.protocol == "paper" else self.negatives


@dataclass
class Split:
    """A split directory (docs/artifacts.md); the dataset and the tables are loaded on first access."""

    root: Path
    info: dict[str, Any]

    @property
    def dataset_dir(self) -> Path:
        return (self.root / self.info["dataset"]["path"]).resolve()

    @cached_property
    def dataset(self) -> CanonicalDataset:
        return load_dataset(self.dataset_dir)

    @cached_property
    def examples(self) -> pd.DataFrame:
        return pq.read_table(self.root / EXAMPLES_FILE).to_pandas()

    @cached_property
    def candidates(self) -> pd.DataFrame:
        return pq.read_table(self.root / CANDIDATES_FILE).to_pandas()

    @cached_property
    def train_negatives(self) -> pd.DataFrame:
        return pq.read_table(self.root / TRAIN_NEG_FILE).to_pandas()

    @property
    def candidates_sha256(self) -> str:
        return self.info["files"][CANDIDATES_FILE]

    @property
    def config(self) -> SplitConfig:
        return from_dict(SplitConfig, self.info["config"], where=str(self.root / SPLIT_FILE), prefix="split")

    def examples_for(self, stage: str) -> pd.DataFrame:
        """The examples of one stage (train, valid or test), in user order."""
        if stage not in STAGES:
            raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        return self.examples[self.examples["stage"] == stage].reset_index(drop=True)

    def pre_target_items(self, examples: pd.DataFrame) -> pd.Series:
        """Per example (aligned with `examples`' rows) every item its user interacted with before the target, in
        sequence order: the history before any `max_history` cut, and for the paper protocol the items outside
        the top-k too. What `eval.mask_history` leaves out of a full ranking (docs/evaluation.md)."""
        items = read_table(self.dataset_dir / ITEMS_FILE, ["item_id"], remedy=REMAKE)["item_id"].combine_chunks()
        table = read_table(self.dataset_dir / INTERACTIONS_FILE, ["user_id", "item_id", "timestamp"], remedy=REMAKE)
        c = Coded.from_table(sequence_order(table, "sort", self.dataset_dir / INTERACTIONS_FILE)[0], items)
        rows = pd.DataFrame({"user_id": c.user_ids.take(pa.array(c.user)).to_pandas(),
                             "target": c.item_ids.take(pa.array(c.item)).to_pandas(),
                             "target_timestamp": c.ts.astype(np.int64), "row": np.arange(len(c.user))})
        # the target event is the user's last interaction with the target item at target_timestamp
        rows = rows.drop_duplicates(["user_id", "target", "target_timestamp"], keep="last")
        keys = examples[["user_id", "target", "target_timestamp"]].astype({"target_timestamp": np.int64})
        row = keys.merge(rows, how="left", on=["user_id", "target", "target_timestamp"])["row"]
        if row.isna().any():
            k = int(np.flatnonzero(row.isna())[0])
            raise DataError(f"{self.root}: example of user {keys['user_id'].iloc[k]!r} has no target interaction in "
                            f"{self.dataset_dir / INTERACTIONS_FILE}; re-create the split")
        if not len(row):
            return pd.Series([], index=examples.index, dtype=object)
        row = row.to_numpy(np.int64)
        offsets, idx = ranges(c.starts[c.user[row]], row)
        flat = np.asarray(c.item_ids.to_pylist(), dtype=object)[c.item[idx]]
        return pd.Series(np.split(flat, offsets[1:-1]), index=examples.index, dtype=object)

    def candidates_for(self, stage: str) -> pd.DataFrame:
        """The persisted candidates of one evaluated stage (valid or test)."""
        if stage not in ("valid", "test"):
            raise ConfigError(f"candidates exist for stages valid and test, got {stage!r}")
        return self.candidates[self.candidates["stage"] == stage].reset_index(drop=True)


def sequence_order(interactions: pa.Table, policy: Literal["sort", "error"], where: Path | str
                   ) -> tuple[pa.Table, dict[str, Any]]:
    """Interactions in sequence order (user, then timestamp; ties keep file order) and what it took to get there.

    Already-ordered input (what `mmrec prep` writes) is returned as is after a linear check; otherwise it is
    sorted stably, or refused with the first offending user under `policy: error`."""
    import pyarrow.compute as pc

    report: dict[str, Any] = {"unsorted": policy, "users_reordered": 0, "rows_moved": 0}
    uid = interactions["user_id"].combine_chunks()
    ts = interactions["timestamp"].to_numpy()
    if len(uid) < 2:
        return interactions, report
    same = pc.equal(uid[1:], uid[:-1]).to_numpy(zero_copy_only=False)
    bad = pc.less(uid[1:], uid[:-1]).to_numpy(zero_copy_only=False) | (same & (ts[1:] < ts[:-1]))
    if not bad.any():
        return interactions, report
    k = int(np.flatnonzero(bad)[0]) + 1
    if policy == "error":
        if same[k - 1]:
            problem = (f"user {uid[k].as_py()!r} has timestamp {ts[k]} at row {k + 1} after timestamp {ts[k - 1]} "
                       f"at row {k}")
        else:
            problem = f"user {uid[k].as_py()!r} at row {k + 1} comes after user {uid[k - 1].as_py()!r} (not grouped)"
        raise DataError(f"{where}: interactions are not in sequence order (user, then time): {problem}; "
                        f"{UNSORTED_HINT}")
    order = pc.sort_indices(interactions, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending")])
    moved = order.to_numpy() != np.arange(len(uid))
    report.update(users_reordered=len(pc.unique(uid.filter(pa.array(moved)))), rows_moved=int(moved.sum()))
    log.warning("%s: %d interaction(s) of %d user(s) were not in time order; sorted stably by (user, timestamp)",
                where, report["rows_moved"], report["users_reordered"])
    return sort_interactions(interactions), report


def _examples_table(c: Coded, ex: Examples) -> pa.Table:
    values = c.item_ids.take(pa.array(c.item[ex.hist_index]))
    list_type = pa.large_list if ex.hist_offsets[-1] >= 2**31 else pa.list_
    offsets = pa.array(ex.hist_offsets, type=pa.int64() if list_type is pa.large_list else pa.int32())
    history = (pa.LargeListArray if list_type is pa.large_list else pa.ListArray).from_arrays(offsets, values)
    return pa.table({
        "user_id": c.user_ids.take(pa.array(ex.user)),
        "stage": pa.array(np.array(STAGES, dtype=object)[ex.stage], type=pa.string()),
        "history": history,
        "target": c.item_ids.take(pa.array(c.item[ex.target])),
        "target_timestamp": pa.array(c.ts[ex.target], type=pa.int64()),
    })


def _write_candidates(path: Path, c: Coded, ex: Examples, cfg: SplitConfig, seen: cand.UserItems,
                      weights: np.ndarray | None) -> dict[str, int]:
    counts = {}
    schema = pa.schema([("user_id", pa.string()), ("stage", pa.string()), ("item_id", pa.string()),
                        ("label", pa.int8())])
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for stage_code, stage, n in ((1, "valid", cfg.n_valid_negatives), (2, "test", cfg.negatives)):
            rows = np.flatnonzero(ex.stage == stage_code)
            users = ex.user[rows]
            cand.check_feasible(users, n, seen, weights, c.user_ids, stage)
            g = rng(cfg.seed, "split", "candidates", stage)
            chunks = cand.sample_negatives(g, users, n, seen, weights)
            for sl, neg in progress(chunks, total=-(-len(rows) // cand.CHUNK_ROWS), desc=f"{stage} candidates",
                                    unit="chunk"):
                items = np.concatenate([c.item[ex.target[rows[sl]]][:, None], neg], axis=1)
                # shuffle each row so a candidate's position says nothing about its label (the target is column 0)
                perm = g.permuted(np.broadcast_to(np.arange(n + 1), items.shape), axis=1)
                items, labels = np.take_along_axis(items, perm, 1), (perm == 0).astype(np.int8)
                writer.write_table(pa.table({
                    "user_id": c.user_ids.take(pa.array(np.repeat(users[sl], n + 1))),
                    "stage": pa.array([stage]).take(pa.array(np.zeros(items.size, dtype=np.int32))),
                    "item_id": c.item_ids.take(pa.array(items.ravel())),
                    "label": pa.array(labels.ravel()),
                }, schema=schema), row_group_size=items.size)  # one row group per chunk: whole examples
            counts[stage] = int(len(rows) * (n + 1))
    return counts


def _train_negatives(c: Coded, ex: Examples, cfg: SplitConfig, seen: cand.UserItems,
                     weights: np.ndarray | None) -> pa.Table:
    users = ex.user[ex.stage == 0]
    n = cfg.train_negatives
    cand.check_feasible(users, n, seen, weights, c.user_ids, "training")
    g = rng(cfg.seed, "split", "train_negatives")
    parts = [neg for _, neg in cand.sample_negatives(g, users, n, seen, weights)] if n else []
    items = np.concatenate(parts).ravel() if parts else np.zeros(0, dtype=np.int64)
    return pa.table({"user_id": c.user_ids.take(pa.array(np.repeat(users, n) if n else np.zeros(0, np.int64))),
                     "item_id": c.item_ids.take(pa.array(items))})


def _training_rows(c: Coded, ex: Examples) -> np.ndarray:
    """Interactions a model may train on: each user's rows up to and including their train target (none for a
    user without a train example). Popularity for sampling is counted on these, so no valid/test event weighs."""
    end = np.full(len(c.starts), -1, dtype=np.int64)
    train = ex.stage == 0
    end[ex.user[train]] = ex.target[train]
    return np.arange(len(c.user), dtype=np.int64) <= end[c.user]


def _dataset_ref(dataset_dir: Path, out_dir: Path) -> str:
    return os.path.relpath(dataset_dir.resolve(), out_dir.resolve())


def make_split(dataset_dir: str | Path, cfg: SplitConfig, out_dir: str | Path, overwrite: bool = False) -> Split:
    """Split the dataset in `dataset_dir` into `out_dir` (atomically) and verify it with the leakage check.

    An existing split made with the same config and dataset is kept (candidates are written once); one made
    differently is an error unless `overwrite`.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    fingerprint = load_dataset_fingerprint(dataset_dir)
    if (out_dir / SPLIT_FILE).is_file():
        old = read_json(out_dir / SPLIT_FILE)
        same = old.get("config") == to_dict(cfg) and old.get("dataset", {}).get("fingerprint") == fingerprint
        if same:
            try:
                split = load_split(out_dir)
                log.info("split %s already exists with the same config and dataset; kept", out_dir)
                return split
            except DataError:
                if not overwrite:
                    raise
        elif not overwrite:
            raise ConfigError(f"{out_dir}: a split made with a different config or dataset exists; "
                              "choose another --out (or split name), or pass --force to replace it")
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: exists and is not a split directory; choose another --out or remove it")
    t0 = time.perf_counter()
    items = read_table(dataset_dir / ITEMS_FILE, ["item_id"], remedy=REMAKE)["item_id"].combine_chunks()
    interactions = read_table(dataset_dir / INTERACTIONS_FILE, ["user_id", "item_id", "timestamp"], remedy=REMAKE)
    interactions, order_report = sequence_order(interactions, cfg.unsorted, dataset_dir / INTERACTIONS_FILE)
    c = Coded.from_table(interactions, items)
    if not len(c.user):
        raise DataError(f"{dataset_dir / INTERACTIONS_FILE}: no interactions to split")
    ex = PROTOCOLS[cfg.protocol](c, cfg)
    if not len(ex.user):
        raise DataError(f"{dataset_dir}: protocol {cfg.protocol!r} gives no example (users have too few interactions; "
                        "loo needs 2, paper 2 distinct items, temporal one before a cut time)")
    if not (ex.stage == 2).any():
        log.warning("split %s: no test examples under protocol %r", out_dir, cfg.protocol)
    if ex.train_history_cut:
        log.warning("split %s: max_history=%d leaves %d history item(s) of the training rows out, so the ID "
                    "baselines and popularity never learn from them; to cap only what a VLM reads, leave "
                    "split.max_history null and set the model's max_history", out_dir, cfg.max_history,
                    ex.train_history_cut)
    seen = cand.UserItems.build(c.user, c.item, len(c.user_ids), len(c.item_ids))
    known = _training_rows(c, ex) if cfg.sampling_data == "train" else np.ones(len(c.user), dtype=bool)
    train_seen = seen if cfg.sampling_data == "all" else cand.UserItems.build(
        c.user[known], c.item[known], len(c.user_ids), len(c.item_ids))
    weights = cand.item_weights(cfg.sampling, np.bincount(c.item[known], minlength=len(c.item_ids)),
                                cfg.popularity_alpha)
    examples = _examples_table(c, ex)
    with atomic_dir(out_dir) as tmp:
        pq.write_table(examples, tmp / EXAMPLES_FILE)
        cand_counts = _write_candidates(tmp / CANDIDATES_FILE, c, ex, cfg, seen, weights)
        train_neg = _train_negatives(c, ex, cfg, train_seen, weights)
        pq.write_table(train_neg, tmp / TRAIN_NEG_FILE)
        leakage = check_split(interactions, items, examples, tmp / CANDIDATES_FILE, train_neg)
        stage_counts = {s: int((ex.stage == k).sum()) for k, s in enumerate(STAGES)}
        info = {
            "protocol": cfg.protocol, "config": to_dict(cfg), "seed": cfg.seed, "params": ex.params,
            "tie_break": TIE_BREAK,
            "sequence_order": order_report,
            "dataset": {"path": _dataset_ref(dataset_dir, out_dir), "fingerprint": fingerprint},
            "files": {f: sha256_file(tmp / f) for f in (EXAMPLES_FILE, CANDIDATES_FILE, TRAIN_NEG_FILE)},
            "counts": {"users": len(c.user_ids), "items": len(c.item_ids), "interactions": len(c.user),
                       "examples": stage_counts, "candidates": cand_counts, "train_negatives": train_neg.num_rows,
                       "history_items": int(ex.hist_offsets[-1]), "train_history_cut": ex.train_history_cut},
            "leakage_check": leakage,
        }
        write_json(info, tmp / SPLIT_FILE)
    log.info("split %s (%s): %s examples in %.1fs", out_dir, cfg.protocol, stage_counts, time.perf_counter() - t0)
    return load_split(out_dir, verify=False)


def load_dataset_fingerprint(dataset_dir: Path) -> str:
    for name in (ITEMS_FILE, INTERACTIONS_FILE):
        if not (dataset_dir / name).is_file():
            raise DataError(f"{dataset_dir}: not a canonical dataset ({name} missing); create it with `mmrec prep`")
    return CanonicalDataset(dataset_dir, pd.DataFrame(), pd.DataFrame()).fingerprint()


def load_split(root: str | Path, verify: bool = True) -> Split:
    """Load a split directory; with `verify`, check file hashes and that the dataset has not changed since."""
    root = Path(root)
    if not (root / SPLIT_FILE).is_file():
        raise DataError(f"{root}: not a split directory ({SPLIT_FILE} missing); create it with `mmrec split`")
    info = read_json(root / SPLIT_FILE)
    dataset_dir = (root / info["dataset"]["path"]).resolve()
    if verify:
        for name, digest in info["files"].items():
            if not (root / name).is_file() or sha256_file(root / name) != digest:
                raise DataError(f"{root / name}: missing or modified since the split was made (sha256 differs); "
                                "re-create the split with `mmrec split --force`")
        if load_dataset_fingerprint(dataset_dir) != info["dataset"]["fingerprint"]:
            raise DataError(f"{dataset_dir}: the dataset changed since split {root} was made; re-create the split")
    return Split(root=root, info=info)
