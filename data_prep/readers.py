"""Reading raw files: chunked CSV/JSONL readers with line-exact errors, and value conversions that name the line.

Readers never loop in Python per row on the good path (pyarrow parses whole blocks); only when a block fails
do they fall back to line-by-line parsing to name the bad line (`--bad-lines fail`) or count it (`skip`).
Finding the line of a bad value (`line_of`, `find_line`) is a scan of the file, done only on the error path.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from mmrec.errors import DataError
from mmrec.progress import get_logger, progress

log = get_logger("mmrec.prep")

CHUNK_BYTES = 32 << 20  # JSONL/CSV block size: bounds memory on files of tens of millions of lines
TimeFormat = Literal["unix", "unix_ms", "iso"]
TIME_FORMATS: tuple[str, ...] = get_args(TimeFormat)
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
    """For scans on the error path: an undecodable byte elsewhere in the file must not stop the search."""
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding=encoding, errors="replace", newline="")


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def not_text(encoding: str, raw: bytes, error: UnicodeDecodeError) -> str:
    """Why a line is not text, and what to do about it."""
    return (f"not valid {encoding} text ({error.reason} at byte {error.start}: {raw[:80]!r}); save the file as "
            f"{encoding} (e.g. `iconv -f latin1 -t utf-8`)")


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
        with _open_bytes(self.path) as f:
            raw = f.readline()
        try:
            header = raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            raise DataError(f"{self.path}, line 1: the header is {not_text(self.encoding, raw, e)}") from None
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
        """Chunks of `usecols`, every value a string (null when the field is empty).

        Fields are read as bytes and decoded per block, so a line that is not valid text is named (or counted
        and dropped under `skip`) instead of failing the whole file or reaching the dataset."""
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
            convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in cols}, include_columns=usecols,
                                                 strings_can_be_null=True, quoted_strings_can_be_null=False),
        )
        try:
            with _quiet_undecodable_rows():
                reader = pacsv.open_csv(source, **opts)
                with progress(desc=self.path.name, unit="rows") as bar:
                    for batch in reader:
                        self._report_bad(bad_rows, bad, len(cols))
                        bar.update(batch.num_rows)
                        yield self._decode(batch, bad).to_pandas()
                self._report_bad(bad_rows, bad, len(cols))
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            if "\ufffd" in str(e):  # a row with the wrong field count that is not text: pyarrow cannot hand it over
                line = self.find_line_bytes(lambda raw: not _decodes(raw, self.encoding)
                                            and len(self._split(raw.decode(self.encoding, "replace"))) != len(cols))
                raise DataError(f"{self.path}{f', line {line}' if line else ''}: expected {len(cols)} fields and the "
                                f"line is not valid {self.encoding} text either; fix or delete it (--bad-lines skip "
                                "cannot drop such a line)") from None
            raise DataError(f"{self.path}: cannot be parsed as {self.delimiter!r}-separated text: {e}") from None

    def _decode(self, batch: pa.RecordBatch, bad: BadLines) -> pa.RecordBatch:
        """Binary fields -> strings; rows with undecodable bytes are named (fail) or counted and dropped (skip)."""
        try:
            return pa.RecordBatch.from_arrays([c.cast(pa.string()) for c in batch.columns], names=batch.schema.names)
        except pa.ArrowInvalid:
            pass
        keep = [True] * batch.num_rows
        for column in batch.columns:
            for row, value in enumerate(column.to_pylist()):
                if not keep[row] or value is None:
                    continue
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as e:
                    keep[row] = False
                    reported = bad.mode == "fail" or bad.counts.get("bad_lines", {}).get(self.path.name, 0) < 5
                    line = self.find_line_bytes(lambda raw, v=value: v in raw and not _decodes(raw, self.encoding)) \
                        if reported else None  # a scan of the file: only for the lines that are reported
                    bad.handle(self.path, line, not_text(self.encoding, value, e))
        kept = batch.filter(pa.array(keep))
        return pa.RecordBatch.from_arrays([c.cast(pa.string()) for c in kept.columns], names=kept.schema.names)

    def find_line_bytes(self, match) -> int | None:
        """1-based number of the first raw line (bytes) for which `match(line)` holds (error path only)."""
        with _open_bytes(self.path) as f:
            for number, raw in enumerate(f, start=1):
                if match(raw):
                    return number
        return None

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


@contextlib.contextmanager
def _quiet_undecodable_rows() -> Iterator[None]:
    """pyarrow decodes a malformed CSV row to text before calling the invalid-row handler; when that fails it prints
    the UnicodeDecodeError as 'Exception ignored' and then raises a parse error, which `TableFile.read` reports
    with the line. Keep that inner traceback off the user's terminal."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, UnicodeDecodeError):
            previous(unraisable)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
        return True
    except UnicodeDecodeError:
        return False


@dataclass
class JsonlFile:
    """A JSON-lines file (optionally .gz). With a `schema` only its fields are parsed (others ignored)."""

    path: Path
    schema: pa.Schema | None = None

    def read(self, bad: BadLines, required: list[str] = ()) -> Iterator[pd.DataFrame]:
        """Chunks of the file as DataFrames. A block that fails to parse, holds bytes that are not UTF-8 or gives a
        field another JSON type than earlier blocks is re-read line by line (`_slow`) to name or skip the bad line."""
        opts = pajson.ParseOptions(explicit_schema=self.schema, unexpected_field_behavior="ignore") \
            if self.schema is not None else pajson.ParseOptions()
        read_opts = pajson.ReadOptions(block_size=CHUNK_BYTES)  # a long meta line must fit in one block
        first, start = True, 1
        kinds: dict[str, str] = {}  # field -> JSON type seen so far (files without a schema)
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
                block = b"".join(lines)
                try:
                    block.decode("utf-8")  # pyarrow would store invalid bytes as they are: a dataset nobody can read
                    table = pajson.read_json(io.BytesIO(block), read_options=read_opts, parse_options=opts)
                    if self.schema is None and _conflicts(table.schema, kinds):
                        raise ValueError("a field changed type since the previous block")
                except (UnicodeDecodeError, ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    table = self._slow(lines, start, opts, bad, kinds)
                if self.schema is None:
                    kinds.update({k: v for k, v in _arrow_kinds(table.schema).items() if k not in kinds})
                start += len(lines)
                bar.update(raw_file.tell() - bar.n)
                if table.num_rows == 0:  # every line of the block was skipped
                    continue
                if first and required:
                    self._check_required(table, required, lines)
                    first = False
                yield table.to_pandas(integer_object_nulls=True)  # int ids with gaps stay '7', never '7.0'

    def _slow(self, lines: list[bytes], start: int, opts, bad: BadLines, kinds: dict[str, str]) -> pa.Table:
        """Parse a failed block line by line: name (or count) each bad line, parse the rest in one go."""
        parsed: list[tuple[int, bytes, dict]] = []
        for number, raw in enumerate(lines, start=start):
            if not raw.strip():
                continue
            try:
                raw.decode("utf-8")
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                self._check_types(obj)
                pajson.read_json(io.BytesIO(raw), parse_options=opts)
            except UnicodeDecodeError as e:
                bad.handle(self.path, number, not_text("UTF-8", raw, e))
                continue
            except json.JSONDecodeError as e:
                bad.handle(self.path, number, f"invalid JSON: {e.msg} at column {e.colno}")
                continue
            except (ValueError, pa.ArrowInvalid) as e:
                bad.handle(self.path, number, str(e).replace("JSON parse error: ", "malformed JSON line: "))
                continue
            parsed.append((number, raw, obj))
        if self.schema is None:
            parsed = self._consistent(parsed, kinds, bad)
        good = [raw for _, raw, _ in parsed]
        if not good:
            return self.schema.empty_table() if self.schema is not None else pa.table({})
        try:
            return pajson.read_json(io.BytesIO(b"".join(good)), parse_options=opts)
        except pa.ArrowInvalid as e:  # only without a schema: nested values whose types differ between lines
            raise DataError(f"{self.path}, lines {start}-{start + len(lines) - 1}: fields change type between "
                            f"lines ({e}); make them consistent") from None

    def _consistent(self, parsed: list[tuple[int, bytes, dict]], kinds: dict[str, str],
                    bad: BadLines) -> list[tuple[int, bytes, dict]]:
        """Lines whose fields keep one JSON type: the type of earlier blocks, else the most common one here.

        A line with another type (`"ts": "soon"` among numbers) is named, or counted and dropped under `skip`."""
        votes: dict[str, Counter] = {}
        for _, _, obj in parsed:
            for key, value in obj.items():
                if _kind(value) is not None:
                    votes.setdefault(key, Counter())[_kind(value)] += 1
        expected = {k: kinds.get(k) or c.most_common(1)[0][0] for k, c in votes.items()}
        kept = []
        for number, raw, obj in parsed:
            wrong = next(((k, v) for k, v in obj.items() if _kind(v) not in (None, expected.get(k))), None)
            if wrong is None:
                kept.append((number, raw, obj))
            else:
                key, value = wrong
                bad.handle(self.path, number, f"field {key!r} is {_kind(value)} {value!r} where the other lines "
                           f"have a {expected[key]}")
        return kept

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


def _kind(value: Any) -> str | None:
    """The JSON type of a value (None for null): the unit in which fields must agree between lines."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}[type(value)]


def _arrow_kinds(schema: pa.Schema) -> dict[str, str]:
    """JSON type of each column pyarrow inferred (all-null columns say nothing)."""
    out = {}
    for f in schema:
        t = f.type
        kind = ("boolean" if pa.types.is_boolean(t) else "number" if pa.types.is_integer(t) or pa.types.is_floating(t)
                else "string" if pa.types.is_string(t) or pa.types.is_large_string(t)
                else "list" if pa.types.is_list(t) else "object" if pa.types.is_struct(t) else None)
        if kind is not None:
            out[f.name] = kind
    return out


def _conflicts(schema: pa.Schema, kinds: dict[str, str]) -> bool:
    return any(kinds.get(k, v) != v for k, v in _arrow_kinds(schema).items())


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
