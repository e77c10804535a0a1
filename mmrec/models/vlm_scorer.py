"""The VLM recommender's Scorer: P(Yes) for every (user, stage, candidate) row, batched across candidates and
users, with each user's prompt prefix computed once and its key/value cache reused for all its candidates.

Prefix reuse needs the preference first in the prompt (`prompt_order: preference_first`) and a model whose
positions are plain 1-D token positions: the LLaVA families (llava, llava_next). Other families (e.g. Qwen2-VL's
3-D rotary positions over image grids) and the paper's image-first order are scored by plain batched forwards,
which give the same numbers, only slower.

Prompts come from a `PromptEncoder` (`mmrec.models.vlm_encoder`: its byte-bounded cache holds the encoded items
and prefixes), the one training encodes its rows with.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from mmrec.models.vlm_context import TOO_LONG, report_missing
from mmrec.models.vlm_encoder import PromptEncoder
from mmrec.models.vlm_forward import cached_p_yes, plain_p_yes, plan_batches, prefix_cache
from mmrec.models.vlm_prompt import PromptTooLong
from mmrec.progress import get_logger, progress

log = get_logger("mmrec.models.vlm")

CACHE_FAMILIES = ("llava", "llava_next")


class VLMScorer:
    """Scores candidate rows with a (possibly LoRA-adapted) VLM, their prompts made by `encoder`; rows it cannot
    prompt get NaN and are listed in `self.missing` (user_id, stage, item_id, reason) and logged."""

    def __init__(self, model: Any, encoder: PromptEncoder, family: str, batch_size: int = 32,
                 use_prefix_cache: bool = True, desc: str = "score"):
        self.model = model
        self.encoder = encoder
        self.batch_size = batch_size
        order = encoder.builder.order
        self.prefix_cache = use_prefix_cache and order == "preference_first" and family in CACHE_FAMILIES
        if use_prefix_cache and not self.prefix_cache:
            log.info(f"prefix cache off ({family}, {order}): scoring with plain batched forwards")
        self.desc = desc
        self.missing = pd.DataFrame(columns=["user_id", "stage", "item_id", "reason"])

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        """P(Yes) per row of (user_id, stage, item_id), aligned with the rows; NaN for rows that lack a
        preference or an image, or whose prompt cannot fit `max_length` (listed in `missing`, for the rows of this
        call; the length is found while encoding, so no item is processed twice for it)."""
        rows = candidates[["user_id", "stage", "item_id"]].astype(str).reset_index(drop=True)
        scores = np.full(len(rows), np.nan)
        reasons = self.encoder.context.check(rows)
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
            max_length = self.encoder.builder.max_length
            over = report_missing(rows, reasons, f"{self.desc} (max_length {max_length}; the longest "
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
                encoded[pos] = self.encoder.encode(users[pos], stages[pos], items[pos])
            except PromptTooLong as e:
                too_long[int(order[pos])] = e.needed
        chunks = [c for c in ([pos for pos in chunk if pos in encoded] for chunk in chunks) if c]
        b = self.encoder.builder
        pad_id = self.encoder.pad_id
        if not self.prefix_cache:
            for chunk in chunks:
                p = plain_p_yes(self.model, [encoded[i][0] for i in chunk], [encoded[i][1] for i in chunk],
                                b.yes_id, b.no_id, pad_id)
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
        cache, pmask, plen = prefix_cache(self.model, prefixes, pad_id)
        for chunk in chunks:
            owner = torch.tensor([slot[int(owners[pos]), len(encoded[pos][0])] for pos in chunk])
            p = cached_p_yes(self.model, cache, pmask, plen, owner, [encoded[i][1] for i in chunk],
                             b.yes_id, b.no_id, pad_id)
            yield order[chunk], p.numpy()

