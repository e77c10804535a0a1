"""FLOPs of the VLM recommender's scoring forwards, from the model's shapes and the tokens really processed.

Counted (multiply-add = 2 FLOPs), for a LLaVA-style model with one image tile per candidate:
- the language model's linear layers, for every real token that runs through them (LoRA matrices included);
- attention, 4 x heads x head_dim x queries x keys per layer (scores and weighted sum over the whole
  query x key rectangle, which is what the kernels compute when given an explicit mask);
- the vocabulary projection, at the one position per row that is read (and one per prefix forward);
- per candidate row, the image: the vision tower's patch convolution, linear layers and attention over its patches
  plus CLS, and the projector (the forwards encode each row's image; nothing is reused across users).
Not counted: norms, activations, rotary embeddings, softmax (elementwise work, no matmul), and padding (these are the
useful FLOPs). `tests/test_bench_suite.py` checks the count against torch's FlopCounterMode on a real forward.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch


def _linear_params(model: Any) -> dict[str, int]:
    """in x out of every linear layer (4-bit ones included), summed per part of the model."""
    parts = {"vision": 0, "projector": 0, "head": 0, "lm": 0}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        part = ("vision" if "vision_tower" in name else "projector" if "multi_modal_projector" in name
                else "head" if "lm_head" in name else "lm")
        parts[part] += mod.in_features * mod.out_features
    return parts


def _image_flops(cfg: Any, lin: dict[str, int]) -> float:
    """One image through the vision tower and the projector."""
    v = cfg.vision_config
    patches = (v.image_size // v.patch_size) ** 2
    tokens = patches + 1  # + CLS
    kept = patches if cfg.vision_feature_select_strategy == "default" else tokens
    conv = 2 * 3 * v.patch_size ** 2 * v.hidden_size * patches
    attn = 4 * v.num_hidden_layers * v.hidden_size * tokens * tokens
    return conv + 2 * lin["vision"] * tokens + attn + 2 * lin["projector"] * kept


def flop_count(model: Any, prefix_lens: Sequence[int], suffix_lens: Sequence[int], cached: bool) -> float:
    """FLOPs of scoring every candidate (suffix lengths `suffix_lens`, image tokens included) for every user
    (prefix lengths `prefix_lens`): with the prefix computed once per user (`cached`) or in every row (plain)."""
    cfg = model.config
    t = cfg.text_config
    lin = _linear_params(model)
    heads = t.num_attention_heads
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // heads

    def lm(queries: int, keys: int, rows: int) -> float:
        attn = 4 * t.num_hidden_layers * heads * head_dim * queries * keys
        return 2 * lin["lm"] * queries + attn + 2 * lin["head"] * rows

    image = _image_flops(cfg, lin)
    total = 0.0
    for p in prefix_lens:
        if cached:
            total += lm(p, p, 1) + sum(lm(s, p + s, 1) + image for s in suffix_lens)
        else:
            total += sum(lm(p + s, p + s, 1) + image for s in suffix_lens)
    return total
