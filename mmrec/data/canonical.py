"""The canonical dataset: `items.parquet`, `interactions.parquet`, `stats.json` (+ `prep.json`, `images/`).

Contract (docs/artifacts.md): ids are strings as in the source; image paths are relative to the dataset directory
and never leave it; `interactions.parquet` rows are stored in sequence order — by user, then timestamp,
ties kept in source-file order (stable sort) — so a user's sequence is simply their rows in file order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mmrec.errors import DataError
from mmrec.io import read_json, read_table, sha256_file, write_json, write_parquet

ITEMS_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("title", pa.string()),
    ("text", pa.string()),
    ("image", pa.string()),          # relative to the dataset dir, null when the item has no usable image
    ("image_sha256", pa.string()),
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
])

INTERACTIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("timestamp", pa.int64()),       # seconds (or any monotone integer clock); never float: float32 creates false ties
    ("rating", pa.float64()),        # null when the source has none
])

ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"
STATS_FILE = "stats.json"
PREP_FILE = "prep.json"
REMAKE = "re-create the dataset with `mmrec prep` (under `mmrec run`: delete the dataset folder and run again)"


def _conform(df: pd.DataFrame, schema: pa.Schema, name: str) -> pa.Table:
    """Cast `df` to `schema`, adding optional columns as nulls; errors name the table and column."""
    required = {"items": {"item_id"}, "interactions": {"user_id", "item_id", "timestamp"}}[name]
    missing = required - set(df.columns)
    if missing:
        raise DataError(f"{name} table is missing column(s) {sorted(missing)}")
    cols = {}
    for f in schema:
        if f.name in df.columns:
            col = df[f.name]
        elif f.name in ("title", "text"):
            col = pd.Series([""] * len(df), dtype=object)
        else:
            col = pd.Series([None] * len(df), dtype=object)
        try:
            cols[f.name] = pa.array(col, type=f.type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"{name} column '{f.name}' cannot be stored as {f.type}: {e}") from None
    return pa.table(cols, schema=schema)


def sort_interactions(interactions: pa.Table) -> pa.Table:
    """Sequence order: user, then timestamp; equal timestamps keep their input order (documented tie-break).

    Arrow's sort is stable, so the tie-break is the input order; it is columnar and several times faster than
    pandas' multi-key sort on string ids."""
    order = pc.sort_indices(interactions, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending")])
    return interactions.take(order)


def _user_codes(interactions: pa.Table) -> np.ndarray:
    """Dense integer user codes (first appearance order): increasing along a table in sequence order."""
    encoded = pc.dictionary_encode(interactions["user_id"]).combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False)


def compute_stats(items: pd.DataFrame, interactions: pa.Table, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dataset statistics written to stats.json and shown by `mmrec prep` and the report.

    `interactions` must be in sequence order (`sort_interactions`)."""
    n_inter = interactions.num_rows
    codes = _user_codes(interactions) if n_inter else np.zeros(0, dtype=np.int64)
    lengths = np.bincount(codes) if n_inter else np.zeros(0, dtype=np.int64)
    n_users = int(len(lengths))
    n_items = int(len(items))
    if n_inter > 1:
        ts = interactions["timestamp"].to_numpy()
        same = (codes[1:] == codes[:-1]) & (ts[1:] == ts[:-1])
        in_tie = np.zeros(n_inter, dtype=bool)
        in_tie[1:] |= same
        in_tie[:-1] |= same
        ties = int(in_tie.sum())
    else:
        ties = 0
    has_image = items["image"].notna() if "image" in items else pd.Series(False, index=items.index)
    stats: dict[str, Any] = {
        "users": n_users,
        "items": n_items,
        "interactions": int(n_inter),
        "sparsity": float(1.0 - n_inter / (n_users * n_items)) if n_users and n_items else 1.0,
        "seq_len_mean": float(lengths.mean()) if n_users else 0.0,
        "seq_len_median": float(np.median(lengths)) if n_users else 0.0,
        "seq_len_min": int(lengths.min()) if n_users else 0,
        "seq_len_max": int(lengths.max()) if n_users else 0,
        "image_coverage": float(has_image.mean()) if n_items else 0.0,
        "items_with_image": int(has_image.sum()),
        "timestamp_ties": ties,
        "has_rating": bool(n_inter and interactions["rating"].null_count < n_inter),
    }
    if extra:
        stats.update(extra)
    return stats


def write_tables(out_dir: str | Path, items: pd.DataFrame, interactions: pd.DataFrame,
                 prep_info: dict[str, Any] | None = None, extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate and write the canonical tables into `out_dir` (normally the temp dir of `atomic_dir`).

    Interactions are sorted into sequence order; every interaction's item must be in `items`.
    Returns the stats that were written.
    """
    out_dir = Path(out_dir)
    if items["item_id"].duplicated().any():
        dup = items.loc[items["item_id"].duplicated(), "item_id"].iloc[0]
        raise DataError(f"item table has duplicate item_id {dup!r}")
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    items_t = _conform(items, ITEMS_SCHEMA, "items")
    inter_t = _conform(interactions, INTERACTIONS_SCHEMA, "interactions")
    known = pc.is_in(inter_t["item_id"], value_set=items_t["item_id"].combine_chunks())
    n_unknown = inter_t.num_rows - int(pc.sum(known).as_py() or 0)
    if n_unknown:
        example = inter_t.filter(pc.invert(known))["item_id"][0].as_py()
        raise DataError(f"{n_unknown} interactions refer to items missing from the item table (e.g. {example!r})")
    inter_t = sort_interactions(inter_t)
    write_parquet(items_t, out_dir / ITEMS_FILE)
    write_parquet(inter_t, out_dir / INTERACTIONS_FILE)
    stats = compute_stats(items, inter_t, extra_stats)
    write_json(stats, out_dir / STATS_FILE)
    write_json(prep_info or {}, out_dir / PREP_FILE)
    return stats


@dataclass
class CanonicalDataset:
    """A loaded canonical dataset directory."""

    root: Path
    items: pd.DataFrame
    interactions: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)

    def image_path(self, item_id: str) -> Path | None:
        """Absolute path of an item's image, or None when it has none; a path leaving the dataset dir is refused."""
        from mmrec.data.images import safe_join

        rel = self.items_by_id.at[item_id, "image"] if item_id in self.items_by_id.index else None
        return None if rel is None or (isinstance(rel, float) and np.isnan(rel)) else safe_join(self.root, rel)

    @property
    def items_by_id(self) -> pd.DataFrame:
        if not hasattr(self, "_items_by_id"):
            self._items_by_id = self.items.set_index("item_id", drop=False)
        return self._items_by_id

    def sequences(self) -> pd.Series:
        """user_id -> list of item_ids in sequence order."""
        return self.interactions.groupby("user_id", sort=True)["item_id"].agg(list)

    def fingerprint(self) -> str:
        """Content hash of the two tables (used in split and protocol manifests)."""
        from mmrec.io import hash_json

        return hash_json([sha256_file(self.root / ITEMS_FILE), sha256_file(self.root / INTERACTIONS_FILE)])


def load_dataset(root: str | Path) -> CanonicalDataset:
    """Load a canonical dataset directory written by `mmrec prep`."""
    root = Path(root)
    for name in (ITEMS_FILE, INTERACTIONS_FILE):
        if not (root / name).is_file():
            raise DataError(f"{root}: not a canonical dataset ({name} missing); create it with `mmrec prep`")
    items = read_table(root / ITEMS_FILE, remedy=REMAKE).to_pandas()
    interactions = read_table(root / INTERACTIONS_FILE, remedy=REMAKE).to_pandas()
    stats = read_json(root / STATS_FILE) if (root / STATS_FILE).is_file() else {}
    return CanonicalDataset(root=root, items=items, interactions=interactions, stats=stats)
