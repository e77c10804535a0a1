"""RecBole atomic files into the canonical form.

    mmrec prep recbole --inter ml-100k.inter [--item ml-100k.item] [--images DIR] --out data/ml

Atomic files are tab-separated with a `name:type` header, type one of token, token_seq, float, float_seq
(sequences are space-separated). Quotes are ordinary characters. Defaults follow RecBole's own field names:
user_id, item_id, timestamp, rating (change them with --user-field etc.). Float timestamps are floored to
integers. Without a timestamp field the line order of the .inter file is the clock (said in stats.json).
Item text: the title field (default: the first field whose name contains 'title' or 'name') followed by
the other token/token_seq fields as "field: value".
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path

import pandas as pd

from data_prep.common import CleaningOptions, finish_import, index_images, log
from data_prep.readers import BadLines, TableFile, check_file, read_all, to_rating, to_seconds, unknown_items
from mmrec.config import option
from mmrec.errors import DataError

TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass(kw_only=True)
class RecBoleOptions(CleaningOptions):
    """`mmrec prep recbole`'s options: the `--flag-name` options and the keys of `data.options`."""

    inter: Path = option(MISSING, "the .inter file")
    item: Path | None = option(None, "the .item file (titles and other item fields)")
    images: Path | None = option(None, "folder of images named <item_id>.<ext>")
    user_field: str = option("user_id", "user id field of the atomic files")
    item_field: str = option("item_id", "item id field of the atomic files")
    time_field: str = option("timestamp", "timestamp field (without it, the .inter line order is the clock)")
    rating_field: str = option("rating", "rating field (without it, no ratings)")
    title_field: str | None = option(None, "item title field (default: first *title*/*name* field)")


def parse_header(f: TableFile) -> dict[str, tuple[str, str]]:
    """name -> (raw header column, type), validating every `name:type`."""
    fields: dict[str, tuple[str, str]] = {}
    for raw in f.columns():
        name, sep, kind = raw.rpartition(":")
        if not sep or kind not in TYPES or not name:
            raise DataError(f"{f.path}, line 1: header column {raw!r} is not 'name:type' with type one of "
                            f"{', '.join(TYPES)}")
        fields[name] = (raw, kind)
    return fields


def _field(fields: dict, name: str, f: TableFile, flag: str) -> str:
    if name not in fields:
        raise DataError(f"{f.path}: no field {name!r} (fields: {', '.join(fields)}); set {flag}")
    return fields[name][0]


def read_inter(f: TableFile, options: RecBoleOptions, bad: BadLines) -> tuple[pd.DataFrame, bool]:
    fields = parse_header(f)
    user = _field(fields, options.user_field, f, "--user-field")
    item = _field(fields, options.item_field, f, "--item-field")
    time = fields.get(options.time_field, (None,))[0]
    rating = fields.get(options.rating_field, (None,))[0]
    raw = read_all(f.read([c for c in (user, item, time, rating) if c], bad))
    if raw.empty:
        raise DataError(f"{f.path}: no interactions in the file")
    if time is not None:
        timestamp = to_seconds(raw[time], "unix", f, time)
    else:
        log.warning("%s has no %r field: using line order as the clock", f.path, options.time_field)
        timestamp = pd.Series(range(len(raw)), dtype="Int64")
    inter = pd.DataFrame({"user_id": raw[user], "item_id": raw[item], "timestamp": timestamp})
    if rating is not None:
        inter["rating"] = to_rating(raw[rating], f, rating)
    return inter, time is None


def read_items(f: TableFile, options: RecBoleOptions, bad: BadLines) -> pd.DataFrame:
    fields = parse_header(f)
    _field(fields, options.item_field, f, "--item-field")
    texty = [n for n, (_, kind) in fields.items() if kind in ("token", "token_seq") and n != options.item_field]
    title = options.title_field or next((n for n in texty if "title" in n or "name" in n), None)
    if title is not None:
        _field(fields, title, f, "--title-field")
    raw = read_all(f.read([fields[n][0] for n in fields], bad)).rename(columns={v[0]: k for k, v in fields.items()})
    items = pd.DataFrame({"item_id": raw[options.item_field], "title": raw[title].fillna("") if title else ""})
    text = items["title"].astype(str)
    for name in texty:
        if name != title:
            value = raw[name].fillna("")
            text = text.where(value == "", text.where(text == "", text + ". ") + f"{name}: " + value)
    items["text"] = text
    return items


def run(options: RecBoleOptions, out: Path) -> dict:
    """Import the atomic files `options` name into the canonical dataset `out`; returns its stats."""
    bad = BadLines(options.bad_lines)
    inter_file = TableFile(check_file(options.inter, ".inter file"), "\t", quote=False)
    inter, line_clock = read_inter(inter_file, options, bad)
    items = None
    if options.item:
        item_file = TableFile(check_file(options.item, ".item file"), "\t", quote=False)
        items = read_items(item_file, options, bad)
        inter = unknown_items(inter, items["item_id"], inter_file, parse_header(inter_file)[options.item_field][0],
                              item_file.path, bad)
    images = index_images(options.images)
    if images:
        if items is None:
            items = pd.DataFrame({"item_id": inter["item_id"].dropna().unique()})
        items["image_source"] = items["item_id"].map(lambda i: str(images[i]) if i in images else None)
    return finish_import(options, out, inter, items, source="recbole", counts=bad.counts,
                         inputs={"inter": Path(options.inter), "item": options.item, "images": options.images},
                         extra_stats=lambda: {"timestamp_from_line_order": line_clock})
