"""Amazon Reviews 2023 (McAuley Lab) into the canonical form.

    mmrec prep amazon2023 --reviews Baby_Products.jsonl.gz --meta meta_Baby_Products.jsonl.gz \\
        --images imgs/ [--download] --out data/baby

--reviews  <Category>.jsonl(.gz): one review per line; user_id, parent_asin (-> item_id), timestamp, rating.
           Amazon 2023 timestamps are Unix **milliseconds**; they are stored as seconds (floor division by 1000).
--meta     meta_<Category>.jsonl(.gz): parent_asin, title, description (list), features (list), images (list of
           {thumb, large, hi_res, variant}). Item text = "<title>. <description; features>".
--images   folder of images named <parent_asin>.<ext>. With --download, images missing from it are fetched
           from the meta URLs (the MAIN image, --image-size large|hi_res) into it: parallel, retried, resumable;
           failures are counted and listed in stats.json, never fatal. Only items that survive cleaning are fetched.
"""
from __future__ import annotations

import os
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa

from data_prep.common import CleaningOptions, finish_import, index_images
from data_prep.download import DownloadReport, download_images
from data_prep.readers import BadLines, JsonlFile, check_file, read_all, to_seconds, unknown_items
from mmrec.config import option
from mmrec.data.images import IMAGE_EXTENSIONS
from mmrec.errors import DataError

REVIEW_SCHEMA = pa.schema([("user_id", pa.string()), ("parent_asin", pa.string()),
                           ("timestamp", pa.float64()), ("rating", pa.float64())])
_IMAGE = pa.struct([("large", pa.string()), ("hi_res", pa.string()), ("variant", pa.string())])
META_SCHEMA = pa.schema([("parent_asin", pa.string()), ("title", pa.string()), ("description", pa.list_(pa.string())),
                         ("features", pa.list_(pa.string())), ("images", pa.list_(_IMAGE))])


@dataclass(kw_only=True)
class AmazonOptions(CleaningOptions):
    """`mmrec prep amazon2023`'s options: the `--flag-name` options and the keys of `data.options`."""

    reviews: Path = option(MISSING, "<Category>.jsonl or .jsonl.gz")
    meta: Path = option(MISSING, "meta_<Category>.jsonl or .jsonl.gz")
    images: Path | None = option(None, "folder of images named <parent_asin>.<ext> (download target)")
    download: bool = option(False, "fetch images missing from --images from meta URLs")
    image_size: Literal["large", "hi_res"] = option("large", "which meta URL to fetch")
    download_workers: int = option(8, "parallel image downloads")
    retries: int = option(3, "extra attempts after a network error or HTTP 5xx/429")
    retry_backoff: float = option(0.5, "seconds before the first retry (doubles)")
    max_text_chars: int = option(2000, "cut item text to this many characters")


def read_reviews(path: Path, bad: BadLines) -> pd.DataFrame:
    src = JsonlFile(path, REVIEW_SCHEMA)  # only these four fields are parsed; review texts never reach memory
    raw = read_all(src.read(bad, required=["user_id", "parent_asin", "timestamp"]))
    if raw.empty:
        raise DataError(f"{path}: no reviews in the file")
    return pd.DataFrame({"user_id": raw["user_id"], "item_id": raw["parent_asin"],
                         "timestamp": to_seconds(raw["timestamp"], "unix_ms", src, "timestamp"),
                         "rating": raw["rating"]})


def _main_image_url(images, size: str) -> str | None:
    """The MAIN variant's URL (else the first image's), preferring `size` and falling back to the other size."""
    if images is None or len(images) == 0:
        return None
    main = [im for im in images if im.get("variant") == "MAIN"] or list(images)
    other = "hi_res" if size == "large" else "large"
    for im in main:
        if im.get(size) or im.get(other):
            return im.get(size) or im.get(other)
    return None


def _joined(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "; ".join(x.strip() for x in v if x and x.strip()) if v is not None else "")


def read_meta(path: Path, wanted: set[str], options: AmazonOptions, bad: BadLines) -> pd.DataFrame:
    """Meta rows of the reviewed items only (filtered per chunk, so a huge meta file never sits in memory)."""
    chunks = (c[c["parent_asin"].isin(wanted)] for c in JsonlFile(path, META_SCHEMA).read(bad, ["parent_asin"]))
    meta = read_all(chunks)
    if meta.empty:
        return pd.DataFrame(columns=["item_id", "title", "text", "image_url"])
    title = meta["title"].fillna("").str.strip()
    body = (_joined(meta["description"]) + "; " + _joined(meta["features"])).str.strip("; ")
    text = title.where(body == "", title + ". " + body).str.slice(0, options.max_text_chars)
    urls = meta["images"].map(lambda ims: _main_image_url(ims, options.image_size))
    return pd.DataFrame({"item_id": meta["parent_asin"], "title": title, "text": text, "image_url": urls})


def _downloader(items: pd.DataFrame, folder: Path, options: AmazonOptions, report: DownloadReport):
    urls = items.dropna(subset=["image_url"]).set_index("item_id")["image_url"]

    def fetch(ids: list[str]) -> dict[str, Path]:
        jobs = {}
        for item in ids:
            if item in urls.index:
                ext = os.path.splitext(urlparse(urls[item]).path)[1].lower()
                jobs[item] = (urls[item], folder / f"{item}{ext if ext in IMAGE_EXTENSIONS else '.jpg'}")
        present, rep = download_images(jobs, workers=options.download_workers, retries=options.retries,
                                          backoff=options.retry_backoff)
        report.downloaded += rep.downloaded
        report.cached += rep.cached
        report.failed.update(rep.failed)
        return present
    return fetch


def run(options: AmazonOptions, out: Path) -> dict:
    """Import the reviews and meta files `options` name into the canonical dataset `out`; returns its stats."""
    bad = BadLines(options.bad_lines)
    reviews_path = check_file(options.reviews, "reviews file")
    meta_path = check_file(options.meta, "meta file")
    if options.download and not options.images:
        raise DataError("--download needs --images DIR: the folder the images are downloaded into (and cached in)")
    inter = read_reviews(reviews_path, bad)
    items = read_meta(meta_path, set(inter["item_id"].dropna().unique()), options, bad)
    inter = unknown_items(inter, items["item_id"], JsonlFile(reviews_path), "parent_asin", meta_path, bad)
    folder = Path(options.images) if options.images else None
    if folder is not None and options.download:
        folder.mkdir(parents=True, exist_ok=True)
    local = index_images(folder)
    items["image_source"] = items["item_id"].map(lambda i: str(local[i]) if i in local else None)
    report = DownloadReport()
    fetch = _downloader(items, folder, options, report) if options.download else None
    return finish_import(options, out, inter, items.drop(columns=["image_url"]), source="amazon2023", counts=bad.counts,
                         inputs={"reviews": reviews_path, "meta": meta_path, "images": folder}, fetch=fetch,
                         extra_stats=(lambda: {"download": report.as_stats()}) if options.download else None)
