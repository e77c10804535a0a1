"""Load a vision-language model (LLaVA family or any image-text-to-text model) or a text-only causal LM.

The same code loads a hub id (`llava-hf/llava-v1.6-mistral-7b-hf`) and a local directory (the tiny models of
`mmrec.tiny`). Remote code runs only when the spec says `trust_remote_code: true`; access tokens come from
the environment (huggingface_hub reads HF_TOKEN), never from a config file.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrec.errors import ConfigError, MmrecError
from mmrec.progress import get_logger
from mmrec.vlm.spec import ModelSpec

log = get_logger(__name__)


def _not_the_optional_kernel_line(record: logging.LogRecord) -> bool:
    # bitsandbytes warns on every CPU import (peft imports it for any LoRA run) that the optional `kernels`
    # package is missing; its own CPU code is used instead, so there is nothing for the user to do.
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_the_optional_kernel_line)

# model_type -> family; anything else loads through AutoModelForImageTextToText as "auto".
FAMILIES = {"llava": "llava", "llava_next": "llava_next", "llava_onevision": "llava_onevision"}
_HUB_ID = re.compile(r"^\w[\w.-]*(/\w[\w.-]*)?$")  # `name` or `namespace/name`, as the hub accepts them


def local_model_problem(name_or_path: str) -> str | None:
    """Why `name_or_path` names no model, when that is certain without the hub: a local folder that is missing
    (any name that is not an existing path and cannot be a hub id, e.g. `/models/llava`, `./llava`, `a/b/c`)."""
    if not name_or_path:
        return None
    path = Path(name_or_path).expanduser()
    if path.exists():
        return None if path.is_dir() else f"'{name_or_path}' is a file, not a model folder"
    if _HUB_ID.match(name_or_path) and ".." not in name_or_path and "--" not in name_or_path:
        return None
    return f"local model folder '{name_or_path}' does not exist"


# Modules left unquantized by `quantization: 4bit/8bit` (transformers 5 matches them from the start of the full
# module name): a VLM quantizes its language model only; an LLM everything but the output head.
VLM_QUANT_SKIP = ["lm_head", "model.multi_modal_projector", "model.vision_tower", "multi_modal_projector",
                  "vision_tower"]
LLM_QUANT_SKIP = ["lm_head"]


@dataclass
class LoadedVLM:
    """A loaded vision-language model with its processor (images + text) and tokenizer."""

    model: Any
    processor: Any
    tokenizer: Any
    family: str
    spec: ModelSpec

    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", None) or "<image>"


@dataclass
class LoadedLM:
    """A loaded text-only causal LM and its tokenizer."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    family: str = "llm"
    processor: Any = None


def _common_kwargs(spec: ModelSpec) -> dict[str, Any]:
    if not spec.name_or_path:
        raise ConfigError("model.name_or_path is not set: give a hub id (e.g. llava-hf/llava-v1.6-mistral-7b-hf) "
                          "or a local directory (e.g. one made by `mmrec tiny`)")
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        kw["revision"] = spec.revision
    return kw


def _torch_dtype(spec: ModelSpec) -> Any:
    import torch

    return "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)


def _device_map(spec: ModelSpec) -> Any:
    """None -> this process's own device, so one model per GPU under torchrun / job arrays."""
    if spec.device_map is not None:
        return spec.device_map
    import torch

    if torch.cuda.is_available():
        return {"": f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"}
    return {"": "cpu"}


def _quantization(spec: ModelSpec, skip: list[str]) -> Any:
    if spec.quantization is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("quantization needs the bitsandbytes package: pip install bitsandbytes") from None
    compute = (torch.float32 if spec.dtype == "float32"
               else (torch.float16 if spec.dtype == "float16" else torch.bfloat16))
    if spec.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                  bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def _model_kwargs(spec: ModelSpec, skip: list[str]) -> dict[str, Any]:
    kw = _common_kwargs(spec)
    kw.update(dtype=_torch_dtype(spec), device_map=_device_map(spec))
    kw["use_safetensors"] = None if spec.allow_pickle else True  # None: safetensors first, then pickled .bin
    if spec.attn_implementation:
        kw["attn_implementation"] = spec.attn_implementation
    quant = _quantization(spec, skip)
    if quant is not None:
        kw["quantization_config"] = quant
    return kw


def _load_config(spec: ModelSpec) -> Any:
    from transformers import AutoConfig

    if os.environ.get("MMREC_NO_PROGRESS", "") not in ("", "0"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars in tests and CI logs

    kw = _common_kwargs(spec)
    problem = local_model_problem(spec.name_or_path)
    if problem:
        raise ConfigError(f"model.name_or_path: {problem}; give an existing folder (relative paths start at the "
                          "current folder) or a hub id such as llava-hf/llava-v1.6-mistral-7b-hf")
    try:
        return AutoConfig.from_pretrained(spec.name_or_path, **kw)
    except (OSError, ValueError) as e:
        where = "directory" if Path(spec.name_or_path).exists() else "hub id"
        raise MmrecError(f"cannot load model config from {where} '{spec.name_or_path}'"
                         f"{' at revision ' + spec.revision if spec.revision else ''}: {e}".splitlines()[0]) from None


def _weights_error(spec: ModelSpec, what: str, error: Exception) -> MmrecError:
    """The loader's error as one line; a checkpoint with pickled weights only says how to opt in."""
    folder = Path(spec.name_or_path)
    pickled_only = folder.is_dir() and any(folder.glob("*.bin")) and not any(folder.glob("*.safetensors"))
    if pickled_only and not spec.allow_pickle:
        return MmrecError(f"{what} '{spec.name_or_path}' has pickled .bin weights only; convert them to safetensors, "
                          "or set `allow_pickle: true` under its `model` key if you trust the checkpoint")
    return MmrecError(f"cannot load {what} '{spec.name_or_path}': {error}".splitlines()[0])


def load_vlm(spec: ModelSpec) -> LoadedVLM:
    """Load an image-text-to-text model, its processor and tokenizer; the model is put in eval mode."""
    from transformers import AutoModelForImageTextToText

    config = _load_config(spec)
    family = FAMILIES.get(config.model_type, "auto")
    skip = VLM_QUANT_SKIP
    try:
        processor = _load_processor(spec)
        model = AutoModelForImageTextToText.from_pretrained(spec.name_or_path, **_model_kwargs(spec, skip))
    except (OSError, ValueError) as e:
        raise _weights_error(spec, "vision-language model", e) from None
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise MmrecError(f"'{spec.name_or_path}' has a processor without a tokenizer; "
                         "it is not a vision-language model")
    _prepare_tokenizer(tokenizer, model)
    model.eval()
    log.debug("loaded %s (%s) from %s", type(model).__name__, family, spec.name_or_path)
    return LoadedVLM(model=model, processor=processor, tokenizer=tokenizer, family=family, spec=spec)


def _load_processor(spec: ModelSpec) -> Any:
    """The processor with its image processor on `spec.image_backend`. Some processors have parts that exist on one
    backend only (LLaVA-OneVision's video processor needs torchvision): then only the image part gets the backend."""
    from transformers import AutoImageProcessor, AutoProcessor

    kw = _common_kwargs(spec)
    try:
        return AutoProcessor.from_pretrained(spec.name_or_path, backend=spec.image_backend, **kw)
    except ImportError as e:
        if "backend" not in str(e):
            raise
    processor = AutoProcessor.from_pretrained(spec.name_or_path, **kw)
    if getattr(processor, "image_processor", None) is not None:
        processor.image_processor = AutoImageProcessor.from_pretrained(spec.name_or_path, backend=spec.image_backend,
                                                                       **kw)
    return processor


def load_llm(spec: ModelSpec) -> LoadedLM:
    """Load a text-only causal LM (the preference summarizer) and its tokenizer; eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _load_config(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.name_or_path, **_common_kwargs(spec))
        model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, **_model_kwargs(spec, LLM_QUANT_SKIP))
    except (OSError, ValueError) as e:
        raise _weights_error(spec, "language model", e) from None
    _prepare_tokenizer(tokenizer, model)
    model.eval()
    return LoadedLM(model=model, tokenizer=tokenizer, spec=spec)


def _prepare_tokenizer(tokenizer: Any, model: Any) -> None:
    """Left padding for batched generation, and a pad token (Llama-3 ships none: reuse EOS, as is customary)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
