"""Export a split to RecBole atomic files, so RecBole's models run on exactly our data.

Written to `OUT/NAME/` (RecBole's `data_path/dataset` layout):
- `NAME.inter`  user_id:token, item_id:token, timestamp:float (+ rating:float) — every interaction, for RecBole's
  own splitting. The timestamp is the interaction's position in its user's sequence: RecBole reads timestamps as
  float32, which merges Unix seconds into 64-128 s buckets and re-orders ties; a position survives that exactly.
- `NAME.item`   item_id:token, title:token_seq.
- `NAME.train.inter`, `NAME.valid.inter`, `NAME.test.inter` — the split itself as RecBole's pre-split sequential
  benchmark files (`benchmark_filename: [train, valid, test]`): user_id:token, item_id_list:token_seq (history),
  item_id:token (target), timestamp:float (the target's position). With these RecBole does no augmentation, so
  the train file holds one row per training position (each prefix -> next item), and valid/test hold exactly
  our examples. Examples with an empty history cannot be expressed there; they are counted, never hidden.
- `NAME.yaml`   the RecBole config lines that load the benchmark files, and `export.json` (counts, hashes).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmrec.errors import ConfigError, DataError
from mmrec.io import atomic_dir, write_json, write_text
from mmrec.progress import get_logger

log = get_logger("export.recbole")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_WS = re.compile(r"[\t\r\n]+")


def _clean(values: pd.Series) -> pd.Series:
    """Text fields: tabs and newlines would break RecBole's TSV reader."""
    return values.fillna("").astype(str).str.replace(_WS, " ", regex=True)


def _separator(item_ids: pd.Series) -> str:
    """RecBole's `seq_separator`: a space unless item ids contain one, then a comma."""
    ids = item_ids.astype(str)
    if ids.str.contains(r"[\t\r\n]").any():
        raise DataError("item ids contain tabs or newlines; RecBole's atomic files cannot hold them")
    if not ids.str.contains(" ").any():
        return " "
    if not ids.str.contains(",").any():
        return ","
    raise DataError("item ids contain both spaces and commas; no RecBole seq_separator can split their lists")


def _tsv(df: pd.DataFrame, header: list[str], path: Path) -> None:
    lines = ["\t".join(header)]
    cols = [df[c].astype(str).to_numpy() for c in df.columns]
    lines += ["\t".join(row) for row in zip(*cols)] if len(df) else []
    write_text("\n".join(lines) + "\n", path)


def _join(seqs: list[list[str]], sep: str) -> list[str]:
    return [sep.join(s) for s in seqs]


def train_rows(train: pd.DataFrame, max_history: int | None) -> pd.DataFrame:
    """One row per position j >= 1 of each training sequence (history + [target]): prefix -> item j."""
    users, hist, target, pos = [], [], [], []
    for u, h, t in zip(train["user_id"], train["history"], train["target"]):
        seq = [*h, t]
        for j in range(1, len(seq)):
            users.append(u)
            hist.append(seq[max(0, j - max_history):j] if max_history else seq[:j])
            target.append(seq[j])
            pos.append(j)
    return pd.DataFrame({"user_id": users, "history": hist, "item_id": target, "timestamp": np.asarray(pos, float)})


def eval_rows(examples: pd.DataFrame, max_history: int | None) -> tuple[pd.DataFrame, int]:
    """valid/test examples as rows; returns (rows, number of examples skipped for an empty history)."""
    hist = [list(h)[-max_history:] if max_history else list(h) for h in examples["history"]]
    keep = np.array([len(h) > 0 for h in hist], dtype=bool)
    full_len = np.array([len(h) for h in examples["history"]], dtype=float)
    rows = pd.DataFrame({"user_id": examples["user_id"].to_numpy()[keep],
                         "history": [h for h, k in zip(hist, keep) if k],
                         "item_id": examples["target"].to_numpy()[keep], "timestamp": full_len[keep]})
    return rows, int((~keep).sum())


def recbole_config(name: str, data_path: Path, sep: str, max_history: int | None) -> str:
    """The lines of a RecBole config that run a sequential model on the exported split."""
    return "\n".join([
        "# RecBole config for the split exported by `mmrec export recbole` (run_recbole --config_files this.yaml)",
        f"dataset: {name}",
        f"data_path: {data_path}",
        "benchmark_filename: [train, valid, test]",
        "USER_ID_FIELD: user_id",
        "ITEM_ID_FIELD: item_id",
        "TIME_FIELD: timestamp",
        "load_col:",
        "  inter: [user_id, item_id_list, item_id, timestamp]",
        f"seq_separator: {sep!r}".replace("'", '"'),
        f"MAX_ITEM_LIST_LENGTH: {max_history or 50}",
        "# full ranking over all items, like `eval.protocol: full` with `mask_history: false` (RecBole never masks",
        "# history for sequential models); RecBole's sampled modes (uni100) redraw negatives and are not comparable",
        "eval_args: {order: TO, mode: full}",
        "train_neg_sample_args: ~",
        "metrics: [Hit, NDCG, MRR]",
        "topk: [1, 5, 10]",
        "valid_metric: NDCG@10",
        "",
    ])


def export_recbole(split: Any, out: Path, name: str, max_history: int | None = 50) -> dict[str, Any]:
    """Write the atomic files of `split` (a loaded `mmrec.data.splits.Split`) to `out/name/`."""
    if not _NAME_RE.match(name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '_', '-' or '.' (it becomes RecBole's dataset name)")
    if max_history is not None and max_history < 1:
        raise ConfigError(f"--max-history must be >= 1, got {max_history}")
    items, inter = split.dataset.items, split.dataset.interactions
    sep = _separator(items["item_id"])
    ex = split.examples
    counts: dict[str, Any] = {}
    with atomic_dir(Path(out) / name) as tmp:
        # sequence order (user, then time; ties in file order), as the split took it, even for an unsorted file
        inter = inter.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
        seq_pos = inter.groupby("user_id", sort=False).cumcount().astype(float)
        cols = {"user_id": inter["user_id"], "item_id": inter["item_id"], "timestamp": seq_pos}
        header = ["user_id:token", "item_id:token", "timestamp:float"]
        if "rating" in inter and inter["rating"].notna().any():
            cols["rating"] = inter["rating"].fillna(0.0)
            header.append("rating:float")
        _tsv(pd.DataFrame(cols), header, tmp / f"{name}.inter")
        _tsv(pd.DataFrame({"item_id": items["item_id"], "title": _clean(items["title"])}),
             ["item_id:token", "title:token_seq"], tmp / f"{name}.item")
        bench_header = ["user_id:token", "item_id_list:token_seq", "item_id:token", "timestamp:float"]
        for stage in ("train", "valid", "test"):
            part = ex[ex["stage"] == stage]
            if stage == "train":
                rows, skipped = train_rows(part, max_history), 0
            else:
                rows, skipped = eval_rows(part, max_history)
            rows = rows.assign(history=_join(rows["history"].tolist(), sep))
            _tsv(rows[["user_id", "history", "item_id", "timestamp"]], bench_header, tmp / f"{name}.{stage}.inter")
            counts[stage] = {"examples": int(len(part)), "rows": int(len(rows)), "skipped_empty_history": skipped}
            if skipped:
                log.warning(f"{stage}: {skipped} example(s) with an empty history cannot be written as RecBole "
                            "benchmark rows (counted in export.json)")
        write_text(recbole_config(name, Path(out).resolve(), sep, max_history), tmp / f"{name}.yaml")
        info = {"name": name, "split": str(split.root), "candidates_sha256": split.candidates_sha256,
                "split_config": split.info.get("config"), "max_history": max_history, "seq_separator": sep,
                "interactions": int(len(inter)), "items": int(len(items)), "stages": counts}
        write_json(info, tmp / "export.json")
    return info
