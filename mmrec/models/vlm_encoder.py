"""(user, stage, item) rows as the VLM recommender's prompts: token ids and processed pixels, made one way for
scoring and for training, so training sees exactly the prompt scoring reads.

- `PromptEncoder`: one row's (prefix ids, encoded suffix), cut to fit `max_length` by `PromptBuilder.fit`. Encoded
  items (token ids + processed pixels, kept in the model's vision dtype, which is what the forward casts them to
  anyway) and user prefixes share one byte-bounded LRU cache (`score.cache_mb` per process); an evicted item is
  re-processed from its image when needed again (docs/vlm_recommender.md, "Host memory"). A training process
  hands one encoder to its training rows and its validation scorer, hence one cache, not two.
- `TrainingEncoder`: micro-batches of labelled training rows as model inputs: each prompt, then its answer.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mmrec.models.vlm_cache import ByteLRU, MiB
from mmrec.models.vlm_context import TOO_LONG, VLMContext
from mmrec.models.vlm_forward import TrainBatch, train_batch
from mmrec.models.vlm_prompt import EncodedItem, PromptBuilder, PromptTooLong
from mmrec.progress import progress

PY_INT_BYTES = 36  # a token id in a Python list: the int object (28 B) + its pointer (8 B)


class PromptEncoder:
    """Encodes rows' prompts with `builder` from what `context` holds about each user and item, through one
    byte-bounded cache of `cache_mb` MiB."""

    def __init__(self, builder: PromptBuilder, context: VLMContext, pixel_dtype: torch.dtype, cache_mb: float = 2048):
        self.builder = builder
        self.context = context
        self.pixel_dtype = pixel_dtype  # the model's vision dtype: cached pixels are kept in it
        self.cache = ByteLRU(int(cache_mb * MiB))
        pad = builder.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else builder.tokenizer.eos_token_id)

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


def item_nbytes(item: EncodedItem) -> int:
    """Host bytes of an encoded item: its pixels and image sizes as stored, and its token ids."""
    tensors = [t for t in (item.pixel_values, item.image_sizes) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors) + PY_INT_BYTES * len(item.ids)


class TrainingEncoder:
    """Training rows (user_id, stage, item_id, label) as micro-batches on `device`: each row's prompt exactly as
    `prompts` encodes it for scoring (the same ids and the same truncation: `PromptBuilder.fit` leaves room for the
    answer on every path), then its answer. `answer_only`: the loss reads the answer tokens alone; image
    placeholders (`image_token_id`) are never labelled."""

    def __init__(self, prompts: PromptEncoder, rows: pd.DataFrame, image_token_id: int | None, answer_only: bool,
                 device: torch.device, pixel_dtype: torch.dtype):
        self.prompts = prompts
        self.users, self.stages, self.items, self.labels = (
            rows[c].to_numpy() for c in ("user_id", "stage", "item_id", "label"))
        self.image_token_id = image_token_id
        self.answer_only = answer_only
        self.device = device
        self.pixel_dtype = pixel_dtype

    def __len__(self) -> int:
        return len(self.users)

    def batch(self, idx: Sequence[int]) -> TrainBatch:
        """The micro-batch of rows `idx` (positions into the rows)."""
        encoded = [self.prompts.encode(self.users[i], self.stages[i], self.items[i]) for i in idx]
        answers = [self.prompts.builder.answer_ids(int(self.labels[i])) for i in idx]
        return train_batch([p for p, _ in encoded], [s for _, s in encoded], answers, self.prompts.pad_id,
                           self.image_token_id, self.answer_only, self.device, self.pixel_dtype)
