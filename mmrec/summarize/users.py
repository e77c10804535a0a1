"""User preferences (MLLM-MSR stage 1b): an LLM reads a user's history block by block, carrying a preference.

Recurrent mode: the history before the target is cut into blocks of `block_size` items; step 1 summarizes the
first block, step t the t-th block plus the preference of step t-1. Every step's text is kept. Direct mode (the
paper's ablation) is one step over the whole history.

All examples at step t go through the model together, in batches sorted by prompt length; examples with
shorter histories drop out of later steps. Each step is cached under (model, template, hash of the previous
step's text, the block's rendered items, settings), so stages of one user (train/valid/test share their history
prefix) and block-size ablations reuse each other's work, and an interrupted run resumes with identical output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mmrec.errors import DataError, MmrecError
from mmrec.io import sha256_text, write_parquet
from mmrec.progress import get_logger, progress
from mmrec.summarize.cache import GenerationCache, cache_key, model_fingerprint
from mmrec.summarize.generation import GenerationSettings, TextGenerator
from mmrec.summarize.shard import Shard
from mmrec.summarize.templates import placeholders, user_templates
from mmrec.vlm import ModelSpec, load_llm

log = get_logger(__name__)
STAGES = ("train", "valid", "test")


@dataclass
class UserSummaryConfig:
    """The `user_summaries` section. `template` names a built-in set ("paper"); `custom_templates` replaces
    parts of it (first, next, direct, item, item_no_summary). `use_image_summaries: false` is the paper's
    "no image summary" ablation (titles only)."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec(name_or_path="meta-llama/Meta-Llama-3-8B-Instruct"))
    mode: Literal["recurrent", "direct"] = "recurrent"
    block_size: int = 3
    max_history: int | None = None
    template: str = "paper"
    custom_templates: dict[str, str] = field(default_factory=dict)
    max_new_tokens: int = 256
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    use_image_summaries: bool = True
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("block_size, batch_size and max_new_tokens must be >= 1")
        if self.max_history is not None and self.max_history < 1:
            raise ValueError("max_history must be >= 1 or null")
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ValueError(f"stages must be a non-empty list of {', '.join(STAGES)}, got {self.stages}")
        user_templates(self.template, self.custom_templates)

    def settings(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.do_sample, self.temperature, self.top_p, self.seed)


class LeakageError(MmrecError):
    """A prompt would show the model something at or after the example's target."""


def guard_prompt_items(user_id: str, stage: str, history: list[str], target: str, prompt_items: list[str]) -> None:
    """Refuse any prompt whose items are not exactly (a suffix of) the history strictly before the target.

    The history of a split example holds only interactions before its target (checked when the split is
    made); here every prompt item must come from it, in order, so the target and later items never enter.
    The target appears only when the user consumed it before (repeat consumption), as an earlier history item.
    """
    n = len(prompt_items)
    if n > len(history) or list(history[len(history) - n:]) != list(prompt_items):
        raise LeakageError(f"user {user_id!r} ({stage}): prompt items {prompt_items[:5]}... are not the end of the "
                           f"history before the target {target!r}; refusing to build a leaking prompt")


@dataclass
class Example:
    user_id: str
    stage: str
    items: list[str]
    blocks: list[list[str]]
    steps: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


@dataclass
class UserRunStats:
    examples: int = 0
    steps: int = 0
    generated: int = 0
    cached: int = 0
    model_calls: int = 0
    complete: bool = False

    def line(self) -> str:
        return (f"{self.examples} examples, {self.steps} distinct steps: generated {self.generated}, cached "
                f"{self.cached}; model calls {self.model_calls}")


class Prompter:
    """Renders the item lines and step prompts, and derives each step's cache key."""

    def __init__(self, cfg: UserSummaryConfig, titles: dict[str, str], texts: dict[str, str],
                 summaries: dict[str, str]):
        self.cfg = cfg
        self.parts = user_templates(cfg.template, cfg.custom_templates)
        self.titles, self.texts, self.summaries = titles, texts, summaries
        self.fp = model_fingerprint(cfg.model)
        self.settings = cfg.settings().key()

    def items_text(self, block: list[str]) -> str:
        lines = []
        for i, item in enumerate(block, 1):
            summary = self.summaries.get(item, "") if self.cfg.use_image_summaries else ""
            part = self.parts["item"] if summary else self.parts["item_no_summary"]
            lines.append(part.format(index=i, title=self.titles.get(item, ""), summary=summary, item_id=item,
                                     text=self.texts.get(item, "")))
        return "\n".join(lines)

    def step(self, user_id: str, block: list[str], previous: str | None) -> tuple[str, str]:
        """(user text, cache key) of one step. Without a {user_id} in the template, users with the same block
        and previous preference share the step."""
        name = "direct" if self.cfg.mode == "direct" else ("first" if previous is None else "next")
        template = self.parts[name]
        items = self.items_text(block)
        text = template.format(items=items, previous=previous or "", user_id=user_id)
        inputs = {"items": items, "previous": None if previous is None else sha256_text(previous),
                  "user": user_id if "user_id" in placeholders(template) else None}
        return text, cache_key("user_preference", self.fp, template, inputs, self.settings)


def _examples(cfg: UserSummaryConfig, split_examples: pd.DataFrame, shard: Shard) -> list[Example]:
    chosen = split_examples[split_examples["stage"].isin(cfg.stages)]
    out = []
    for row in chosen.sort_values(["user_id", "stage"], kind="stable").itertuples(index=False):
        if not shard.owns(int(sha256_text(str(row.user_id))[:8], 16)):
            continue  # a user's stages stay in one shard: they share their history's steps
        history = [str(x) for x in row.history]
        items = history[-cfg.max_history:] if cfg.max_history else history
        k = len(items) if cfg.mode == "direct" else cfg.block_size
        blocks = [items[i:i + k] for i in range(0, len(items), k)] if items else []
        guard_prompt_items(row.user_id, row.stage, history, str(row.target), [x for b in blocks for x in b])
        out.append(Example(str(row.user_id), str(row.stage), items, blocks))
    return out


def run_recurrence(examples: list[Example], prompter: Prompter, cache: GenerationCache,
                   gen: TextGenerator | None, batch_size: int, stats: UserRunStats) -> bool:
    """Fill every example's steps, generating missing ones when `gen` is given; False if something is missing."""
    n_steps = max((len(e.blocks) for e in examples), default=0)
    bar = progress(total=sum(len(e.blocks) for e in examples), desc="summarize-users", unit="step") if gen else None
    for t in range(n_steps):
        active = [e for e in examples if len(e.blocks) > t]
        units: dict[str, str] = {}
        for e in active:
            text, key = prompter.step(e.user_id, e.blocks[t], e.steps[-1] if e.steps else None)
            units.setdefault(key, text)
            e.keys.append(key)
        stats.steps += len(units)
        order = sorted(units, key=lambda k: (len(units[k]), k))
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            todo = [k for k in batch if cache.get(k) is None]
            stats.cached += len(batch) - len(todo)
            if todo and gen is None:
                return False
            if todo:
                texts = gen.generate([units[k] for k in todo])
                cache.put_batch([{"key": k, "text": t} for k, t in zip(todo, texts)])
                stats.generated += len(todo)
        for e in active:
            e.steps.append(cache.text(e.keys[-1]))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return True


def _item_maps(cfg: UserSummaryConfig, dataset_items: pd.DataFrame, summaries_path: Path) -> tuple[dict, dict, dict]:
    fill = lambda s: s.fillna("").astype(str)  # noqa: E731
    titles = dict(zip(dataset_items["item_id"], fill(dataset_items["title"])))
    texts = dict(zip(dataset_items["item_id"], fill(dataset_items["text"])))
    summaries: dict[str, str] = {}
    if cfg.use_image_summaries:
        if not summaries_path.is_file():
            raise DataError(f"{summaries_path} not found: run `mmrec summarize-items` first, or set "
                            "user_summaries.use_image_summaries=false to summarize from titles only")
        table = pd.read_parquet(summaries_path, columns=["item_id", "summary", "status"])
        ok = table[table["status"] == "ok"]
        summaries = dict(zip(ok["item_id"], ok["summary"]))
    return titles, texts, summaries


def summarize_users(cfg: UserSummaryConfig, split: Any, item_summaries: str | Path, out_path: str | Path,
                    cache_dir: str | Path, shard: Shard | None = None,
                    generator: TextGenerator | None = None) -> UserRunStats:
    """Run this shard's users through the recurrence; write `out_path` once every shard's steps are cached."""
    shard = shard or Shard()
    prompter = Prompter(cfg, *_item_maps(cfg, split.dataset.items, Path(item_summaries)))
    cache = GenerationCache(cache_dir, shard.writer)
    gen = generator or TextGenerator(lambda: load_llm(cfg.model), cfg.settings())
    examples = _examples(cfg, split.examples, shard)
    stats = UserRunStats(examples=len(examples))
    run_recurrence(examples, prompter, cache, gen, cfg.batch_size, stats)
    stats.model_calls = gen.calls
    cache.reload()
    everyone = examples if shard.count == 1 else _examples(cfg, split.examples, Shard())
    stats.complete = shard.count == 1 or run_recurrence(everyone, prompter, cache, None, cfg.batch_size, UserRunStats())
    if stats.complete:
        write_user_summaries(cfg, everyone, out_path)
    return stats


def merge_user_summaries(cfg: UserSummaryConfig, split: Any, item_summaries: str | Path, out_path: str | Path,
                         cache_dir: str | Path) -> Path:
    """Write the output from what every shard cached (what `--merge` runs); no model is loaded."""
    prompter = Prompter(cfg, *_item_maps(cfg, split.dataset.items, Path(item_summaries)))
    examples = _examples(cfg, split.examples, Shard())
    if not run_recurrence(examples, prompter, GenerationCache(cache_dir, "merge"), None, cfg.batch_size,
                          UserRunStats()):
        raise MmrecError("some preference steps are not generated yet; run the remaining shards first")
    return write_user_summaries(cfg, examples, out_path)


def write_user_summaries(cfg: UserSummaryConfig, examples: list[Example], out_path: str | Path) -> Path:
    """`summaries/users.parquet`: one row per (user_id, stage) with the final preference and every step."""
    rows = [{"user_id": e.user_id, "stage": e.stage, "preference": e.steps[-1] if e.steps else "",
             "steps": list(e.steps), "n_items": len(e.items), "mode": cfg.mode, "block_size": cfg.block_size,
             "status": "ok" if e.steps else "empty_history"} for e in examples]
    frame = pd.DataFrame(rows, columns=["user_id", "stage", "preference", "steps", "n_items", "mode", "block_size",
                                        "status"])
    return write_parquet(frame, out_path)
