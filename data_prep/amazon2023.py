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

import argparse
import os
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa

from data_prep.common import add_common_arguments, finish_import, index_images
from data_prep.download import DownloadReport, download_images
from data_prep.readers import BadLines, JsonlFile, check_file, read_all, to_seconds, unknown_items
from mmrec.data.images import IMAGE_EXTENSIONS
from mmrec.errors import DataError

REVIEW_SCHEMA = pa.schema([("user_id", pa.string()), ("parent_asin", pa.string()),
                           ("timestamp", pa.float64()), ("rating", pa.float64())])
_IMAGE = pa.struct([("large", pa.string()), ("hi_res", pa.string()), ("variant", pa.string())])
META_SCHEMA = pa.schema([("parent_asin", pa.string()), ("title", pa.string()), ("description", pa.list_(pa.string())),
                         ("features", pa.list_(pa.string())), ("images", pa.list_(_IMAGE))])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reviews", required=True, help="<Category>.jsonl or .jsonl.gz")
    parser.add_argument("--meta", required=True, help="meta_<Category>.jsonl or .jsonl.gz")
    parser.add_argument("--images", default=None, help="folder of images named <parent_asin>.<ext> (download target)")
    parser.add_argument("--download", action="store_true", help="fetch images missing from --images from meta URLs")
    parser.add_argument("--image-size", choices=("large", "hi_res"), default="large", help="which meta URL to fetch")
    parser.add_argument("--download-workers", type=int, default=8)
    parser.add_argument("--retries", type=int, default=3, help="extra attempts after a network error or HTTP 5xx/429")
    parser.add_argument("--retry-backoff", type=float, default=0.5, help="seconds before the first retry (doubles)")
    parser.add_argument("--max-text-chars", type=int, default=2000, help="cut item text to this many characters")
    add_common_arguments(parser)


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


def read_meta(path: Path, wanted: set[str], args: argparse.Namespace, bad: BadLines) -> pd.DataFrame:
    """Meta rows of the reviewed items only (filtered per chunk, so a huge meta file never sits in memory)."""
    chunks = (c[c["parent_asin"].isin(wanted)] for c in JsonlFile(path, META_SCHEMA).read(bad, ["parent_asin"]))
    meta = read_all(chunks)
    if meta.empty:
        return pd.DataFrame(columns=["item_id", "title", "text", "image_url"])
    title = meta["title"].fillna("").str.strip()
    body = (_joined(meta["description"]) + "; " + _joined(meta["features"])).str.strip("; ")
    text = title.where(body == "", title + ". " + body).str.slice(0, args.max_text_chars)
    urls = meta["images"].map(lambda ims: _main_image_url(ims, args.image_size))
    return pd.DataFrame({"item_id": meta["parent_asin"], "title": title, "text": text, "image_url": urls})


def _downloader(items: pd.DataFrame, folder: Path, args: argparse.Namespace, report: DownloadReport):
    urls = items.dropna(subset=["image_url"]).set_index("item_id")["image_url"]

    def fetch(ids: list[str]) -> dict[str, Path]:
        jobs = {}
        for item in ids:
            if item in urls.index:
                ext = os.path.splitext(urlparse(urls[item]).path)[1].lower()
                jobs[item] = (urls[item], folder / f"{item}{ext if ext in IMAGE_EXTENSIONS else '.jpg'}")
        present, rep = download_images(jobs, workers=args.download_workers, retries=args.retries,
                                          backoff=args.retry_backoff)
        report.downloaded += rep.downloaded
        report.cached += rep.cached
        report.failed.update(rep.failed)
        return present
    return fetch


def run(args: argparse.Namespace) -> dict:
    bad = BadLines(args.bad_lines)
    reviews_path = check_file(args.reviews, "reviews file")
    meta_path = check_file(args.meta, "meta file")
    if args.download and not args.images:
        raise DataError("--download needs --images DIR: the folder the images are downloaded into (and cached in)")
    inter = read_reviews(reviews_path, bad)
    items = read_meta(meta_path, set(inter["item_id"].dropna().unique()), args, bad)
    inter = unknown_items(inter, items["item_id"], JsonlFile(reviews_path), "parent_asin", meta_path, bad)
    folder = Path(args.images) if args.images else None
    if folder is not None and args.download:
        folder.mkdir(parents=True, exist_ok=True)
    local = index_images(folder)
    items["image_source"] = items["item_id"].map(lambda i: str(local[i]) if i in local else None)
    report = DownloadReport()
    fetch = _downloader(items, folder, args, report) if args.download else None
    return finish_import(args, inter, items.drop(columns=["image_url"]), source="amazon2023", counts=bad.counts,
                         inputs={"reviews": reviews_path, "meta": meta_path, "images": folder}, fetch=fetch,
                         extra_stats=(lambda: {"download": report.as_stats()}) if args.download else None)
