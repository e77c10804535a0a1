"""Machinery every importer shares: the cleaning options (`CleaningOptions`), source images, and `finish_import`.

An importer reads its raw files (with `data_prep.readers`) into two DataFrames and hands them to
`finish_import(options, out, interactions, items, source=...)`, which cleans them (missing ids, exact duplicates,
rating threshold, images, k-core), copies the images into `OUT/images/` and writes the canonical dataset inside
`mmrec.io.atomic_dir(OUT)`: a failed import leaves no half-written directory. Everything dropped is counted in
`stats.json` under `dropped`.
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd

from mmrec.config import option, to_dict
from mmrec.data.canonical import write_tables
from mmrec.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, ImagePolicy, inspect_image
from mmrec.errors import DataError
from mmrec.io import atomic_dir
from mmrec.progress import get_logger, progress

log = get_logger("mmrec.prep")


@dataclass(kw_only=True)
class CleaningOptions:
    """Cleaning options shared by every importing source (each source's options dataclass extends it). Like every
    field of a source's options, each is a `--flag-name` of `mmrec prep <source>` and a key of `data.options`."""

    min_user: int = option(0, "k-core: min interactions per user (0 = off)")
    min_item: int = option(0, "k-core: min interactions per item (0 = off)")
    min_rating: float | None = option(None, "keep only interactions rated at least this")
    require_image: bool = option(False, "keep only items with a usable image")
    image_policy: Literal["skip", "fail"] = option(
        "skip", "a missing/corrupt/truncated image: skip it (counted in stats) or fail the import")
    bad_lines: Literal["fail", "skip"] = option(
        "fail", "a malformed input line or unknown id: fail naming it, or skip it (counted in stats)")
    max_pixels: int | None = option(None, "refuse larger images (default: 89 M pixels)")
    workers: int = option(4, "threads that decode images")
    copy_images: bool = option(
        False, "copy images into OUT/images instead of hard-linking them (a hard link shares the file)")

# ---------------------------------------------------------------------------------------------------------------
# Images of the source and finish_import


def index_images(folder: str | Path | None) -> dict[str, Path]:
    """Image files directly inside `folder`, by file stem (`B00X1.jpg` -> 'B00X1'); one directory listing.

    Symbolic links are listed as links: `inspect_sources` resolves them and refuses those leaving the folder."""
    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):  # sorted: a stem with 2 extensions -> same pick
        suffix = os.path.splitext(entry.name)[1].lower()
        if suffix in IMAGE_EXTENSIONS and entry.is_file():
            found.setdefault(os.path.splitext(entry.name)[0], Path(entry.path))
    return found


class _InspectCache:
    """Results of decoding source images, appended as they come, so a re-run after a crash skips finished ones."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.is_file():
            for raw in path.read_text().splitlines():
                try:
                    entry = json.loads(raw)
                    self.entries[entry["key"]] = entry
                except (ValueError, KeyError):
                    continue  # a line cut by the crash
        self._fh = None

    @staticmethod
    def key(path: Path) -> str:
        st = path.stat() if path.exists() else None
        return f"{path.resolve()}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}"

    def add(self, entry: dict) -> None:
        self.entries[entry["key"]] = entry
        if self._fh is None:
            self._fh = open(self.path, "a")
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()

    def close(self, remove: bool) -> None:
        if self._fh is not None:
            self._fh.close()
        if remove and self.path.exists():
            self.path.unlink()


def _inspect(path: Path, key: str, max_pixels: int) -> dict:
    try:
        info = inspect_image(path, max_pixels)
        return {"key": key, "sha256": info.sha256, "width": info.width, "height": info.height}
    except ImageError as e:
        return {"key": key, "error": e.kind, "detail": e.detail}


def follow_link(path: Path) -> Path:
    """A source image that is a symbolic link -> the file it points to, which must lie inside the link's own folder.

    Placing the link itself in the dataset would store a link (pointing out of the dataset, or dangling when
    relative), and a link out of the image folder would pull any file of the machine into the dataset."""
    if not path.is_symlink():
        return path
    folder, target = path.parent.resolve(), path.resolve()
    if folder not in target.parents:
        raise ImageError(path, "outside_root", f"symbolic link points outside its image folder {path.parent} "
                         f"(to {target}); refusing it")
    return target


def inspect_sources(paths: dict[str, Path], policy: ImagePolicy, cache: _InspectCache, workers: int) -> dict[str, dict]:
    """item_id -> {'sha256','width','height','source'} for the usable images among `paths` (policy applied).

    Symbolic links are followed within their folder (`follow_link`); one pointing out is refused by the policy."""
    paths = {item: real for item, p in paths.items() if (real := policy.apply(follow_link, p)) is not None}
    keys = {item: _InspectCache.key(p) for item, p in paths.items()}
    todo = {keys[i]: p for i, p in paths.items() if keys[i] not in cache.entries}
    if todo:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(_inspect, p, k, policy.max_pixels) for k, p in todo.items()]
            for fut in progress(as_completed(futures), total=len(futures), desc="images", unit="img"):
                cache.add(fut.result())
    usable: dict[str, dict] = {}
    for item, path in paths.items():
        entry = cache.entries[keys[item]]
        if "error" in entry:
            def fail(p, e=entry):
                raise ImageError(p, e["error"], e["detail"])
            policy.apply(fail, path)
        else:
            usable[item] = {**entry, "source": path}
    return usable


def _place_image(src: Path, sha: str, images_dir: Path, copy: bool = False) -> str:
    """Hard-link (or copy) a source image into the dataset as images/<sha256><ext>; identical files stored once."""
    ext = src.suffix.lower() if src.suffix.lower() in IMAGE_EXTENSIONS else ".img"
    dest = images_dir / f"{sha}{ext}"
    if not dest.exists():
        try:
            if copy:
                raise OSError("copy requested")
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
    return f"images/{dest.name}"


def _attach_images(items: pd.DataFrame, usable: dict[str, dict], images_dir: Path, copy: bool) -> pd.DataFrame:
    """Place each usable image into the dataset and fill the image columns (null for items without one)."""
    rows = {"image": [], "image_sha256": [], "image_width": [], "image_height": []}
    for item in progress(items["item_id"], desc="copy images", unit="img"):
        u = usable.get(item)
        rows["image"].append(_place_image(u["source"], u["sha256"], images_dir, copy) if u else None)
        for col, key in (("image_sha256", "sha256"), ("image_width", "width"), ("image_height", "height")):
            rows[col].append(u[key] if u else None)
    return items.assign(**rows)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a directory path")
    if out.is_dir() and any(out.iterdir()) and not (out / "prep.json").is_file():
        raise DataError(f"--out {out} exists and is not a dataset written by `mmrec prep`; refusing to replace it "
                        "(choose a new path or remove it)")


def _count(dropped: dict[str, int], name: str, mask: pd.Series) -> pd.Series:
    dropped[name] = dropped.get(name, 0) + int(mask.sum())
    return ~mask


def finish_import(options: CleaningOptions, out: Path, interactions: pd.DataFrame, items: pd.DataFrame | None, *,
                  source: str, counts: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None,
                  fetch: Callable[[list[str]], dict[str, Path]] | None = None,
                  extra_stats: Callable[[], dict] | None = None) -> dict:
    """Clean, attach images and write the canonical dataset to `out` atomically; returns the stats written.

    `options`: the source's options (their cleaning fields apply here). `interactions`: user_id, item_id,
    timestamp (integer seconds), optional rating. `items` (or None: items known by id only): item_id, title, text,
    optional `image_source` (path of the source image file, or null). `counts`: the importer's own drops (skipped
    lines, unknown ids...), merged into stats['dropped']. `fetch(item_ids) -> {item_id: file}` supplies images for items
    without `image_source` just before they are needed (downloads happen only for items that survive cleaning);
    `extra_stats()` adds the importer's own stats section (e.g. the download report) at write time.
    Order: missing ids/timestamps, exact duplicates, rating threshold, require-image, k-core (to a fixed
    point); then only the surviving items' images are decoded and copied.
    """
    out = Path(out)
    _check_out(out)
    dropped: dict[str, Any] = dict(counts or {})
    inter = interactions[[c for c in ("user_id", "item_id", "timestamp", "rating") if c in interactions]].copy()
    for col in ("user_id", "item_id"):
        inter[col] = inter[col].astype("string").str.strip().replace("", pd.NA)
    inter = inter[_count(dropped, "missing_id", inter["user_id"].isna() | inter["item_id"].isna())]
    inter = inter[_count(dropped, "missing_timestamp", inter["timestamp"].isna())]
    inter["timestamp"] = inter["timestamp"].astype("int64")
    inter = inter[_count(dropped, "duplicates", inter.duplicated(keep="first"))]
    if options.min_rating is not None:
        if "rating" not in inter or inter["rating"].isna().all():
            raise DataError(f"--min-rating {options.min_rating} was given but the {source} data has no ratings")
        inter = inter[_count(dropped, "below_min_rating", ~(inter["rating"] >= options.min_rating))]

    if items is None:
        items = pd.DataFrame({"item_id": inter["item_id"].unique()})
    items = items.copy()
    items["item_id"] = items["item_id"].astype("string").str.strip()
    items = items[_count(dropped, "item_rows_missing_id", items["item_id"].isna() | (items["item_id"] == ""))]
    items = items[_count(dropped, "duplicate_item_rows", items["item_id"].duplicated(keep="first"))]
    missing_meta = ~inter["item_id"].drop_duplicates().isin(items["item_id"])
    if missing_meta.any():  # importers that check ids never get here; others keep such items, title-less
        extra = pd.DataFrame({"item_id": inter["item_id"].drop_duplicates()[missing_meta].to_numpy()})
        items = pd.concat([items, extra], ignore_index=True)
        dropped["items_without_metadata_kept"] = int(missing_meta.sum())
    for col in ("title", "text"):
        items[col] = items[col].fillna("").astype(str) if col in items else ""
    if "image_source" not in items:
        items["image_source"] = None

    policy = ImagePolicy(options.image_policy, options.max_pixels or DEFAULT_MAX_PIXELS)
    cache = _InspectCache(out.parent / f".{out.name}.image-cache.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    has_source = items["image_source"].notna()
    sources = dict(zip(items.loc[has_source, "item_id"], map(Path, items.loc[has_source, "image_source"])))

    fetched: set[str] = set()

    def images_of(ids: pd.Series) -> dict[str, dict]:
        if fetch is not None:
            missing = [i for i in ids.unique() if i not in sources and i not in fetched]
            fetched.update(missing)
            sources.update(fetch(missing) if missing else {})
        wanted = {i: sources[i] for i in ids.unique() if i in sources}
        return inspect_sources(wanted, policy, cache, options.workers)

    if options.require_image:
        usable = images_of(inter["item_id"])
        inter = inter[_count(dropped, "no_usable_image", ~inter["item_id"].isin(list(usable)))]
    kcore_report: dict | None = None
    if (options.min_user or 0) > 1 or (options.min_item or 0) > 1:
        from mmrec.data.kcore import kcore

        before = len(inter)
        inter, kcore_report = kcore(inter, options.min_user or 1, options.min_item or 1)
        dropped["kcore"] = before - len(inter)
    if inter.empty:
        cache.close(remove=False)
        raise DataError(f"no interactions left after cleaning the {source} data (dropped: {dropped}); "
                        "loosen --min-user/--min-item/--min-rating/--require-image")
    used = inter["item_id"].unique()
    dropped["items_without_interactions"] = int((~items["item_id"].isin(used)).sum())
    items = items[items["item_id"].isin(used)].reset_index(drop=True)
    usable = images_of(items["item_id"])

    with atomic_dir(out) as tmp:
        images_dir = tmp / "images"
        images_dir.mkdir()
        items = _attach_images(items.drop(columns=["image_source"]), usable, images_dir,
                               options.copy_images)
        extra = {"source": source, "dropped": dropped,
                 "images": {"skipped": policy.counts(), "items_without_image_file": int((~items["item_id"].isin(
                     list(sources))).sum()), "files": len(list(images_dir.iterdir()))}}
        if extra_stats is not None:
            extra.update(extra_stats())
        if kcore_report is not None:
            extra["kcore"] = kcore_report
        stats = write_tables(tmp, items, inter.reset_index(drop=True),
                             prep_info=_prep_info(options, out, source, inputs), extra_stats=extra)
    cache.close(remove=True)
    log.info("wrote %s: %d users, %d items, %d interactions",
             out, stats["users"], stats["items"], stats["interactions"])
    return stats


def _prep_info(options: CleaningOptions, out: Path, source: str, inputs: dict[str, Any] | None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mmrec_version = version("mmrec")
    except PackageNotFoundError:  # running from a source tree
        mmrec_version = "unknown"
    return {"source": source, "options": {**to_dict(options), "out": str(out)},
            "inputs": {k: str(v) for k, v in (inputs or {}).items()}, "mmrec_version": mmrec_version}
