"""Weightless stand-ins of the supported checkpoints for tests: the published configs, processors and chat
templates shipped in `mmrec/vlm/families`, the tokenizers of `mmrec.vlm.family_tokenizers`, and `model` left None
(tests that need a forward pass build a model from the real config shrunk in sizes only)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrec.vlm import LoadedLM, LoadedVLM, ModelSpec, families
from mmrec.vlm.family_tokenizers import build_tokenizer
from mmrec.vlm.loading import FAMILIES, _prepare_tokenizer


def loaded_family(hub_id: str, tokenizer_dir: Path) -> Any:
    """A `LoadedVLM` / `LoadedLM` of `hub_id` without weights, prepared as `load_vlm` / `load_llm` prepare theirs."""
    tokenizer = build_tokenizer(hub_id, tokenizer_dir)
    _prepare_tokenizer(tokenizer, None)
    spec = ModelSpec(name_or_path=hub_id)
    if not families.is_vlm(hub_id):
        return LoadedLM(model=None, tokenizer=tokenizer, spec=spec)
    processor = families.load_processor(hub_id, tokenizer)
    family = FAMILIES[families.load_config(hub_id).model_type]
    return LoadedVLM(model=None, processor=processor, tokenizer=processor.tokenizer, family=family, spec=spec)


def shrunk_config(hub_id: str) -> Any:
    """The published config with only its widths and depths shrunk (everything that decides token counts and ids
    kept: vocabulary, image size, patch size, grid pinpoints, feature layer and strategy, special-token ids), so a
    random model of it runs a forward pass on the CPU in a second."""
    config = families.load_config(hub_id)
    text, vision = config.text_config, config.vision_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 64, 128, 1
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 4, 2, 16
    if hasattr(text, "layer_types"):
        text.layer_types = text.layer_types[:1]
    if getattr(text, "max_window_layers", None):
        text.max_window_layers = 1
    vision.hidden_size, vision.intermediate_size, vision.num_attention_heads = 32, 64, 2
    vision.num_hidden_layers = 2  # vision_feature_layer -2 needs two
    if hasattr(vision, "projection_dim"):
        vision.projection_dim = 32
    return config
