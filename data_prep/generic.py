"""Any CSV/TSV/JSONL interaction log (plus an optional item file) into the canonical form, by column mapping.

    mmrec prep generic --interactions log.csv --user-col uid --item-col sku --time-col ts --time-format iso \\
        [--items items.jsonl --title-col name --text-cols description brand --image-col picture --images DIR] --out D

Formats follow the file name (.csv, .tsv, .jsonl, .json, each optionally .gz) unless --format says otherwise.
Time formats: unix (seconds), unix_ms (milliseconds), iso (ISO-8601 dates or date-times; UTC unless an offset
is given). Images: --image-col holds paths relative to --images (a path leaving that folder is rejected); without
--image-col, files in --images named <item id>.<ext> are used.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from data_prep.common import CleaningOptions, finish_import, index_images
from data_prep.readers import (
    BadLines,
    JsonlFile,
    TableFile,
    TimeFormat,
    check_file,
    read_all,
    to_rating,
    to_seconds,
    unknown_items,
)
from mmrec.config import option
from mmrec.data.images import ImageError, ImagePolicy, safe_join
from mmrec.errors import DataError


@dataclass(kw_only=True)
class GenericOptions(CleaningOptions):
    """`mmrec prep generic`'s options: the `--flag-name` options and the keys of `data.options`."""

    interactions: Path = option(MISSING, "interaction file (CSV, TSV or JSONL)")
    items: Path | None = option(None, "item file (CSV, TSV or JSONL), optional")
    format: Literal["csv", "tsv", "jsonl"] | None = option(None, "file format (default: from the file name)")
    delimiter: str | None = option(None, "CSV delimiter (default ',' or tab for .tsv)")
    user_col: str = option("user_id", "interaction column with the user id")
    item_col: str = option("item_id", "interaction column with the item id")
    time_col: str = option("timestamp", "interaction column with the time")
    rating_col: str | None = option(None, "interaction column with the rating (default: no ratings)")
    time_format: TimeFormat = option("unix", "unix (seconds), unix_ms (milliseconds) or iso (ISO-8601, UTC)")
    items_id_col: str | None = option(None, "item id column of --items (default: --item-col)")
    title_col: str = option("title", "item column with the title")
    text_cols: list[str] = option([], "item columns joined (after the title) into text")
    image_col: str | None = option(None, "item column with an image path relative to --images")
    images: Path | None = option(None, "image folder")


def _kind(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    return {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(ext, "csv")


def read_columns(path: Path, options: GenericOptions, cols: list[str], bad: BadLines):
    """(DataFrame of `cols`, the source for line look-ups); columns checked against the file first."""
    kind = _kind(path, options.format)
    if kind == "jsonl":
        src = JsonlFile(path)
        frames = []
        for chunk in src.read(bad, required=cols):
            missing = [c for c in cols if c not in chunk]
            if missing:
                raise DataError(f"{path}: field(s) {missing} missing from some lines (found {list(chunk.columns)})")
            frames.append(chunk[cols])
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    else:
        delimiter = {"\\t": "\t", "tab": "\t"}.get(options.delimiter, options.delimiter)  # '\t' as typed in a shell
        src = TableFile(path, delimiter or ("\t" if kind == "tsv" else ","))
        df = read_all(src.read(cols, bad))
    return df, src


def _as_str(values: pd.Series) -> pd.Series:
    return values.astype("string").where(values.notna())


def read_items(path: Path, options: GenericOptions, bad: BadLines) -> pd.DataFrame:
    id_col = options.items_id_col or options.item_col
    image_cols = [options.image_col] if options.image_col else []
    cols = list(dict.fromkeys([id_col, options.title_col, *options.text_cols, *image_cols]))
    raw, _ = read_columns(path, options, cols, bad)
    title = raw[options.title_col].fillna("").astype(str).str.strip()
    text = title
    for col in options.text_cols:
        value = raw[col].fillna("").astype(str).str.strip()
        text = text.where(value == "", text.where(text == "", text + ". ") + value)
    items = pd.DataFrame({"item_id": _as_str(raw[id_col]), "title": title, "text": text})
    if options.image_col:
        items["image_rel"] = raw[options.image_col]
    return items


def attach_images(items: pd.DataFrame, options: GenericOptions) -> tuple[pd.DataFrame, dict[str, int]]:
    """image_source per item: the --image-col path under --images (escapes rejected) or <item>.<ext> files."""
    if options.image_col:
        if not options.images:
            raise DataError("--image-col needs --images: the folder its paths are relative to")
        policy = ImagePolicy(options.image_policy)

        def resolve(rel) -> str | None:
            if rel is None or (isinstance(rel, float) and pd.isna(rel)) or str(rel) == "":
                return None
            joined = policy.apply(lambda r: safe_join(options.images, r), str(rel))
            return str(joined) if joined is not None else None
        items["image_source"] = items.pop("image_rel").map(resolve)
        return items, {f"image_path_{k}": v for k, v in policy.counts().items()}
    found = index_images(options.images)
    items["image_source"] = items["item_id"].map(lambda i: str(found[i]) if i in found else None)
    return items, {}


def run(options: GenericOptions, out: Path) -> dict:
    """Import the files `options` name into the canonical dataset `out`; returns its stats."""
    bad = BadLines(options.bad_lines)
    path = check_file(options.interactions, "interactions file")
    cols = [options.user_col, options.item_col, options.time_col] + ([options.rating_col] if options.rating_col else [])
    raw, src = read_columns(path, options, cols, bad)
    if raw.empty:
        raise DataError(f"{path}: no interactions in the file")
    inter = pd.DataFrame({"user_id": _as_str(raw[options.user_col]), "item_id": _as_str(raw[options.item_col]),
                          "timestamp": to_seconds(raw[options.time_col], options.time_format, src, options.time_col)})
    if options.rating_col:
        inter["rating"] = to_rating(raw[options.rating_col], src, options.rating_col)
    items = None
    if options.items:
        items_path = check_file(options.items, "items file")
        items = read_items(items_path, options, bad)
        inter = unknown_items(inter, items["item_id"], src, options.item_col, items_path, bad)
    elif options.image_col:
        raise DataError("--image-col needs --items (the file that has that column)")
    extra: dict[str, int] = {}
    if options.images:
        if items is None:
            items = pd.DataFrame({"item_id": inter["item_id"].dropna().unique()})
        try:
            items, extra = attach_images(items, options)
        except ImageError as e:
            raise DataError(f"{options.items}: {e}") from None
    return finish_import(options, out, inter, items, source="generic", counts={**bad.counts, **extra},
                         inputs={"interactions": path, "items": options.items, "images": options.images})
