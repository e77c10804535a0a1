"""Batched forward passes of the VLM recommender: P(Yes) at the last prompt position, with or without a shared
prefix key/value cache, and the padded training batch.

Sequences are right-padded and the logits are read (and projected onto the vocabulary) only at each row's last
real token, so a row's score never depends on the other rows of its batch (causal attention never looks right)
and positions need no correction. With the prefix cache, the prefixes of several users are run once
(right-padded, `use_cache`), the cache rows are selected for each candidate (a view when the batch has one user),
and only the suffixes are run: the attention mask then has a hole where a short prefix was padded, and explicit
position ids continue each row's own prefix. Where the time goes, and why the cache's gain is what it is:
`bench/README.md` ("Prefix cache").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from mmrec.errors import MmrecError
from mmrec.models.vlm_prompt import EncodedItem


def model_device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    return dev if isinstance(dev, torch.device) else next(model.parameters()).device


def vision_dtype(model: Any) -> torch.dtype:
    for name, p in model.named_parameters():
        if "vision" in name and p.is_floating_point():
            return p.dtype
    return torch.float32


def stack_pixels(items: Sequence[EncodedItem], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """pixel_values (and image_sizes) of a batch; LLaVA-NeXT tile counts differ per image, so pad them."""
    pix = [it.pixel_values for it in items if it.pixel_values is not None]
    if not pix:
        return {}
    if pix[0].dim() == 5:  # [1, tiles, C, H, W]
        tiles = max(p.shape[1] for p in pix)
        pix = [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, tiles - p.shape[1])) for p in pix]
    out = {"pixel_values": torch.cat(pix).to(device=device, dtype=dtype)}
    sizes = [it.image_sizes for it in items if it.image_sizes is not None]
    if sizes:
        out["image_sizes"] = torch.cat(sizes).to(device)
    return out


def _pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _p_yes(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """softmax over the (Yes, No) logits of `logits` [batch, 1, vocab] (each row's last real position) -> P(Yes),
    float64."""
    if logits.dim() != 3 or logits.shape[1] != 1:
        raise MmrecError(f"the model returned logits of shape {tuple(logits.shape)} for `logits_to_keep` per row "
                         "([batch, 1] positions): its forward does not support it; score with another family")
    pair = logits[:, 0, [yes_id, no_id]].double()
    return torch.softmax(pair, dim=-1)[:, 0]


def _last(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`logits_to_keep` for each row's last real token ([batch, 1] positions): only those positions are projected
    onto the vocabulary. All of them would cost batch x length x vocab logits (with a 32 k vocabulary, 101
    candidates of 650 suffix tokens: 4 GB in bf16) for the one position per row that is read."""
    return (mask.sum(1) - 1)[:, None].to(device)


@torch.no_grad()
def plain_p_yes(model: Any, prefixes: Sequence[list[int]], items: Sequence[EncodedItem], yes_id: int, no_id: int,
                pad_id: int) -> torch.Tensor:
    """One forward over whole prompts (prefix + suffix per row)."""
    dev = model_device(model)
    ids, mask = _pad([p + it.ids for p, it in zip(prefixes, items)], pad_id)
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                **stack_pixels(items, dev, vision_dtype(model)), logits_to_keep=_last(mask, dev))
    return _p_yes(out.logits, yes_id, no_id).cpu()


@torch.no_grad()
def prefix_cache(model: Any, prefixes: Sequence[list[int]], pad_id: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Run the prefixes once: (key/value cache, their attention mask, their lengths)."""
    dev = model_device(model)
    ids, mask = _pad(prefixes, pad_id)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=True,
                logits_to_keep=1)
    return out.cache, mask, mask.sum(1)


def select_cache(cache: Any, rows: torch.Tensor) -> Any:
    """A new cache holding `cache`'s batch rows `rows` (repeats allowed); the original stays untouched.

    The suffix forward concatenates these keys/values with the suffix's own (`torch.cat` in the cache's update),
    which writes one full [rows, heads, prefix + suffix, dim] copy per layer anyway; so nothing is copied here when
    all rows share one prefix (a stride-0 `expand` view) and one gather otherwise. Going through
    `DynamicCache.update` would add a copy of its own (it concatenates onto an empty tensor).
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    one = int(rows[0]) if bool((rows == rows[0]).all()) else None  # callers pass CPU rows: no device sync
    on: dict[torch.device, torch.Tensor] = {}  # the rows on each layer's device (`device_map: auto` spreads them)
    new = DynamicCache()
    for layer in cache.layers:
        if one is not None:
            keys = layer.keys[one:one + 1].expand(len(rows), -1, -1, -1)
            values = layer.values[one:one + 1].expand(len(rows), -1, -1, -1)
        else:
            here = on.setdefault(layer.keys.device, rows.to(layer.keys.device))
            keys, values = layer.keys[here], layer.values[here]
        part = DynamicLayer()
        part.lazy_initialization(keys, values)
        part.keys, part.values = keys, values
        new.layers.append(part)
    return new


@torch.no_grad()
def cached_p_yes(model: Any, cache: Any, prefix_mask: torch.Tensor, prefix_len: torch.Tensor, owner: torch.Tensor,
                 items: Sequence[EncodedItem], yes_id: int, no_id: int, pad_id: int) -> torch.Tensor:
    """The suffixes of `items` after the cached prefix rows `owner` (one per item)."""
    dev = model_device(model)
    ids, mask = _pad([it.ids for it in items], pad_id)
    attn = torch.cat([prefix_mask[owner], mask], dim=1)
    pos = prefix_len[owner][:, None] + torch.arange(ids.shape[1])[None, :]
    out = model(input_ids=ids.to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev),
                cache=select_cache(cache, owner), **stack_pixels(items, dev, vision_dtype(model)),
                logits_to_keep=_last(mask, dev))
    return _p_yes(out.logits, yes_id, no_id).cpu()


def plan_batches(owners: Sequence[int], batch_size: int) -> Iterator[list[list[int]]]:
    """Group consecutive rows (sorted by owner) into prefix groups of whole owners with at most `batch_size`
    rows; yields each group as a list of row chunks (one owner with more rows than a batch gets several)."""
    group: list[int] = []
    i, n = 0, len(owners)
    while i < n:
        j = i
        while j < n and owners[j] == owners[i]:
            j += 1
        if group and len(group) + (j - i) > batch_size:
            yield [group]
            group = []
        group.extend(range(i, j))
        if len(group) > batch_size:
            yield [group[k:k + batch_size] for k in range(0, len(group), batch_size)]
            group = []
        i = j
    if group:
        yield [group]


@dataclass
class TrainBatch:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor  # -100 where no loss is taken
    tokens: int  # real (non-pad) tokens, for tokens/s
    answer_pos: torch.Tensor  # per row, the position whose logits predict the answer token (the prompt's last)
    answer_len: int  # answer tokens per row (the same for every row: Yes/No + end of sequence)


def train_batch(prefixes: Sequence[list[int]], items: Sequence[EncodedItem], answers: Sequence[list[int]],
                pad_id: int, image_token_id: int | None, answer_only: bool, device: torch.device,
                pixel_dtype: torch.dtype) -> TrainBatch:
    """Right-padded prompt + answer rows. `answer_only`: loss on the answer tokens; otherwise on every real token
    but the image placeholders (what the reference code trains on, image ids aside)."""
    if len({len(a) for a in answers}) > 1:
        raise ValueError("every answer of a training batch must have the same number of tokens")
    seqs = [p + it.ids + a for p, it, a in zip(prefixes, items, answers)]
    ids, mask = _pad(seqs, pad_id)
    labels = torch.full_like(ids, -100)
    for i, (p, it, a) in enumerate(zip(prefixes, items, answers)):
        start = 0 if not answer_only else len(p) + len(it.ids)
        labels[i, start: len(seqs[i])] = ids[i, start: len(seqs[i])]
    if image_token_id is not None:
        labels[ids == image_token_id] = -100
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
              **stack_pixels(items, device, pixel_dtype)}
    answer_pos = torch.tensor([len(p) + len(it.ids) - 1 for p, it in zip(prefixes, items)])
    return TrainBatch(inputs=inputs, labels=labels.to(device), tokens=int(mask.sum()), answer_pos=answer_pos,
                      answer_len=len(answers[0]) if answers else 0)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled positions, and how many there were."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    n = int((shift_labels != -100).sum())
    loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                             shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
    return loss / max(n, 1), n


def _answer_positions(batch: TrainBatch, tokens: int) -> torch.Tensor:
    """[batch, tokens] positions whose logits predict the first `tokens` answer tokens of each row."""
    pos = batch.answer_pos[:, None] + torch.arange(tokens)[None, :]
    return pos.to(batch.inputs["input_ids"].device)


def answer_logits(model: Any, batch: TrainBatch) -> torch.Tensor:
    """[batch, vocab] logits at each row's last prompt position only: the vocabulary projection of every other
    position is wasted on the yes/no loss (on a tiny model it was ~40% of a training step)."""
    return model(**batch.inputs, logits_to_keep=_answer_positions(batch, 1)).logits[:, 0]


def answer_loss(model: Any, batch: TrainBatch) -> torch.Tensor:
    """The `answer` loss: mean next-token cross-entropy over the answer tokens (Yes/No + end of sequence), the same
    number as `lm_loss` over whole rows labelled on the answer only, but only the positions that predict an answer
    token are projected onto the vocabulary (all of them: 0.5-1 GB of logits per 4k-token row at 32k vocab)."""
    keep = _answer_positions(batch, batch.answer_len)
    logits = model(**batch.inputs, logits_to_keep=keep).logits.float()
    target = batch.labels.gather(1, keep + 1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100)


def yes_no_loss(logits: torch.Tensor, batch: TrainBatch, yes_id: int, no_id: int) -> torch.Tensor:
    """Cross-entropy over the (Yes, No) pair at the last prompt position: exactly the quantity scoring reads.
    `logits`: [batch, vocab] at the answer positions (`answer_logits`) or [batch, length, vocab] of whole rows."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    if logits.dim() == 3:
        logits = logits[rows, batch.answer_pos.to(logits.device)]
    at = logits[:, [yes_id, no_id]].float()
    answer = batch.labels[rows, (batch.answer_pos + 1).to(logits.device)]
    target = (answer != yes_id).long()  # 0 = Yes, 1 = No
    return torch.nn.functional.cross_entropy(at, target)
