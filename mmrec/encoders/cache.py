"""On-disk embedding cache: one vector per (encoder identity, input content hash), computed once.

Layout: `<root>/<encoder identity[:16]>/encoder.json` plus Parquet shards `part-*.parquet` with columns `key`
(the input's content hash) and `vector` (list<float32>). New vectors are flushed in shards every
`flush_every` inputs, each written atomically, so a crash keeps what was finished and a re-run computes only
the rest. Identical inputs (same content hash) are computed once. Safe to delete at any time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrec.errors import DataError
from mmrec.io import hash_json, read_json, write_json, write_parquet
from mmrec.progress import get_logger

log = get_logger("mmrec.encoders.cache")

MAX_SHARDS = 32  # above this many shards, the next load merges them into one


class EmbeddingCache:
    """Vectors of one encoder, keyed by input content hash. `misses` counts inputs encoded since creation,
    `hits` every other lookup (a repeat of an input encoded in the same call included)."""

    def __init__(self, root: str | Path, encoder_identity: str, dim: int) -> None:
        self.dir = Path(root) / encoder_identity[:16]
        self.identity = encoder_identity
        self.dim = dim
        self.hits = 0
        self.misses = 0
        meta = self.dir / "encoder.json"
        if meta.is_file():
            info = read_json(meta)
            if info.get("identity") != encoder_identity or info.get("dim") != dim:
                raise DataError(f"{meta}: embedding cache belongs to another encoder; delete {self.dir} to rebuild it")
        else:
            write_json({"identity": encoder_identity, "dim": dim}, meta)
        self._vectors: dict[str, np.ndarray] = self._load()

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"))

    def _load(self) -> dict[str, np.ndarray]:
        shards = self._shards()
        vectors: dict[str, np.ndarray] = {}
        for shard in shards:
            try:
                table = pq.read_table(shard)
            except (OSError, pa.ArrowInvalid) as e:
                raise DataError(f"{shard}: unreadable embedding cache shard ({e}); delete it to recompute") from None
            keys = table.column("key").to_pylist()
            flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            mat = flat.astype(np.float32).reshape(len(keys), self.dim)
            vectors.update(zip(keys, mat))
        if len(shards) > MAX_SHARDS:
            self._write_shard(list(vectors), np.stack(list(vectors.values())), name="part-merged")
            for shard in shards:
                if shard.name != "part-merged.parquet":
                    shard.unlink()
        return vectors

    def _write_shard(self, keys: list[str], mat: np.ndarray, name: str | None = None) -> None:
        name = name or f"part-{hash_json(keys)[:16]}"
        vector = pa.FixedSizeListArray.from_arrays(pa.array(mat.astype(np.float32).ravel()), self.dim)
        write_parquet(pa.table({"key": pa.array(keys, pa.string()), "vector": vector}), self.dir / f"{name}.parquet")

    def __len__(self) -> int:
        return len(self._vectors)

    def get_or_compute(self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray],
                       flush_every: int = 4096) -> np.ndarray:
        """[len(keys), dim] vectors; `compute(indices)` embeds the inputs at those positions of `keys` (only for
        keys never seen before, each distinct key once) and must return [len(indices), dim]."""
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in self._vectors and k not in first:
                first[k] = i
        self.misses += len(first)  # inputs encoded; every other lookup (repeats included) is a hit
        self.hits += len(keys) - len(first)
        todo = list(first.values())
        for start in range(0, len(todo), flush_every):
            idx = todo[start:start + flush_every]
            mat = np.asarray(compute(idx), dtype=np.float32)
            if mat.shape != (len(idx), self.dim):
                raise ValueError(f"encoder returned shape {mat.shape}, expected {(len(idx), self.dim)}")
            chunk_keys = [keys[i] for i in idx]
            self._write_shard(chunk_keys, mat)
            self._vectors.update(zip(chunk_keys, mat))
        if todo:
            log.info(f"embedding cache {self.dir.name}: computed {len(todo)} new vectors, reused {self.hits}")
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = self._vectors[k]
        return out
