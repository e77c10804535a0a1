"""The supported checkpoints built from their published configs on the meta device (no memory): parameter counts
against the published sizes, what mmrec's LoRA targets and trains, what its 4-bit loading leaves unquantized, and
the layer classes FSDP wraps. Published figures: parameter counts from the checkpoints' safetensors / GGUF metadata
as copied in public code (Llama-3-8B 8,030,261,248; Mistral-7B 7,241,732,096; Qwen2.5-7B 7,615,616,512;
llava-1.5-7b-hf 7,063,427,072; Llama-2-7B 6,738,415,616), peft's own printout for r=8 on every linear layer of
Llama-3-8B ("trainable params: 20,971,520 || all params: 8,051,232,768") and of 7B Llama-2-shaped models
("trainable params: 19,988,480")."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from mmrec.errors import ConfigError
from mmrec.models.vlm_adapter import apply_lora
from mmrec.models.vlm_rec import LoraSection
from mmrec.vlm import families
from mmrec.vlm.loading import LLM_QUANT_SKIP, VLM_QUANT_SKIP

ROOT = Path(__file__).resolve().parents[1]
VLMS = [h for h in families.SUPPORTED if families.is_vlm(h)]
LLMS = [h for h in families.SUPPORTED if not families.is_vlm(h)]

LLAMA2_7B, MISTRAL_7B, QWEN2_7B = 6_738_415_616, 7_241_732_096, 7_615_616_512
PUBLISHED = {"llava-hf/llava-1.5-7b-hf": 7_063_427_072, "meta-llama/Meta-Llama-3-8B-Instruct": 8_030_261_248,
             "mistralai/Mistral-7B-Instruct-v0.2": MISTRAL_7B, "Qwen/Qwen2.5-7B-Instruct": QWEN2_7B}
# LLaVA-1.5 minus its Vicuna (Llama-2-7B with 64 more vocabulary rows in and out): CLIP ViT-L/14-336 + projector.
CLIP_AND_PROJECTOR = PUBLISHED["llava-hf/llava-1.5-7b-hf"] - (LLAMA2_7B + 2 * 64 * 4096)
LORA_R8 = {"llava-hf/llava-1.5-7b-hf": 19_988_480, "llava-hf/llava-v1.6-mistral-7b-hf": 20_971_520,
           "meta-llama/Meta-Llama-3-8B-Instruct": 20_971_520}
LINEAR_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LAYERS = {"llava-hf/llava-1.5-7b-hf": ("LlamaDecoderLayer", "CLIPEncoderLayer"),
          "llava-hf/llava-v1.6-mistral-7b-hf": ("MistralDecoderLayer", "CLIPEncoderLayer"),
          "llava-hf/llava-onevision-qwen2-7b-ov-hf": ("Qwen2DecoderLayer", "SiglipEncoderLayer"),
          "meta-llama/Meta-Llama-3-8B-Instruct": ("LlamaDecoderLayer",),
          "mistralai/Mistral-7B-Instruct-v0.2": ("MistralDecoderLayer",),
          "Qwen/Qwen2.5-7B-Instruct": ("Qwen2DecoderLayer",)}


@pytest.fixture(scope="module")
def meta():
    built: dict[str, torch.nn.Module] = {}

    def get(hub_id: str) -> torch.nn.Module:
        if hub_id not in built:
            built[hub_id] = families.meta_model(hub_id)
        return built[hub_id]

    return get


def _count(model: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("hub_id", families.SUPPORTED)
def test_meta_model_costs_no_memory_and_has_the_published_size(meta, hub_id):
    model = meta(hub_id)
    assert all(p.device.type == "meta" for p in model.parameters())
    total = _count(model)
    if hub_id in PUBLISHED:
        assert total == PUBLISHED[hub_id]
    elif hub_id == "llava-hf/llava-v1.6-mistral-7b-hf":
        # Mistral-7B + 64 new vocabulary rows (in and out) + LLaVA-1.5's CLIP tower and projector + image_newline.
        assert total == MISTRAL_7B + 2 * 64 * 4096 + CLIP_AND_PROJECTOR + 4096
    else:  # OneVision: no published total found; its language model is Qwen2-7B with 64 more rows in and out.
        lm = _count(model, "model.language_model") + _count(model, "lm_head")
        assert lm == QWEN2_7B + 2 * 64 * 3584
        assert round(total / 1e9, 2) == 8.03


@pytest.mark.parametrize("hub_id", VLMS)
def test_lora_targets_every_language_linear_layer_and_nothing_else(meta, hub_id):
    """mmrec's LoRA (apply_lora with the default `lora` section: r=8 on LM_LINEAR) on the real module tree."""
    # peft changes the model it wraps: a fresh one, not the shared fixture's
    model = apply_lora(families.meta_model(hub_id), LoraSection(), quantized=False, gradient_checkpointing=False)
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and not n.endswith(("lora_A", "lora_B"))]
    layers = families.load_config(hub_id).text_config.num_hidden_layers
    assert len(wrapped) == len(LINEAR_KINDS) * layers
    assert all(".language_model." in n and n.rsplit(".", 1)[-1] in LINEAR_KINDS for n in wrapped)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = families.load_config(hub_id).text_config
    head = text.hidden_size // text.num_attention_heads
    kv = text.num_key_value_heads * head
    per_layer = 8 * (4 * text.hidden_size + text.hidden_size + kv + text.hidden_size + kv  # q k v o: in + out
                     + 3 * (text.hidden_size + text.intermediate_size))
    assert count == per_layer * layers
    if hub_id in LORA_R8:
        assert count == LORA_R8[hub_id]


def test_lora_count_matches_peft_on_published_llama3():
    """The same code with the anchor-free target on Llama-3-8B gives peft's published count; the VLM target
    (LM_LINEAR, anchored at the language model) refuses a text-only model with a clear error instead of
    training nothing."""
    with pytest.raises(ConfigError, match="matches no layer"):
        apply_lora(families.meta_model(LLMS[0]), LoraSection(), quantized=False, gradient_checkpointing=False)
    section = LoraSection(targets=r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    model = apply_lora(families.meta_model("meta-llama/Meta-Llama-3-8B-Instruct"), section, quantized=False,
                       gradient_checkpointing=False)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == LORA_R8["meta-llama/Meta-Llama-3-8B-Instruct"]
    assert sum(p.numel() for p in model.parameters()) == 8_051_232_768


@pytest.mark.parametrize("hub_id", families.SUPPORTED)
def test_4bit_quantizes_the_language_model_linears_only(hub_id):
    """The modules transformers' bitsandbytes loading converts, given the skip list mmrec passes
    (`llm_int8_skip_modules`), decided by transformers' own matcher on the real module names."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    model = families.meta_model(hub_id)
    skip = VLM_QUANT_SKIP if families.is_vlm(hub_id) else LLM_QUANT_SKIP
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    converted = [n for n in linears if should_convert_module(n, skip)]
    layers = families.load_config(hub_id).get_text_config().num_hidden_layers
    assert len(converted) == len(LINEAR_KINDS) * layers
    assert all(n.rsplit(".", 1)[-1] in LINEAR_KINDS for n in converted)
    kept = set(linears) - set(converted)
    assert "lm_head" in kept
    if families.is_vlm(hub_id):
        assert all(".language_model." in n for n in converted)
        assert any("vision_tower" in n for n in kept) and any("multi_modal_projector" in n for n in kept)


@pytest.mark.parametrize("hub_id", families.SUPPORTED)
def test_fsdp_wraps_the_decoder_and_vision_encoder_layers(meta, hub_id):
    assert families.layer_classes(meta(hub_id)) == sorted(LAYERS[hub_id])


def test_shipped_fsdp_configs_name_llava_next_mistrals_layers(meta):
    """The accelerate FSDP configs are written for the paper's model (they say so): their wrap classes are exactly
    its layer classes; other families need the classes docs/vlm.md lists."""
    expected = families.layer_classes(meta("llava-hf/llava-v1.6-mistral-7b-hf"))
    for path in sorted((ROOT / "configs" / "accelerate").glob("fsdp*.yaml")):
        wrap = yaml.safe_load(path.read_text())["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
        assert sorted(re.split(r"\s*,\s*", wrap)) == expected, path.name
