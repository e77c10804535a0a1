"""The protocol manifest written beside every metrics file, and the checks that make numbers comparable.

A number is only comparable to another if both were computed on the same dataset, split and candidate file,
under the same protocol and tie policy. The manifest records all of it (plus seeds, the model's config and
library versions); `check_candidates` refuses to evaluate scores produced on a different candidate file.
"""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mmrec.config import to_dict
from mmrec.data.canonical import PREP_FILE
from mmrec.data.splits import CANDIDATES_FILE, SPLIT_FILE
from mmrec.errors import DataError
from mmrec.io import hash_json, read_json, sha256_file

LIBRARIES = ("mmrec", "torch", "transformers", "peft", "numpy", "pandas", "scipy", "pyarrow")
SCORES_META_KEY = b"mmrec"  # Parquet key-value metadata of a scores file: how and on what it was produced


def library_versions() -> dict[str, str | None]:
    """Installed versions (None when absent), read from package metadata so nothing heavy is imported."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def checkpoint_fingerprint(ckpt_dir: Path) -> str | None:
    """Hash of the names, sizes and modification times of a checkpoint's files: changes when it is retrained."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    entries = [(str(p.relative_to(ckpt_dir)), p.stat().st_size, p.stat().st_mtime_ns)
               for p in sorted(ckpt_dir.rglob("*")) if p.is_file()]
    return hash_json(entries)


def candidates_file(split_dir: Path) -> Path:
    return Path(split_dir) / CANDIDATES_FILE


def check_candidates(split: Any, split_dir: Path) -> str:
    """The candidate file's sha256, after checking it still matches the hash the split recorded."""
    path = candidates_file(split_dir)
    actual = sha256_file(path)
    recorded = getattr(split, "candidates_sha256", None)
    if recorded and recorded != actual:
        raise DataError(f"{path}: sha256 {actual[:12]}… differs from {recorded[:12]}… recorded in split.json; the "
                        "candidate file was changed after splitting — re-run `mmrec split` (and score again)")
    return actual


def scores_metadata(path: Path) -> dict[str, Any]:
    """The `mmrec` metadata a scores file was written with (empty for a file written by another tool)."""
    import json

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as e:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({e}); re-run `mmrec score`") from None
    raw = meta.get(SCORES_META_KEY)
    return json.loads(raw) if raw else {}


def check_scores_match(scores_path: Path, candidates_sha256: str) -> dict[str, Any]:
    """Refuse scores produced on another candidate file (they would be silently misaligned or incomparable)."""
    meta = scores_metadata(scores_path)
    produced_on = meta.get("candidates_sha256")
    if produced_on and produced_on != candidates_sha256:
        raise DataError(f"{scores_path}: scored on candidates {produced_on[:12]}… but the split's candidate file is "
                        f"{candidates_sha256[:12]}…; re-run `mmrec score` for this model")
    return meta


def dataset_filters(dataset_dir: Path | None) -> dict[str, Any]:
    """What shaped the dataset: the importer and its arguments (k-core, rating filters...) from prep.json."""
    if dataset_dir is None:
        return {}
    prep = Path(dataset_dir) / PREP_FILE
    return read_json(prep) if prep.is_file() else {}


def build_manifest(*, cfg: Any, model: str, run: str, split: Any, split_dir: Path, candidates_sha256: str,
                   protocol: dict[str, Any], score_meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest of one run's metrics: everything the numbers depend on."""
    ev = cfg.section("eval")
    split_json = Path(split_dir) / SPLIT_FILE
    info = dict(getattr(split, "info", {}) or {})
    dataset = getattr(split, "dataset", None)
    dataset_dir = getattr(dataset, "root", None)
    model_cfg = cfg.model(model)
    return {
        "run": run,
        "dataset": {
            "path": str(dataset_dir) if dataset_dir is not None else None,
            "fingerprint": (info.get("dataset") or {}).get("fingerprint"),
            "filters": dataset_filters(dataset_dir),
        },
        "split": {
            "name": Path(split_dir).name,
            "split_json_sha256": sha256_file(split_json) if split_json.is_file() else None,
            "info": info,
        },
        "protocol": {**protocol, "candidates_sha256": candidates_sha256},
        "tie_policy": ev.tie_policy,
        "ks": sorted(ev.ks),
        "metrics": list(ev.metrics),
        "seeds": {"experiment": cfg.seed, "split": info.get("seed")},
        "model": {"name": model, "kind": model_cfg.kind, "config": to_dict(model_cfg),
                  "checkpoint": score_meta.get("checkpoint_fingerprint")},
        "versions": library_versions(),
    }
