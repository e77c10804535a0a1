"""Item summaries (MLLM-MSR stage 1a): a VLM turns every item image (optionally with its text) into text.

Work is planned before any model is loaded: each item becomes a cache key (model, template, image sha256,
prompt text, generation settings); items with the same key -- identical images under an image-only template --
are generated once. Keys are sorted by input shape and prompt length and cut into fixed batches, so the batches
are the same in every run and in every shard (shard i of n does batches i, i+n, ...): a resumed or sharded run
gives exactly the table one uninterrupted process gives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mmrec.data.canonical import ITEMS_FILE
from mmrec.data.images import ImageError, load_image, safe_join
from mmrec.errors import DataError, MmrecError
from mmrec.io import sha256_file, sha256_text, write_parquet
from mmrec.progress import get_logger, progress
from mmrec.summarize.cache import GenerationCache, cache_key, model_fingerprint
from mmrec.summarize.generation import GenerationSettings, TextGenerator
from mmrec.summarize.shard import Shard
from mmrec.summarize.templates import FUSION_TEXT_ONLY, item_template, placeholders
from mmrec.vlm import ModelSpec, load_vlm

log = get_logger(__name__)


@dataclass
class ItemSummaryConfig:
    """The `item_summaries` section. `template`: image | cover | product | fusion, or your own template text
    (placeholders {title}, {text}, {item_id}). Greedy decoding unless `do_sample`."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec(name_or_path="llava-hf/llava-v1.6-mistral-7b-hf"))
    template: str = "image"
    max_new_tokens: int = 200
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_text_chars: int = 1000          # fusion: item text cut to this many characters (length balancing)
    image_policy: Literal["skip", "fail"] = "skip"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.max_text_chars < 0:
            raise ValueError("batch_size and max_new_tokens must be >= 1, max_text_chars >= 0")
        item_template(self.template)

    def settings(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.do_sample, self.temperature, self.top_p, self.seed)


@dataclass
class Unit:
    """One generation: a cache key and its inputs, shared by every item with the same key."""

    key: str
    user_text: str
    image: str | None  # path relative to the dataset directory
    size: tuple[int, int]
    item_ids: list[str] = field(default_factory=list)


@dataclass
class ItemRunStats:
    items: int = 0
    units: int = 0
    generated: int = 0
    cached: int = 0
    failed: int = 0
    no_image: int = 0
    model_calls: int = 0
    complete: bool = False

    def line(self) -> str:
        return (f"{self.items} items, {self.units} distinct inputs: generated {self.generated}, cached {self.cached}, "
                f"failed images {self.failed}, items without image {self.no_image}; model calls {self.model_calls}")


def _str(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _int(value: Any) -> int:
    """A nullable integer cell (None, NaN or pd.NA when unknown) as an int, 0 when unknown."""
    return 0 if value is None or pd.isna(value) else int(value)


def plan(cfg: ItemSummaryConfig, dataset_dir: Path) -> tuple[pd.DataFrame, dict[str, Unit], dict[str, Any]]:
    """Every item's prompt and cache key (no model needed). Returns items, units by key, and item -> key|None."""
    items = _read_items(dataset_dir)
    template = item_template(cfg.template)
    text_only = (FUSION_TEXT_ONLY if cfg.template == "fusion"
                 else (template if placeholders(template) & {"title", "text"} else None))
    fp, settings = model_fingerprint(cfg.model), cfg.settings().key()
    units: dict[str, Unit] = {}
    key_of: dict[str, Any] = {}
    for row in items.itertuples(index=False):
        fields = {"title": _str(row.title), "text": _str(row.text)[: cfg.max_text_chars], "item_id": row.item_id}
        rel = _str(row.image)
        if rel:
            path = _image_path(dataset_dir, rel, row.item_id)
            sha = _str(row.image_sha256) or (sha256_file(path) if path.is_file() else f"missing:{rel}")
            tmpl, size, image = template, (_int(row.image_width), _int(row.image_height)), rel
        elif text_only is not None:
            image, sha, tmpl, size = None, None, text_only, (0, 0)
        else:
            key_of[row.item_id] = None  # image-only template and no image: reported as `no_image`
            continue
        user_text = tmpl.format(**fields)
        key = cache_key("item_summary", fp, tmpl, {"image": sha, "prompt": user_text}, settings)
        unit = units.setdefault(key, Unit(key, user_text, image, size))
        unit.item_ids.append(row.item_id)
        key_of[row.item_id] = key
    return items, units, key_of


def _read_items(dataset_dir: Path) -> pd.DataFrame:
    """Only the item table (a cached re-run must not pay for reading every interaction)."""
    path = Path(dataset_dir) / ITEMS_FILE
    if not path.is_file():
        raise DataError(f"{dataset_dir}: not a canonical dataset ({ITEMS_FILE} missing); create it with `mmrec prep`")
    return pd.read_parquet(path).sort_values("item_id", kind="stable").reset_index(drop=True)


def _image_path(dataset_dir: Path, rel: str, item_id: str) -> Path:
    """The image's path; a path that leaves the dataset is refused now, symlinks when the image is opened."""
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts:
        raise DataError(f"{Path(dataset_dir) / ITEMS_FILE}: item {item_id!r}: image path {rel!r} must stay inside "
                        "the dataset directory")
    return Path(dataset_dir) / rel


def batches(units: dict[str, Unit], batch_size: int) -> list[list[Unit]]:
    """Fixed, length-aware batches: images grouped by size (same number of image tokens), then prompt length."""
    order = sorted(units.values(), key=lambda u: (u.image is None, u.size, len(u.user_text), u.key))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def summarize_items(cfg: ItemSummaryConfig, dataset_dir: str | Path, out_path: str | Path, cache_dir: str | Path,
                    shard: Shard | None = None, generator: TextGenerator | None = None) -> ItemRunStats:
    """Summarize this shard's items into the cache; write `out_path` once every shard's work is there."""
    shard = shard or Shard()
    items, units, key_of = plan(cfg, Path(dataset_dir))
    cache = GenerationCache(cache_dir, shard.writer)
    gen = generator or TextGenerator(lambda: load_vlm(cfg.model), cfg.settings())
    stats = ItemRunStats(items=len(items), units=len(units), no_image=sum(k is None for k in key_of.values()))
    mine = [b for i, b in enumerate(batches(units, cfg.batch_size)) if shard.owns(i)]
    bar = progress(total=sum(len(b) for b in mine), desc=f"summarize-items {shard}", unit="item")
    for batch in mine:
        todo = [u for u in batch if cache.get(u.key) is None]
        stats.cached += len(batch) - len(todo)
        if todo:
            stats.generated += _run_batch(gen, todo, Path(dataset_dir), cfg.image_policy, cache, stats)
        bar.update(len(batch))
    bar.close()
    stats.model_calls = gen.calls
    cache.reload()  # see what other shards have finished
    stats.complete = all(cache.records.get(k) is not None for k in units)
    if stats.complete:
        write_item_summaries(cfg, items, key_of, cache, out_path)
    return stats


def _run_batch(gen: TextGenerator, todo: list[Unit], root: Path, policy: str, cache: GenerationCache,
               stats: ItemRunStats) -> int:
    """Generate one batch and append it to the cache as one durable record; failed images are recorded too."""
    records, ok, images = [], [], []
    for u in todo:
        if u.image is None:
            ok.append(u)
            images.append(None)
            continue
        try:  # safe_join also refuses a symlink that points out of the dataset
            img = load_image(safe_join(root, u.image))
        except ImageError as e:
            if policy == "fail":
                raise ImageError(e.path, e.kind, f"{e.detail} (set item_summaries.image_policy=skip to record bad "
                                 "images as failed and go on)") from None
            log.warning("item image failed: %s", e)
            records.append({"key": u.key, "error": f"{e.kind}: {e}"})
            stats.failed += 1
            continue
        ok.append(u)
        images.append(img)
    if ok:
        texts = gen.generate([u.user_text for u in ok], images)
        records += [{"key": u.key, "text": t} for u, t in zip(ok, texts)]
    cache.put_batch(records)
    return len(ok)


def write_item_summaries(cfg: ItemSummaryConfig, items: pd.DataFrame, key_of: dict[str, Any],
                         cache: GenerationCache, out_path: str | Path) -> Path:
    """`summaries/items.parquet` (docs/artifacts.md) from the merged cache; every item gets a row and a status."""
    missing = [k for k in key_of.values() if k is not None and cache.records.get(k) is None]
    if missing:
        raise MmrecError(f"{len(set(missing))} item summaries are not generated yet; run the remaining shards "
                         "(or the command without --shard) first")
    template_sha = sha256_text(item_template(cfg.template))
    rows = []
    for item_id in items["item_id"]:
        key = key_of[item_id]
        rec = cache.records.get(key) if key else None
        status = "no_image" if key is None else ("failed" if rec.get("error") else "ok")
        rows.append({"item_id": item_id, "summary": rec.get("text", "") if rec else "", "status": status,
                     "cache_key": key, "model": cfg.model.name_or_path, "template_sha256": template_sha,
                     "error": rec.get("error") if rec else None})
    return write_parquet(pd.DataFrame(rows), out_path)


def merge_item_summaries(cfg: ItemSummaryConfig, dataset_dir: str | Path, out_path: str | Path,
                         cache_dir: str | Path) -> Path:
    """Write the output from the cache every shard wrote into (what `--merge` runs)."""
    items, _, key_of = plan(cfg, Path(dataset_dir))
    return write_item_summaries(cfg, items, key_of, GenerationCache(cache_dir, "merge"), out_path)
