"""What `mmrec plan` knows about a checkpoint without its weights: shapes and parameter counts of the model built
on the meta device from its `config.json`, its tokenizer, and its image processor's settings.

A checkpoint is found offline: a local folder with a `config.json`, a supported hub id through the non-weight files
mmrec ships (`mmrec.vlm.families`), or a hub id already in the local Hugging Face cache. Nothing is downloaded and
no weight is read: `torch.device("meta")` allocates no memory, so a 7B model is "built" in about a second.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrec.errors import ConfigError
from mmrec.vlm.spec import ModelSpec

# Modules kept out of 4-bit/8-bit quantization (what `mmrec.vlm.loading.load_vlm` passes as the skip list).
QUANT_SKIP = ("lm_head", "multi_modal_projector", "vision_tower")
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights + 8-bit absmax per 64 + fp32 per 256 blocks (double quant)
INT8_BYTES = 1.0 + 4 / 4096  # int8 weights + one fp32 scale per row (about)


@dataclass
class ModelShape:
    """Parameter counts (by part) and the text model's dimensions of one checkpoint."""

    name: str
    folder: Path
    model_type: str
    is_vlm: bool
    params: int  # every parameter
    vision_params: int  # vision tower
    projector_params: int  # multimodal projector
    quantizable_params: int  # weights of the linear layers 4/8-bit loading quantizes
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    context: int  # the language model's positions (max_position_embeddings); 0 when the config has none
    config_dtype: str  # the checkpoint's torch_dtype ("bfloat16", ...)
    linears: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # name -> (in, out)
    vision: dict[str, int] = field(default_factory=dict)  # hidden, intermediate, layers, tokens (per tile)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def lora_params(self, targets: str, r: int) -> int:
        """Trainable LoRA parameters: r x (in + out) for every linear layer whose name the regex matches fully
        (peft's rule for a string `target_modules`)."""
        pattern = re.compile(targets)
        return sum(r * (i + o) for name, (i, o) in self.linears.items() if pattern.fullmatch(name))

    def lora_targets(self, targets: str) -> list[str]:
        pattern = re.compile(targets)
        return [n for n in self.linears if pattern.fullmatch(n)]


def model_folder(spec: ModelSpec, where: str) -> Path:
    """The local folder holding the checkpoint's config.json (and processor/tokenizer files); never downloads."""
    name = spec.name_or_path
    if not name:
        raise ConfigError(f"{where}: model.name_or_path is not set")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{where}: {path} has no config.json; point name_or_path at a model folder")
        return path
    shipped = _shipped_folder(name)
    if shipped is not None:
        return shipped
    cached = _hub_cache_folder(name, spec.revision)
    if cached is not None:
        return cached
    raise ConfigError(f"{where}: '{name}' is neither a local folder nor a hub id whose configuration mmrec ships "
                      f"({', '.join(supported_ids()) or 'none'}) or finds in the Hugging Face cache; `mmrec plan` "
                      "works offline: download the model's config.json, processor and tokenizer files into a folder "
                      "(no weights needed) and give that folder")


def supported_ids() -> list[str]:
    """The hub ids whose non-weight files ship with mmrec."""
    from mmrec.vlm.families import SUPPORTED

    return list(SUPPORTED)


def _shipped_folder(name: str) -> Path | None:
    from mmrec.vlm.families import family_dir

    folder = family_dir(name)
    return folder if folder is not None and (folder / "config.json").is_file() else None


def shipped_id(spec: ModelSpec) -> str | None:
    """The hub id when the checkpoint is one mmrec ships the files of (and no local folder of that name exists)."""
    name = spec.name_or_path
    return name if not Path(name).expanduser().is_dir() and _shipped_folder(name) is not None else None


def _hub_cache_folder(name: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(name, "config.json", revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def load_config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder}/config.json cannot be read: {e}".splitlines()[0]) from None


def meta_model(config: Any, is_vlm: bool) -> Any:
    """The model class of `config` built on the meta device: real module tree and shapes, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def _text_dims(config: Any) -> dict[str, int]:
    text = getattr(config, "text_config", None) or config
    heads = int(text.num_attention_heads)
    hidden = int(text.hidden_size)
    return {"layers": int(text.num_hidden_layers), "hidden": hidden, "heads": heads,
            "kv_heads": int(getattr(text, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(text, "head_dim", None) or hidden // heads),
            "intermediate": int(text.intermediate_size), "vocab": int(text.vocab_size),
            "context": int(getattr(text, "max_position_embeddings", 0) or 0)}


def _vision_dims(config: Any) -> dict[str, int]:
    vision = getattr(config, "vision_config", None)
    if vision is None:
        return {}
    size, patch = int(getattr(vision, "image_size", 0) or 0), int(getattr(vision, "patch_size", 1) or 1)
    return {"hidden": int(vision.hidden_size), "intermediate": int(vision.intermediate_size),
            "layers": int(vision.num_hidden_layers), "tokens": (size // patch) ** 2 + 1}


def shape_of(spec: ModelSpec, is_vlm: bool, where: str) -> ModelShape:
    """The `ModelShape` of a checkpoint, from its config.json alone (computed once per folder and process)."""
    import dataclasses

    folder = model_folder(spec, where)
    try:
        shape = _shape(folder, is_vlm)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return dataclasses.replace(shape, name=spec.name_or_path)


@functools.lru_cache(maxsize=16)
def _shape(folder: Path, is_vlm: bool) -> ModelShape:
    import torch

    config = load_config(folder)
    is_vlm = is_vlm and getattr(config, "vision_config", None) is not None
    try:
        model = meta_model(config, is_vlm)
    except (ValueError, KeyError) as e:
        kind = "image-text-to-text" if is_vlm else "causal language"
        message = f"{folder} is not a {kind} model this transformers knows: {e}"
        raise ConfigError(message.splitlines()[0]) from None
    params = vision = projector = quantizable = 0
    for name, p in model.named_parameters():
        params += p.numel()
        vision += p.numel() if "vision_tower" in name else 0
        projector += p.numel() if "multi_modal_projector" in name else 0
    linears = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linears[name] = (module.in_features, module.out_features)
            if not any(s in name for s in QUANT_SKIP):
                quantizable += module.weight.numel()
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return ModelShape(name=str(folder), folder=folder, model_type=config.model_type, is_vlm=is_vlm,
                      params=params, vision_params=vision, projector_params=projector, quantizable_params=quantizable,
                      config_dtype=str(dtype).replace("torch.", ""), linears=linears, vision=_vision_dims(config),
                      **_text_dims(config))


def weight_dtype_bytes(spec: ModelSpec, shape: ModelShape) -> int:
    """Bytes per unquantized weight as loaded (`dtype: auto` keeps the checkpoint's own dtype)."""
    dtype = shape.config_dtype if spec.dtype == "auto" else spec.dtype
    return 4 if dtype == "float32" else 2


def weight_bytes(spec: ModelSpec, shape: ModelShape, upcast_unquantized: bool = False) -> int:
    """Bytes of the weights as loaded. `upcast_unquantized`: QLoRA training, where peft's
    `prepare_model_for_kbit_training` casts every non-4-bit parameter (embeddings, lm_head, vision tower, norms)
    to float32."""
    per = weight_dtype_bytes(spec, shape)
    if spec.quantization is None:
        return shape.params * per
    rest = shape.params - shape.quantizable_params
    quant = NF4_BYTES if spec.quantization == "4bit" else INT8_BYTES
    return int(shape.quantizable_params * quant + rest * (4 if upcast_unquantized else per))


class Tokens:
    """Counts prompt tokens with the checkpoint's own tokenizer and image tokens with its processor's settings.

    A local folder gives its real processor and tokenizer. A supported hub id gives the real processor class with
    the published settings (`mmrec.vlm.families`) around the tokenizer `mmrec.vlm.family_tokenizers` builds offline:
    the real vocabulary for Mistral, LLaVA-NeXT-Mistral, Qwen2.5 and OneVision, a same-kind stand-in for Llama-3
    and LLaVA-1.5 (`stand_in` is then set: text lengths are close, not exact)."""

    def __init__(self, folder: Path, is_vlm: bool, where: str, hub_id: str | None = None):
        self.folder, self.is_vlm, self.where = folder, is_vlm, where
        self.hub_id = hub_id
        self.stand_in = False
        self._processor: Any = None
        self._tokenizer: Any = None
        self._image_cache: dict[tuple[int, int], int] = {}

    @property
    def processor(self) -> Any:
        if self._processor is None:
            from transformers import AutoProcessor

            try:
                if self.hub_id is not None:
                    from mmrec.vlm.families import load_processor

                    self._processor = load_processor(self.hub_id, tokenizer=self.tokenizer)
                else:
                    self._processor = AutoProcessor.from_pretrained(str(self.folder), local_files_only=True)
            except (OSError, ValueError, ImportError) as e:
                raise ConfigError(f"{self.where}: the processor files in {self.folder} cannot be loaded offline: "
                                  f"{e}".splitlines()[0]) from None
        return self._processor

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.hub_id is not None:
                import tempfile

                from mmrec.vlm.family_tokenizers import build_tokenizer, is_real

                with tempfile.TemporaryDirectory() as tmp:
                    self._tokenizer = build_tokenizer(self.hub_id, Path(tmp))
                self.stand_in = not is_real(self.hub_id)
            elif self.is_vlm:
                self._tokenizer = getattr(self.processor, "tokenizer", None)
            else:
                from transformers import AutoTokenizer

                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
                except (OSError, ValueError) as e:
                    raise ConfigError(f"{self.where}: the tokenizer in {self.folder} cannot be loaded offline: "
                                      f"{e}".splitlines()[0]) from None
            if self._tokenizer is None:
                raise ConfigError(f"{self.where}: {self.folder} has a processor without a tokenizer")
        return self._tokenizer

    def count(self, text: str, special: bool = False) -> int:
        """Tokens of `text` (`special`: with the BOS the tokenizer adds in front)."""
        return len(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def text_of(self, n: int, sentence: str) -> str:
        """About `n` tokens of `sentence` repeated (a generated summary of `max_new_tokens`)."""
        ids = self.tokenizer(sentence * (n // 8 + 2), add_special_tokens=False)["input_ids"][:n]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def image(self, width: int, height: int) -> int:
        """Image placeholder tokens the processor expands one `width` x `height` image into."""
        key = (int(width), int(height))
        if key not in self._image_cache:
            from mmrec.vlm.families import image_token_count

            self._image_cache[key] = image_token_count(self.processor, *key)
        return self._image_cache[key]

    def _side(self) -> int:
        """The square crop the vision tower sees (336 for CLIP-L/14-336, 384 for SigLIP)."""
        ip = getattr(self.processor, "image_processor", None)
        crop = getattr(ip, "crop_size", None) or getattr(ip, "size", None) or {}
        get = crop.get if isinstance(crop, dict) else (lambda k: getattr(crop, k, None))
        return int(get("height") or get("shortest_edge") or 336)

    def tiles(self, width: int, height: int) -> int:
        """Crops the image processor feeds the vision tower for one image (LLaVA-NeXT/OneVision: base + grid)."""
        ip = getattr(self.processor, "image_processor", None)
        pinpoints = getattr(ip, "image_grid_pinpoints", None)
        if not pinpoints:
            return 1
        from transformers.image_processing_utils import select_best_resolution

        side = self._side()
        best_h, best_w = select_best_resolution((height, width), pinpoints)
        return 1 + (best_h // side) * (best_w // side)

    def pixel_bytes(self, width: int, height: int) -> int:
        """float32 bytes of one image's processed pixels (what the scorer keeps per encoded item today)."""
        return self.tiles(width, height) * 3 * self._side() ** 2 * 4
