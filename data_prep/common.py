"""Machinery every importer shares: chunked readers with line-exact errors, timestamps, and `finish_import`.

An importer reads its raw files into two DataFrames and hands them to `finish_import(args, interactions, items,
source=...)`, which cleans them (missing ids, exact duplicates, rating threshold, images, k-core), copies the
images into `OUT/images/` and writes the canonical dataset inside `mmrec.io.atomic_dir(OUT)`: a failed import
leaves no half-written directory. Everything dropped is counted in `stats.json` under `dropped`.

Readers never loop in Python per row on the good path (pyarrow parses whole blocks); only when a block fails
do they fall back to line-by-line parsing to name the bad line (`--bad-lines fail`) or count it (`skip`).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from mmrec.data.canonical import write_tables
from mmrec.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, ImagePolicy, inspect_image
from mmrec.errors import DataError
from mmrec.io import atomic_dir
from mmrec.progress import get_logger, progress

log = get_logger("mmrec.prep")

CHUNK_BYTES = 32 << 20  # JSONL/CSV block size: bounds memory on files of tens of millions of lines
TIME_FORMATS = ("unix", "unix_ms", "iso")
MAX_SECONDS = 253_402_300_799  # 9999-12-31: larger values are a wrong unit or corrupt data


@dataclass
class BadLines:
    """The --bad-lines policy plus what it skipped (counted per file, first examples logged)."""

    mode: str = "fail"
    counts: dict[str, Any] = field(default_factory=dict)  # {"bad_lines": {file name: n}, ...}

    def handle(self, path: Path, line: int | None, reason: str) -> None:
        where = f"{path}, line {line}" if line else str(path)
        if self.mode == "fail":
            raise DataError(f"{where}: {reason} (use --bad-lines skip to drop such lines and count them)")
        per_file = self.counts.setdefault("bad_lines", {})
        n = per_file.get(path.name, 0)
        per_file[path.name] = n + 1
        if n < 5:
            log.warning("skipping %s: %s", where, reason)


def check_file(path: str | Path, what: str) -> Path:
    """An existing, non-empty input file, or a DataError that says which one and what it should be."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: {what} is empty (0 bytes)")
    return path


def _open_text(path: Path, encoding: str):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding=encoding, newline="")


@dataclass
class TableFile:
    """A delimited text file (optionally .gz): `names` for headerless files, else the first line is the header."""

    path: Path
    delimiter: str = ","
    names: list[str] | None = None
    encoding: str = "utf-8"
    quote: bool = True  # False for formats where '"' is an ordinary character (RecBole, MovieLens .dat/u.item)

    def _split(self, line: str) -> list[str]:
        if len(self.delimiter) > 1:
            return line.rstrip("\r\n").split(self.delimiter)
        quoting = csv.QUOTE_MINIMAL if self.quote else csv.QUOTE_NONE
        return next(csv.reader([line.rstrip("\r\n")], delimiter=self.delimiter, quoting=quoting), [])

    def columns(self) -> list[str]:
        if self.names is not None:
            return self.names
        with _open_text(self.path, self.encoding) as f:
            header = f.readline()
        if not header.strip():
            raise DataError(f"{self.path}, line 1: expected a header line naming the columns")
        return [c.strip().lstrip("\ufeff") for c in self._split(header)]

    def require(self, needed: list[str]) -> list[str]:
        cols = self.columns()
        missing = [c for c in needed if c not in cols]
        if missing:
            raise DataError(f"{self.path}: missing column(s) {missing}; the header has {cols}")
        return cols

    def read(self, usecols: list[str], bad: BadLines) -> Iterator[pd.DataFrame]:
        """Chunks of `usecols`, every value a string (null when the field is empty)."""
        cols = self.require(usecols)
        skip = 0 if self.names is not None else 1
        if len(self.delimiter) > 1:  # e.g. MovieLens-1M '::': small fixed files, re-delimit in memory
            raw = gzip.decompress(self.path.read_bytes()) if self.path.suffix == ".gz" else self.path.read_bytes()
            source: Any = io.BytesIO(raw.replace(self.delimiter.encode(self.encoding), b"\x1f"))
            delim = "\x1f"
        else:
            source, delim = pa.input_stream(str(self.path), compression="detect"), self.delimiter
        bad_rows: list[str] = []

        def on_invalid(row) -> str:
            bad_rows.append(row.text)
            return "skip"

        opts = dict(
            read_options=pacsv.ReadOptions(column_names=cols, skip_rows=skip, encoding=self.encoding,
                                           block_size=CHUNK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=delim, invalid_row_handler=on_invalid, newlines_in_values=False,
                                             quote_char='"' if self.quote else False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in cols}, include_columns=usecols,
                                                 strings_can_be_null=True, quoted_strings_can_be_null=False),
        )
        try:
            reader = pacsv.open_csv(source, **opts)
            with progress(desc=self.path.name, unit="rows") as bar:
                for batch in reader:
                    self._report_bad(bad_rows, bad, len(cols))
                    bar.update(batch.num_rows)
                    yield batch.to_pandas()
            self._report_bad(bad_rows, bad, len(cols))
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise DataError(f"{self.path}: cannot be parsed as {self.delimiter!r}-separated text: {e}") from None

    def _report_bad(self, rows: list[str], bad: BadLines, ncols: int) -> None:
        for text in rows:
            # finding the line is a scan of the file: only for the lines that are reported, not every skipped one
            reported = bad.mode == "fail" or bad.counts.get("bad_lines", {}).get(self.path.name, 0) < 5
            line = self.find_line(lambda raw: raw.rstrip("\r\n") == text.rstrip("\r\n")) if reported else None
            bad.handle(self.path, line, f"expected {ncols} fields, got {len(self._split(text))}: {text[:120]!r}")
        rows.clear()

    def find_line(self, match) -> int | None:
        """1-based number of the first raw line for which `match(line)` holds (error path only: a Python scan)."""
        with _open_text(self.path, self.encoding) as f:
            for number, raw in enumerate(f, start=1):
                if match(raw):
                    return number
        return None

    def line_of(self, column: str, value: str) -> int | None:
        idx = self.columns().index(column)
        skip = 0 if self.names is not None else 1

        def match(raw: str) -> bool:
            fields = self._split(raw)
            return len(fields) > idx and fields[idx].strip() == value
        with _open_text(self.path, self.encoding) as f:
            for number, raw in enumerate(f, start=1):
                if number > skip and match(raw):
                    return number
        return None


@dataclass
class JsonlFile:
    """A JSON-lines file (optionally .gz). With a `schema` only its fields are parsed (others ignored)."""

    path: Path
    schema: pa.Schema | None = None

    def read(self, bad: BadLines, required: list[str] = ()) -> Iterator[pd.DataFrame]:
        opts = pajson.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="ignore") \
            if self.schema is not None else pajson.ParseOptions()
        read_opts = pajson.ReadOptions(block_size=CHUNK_BYTES)  # a long meta line must fit in one block
        first, start = True, 1
        raw_file = open(self.path, "rb")
        f = gzip.open(raw_file) if self.path.suffix == ".gz" else raw_file
        with raw_file, progress(total=self.path.stat().st_size, desc=self.path.name, unit="B") as bar:
            while True:
                try:
                    lines = f.readlines(CHUNK_BYTES)
                except (OSError, EOFError) as e:
                    raise DataError(f"{self.path}: cannot be read ({e}); is the file complete?") from None
                if not lines:
                    break
                try:
                    table = pajson.read_json(io.BytesIO(b"".join(lines)), read_options=read_opts, parse_options=opts)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    table = self._slow(lines, start, opts, bad)
                start += len(lines)
                bar.update(raw_file.tell() - bar.n)
                if table.num_rows == 0:  # every line of the block was skipped
                    continue
                if first and required:
                    self._check_required(table, required, lines)
                    first = False
                yield table.to_pandas(integer_object_nulls=True)  # int ids with gaps stay '7', never '7.0'

    def _slow(self, lines: list[bytes], start: int, opts, bad: BadLines) -> pa.Table:
        """Parse a failed block line by line: name (or count) each bad line, parse the rest in one go."""
        good: list[bytes] = []
        for number, raw in enumerate(lines, start=start):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                self._check_types(obj)
                pajson.read_json(io.BytesIO(raw), parse_options=opts)
            except json.JSONDecodeError as e:
                bad.handle(self.path, number, f"invalid JSON: {e.msg} at column {e.colno}")
                continue
            except (ValueError, pa.ArrowInvalid) as e:
                bad.handle(self.path, number, str(e).replace("JSON parse error: ", "malformed JSON line: "))
                continue
            good.append(raw)
        if not good:
            return self.schema.empty_table() if self.schema is not None else pa.table({})
        try:
            return pajson.read_json(io.BytesIO(b"".join(good)), parse_options=opts)
        except pa.ArrowInvalid as e:  # only without a schema: types that differ between lines
            raise DataError(f"{self.path}, lines {start}-{start + len(lines) - 1}: fields change type between "
                            f"lines ({e}); make them consistent") from None

    def _check_types(self, obj: dict) -> None:
        """A readable message for the usual mismatch: a number field holding text (or the reverse)."""
        for f in self.schema or []:
            value = obj.get(f.name)
            if value is None:
                continue
            if pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"field {f.name!r} is {value!r}, not a number")
            elif pa.types.is_string(f.type) and not isinstance(value, str):
                raise ValueError(f"field {f.name!r} is {value!r}, not a string")

    def _check_required(self, table: pa.Table, required: list[str], lines: list[bytes]) -> None:
        for name in required:
            if name not in table.column_names or (table.num_rows and table[name].null_count == table.num_rows):
                keys = next((sorted(json.loads(x)) for x in lines if x.strip()), [])
                raise DataError(f"{self.path}: field {name!r} is missing (line 1 has fields {keys})")

    def line_of(self, column: str, value: str) -> int | None:
        with (gzip.open if self.path.suffix == ".gz" else open)(self.path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    if str(json.loads(raw).get(column)) == value:
                        return number
                except (ValueError, AttributeError):
                    continue
        return None


def read_all(chunks: Iterator[pd.DataFrame]) -> pd.DataFrame:
    frames = list(chunks)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def to_seconds(values: pd.Series, fmt: str, source: TableFile | JsonlFile, column: str) -> pd.Series:
    """Timestamps -> nullable int64 seconds. `unix` seconds, `unix_ms` milliseconds, `iso` dates/times (UTC).

    A value that is present but cannot be read raises a DataError naming the file and line.
    """
    if fmt not in TIME_FORMATS:
        raise DataError(f"unknown time format {fmt!r}; use one of {', '.join(TIME_FORMATS)}")
    if fmt == "iso":
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    else:
        seconds = pd.to_numeric(values, errors="coerce")
        if fmt == "unix_ms":
            seconds = seconds // 1000
    bad = seconds.isna() & values.notna()
    problem = "is not an ISO date/time" if fmt == "iso" else "is not a number"
    if not bad.any():
        bad = seconds.abs() > MAX_SECONDS
        problem = "is out of range (year > 9999?)"
    if bad.any():
        value = str(values[bad].iloc[0])
        line = source.line_of(column, value)
        raise DataError(f"{source.path}{f', line {line}' if line else ''}: {column} {value!r} {problem} "
                        f"(time format {fmt!r})")
    return np.floor(seconds).astype("Int64") if seconds.dtype.kind == "f" else seconds.astype("Int64")


def to_rating(values: pd.Series, source: TableFile | JsonlFile, column: str) -> pd.Series:
    rating = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = rating.isna() & values.notna()
    if bad.any():
        value = str(values[bad].iloc[0])
        line = source.line_of(column, value)
        raise DataError(f"{source.path}{f', line {line}' if line else ''}: {column} {value!r} is not a number")
    return rating


def unknown_items(interactions: pd.DataFrame, known: pd.Series, source: TableFile | JsonlFile, column: str,
                  meta_path: Path, bad: BadLines) -> pd.DataFrame:
    """Interactions whose item is absent from the metadata file: an error naming the line, or counted and dropped."""
    unknown = interactions["item_id"].notna() & ~interactions["item_id"].isin(known)
    if not unknown.any():
        return interactions
    value = str(interactions.loc[unknown, "item_id"].iloc[0])
    if bad.mode == "fail":
        line = source.line_of(column, value)
        raise DataError(f"{source.path}{f', line {line}' if line else ''}: item {value!r} is not in {meta_path} "
                        f"({int(unknown.sum())} interactions refer to unknown items; --bad-lines skip drops them)")
    bad.counts["unknown_item_interactions"] = bad.counts.get("unknown_item_interactions", 0) + int(unknown.sum())
    log.warning("dropping %d interactions whose item is not in %s (e.g. %r)", int(unknown.sum()), meta_path, value)
    return interactions[~unknown]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Output and cleaning flags shared by every source (the names are also the `data.options` keys)."""
    g = parser.add_argument_group("output and cleaning")
    g.add_argument("--out", required=True, help="output dataset directory (replaced atomically on success)")
    g.add_argument("--min-user", type=int, default=0, help="k-core: min interactions per user (0 = off)")
    g.add_argument("--min-item", type=int, default=0, help="k-core: min interactions per item (0 = off)")
    g.add_argument("--min-rating", type=float, default=None, help="keep only interactions rated at least this")
    g.add_argument("--require-image", action="store_true", help="keep only items with a usable image")
    g.add_argument("--image-policy", choices=("skip", "fail"), default="skip",
                   help="a missing/corrupt/truncated image: skip it (counted in stats) or fail the import")
    g.add_argument("--bad-lines", choices=("fail", "skip"), default="fail",
                   help="a malformed input line or unknown id: fail naming it, or skip it (counted in stats)")
    g.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default: 89 M pixels)")
    g.add_argument("--workers", type=int, default=4, help="threads that decode images")
    g.add_argument("--copy-images", action="store_true",
                   help="copy images into OUT/images instead of hard-linking them (a hard link shares the file)")

# ---------------------------------------------------------------------------------------------------------------
# Images of the source and finish_import


def index_images(folder: str | Path | None) -> dict[str, Path]:
    """Image files directly inside `folder`, by file stem (`B00X1.jpg` -> 'B00X1'); one directory listing."""
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


def inspect_sources(paths: dict[str, Path], policy: ImagePolicy, cache: _InspectCache, workers: int) -> dict[str, dict]:
    """item_id -> {'sha256','width','height','source'} for the usable images among `paths` (policy applied)."""
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


def finish_import(args: argparse.Namespace, interactions: pd.DataFrame, items: pd.DataFrame | None, *,
                  source: str, counts: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None,
                  fetch: Callable[[list[str]], dict[str, Path]] | None = None,
                  extra_stats: Callable[[], dict] | None = None) -> dict:
    """Clean, attach images and write the canonical dataset to `args.out` atomically; returns the stats written.

    `args` carries the flags of `add_common_arguments`. `interactions`: user_id, item_id, timestamp (integer
    seconds), optional rating. `items` (or None: items known by id only): item_id, title, text, optional
    `image_source` (path of the source image file, or null). `counts`: the importer's own drops (skipped lines,
    unknown ids...), merged into stats['dropped']. `fetch(item_ids) -> {item_id: file}` supplies images for items
    without `image_source` just before they are needed (downloads happen only for items that survive cleaning);
    `extra_stats()` adds the importer's own stats section (e.g. the download report) at write time.
    Order: missing ids/timestamps, exact duplicates, rating threshold, require-image, k-core (to a fixed
    point); then only the surviving items' images are decoded and copied.
    """
    out = Path(args.out)
    _check_out(out)
    dropped: dict[str, Any] = dict(counts or {})
    inter = interactions[[c for c in ("user_id", "item_id", "timestamp", "rating") if c in interactions]].copy()
    for col in ("user_id", "item_id"):
        inter[col] = inter[col].astype("string").str.strip().replace("", pd.NA)
    inter = inter[_count(dropped, "missing_id", inter["user_id"].isna() | inter["item_id"].isna())]
    inter = inter[_count(dropped, "missing_timestamp", inter["timestamp"].isna())]
    inter["timestamp"] = inter["timestamp"].astype("int64")
    inter = inter[_count(dropped, "duplicates", inter.duplicated(keep="first"))]
    if args.min_rating is not None:
        if "rating" not in inter or inter["rating"].isna().all():
            raise DataError(f"--min-rating {args.min_rating} was given but the {source} data has no ratings")
        inter = inter[_count(dropped, "below_min_rating", ~(inter["rating"] >= args.min_rating))]

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

    policy = ImagePolicy(args.image_policy, args.max_pixels or DEFAULT_MAX_PIXELS)
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
        return inspect_sources(wanted, policy, cache, args.workers)

    if args.require_image:
        usable = images_of(inter["item_id"])
        inter = inter[_count(dropped, "no_usable_image", ~inter["item_id"].isin(list(usable)))]
    kcore_report: dict | None = None
    if (args.min_user or 0) > 1 or (args.min_item or 0) > 1:
        from mmrec.data.kcore import kcore

        before = len(inter)
        inter, kcore_report = kcore(inter, args.min_user or 1, args.min_item or 1)
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
                               getattr(args, "copy_images", False))
        extra = {"source": source, "dropped": dropped,
                 "images": {"skipped": policy.counts(), "items_without_image_file": int((~items["item_id"].isin(
                     list(sources))).sum()), "files": len(list(images_dir.iterdir()))}}
        if extra_stats is not None:
            extra.update(extra_stats())
        if kcore_report is not None:
            extra["kcore"] = kcore_report
        stats = write_tables(tmp, items, inter.reset_index(drop=True), prep_info=_prep_info(args, source, inputs),
                             extra_stats=extra)
    cache.close(remove=True)
    log.info("wrote %s: %d users, %d items, %d interactions", out, stats["users"], stats["items"], stats["interactions"])
    return stats


def _prep_info(args: argparse.Namespace, source: str, inputs: dict[str, Any] | None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mmrec_version = version("mmrec")
    except PackageNotFoundError:  # running from a source tree
        mmrec_version = "unknown"
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
               if not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None), Path, list))}
    return {"source": source, "options": options, "inputs": {k: str(v) for k, v in (inputs or {}).items()},
            "mmrec_version": mmrec_version}
