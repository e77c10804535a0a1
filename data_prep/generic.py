"""Any CSV/TSV/JSONL interaction log (plus an optional item file) into the canonical form, by column mapping.

    mmrec prep generic --interactions log.csv --user-col uid --item-col sku --time-col ts --time-format iso \\
        [--items items.jsonl --title-col name --text-cols description brand --image-col picture --images DIR] --out D

Formats follow the file name (.csv, .tsv, .jsonl, .json, each optionally .gz) unless --format says otherwise.
Time formats: unix (seconds), unix_ms (milliseconds), iso (ISO-8601 dates or date-times; UTC unless an offset
is given). Images: --image-col holds paths relative to --images (a path leaving that folder is rejected); without
--image-col, files in --images named <item id>.<ext> are used.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from data_prep.common import add_common_arguments, finish_import, index_images
from data_prep.readers import (
    TIME_FORMATS,
    BadLines,
    JsonlFile,
    TableFile,
    check_file,
    read_all,
    to_rating,
    to_seconds,
    unknown_items,
)
from mmrec.data.images import ImageError, ImagePolicy, safe_join
from mmrec.errors import DataError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interactions", required=True, help="interaction file (CSV, TSV or JSONL)")
    parser.add_argument("--items", default=None, help="item file (CSV, TSV or JSONL), optional")
    parser.add_argument("--format", choices=("csv", "tsv", "jsonl"), default=None, help="default: from the file name")
    parser.add_argument("--delimiter", default=None, help="CSV delimiter (default ',' or tab for .tsv)")
    parser.add_argument("--user-col", default="user_id")
    parser.add_argument("--item-col", default="item_id")
    parser.add_argument("--time-col", default="timestamp")
    parser.add_argument("--rating-col", default=None)
    parser.add_argument("--time-format", choices=TIME_FORMATS, default="unix")
    parser.add_argument("--items-id-col", default=None, help="item id column of --items (default: --item-col)")
    parser.add_argument("--title-col", default="title")
    parser.add_argument("--text-cols", nargs="*", default=[], help="item columns joined (after the title) into text")
    parser.add_argument("--image-col", default=None, help="item column with an image path relative to --images")
    parser.add_argument("--images", default=None, help="image folder")
    add_common_arguments(parser)


def _kind(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    return {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(ext, "csv")


def read_columns(path: Path, args: argparse.Namespace, cols: list[str], bad: BadLines):
    """(DataFrame of `cols`, the source for line look-ups); columns checked against the file first."""
    kind = _kind(path, args.format)
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
        delimiter = {"\\t": "\t", "tab": "\t"}.get(args.delimiter, args.delimiter)  # '\t' as typed in a shell
        src = TableFile(path, delimiter or ("\t" if kind == "tsv" else ","))
        df = read_all(src.read(cols, bad))
    return df, src


def _as_str(values: pd.Series) -> pd.Series:
    return values.astype("string").where(values.notna())


def read_items(path: Path, args: argparse.Namespace, bad: BadLines) -> pd.DataFrame:
    id_col = args.items_id_col or args.item_col
    cols = list(dict.fromkeys([id_col, args.title_col, *args.text_cols] + ([args.image_col] if args.image_col else [])))
    raw, _ = read_columns(path, args, cols, bad)
    title = raw[args.title_col].fillna("").astype(str).str.strip()
    text = title
    for col in args.text_cols:
        value = raw[col].fillna("").astype(str).str.strip()
        text = text.where(value == "", text.where(text == "", text + ". ") + value)
    items = pd.DataFrame({"item_id": _as_str(raw[id_col]), "title": title, "text": text})
    if args.image_col:
        items["image_rel"] = raw[args.image_col]
    return items


def attach_images(items: pd.DataFrame, args: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, int]]:
    """image_source per item: the --image-col path under --images (escapes rejected) or <item>.<ext> files."""
    if args.image_col:
        if not args.images:
            raise DataError("--image-col needs --images: the folder its paths are relative to")
        policy = ImagePolicy(args.image_policy)

        def resolve(rel) -> str | None:
            if rel is None or (isinstance(rel, float) and pd.isna(rel)) or str(rel) == "":
                return None
            joined = policy.apply(lambda r: safe_join(args.images, r), str(rel))
            return str(joined) if joined is not None else None
        items["image_source"] = items.pop("image_rel").map(resolve)
        return items, {f"image_path_{k}": v for k, v in policy.counts().items()}
    found = index_images(args.images)
    items["image_source"] = items["item_id"].map(lambda i: str(found[i]) if i in found else None)
    return items, {}


def run(args: argparse.Namespace) -> dict:
    bad = BadLines(args.bad_lines)
    path = check_file(args.interactions, "interactions file")
    cols = [args.user_col, args.item_col, args.time_col] + ([args.rating_col] if args.rating_col else [])
    raw, src = read_columns(path, args, cols, bad)
    if raw.empty:
        raise DataError(f"{path}: no interactions in the file")
    inter = pd.DataFrame({"user_id": _as_str(raw[args.user_col]), "item_id": _as_str(raw[args.item_col]),
                          "timestamp": to_seconds(raw[args.time_col], args.time_format, src, args.time_col)})
    if args.rating_col:
        inter["rating"] = to_rating(raw[args.rating_col], src, args.rating_col)
    items = None
    if args.items:
        items_path = check_file(args.items, "items file")
        items = read_items(items_path, args, bad)
        inter = unknown_items(inter, items["item_id"], src, args.item_col, items_path, bad)
    elif args.image_col:
        raise DataError("--image-col needs --items (the file that has that column)")
    extra: dict[str, int] = {}
    if args.images:
        if items is None:
            items = pd.DataFrame({"item_id": inter["item_id"].dropna().unique()})
        try:
            items, extra = attach_images(items, args)
        except ImageError as e:
            raise DataError(f"{args.items}: {e}") from None
    return finish_import(args, inter, items, source="generic", counts={**bad.counts, **extra},
                         inputs={"interactions": path, "items": args.items, "images": args.images})
