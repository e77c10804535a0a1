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
