"""The supported checkpoint families and their published non-weight files, shipped inside mmrec.

`mmrec/vlm/families/<org>--<name>/` holds each supported hub id's `config.json`, processor configs and
`tokenizer_config.json` (with the chat template) as published; `SOURCES.md` there says where every file came from
and which values could not be found verbatim. With them, budgets and prompt lengths can be computed offline and
without weights: the config builds a model on the meta device, the image processor and processor classes are the
real transformers classes with the real settings, so image token counts are the ones a real run gets.
Tokenizers are not shipped (their vocabularies are large); `mmrec.vlm.family_tokenizers` builds them.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from mmrec.errors import ConfigError

ROOT = Path(__file__).with_name("families")

# hub id -> kind; "vlm" families load through AutoModelForImageTextToText, "llm" through AutoModelForCausalLM.
KINDS: dict[str, str] = {
    "llava-hf/llava-1.5-7b-hf": "vlm",
    "llava-hf/llava-v1.6-mistral-7b-hf": "vlm",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "vlm",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llm",
    "mistralai/Mistral-7B-Instruct-v0.2": "llm",
    "Qwen/Qwen2.5-7B-Instruct": "llm",
}
SUPPORTED: tuple[str, ...] = tuple(KINDS)


def family_dir(hub_id: str) -> Path | None:
    """The directory of `hub_id`'s shipped files, or None when mmrec ships none for it (any local path, any other
    hub id). Hub ids are matched exactly, as the hub does."""
    if hub_id not in KINDS:
        return None
    return ROOT / hub_id.replace("/", "--")


def require_dir(hub_id: str) -> Path:
    found = family_dir(hub_id)
    if found is None:
        raise ConfigError(f"mmrec ships no configuration for '{hub_id}'; supported offline: {', '.join(SUPPORTED)}")
    return found


def read_json(hub_id: str, name: str) -> dict[str, Any] | None:
    """One shipped JSON file as a dict, or None when the family has no such file."""
    path = require_dir(hub_id) / name
    return json.loads(path.read_text()) if path.exists() else None


def is_vlm(hub_id: str) -> bool:
    require_dir(hub_id)
    return KINDS[hub_id] == "vlm"


def load_config(hub_id: str) -> Any:
    """The model's `PretrainedConfig`, read from the shipped `config.json` by transformers itself."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(require_dir(hub_id)))


def chat_template(hub_id: str) -> str | None:
    """The published chat template: the processor's (`chat_template.json`) for VLMs, else the tokenizer's."""
    for name in ("chat_template.json", "tokenizer_config.json"):
        data = read_json(hub_id, name) or {}
        if data.get("chat_template"):
            return str(data["chat_template"])
    return None


def load_image_processor(hub_id: str, backend: str = "pil") -> Any:
    """The real image processor class with the published settings (`preprocessor_config.json`)."""
    from transformers import AutoImageProcessor

    if not is_vlm(hub_id):
        raise ConfigError(f"'{hub_id}' is a text-only model: it has no image processor")
    return AutoImageProcessor.from_pretrained(str(require_dir(hub_id)), backend=backend)


def load_processor(hub_id: str, tokenizer: Any = None, backend: str = "pil") -> Any:
    """The real processor class (`LlavaNextProcessor`, ...) with the published image processor, processor settings
    and chat template, around `tokenizer` (default: a placeholder that knows only the special tokens, enough to
    count image tokens; pass a tokenizer from `mmrec.vlm.family_tokenizers` to encode text)."""
    import transformers

    settings = dict(read_json(hub_id, "processor_config.json") or {})
    if not is_vlm(hub_id) or not settings:
        raise ConfigError(f"'{hub_id}' ships no processor_config.json: it is not a vision-language model")
    cls = getattr(transformers, settings.pop("processor_class"))
    parts: dict[str, Any] = {"image_processor": load_image_processor(hub_id, backend)}
    if "video_token" in settings:  # LLaVA-OneVision: its processor also holds a video processor
        parts["video_processor"] = getattr(transformers, cls.__name__.replace("Processor", "VideoProcessor"))()
    tokenizer = tokenizer if tokenizer is not None else placeholder_tokenizer(hub_id)
    return cls(tokenizer=tokenizer, chat_template=chat_template(hub_id), **parts, **settings)


@cache
def placeholder_tokenizer(hub_id: str) -> Any:
    """A word-level tokenizer holding only the family's special tokens at their published ids. Processors need a
    tokenizer to be built; counting image tokens never reads the vocabulary, so this one suffices for it."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    config = read_json(hub_id, "tokenizer_config.json") or {}
    specials = {v["content"]: int(k) for k, v in (config.get("added_tokens_decoder") or {}).items()}
    unk = config.get("unk_token") or "<unk>"
    vocab = {unk: specials.get(unk, max(specials.values(), default=-1) + 1), **specials}
    tok = Tokenizer(WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk)
    fast.add_special_tokens({"additional_special_tokens": sorted(specials, key=specials.get)})
    return fast


@cache
def _counting_processor(hub_id: str) -> Any:
    return load_processor(hub_id)


def image_token_count(hub_id_or_processor: Any, width: int, height: int) -> int:
    """How many placeholder tokens one `width` x `height` image takes in the prompt, computed by the real processor
    class with the family's published settings (LLaVA-1.5: always 576; LLaVA-NeXT: anyres grid + newlines;
    OneVision: anyres_max_9). Accepts a supported hub id or an already-built processor."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    given = hub_id_or_processor
    processor = _counting_processor(given) if isinstance(given, str) else given
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if counter is None:
        raise ConfigError(f"{type(processor).__name__} cannot count image tokens (no _get_num_multimodal_tokens)")
    return int(counter(image_sizes=[(height, width)])["num_image_tokens"][0])


def meta_model(hub_id: str) -> Any:
    """The model transformers builds from the published config, on the meta device: every module, parameter name
    and shape of the real checkpoint, and no memory (for parameter counts, LoRA targets, quantization and FSDP)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if is_vlm(hub_id) else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(load_config(hub_id))


def layer_classes(model: Any) -> list[str]:
    """The repeated block classes of `model` that FSDP wraps one by one (accelerate's
    `fsdp_transformer_layer_cls_to_wrap`): the classes of its `_no_split_modules` that occur in it, embeddings aside."""
    present = {type(m).__name__ for m in model.modules()}
    wanted = set(getattr(model, "_no_split_modules", None) or [])
    return sorted(c for c in wanted & present if "Embedding" not in c)
