"""The VLM recommender's Scorer: P(Yes) for every (user, stage, candidate) row, batched across candidates and
users, with each user's prompt prefix computed once and its key/value cache reused for all its candidates.

Prefix reuse needs the preference first in the prompt (`prompt_order: preference_first`) and a model whose
positions are plain 1-D token positions: the LLaVA families (llava, llava_next). Other families (e.g. Qwen2-VL's
3-D rotary positions over image grids) and the paper's image-first order are scored by plain batched forwards,
which give the same numbers, only slower.

Host memory: encoded items (token ids + processed pixels, kept in the model's vision dtype, which is what the
forward casts them to anyway) and prefixes share one byte-bounded LRU cache (`score.cache_mb` per process); an
evicted item is re-processed from its image when needed again (docs/vlm_recommender.md, "Host memory").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmrec.data.splits import load_split
from mmrec.errors import ConfigError, MmrecError
from mmrec.models.vlm_cache import ByteLRU, MiB
from mmrec.models.vlm_context import TOO_LONG, VLMContext, report_missing
from mmrec.models.vlm_forward import cached_p_yes, plain_p_yes, plan_batches, prefix_cache, vision_dtype
from mmrec.models.vlm_prompt import EncodedItem, PromptBuilder, PromptTooLong
from mmrec.progress import get_logger, progress

log = get_logger("mmrec.models.vlm")

CACHE_FAMILIES = ("llava", "llava_next")
PY_INT_BYTES = 36  # a token id in a Python list: the int object (28 B) + its pointer (8 B)
RUN_FILE = "vlm_rec.json"
ADAPTER_DIR = "adapter"


def make_builder(loaded: Any, use_image: bool, order: str, max_length: int | None) -> PromptBuilder:
    """A prompt builder with the Yes/No ids read from the tokenizer after a real rendered prompt; `max_length`
    None is the model's context length."""
    from mmrec.vlm.tokens import answer_token_ids

    probe = PromptBuilder(loaded, 0, 0, use_image=use_image, order=order, max_length=max_length)
    yes_id, no_id = answer_token_ids(loaded.tokenizer, "".join(probe.texts("a preference", "a title")))
    return PromptBuilder(loaded, yes_id, no_id, use_image=use_image, order=order, max_length=max_length)


class VLMScorer:
    """Scores candidate rows with a (possibly LoRA-adapted) VLM; rows it cannot prompt get NaN and are listed in
    `self.missing` (user_id, stage, item_id, reason) and logged."""

    def __init__(self, model: Any, builder: PromptBuilder, context: VLMContext, family: str, batch_size: int = 32,
                 use_prefix_cache: bool = True, desc: str = "score", cache_mb: float = 2048):
        self.model = model
        self.builder = builder
        self.context = context
        self.batch_size = batch_size
        self.prefix_cache = use_prefix_cache and builder.order == "preference_first" and family in CACHE_FAMILIES
        if use_prefix_cache and not self.prefix_cache:
            log.info(f"prefix cache off ({family}, {builder.order}): scoring with plain batched forwards")
        self.desc = desc
        self.missing = pd.DataFrame(columns=["user_id", "stage", "item_id", "reason"])
        self.cache = ByteLRU(int(cache_mb * MiB))  # encoded items and prefixes (see the module docstring)
        self.pixel_dtype = vision_dtype(model)
        pad = builder.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else builder.tokenizer.eos_token_id)

    # -- encoding -----------------------------------------------------------------------------------------
    def item(self, item_id: str) -> EncodedItem:
        """The user-independent suffix of a preference-first prompt, encoded once per item while it stays in the
        cache."""
        key = ("item", item_id)
        hit = self.cache.get(key)
        if hit is None:
            ctx, b = self.context, self.builder
            image = ctx.image(item_id) if b.use_image else None
            hit = self._compact(b.encode_suffix(b.item_suffix_text(ctx.title(item_id)), image))
            self.cache.put(key, hit, item_nbytes(hit))
        return hit

    def _compact(self, item: EncodedItem) -> EncodedItem:
        """The item with its pixels in the model's vision dtype (half the float32 bytes in bf16/fp16; the forward
        casts them to it anyway, so scores are unchanged)."""
        if item.pixel_values is not None and item.pixel_values.is_floating_point():
            item.pixel_values = item.pixel_values.to(self.pixel_dtype)
        return item

    def encode(self, user: str, stage: str, item_id: str) -> tuple[list[int], EncodedItem]:
        """(prefix ids, suffix) of one row's prompt, the prefix cut to fit `max_length` with the answer if it must
        (`PromptBuilder.fit`, the rule of every path); raises `PromptTooLong` for a row that cannot fit."""
        ctx, b = self.context, self.builder
        pref = ctx.preference(user, stage)
        if b.order == "preference_first":
            suffix = self.item(item_id)
            key = ("prefix", user, stage)
            prefix = self.cache.get(key)
            if prefix is None:
                prefix = b.encode_prefix(b.prefix_text(pref))
                self.cache.put(key, prefix, PY_INT_BYTES * len(prefix))
        else:
            prefix_text, suffix_text = b.texts(pref, ctx.title(item_id))
            suffix = b.encode_suffix(suffix_text, ctx.image(item_id) if b.use_image else None)
            prefix = b.encode_prefix(prefix_text)
        return b.fit(prefix, suffix.ids), suffix

    def check(self, rows: pd.DataFrame, desc: str = "rows") -> np.ndarray:
        """Per row of (user_id, stage, item_id): '' when it can be prompted within `max_length`, else why not
        (`VLMContext.check`'s reasons, or TOO_LONG). Encodes every row (each item's image is processed once):
        training checks its rows up front, so that every process knows its batches before the first step."""
        reasons = self.context.check(rows)
        cols = (rows[c].astype(str).to_numpy() for c in ("user_id", "stage", "item_id"))
        bar = progress(zip(*cols), total=len(rows), desc=f"{desc}: prompt lengths", unit="row")
        for i, (user, stage, item) in enumerate(bar):
            if reasons[i] == "":
                try:
                    self.encode(user, stage, item)
                except PromptTooLong:
                    reasons[i] = TOO_LONG
        return reasons

    # -- scoring ------------------------------------------------------------------------------------------
    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        """P(Yes) per row of (user_id, stage, item_id), aligned with the rows; NaN for rows that lack a
        preference or an image, or whose prompt cannot fit `max_length` (listed in `missing`, for the rows of this
        call; the length is found while encoding, so no item is processed twice for it)."""
        rows = candidates[["user_id", "stage", "item_id"]].astype(str).reset_index(drop=True)
        scores = np.full(len(rows), np.nan)
        reasons = self.context.check(rows)
        self.missing = report_missing(rows, reasons, self.desc)
        ok = np.flatnonzero(reasons == "")
        if not len(ok):
            return scores
        keys = rows["user_id"].to_numpy()[ok] + "\0" + rows["stage"].to_numpy()[ok]
        order = ok[np.argsort(keys, kind="stable")]  # a user's candidates side by side
        owners = pd.factorize(rows["user_id"].to_numpy()[order] + "\0" + rows["stage"].to_numpy()[order])[0]
        was_training = self.model.training
        self.model.eval()
        bar = progress(total=len(order), desc=self.desc, unit="cand")
        too_long: dict[int, int] = {}  # row -> the tokens its prompt needs at least
        try:
            cols = tuple(rows[c].to_numpy()[order] for c in ("user_id", "stage", "item_id"))
            for chunks in plan_batches(owners.tolist(), self.batch_size):
                for idx, p in self._score_group(cols, order, owners, chunks, too_long):
                    scores[idx] = p
                bar.update(sum(len(c) for c in chunks))
        finally:
            bar.close()
            self.model.train(was_training)
        if too_long:
            reasons = np.full(len(rows), "", dtype=object)
            reasons[list(too_long)] = TOO_LONG
            need = max(too_long.values())
            over = report_missing(rows, reasons, f"{self.desc} (max_length {self.builder.max_length}; the longest "
                                                 f"needs {need} tokens: raise train.max_length to score them)")
            self.missing = pd.concat([self.missing, over], ignore_index=True)
        return scores

    def _score_group(self, cols: tuple[np.ndarray, ...], order: np.ndarray, owners: np.ndarray,
                     chunks: list[list[int]], too_long: dict[int, int]):
        """Scores of one group of whole users (positions into the owner-sorted rows), chunk by chunk; rows whose
        prompt cannot fit go to `too_long` (row -> tokens needed) and keep their NaN."""
        users, stages, items = cols
        encoded = {}
        for pos in (pos for chunk in chunks for pos in chunk):
            try:
                encoded[pos] = self.encode(users[pos], stages[pos], items[pos])
            except PromptTooLong as e:
                too_long[int(order[pos])] = e.needed
        chunks = [c for c in ([pos for pos in chunk if pos in encoded] for chunk in chunks) if c]
        b = self.builder
        if not self.prefix_cache:
            for chunk in chunks:
                p = plain_p_yes(self.model, [encoded[i][0] for i in chunk], [encoded[i][1] for i in chunk],
                                b.yes_id, b.no_id, self.pad_id)
                yield order[chunk], p.numpy()
            return
        # One prefix row per (owner, prefix length): a row whose prefix was cut for its own suffix keeps its cut
        # (most users have a single, uncut prefix).
        slot: dict[tuple[int, int], int] = {}
        prefixes = []
        for pos in (pos for chunk in chunks for pos in chunk):
            key = (int(owners[pos]), len(encoded[pos][0]))
            if key not in slot:
                slot[key] = len(prefixes)
                prefixes.append(encoded[pos][0])
        if not prefixes:
            return
        cache, pmask, plen = prefix_cache(self.model, prefixes, self.pad_id)
        for chunk in chunks:
            owner = torch.tensor([slot[int(owners[pos]), len(encoded[pos][0])] for pos in chunk])
            p = cached_p_yes(self.model, cache, pmask, plen, owner, [encoded[i][1] for i in chunk],
                             b.yes_id, b.no_id, self.pad_id)
            yield order[chunk], p.numpy()

    # -- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, cfg: Any, name: str, ckpt_dir: Path | None) -> "VLMScorer":
        """Base model (+ the run's best LoRA adapter when the model is finetuned) and the experiment's split.

        A model with `finetune: false` (zero-shot, Rec-GPT4V) needs no checkpoint: `ckpt_dir` may be None.
        """
        from mmrec.io import read_json

        mcfg = resolve(cfg, name)
        adapter = None
        if mcfg.finetune:
            if ckpt_dir is None or not (Path(ckpt_dir) / RUN_FILE).is_file():
                raise MmrecError(f"model '{name}' is finetuned but {ckpt_dir} holds no finished run; "
                                 f"run `mmrec finetune {cfg.source} --model {name}` first")
            info = read_json(Path(ckpt_dir) / RUN_FILE)
            if not info.get("finished"):
                raise MmrecError(f"{ckpt_dir}: the training run of '{name}' has not finished; re-run `mmrec finetune`")
            adapter = Path(ckpt_dir) / ADAPTER_DIR
        return build_scorer(cfg, name, adapter=adapter, desc=f"score {name}")


def resolve(cfg: Any, name: str) -> Any:
    """The validated `VLMRecConfig` of model `name`, checked to be of kind `vlm` (by its kind, so that this module
    does not import the config module that imports it to load scorers)."""
    mcfg = cfg.model(name)
    if mcfg.kind != "vlm":
        raise ConfigError(f"{cfg.source}: model '{name}' is of kind {mcfg.kind!r}, not 'vlm'")
    return mcfg


def item_nbytes(item: EncodedItem) -> int:
    """Host bytes of an encoded item: its pixels and image sizes as stored, and its token ids."""
    tensors = [t for t in (item.pixel_values, item.image_sizes) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors) + PY_INT_BYTES * len(item.ids)


def build_context(cfg: Any, mcfg: Any, split: Any) -> VLMContext:

    paths = cfg.paths
    return VLMContext.build(split, mcfg.preference_source, mcfg.use_image, paths.user_summaries,
                            paths.item_summaries, mcfg.history_items)


def build_scorer(cfg: Any, name: str, adapter: Path | None = None, desc: str = "score") -> VLMScorer:
    """A scorer for model `name` of experiment `cfg`: the base model, plus `adapter` (a peft directory) if given.
    This is also the Python API for zero-shot scoring without any checkpoint."""
    from mmrec.vlm import load_vlm

    mcfg = resolve(cfg, name)
    split = load_split(cfg.split_dir)
    loaded = load_vlm(mcfg.model)
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise MmrecError(f"{adapter}: no LoRA adapter (adapter_config.json missing); re-run `mmrec finetune`")
        loaded.model = PeftModel.from_pretrained(loaded.model, str(adapter)).eval()
    if mcfg.use_image and loaded.processor is None:
        raise ConfigError(f"model '{name}' shows images but {mcfg.model.name_or_path} has no image processor")
    builder = make_builder(loaded, mcfg.use_image, mcfg.prompt_order, mcfg.train.max_length)
    context = build_context(cfg, mcfg, split)
    return VLMScorer(loaded.model, builder, context, loaded.family, mcfg.score.batch_size, mcfg.score.prefix_cache,
                     desc=desc, cache_mb=mcfg.score.cache_mb)
