"""The generation cache: generated texts keyed by the hash of everything that determines them.

Key: model id + revision or weights hash, prompt template text, input content hash (image bytes,
item text, or the previous step's text), generation settings. Changing any of them gives a new key and a new
generation; nothing else does.

Storage: one append-only JSONL file per writer (`<dir>/<writer>.jsonl`, e.g. `shard-0-of-4.jsonl`). Each
*batch* is one line, written with a single `write` and fsync'd before the next batch starts, so a crash loses
at most the batch in flight: a torn last line is ignored when reading (and cut off before appending again).
Readers merge every file of the directory by key, which is how shards combine.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from mmrec.io import hash_json, sha256_file
from mmrec.progress import get_logger

log = get_logger(__name__)

# Files at most this size are hashed whole; larger weight files by size + first and last 4 MiB (fast on 15 GB).
_FULL_HASH_LIMIT = 64 << 20
_SAMPLE = 4 << 20


def cache_key(kind: str, model: dict[str, Any], template: str, inputs: dict[str, Any], settings: dict[str, Any]) -> str:
    """The cache key of one generation (a sha256 hex string)."""
    return hash_json({"kind": kind, "model": model, "template": template, "inputs": inputs, "settings": settings})


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    if size <= _FULL_HASH_LIMIT:
        return sha256_file(path)
    import hashlib

    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        f.seek(size - _SAMPLE)
        h.update(f.read(_SAMPLE))
    return "sampled:" + h.hexdigest()


def model_fingerprint(spec: Any) -> dict[str, Any]:
    """What identifies a model's outputs: a local directory by the hash of its files (weights, tokenizer, chat
    template), a hub id by id + revision ("main" unless pinned), plus the options that change numerics."""
    path = Path(spec.name_or_path)
    options = {"dtype": spec.dtype, "quantization": spec.quantization, "prompt_format": spec.prompt_format}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        content = {str(p.relative_to(path)): _file_digest(p) for p in files}
        return {"local": hash_json(content), **options}
    return {"hub": spec.name_or_path, "revision": spec.revision or "main", **options}


class GenerationCache:
    """Every record of a cache directory (all writers), plus appending this writer's new batches."""

    def __init__(self, directory: str | Path, writer: str = "main"):
        self.dir = Path(directory)
        self.path = self.dir / f"{writer}.jsonl"
        self.records: dict[str, dict[str, Any]] = {}
        self.torn = 0
        self.reload()

    def reload(self) -> None:
        """Read every writer's file; a successful record wins over a failed one for the same key."""
        self.records = {}
        self.torn = 0
        if not self.dir.is_dir():
            return
        for part in sorted(self.dir.glob("*.jsonl")):
            for rec in self._read(part):
                old = self.records.get(rec["key"])
                if old is None or (old.get("error") and not rec.get("error")):
                    self.records[rec["key"]] = rec

    def _read(self, part: Path) -> Iterable[dict[str, Any]]:
        with open(part, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                batch = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # torn last line: the batch in flight when a writer died
                    self.torn += 1
                    log.info("%s: ignoring an unfinished batch at the end (a run was interrupted)", part)
                    continue
                log.warning("%s line %d: unreadable cache line ignored; those items will be regenerated", part, i + 1)
                continue
            yield from batch.get("records", [])

    def get(self, key: str) -> dict[str, Any] | None:
        rec = self.records.get(key)
        return rec if rec is not None and not rec.get("error") else None

    def text(self, key: str) -> str | None:
        rec = self.get(key)
        return None if rec is None else rec["text"]

    def failed(self, key: str) -> str | None:
        rec = self.records.get(key)
        return rec.get("error") if rec is not None else None

    def put_batch(self, records: list[dict[str, Any]]) -> None:
        """Append one batch of records ({"key", "text"} or {"key", "error"}) durably, as one line."""
        if not records:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        line = (json.dumps({"records": records}, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        for rec in records:
            old = self.records.get(rec["key"])
            if old is None or old.get("error") or not rec.get("error"):
                self.records[rec["key"]] = rec

    def _cut_torn_tail(self) -> None:
        """Drop a half-written last line of our own file so the next batch starts on a fresh line."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
