"""Truth metrics of the summarization stages on the synthetic benchmark, where the truth is known.

Each item's colour and pattern (`item_attributes.parquet`) and each user's preferred colour and pattern at every
step of the sequence (`interaction_truth.parquet`) are written by `mmrec prep synthetic`. The colour and the pattern
are visible only in the image, so:

- item-summary faithfulness: the share of items whose summary names the true colour and the true pattern, and the
  share that names a wrong colour or a wrong pattern;
- preference accuracy, per recurrence step: the share of examples whose preference text at step t names the
  user's true colour and pattern at the last item that step summarized (and the share naming a wrong one).

A summary "names" a value when the word occurs in it (whole word, any case). The values an attribute can take are
the ones the benchmark's truth tables use, so the metrics need nothing from the generator that wrote them. With a
real VLM and LLM these say at once whether the model and the prompts work; a random tiny model's text names a value
only by chance (~0).
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from mmrec.errors import DataError
from mmrec.experiment import ExperimentPaths

ATTRIBUTES = ("colour", "pattern")
Vocabulary = dict[str, tuple[str, ...]]  # attribute -> the values it takes


def truth_path(paths: ExperimentPaths) -> Path:
    """Where `mmrec eval` writes the truth metrics (a subfolder: `metrics/*.json` are the runs' metrics)."""
    return paths.metrics("x").parent / "truth" / "summaries.json"


@lru_cache(maxsize=None)
def _words(values: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(map(re.escape, values)) + r")\b", re.IGNORECASE)


def named(text: str | None, values: tuple[str, ...]) -> set[str]:
    """The `values` (of one attribute) that `text` names, lower-cased."""
    return {m.lower() for m in _words(values).findall(text or "")} if values else set()


def vocabulary(*tables: pd.DataFrame) -> Vocabulary:
    """Every value each attribute takes in the truth tables."""
    return {a: tuple(sorted({str(v).lower() for t in tables for v in t[a].dropna()})) for a in ATTRIBUTES}


def _shares(texts: list[str], truth: pd.DataFrame, vocab: Vocabulary) -> dict[str, Any]:
    """Counts and shares of texts naming the true colour / pattern / both, and naming a wrong one."""
    n = len(texts)
    hits = {a: [truth[a].iloc[i] in named(t, vocab[a]) for i, t in enumerate(texts)] for a in ATTRIBUTES}
    wrong_any = [any(named(t, vocab[a]) - {truth[a].iloc[i]} for a in ATTRIBUTES) for i, t in enumerate(texts)]

    def share(xs):
        return float(sum(xs)) / n if n else float("nan")

    return {"n": n, "colour": share(hits["colour"]), "pattern": share(hits["pattern"]),
            "faithful": share([c and p for c, p in zip(hits["colour"], hits["pattern"])]), "wrong": share(wrong_any)}


def _read(path: Path, what: str, columns: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: {what} is not a readable Parquet file ({e})") from None
    missing = set(columns) - set(df.columns)
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {sorted(missing)}; re-run the stage that writes it")
    return df


def item_faithfulness(items: pd.DataFrame, attributes: pd.DataFrame, vocab: Vocabulary) -> dict[str, Any]:
    """Faithfulness of the item summaries (`summaries/items.parquet`) to the items' true colour and pattern."""
    df = items[["item_id", "summary"]].merge(attributes, on="item_id", how="inner")
    return _shares(df["summary"].fillna("").tolist(), df, vocab)


def preference_accuracy(users: pd.DataFrame, examples: pd.DataFrame, steps_truth: pd.DataFrame,
                        vocab: Vocabulary) -> list[dict]:
    """Per recurrence step t (1-based), the accuracy of the preference texts at step t against the user's
    preference at the last item of block t (the history's last `n_items` items in blocks of `block_size`)."""
    hist = examples.set_index(["user_id", "stage"])["history"]
    truth = steps_truth.drop_duplicates(["user_id", "item_id"]).set_index(["user_id", "item_id"])[[*ATTRIBUTES]]
    by_step: dict[int, tuple[list[str], list[tuple[str, str]]]] = {}
    for row in users.itertuples(index=False):
        steps = list(row.steps) if row.steps is not None else []
        if not steps or (row.user_id, row.stage) not in hist.index:
            continue
        items = [str(x) for x in hist.loc[(row.user_id, row.stage)]][-int(row.n_items):] if row.n_items else []
        k = len(items) if row.mode == "direct" else int(row.block_size)
        ends = [items[min(i + k, len(items)) - 1] for i in range(0, len(items), k)]
        for t, (text, last) in enumerate(zip(steps, ends), start=1):
            texts, keys = by_step.setdefault(t, ([], []))
            texts.append(str(text))
            keys.append((str(row.user_id), last))
    out = []
    for t in sorted(by_step):
        texts, keys = by_step[t]
        rows = truth.reindex(pd.MultiIndex.from_tuples(keys)).reset_index(drop=True)
        out.append({"step": t, **_shares(texts, rows, vocab)})
    return out


def summary_truth(dataset_root: Path, paths: ExperimentPaths, examples: pd.DataFrame) -> dict[str, Any] | None:
    """The truth metrics of whichever summaries exist, or None when the dataset carries no truth (not synthetic)."""
    attrs_file, steps_file = dataset_root / "item_attributes.parquet", dataset_root / "interaction_truth.parquet"
    if not attrs_file.is_file():
        return None
    out: dict[str, Any] = {"dataset": str(dataset_root)}
    attrs = _read(attrs_file, "item truth", ["item_id", *ATTRIBUTES])
    steps = (_read(steps_file, "interaction truth", ["user_id", "item_id", *ATTRIBUTES]) if steps_file.is_file()
             else None)
    vocab = vocabulary(attrs, *([steps] if steps is not None else []))
    if paths.item_summaries.is_file():
        items = _read(paths.item_summaries, "item summaries", ["item_id", "summary"])
        out["item_summaries"] = item_faithfulness(items, attrs, vocab)
    if paths.user_summaries.is_file() and steps is not None:
        users = _read(paths.user_summaries, "user summaries",
                      ["user_id", "stage", "steps", "n_items", "block_size", "mode"])
        out["preferences"] = preference_accuracy(users, examples, steps, vocab)
    return out if len(out) > 1 else None


TRUTH_CAPTION = ("Summaries against the benchmark's truth: share naming the true colour, the true pattern, both, "
                 "and share naming a wrong colour or pattern")
TRUTH_HEADER = ["summaries", "n", "colour", "pattern", "both", "wrong"]


def truth_rows(truth: dict[str, Any]) -> list[list[str]]:
    """One row per summarization stage (items, then the preferences of each recurrence step), as text cells."""
    rows = [("items", truth["item_summaries"])] if "item_summaries" in truth else []
    rows += [(f"preferences, step {r['step']}", r) for r in truth.get("preferences", [])]
    return [[name, str(r["n"])] + [f"{r[k]:.3f}" for k in ("colour", "pattern", "faithful", "wrong")]
            for name, r in rows]


def format_truth(truth: dict[str, Any]) -> str:
    """The truth metrics as a small text table (what `mmrec eval` prints)."""
    widths = [22, 6, 7, 7, 7, 7]

    def line(cells):
        return " ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([TRUTH_CAPTION + ":", line(TRUTH_HEADER), *map(line, truth_rows(truth))])


def read_truth(paths: ExperimentPaths) -> dict[str, Any] | None:
    """The truth metrics `mmrec eval` wrote, or None when it wrote none (not a synthetic benchmark)."""
    from mmrec.io import read_json

    f = truth_path(paths)
    if not f.is_file():
        return None
    try:
        return read_json(f)
    except ValueError as e:
        raise DataError(f"{f}: not readable JSON ({e}); re-run `mmrec eval`") from None
