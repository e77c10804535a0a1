"""MicroLens (micro-video recommendation) into the canonical form.

    mmrec prep microlens --pairs MicroLens-50k_pairs.csv --titles MicroLens-50k_titles.csv \\
        --covers MicroLens-50k_covers/ --out data/microlens

--pairs   CSV with a header and columns user, item, timestamp (one interaction per line).
--titles  optional CSV with a header and columns item, title (titles may be quoted and contain commas).
--covers  optional folder of cover images named <item>.jpg (any image extension works).
MicroLens timestamps are Unix milliseconds; --time-format auto (default) treats values above 10^11 as
milliseconds and stores seconds.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from data_prep.common import CleaningOptions, finish_import, index_images
from data_prep.readers import BadLines, TableFile, check_file, read_all, to_seconds, unknown_items
from mmrec.config import option
from mmrec.errors import DataError

MS_THRESHOLD = 1e11  # 10^11 seconds is the year 5138; 10^11 ms is 1973


@dataclass(kw_only=True)
class MicroLensOptions(CleaningOptions):
    """`mmrec prep microlens`'s options: the `--flag-name` options and the keys of `data.options`."""

    pairs: Path = option(MISSING, "interaction pairs CSV: user,item,timestamp")
    titles: Path | None = option(None, "titles CSV: item,title")
    covers: Path | None = option(None, "folder of covers named <item>.<ext>")
    time_format: Literal["auto", "unix", "unix_ms"] = option(
        "auto", "timestamp unit (auto: milliseconds when values exceed 1e11)")


def time_format(values: pd.Series, requested: str) -> str:
    if requested != "auto":
        return requested
    numeric = pd.to_numeric(values, errors="coerce")
    return "unix_ms" if numeric.notna().any() and numeric.max() > MS_THRESHOLD else "unix"


def run(options: MicroLensOptions, out: Path) -> dict:
    """Import the pairs (and titles, covers) `options` name into the canonical dataset `out`; returns its stats."""
    bad = BadLines(options.bad_lines)
    pairs = TableFile(check_file(options.pairs, "pairs CSV"))
    raw = read_all(pairs.read(["user", "item", "timestamp"], bad))
    if raw.empty:
        raise DataError(f"{pairs.path}: no interactions in the file")
    fmt = time_format(raw["timestamp"], options.time_format)
    inter = pd.DataFrame({"user_id": raw["user"], "item_id": raw["item"],
                          "timestamp": to_seconds(raw["timestamp"], fmt, pairs, "timestamp")})
    items = pd.DataFrame({"item_id": inter["item_id"].dropna().unique()})
    if options.titles:
        titles_file = TableFile(check_file(options.titles, "titles CSV"))
        titles = read_all(titles_file.read(["item", "title"], bad)).drop_duplicates("item")
        inter = unknown_items(inter, titles["item"], pairs, "item", titles_file.path, bad)
        items = items.merge(titles.rename(columns={"item": "item_id"}), on="item_id", how="inner")
        items["title"] = items["title"].fillna("").str.strip()
        items["text"] = items["title"]
    covers = index_images(options.covers)
    items["image_source"] = items["item_id"].map(lambda i: str(covers[i]) if i in covers else None)
    return finish_import(options, out, inter, items, source="microlens", counts=bad.counts,
                         inputs={"pairs": pairs.path, "titles": options.titles, "covers": options.covers})
