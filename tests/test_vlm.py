"""Model loading, prompt templates per family, and Yes/No answer token ids."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmrec.config import from_dict
from mmrec.errors import ConfigError, MmrecError
from mmrec.tiny import build_tiny_llava, build_tiny_llm
from mmrec.vlm import ModelSpec, answer_token_id, answer_token_ids, load_llm, load_vlm, render_prompt
from mmrec.vlm.templates import BUILTIN, infer_format


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {
        "llava": load_vlm(ModelSpec(name_or_path=str(build_tiny_llava(root / "llava", "llava")))),
        "llava_next": load_vlm(ModelSpec(name_or_path=str(build_tiny_llava(root / "next", "llava_next")))),
        "llm": load_llm(ModelSpec(name_or_path=str(build_tiny_llm(root / "llm")))),
        "root": root,
    }


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_llava_families_render_the_mistral_template_exactly(models, family):
    loaded = models[family]
    assert render_prompt(loaded, "Describe it.", image=True) == "[INST] <image>\nDescribe it. [/INST]"
    assert render_prompt(loaded, "Describe it.", image=False) == "[INST] Describe it. [/INST]"


def test_llm_renders_the_llama3_template_exactly(models):
    got = render_prompt(models["llm"], "Summarize.", image=False)
    assert got == ("<|start_header_id|>user<|end_header_id|>\n\nSummarize.<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = models["llm"].tokenizer(got)["input_ids"]
    assert ids.count(models["llm"].tokenizer.bos_token_id) == 1  # BOS from the tokenizer, never twice


def test_builtin_templates_render_exactly():
    expected = {
        "mistral": "[INST] <image>\nQ? [/INST]",
        "vicuna": "USER: <image>\nQ? ASSISTANT:",
        "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n<image>\nQ?<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        "chatml": "<|im_start|>user\n<image>\nQ?<|im_end|>\n<|im_start|>assistant\n",
        "plain": "<image>\nQ?",
    }
    for name, text in expected.items():
        assert BUILTIN[name]("Q?", True, "<image>") == text
    assert "[\\INST]" not in "".join(BUILTIN[n]("Q?", True, "<image>") for n in BUILTIN)


def test_builtin_template_is_used_when_the_checkpoint_has_none(models):
    loaded = models["llava"]
    forced = SimpleNamespace(**{**vars(loaded), "spec": ModelSpec(name_or_path="x", prompt_format="vicuna")})
    forced.image_token = "<image>"
    assert render_prompt(forced, "Q?", image=True) == "USER: <image>\nQ? ASSISTANT:"
    no_template = SimpleNamespace(model=loaded.model, tokenizer=SimpleNamespace(chat_template=None, bos_token="<s>"),
                                  processor=None, spec=ModelSpec(name_or_path="x"), image_token="<image>")
    # inferred from the config: a Llama LM with a 32k-sized vocabulary is LLaVA-1.5's Vicuna
    assert render_prompt(no_template, "Q?", image=True) == "USER: <image>\nQ? ASSISTANT:"
    no_template.spec = ModelSpec(name_or_path="x", prompt_format="own")
    with pytest.raises(ConfigError, match="ships no chat template"):
        render_prompt(no_template, "Q?", image=True)


def test_infer_format_from_config():
    def cfg(model_type, vocab=32000):
        return SimpleNamespace(text_config=SimpleNamespace(model_type=model_type, vocab_size=vocab))

    assert infer_format(cfg("mistral")) == "mistral"
    assert infer_format(cfg("llama")) == "vicuna"
    assert infer_format(cfg("llama", 128256)) == "llama3"
    assert infer_format(cfg("qwen2")) == "chatml"


@pytest.mark.parametrize("family,expected", [("llava", ["▁Yes", "▁No"]), ("llava_next", ["▁Yes", "▁No"]),
                                             ("llm", ["Yes", "No"])])
def test_answer_token_ids_follow_the_prompt(models, family, expected):
    loaded = models[family]
    prompt = render_prompt(loaded, "Would the user like it? Answer yes or no.", image=family != "llm")
    yes, no = answer_token_ids(loaded.tokenizer, prompt)
    assert loaded.tokenizer.convert_ids_to_tokens([yes, no]) == expected
    full = loaded.tokenizer.encode(prompt + ("" if prompt[-1].isspace() else " ") + "Yes", add_special_tokens=False)
    assert full[-1] == yes
    lower = answer_token_ids(loaded.tokenizer, prompt, yes="yes", no="no")
    assert lower != (yes, no)


def test_answer_token_id_refuses_multi_token_answers(models):
    tok = models["llava"].tokenizer
    with pytest.raises(MmrecError, match="not one token"):
        answer_token_id(tok, "[INST] Q? [/INST]", "Absolutely")


def test_model_spec_validates_through_config():
    spec = from_dict(ModelSpec, {"name_or_path": "llava-hf/llava-v1.6-mistral-7b-hf", "dtype": "bfloat16",
                                 "quantization": "4bit"}, where="exp.yaml", prefix="item_summaries.model")
    assert spec.trust_remote_code is False and spec.quantization == "4bit"
    with pytest.raises(ConfigError, match="item_summaries.model.dtype"):
        from_dict(ModelSpec, {"dtype": "fp8"}, where="exp.yaml", prefix="item_summaries.model")
    with pytest.raises(ConfigError, match="did you mean 'quantization'"):
        from_dict(ModelSpec, {"quantisation": "4bit"}, where="exp.yaml", prefix="m")


def test_load_errors_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="name_or_path is not set"):
        load_vlm(ModelSpec())
    with pytest.raises(MmrecError, match="cannot load model config from directory") as e:
        load_vlm(ModelSpec(name_or_path=str(tmp_path)))
    assert "\n" not in str(e.value)
    for missing in (str(tmp_path / "gone"), "./gone", "~/gone/llava"):  # cannot be hub ids: never asked of the hub
        with pytest.raises(ConfigError, match=r"model.name_or_path: local model folder '.*gone.*' does not exist"):
            load_vlm(ModelSpec(name_or_path=missing))


def test_bitsandbytes_optional_cpu_kernel_line_is_silenced():
    """bitsandbytes logs a warning about the optional `kernels` package on every import on CPU (peft imports it
    for every LoRA finetune, quantized or not); it says nothing the user must act on."""
    import subprocess
    import sys

    pytest.importorskip("bitsandbytes")
    done = subprocess.run([sys.executable, "-c", "import mmrec.vlm, peft, bitsandbytes"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kernels-community" not in done.stderr


def test_pickled_weights_load_only_when_allowed(tmp_path):
    """A folder with only pickled `.bin` weights is refused unless `allow_pickle: true`; safetensors load as before."""
    from safetensors.torch import load_file

    from mmrec.tiny import build_tiny_llm

    root = build_tiny_llm(tmp_path / "llm", hidden=32, layers=1, heads=2, kv_heads=1)
    weights = root / "model.safetensors"
    torch.save(load_file(weights), root / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(MmrecError, match="pickled .bin weights only.*allow_pickle: true") as e:
        load_llm(ModelSpec(name_or_path=str(root)))
    assert "\n" not in str(e.value)
    loaded = load_llm(ModelSpec(name_or_path=str(root), allow_pickle=True))
    assert loaded.model.config.hidden_size == 32


def test_dtype_option_is_applied(models):
    loaded = load_llm(ModelSpec(name_or_path=str(models["root"] / "llm"), dtype="bfloat16"))
    assert loaded.model.dtype == torch.bfloat16


def test_4bit_loading_on_cpu_generates(models):
    pytest.importorskip("bitsandbytes")
    loaded = load_llm(ModelSpec(name_or_path=str(models["root"] / "llm"), quantization="4bit", dtype="float32"))
    assert any("4bit" in type(m).__name__ for m in loaded.model.modules())
    batch = loaded.tokenizer([render_prompt(loaded, "Q?", image=False)], return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3


def test_4bit_vlm_keeps_vision_tower_and_projector_unquantized(models):
    pytest.importorskip("bitsandbytes")
    loaded = load_vlm(ModelSpec(name_or_path=str(models["root"] / "llava"), quantization="4bit", dtype="float32"))
    quantized = [n for n, m in loaded.model.named_modules() if "4bit" in type(m).__name__]
    assert quantized and all(".language_model." in n for n in quantized)


def _tiny_onevision(out):
    """A tiny LLaVA-OneVision (SigLIP + Qwen2) without a chat template: built-in ChatML must be inferred."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from mmrec.tiny import build_tokenizer

    tok = build_tokenizer("mistral")
    tok.chat_template = None
    pins = [[32, 32], [32, 64], [64, 32], [64, 64]]
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.pad_token_id, image_grid_pinpoints=pins, vision_feature_select_strategy="full",
        vision_feature_layer=-1))
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=pins),
        tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=16,
        vision_feature_select_strategy="full")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_llava_onevision_loads_with_pil_images_and_chatml(tmp_path):
    from PIL import Image

    loaded = load_vlm(ModelSpec(name_or_path=str(_tiny_onevision(tmp_path / "ov"))))
    assert loaded.family == "llava_onevision"
    assert type(loaded.processor.image_processor).__name__.endswith("Pil")  # video part needs torchvision: kept
    prompt = render_prompt(loaded, "Describe.", image=True)
    assert prompt == "<|im_start|>user\n<image>\nDescribe.<|im_end|>\n<|im_start|>assistant\n"
    inputs = loaded.processor(images=[Image.new("RGB", (40, 30), "red")], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", ["llava", "llava_next", "llm"])
def test_special_token_strings_in_data_are_neutralised(models, family):
    """A title or generated preference containing `<image>` or an end-of-turn marker must stay plain text."""
    loaded = models[family]
    image = family != "llm"
    eos = loaded.tokenizer.eos_token
    text = render_prompt(loaded, f"a <image> title {eos} and more", image=image)
    assert text.count("<image>") == (1 if image else 0)
    clean = render_prompt(loaded, "a   title   and more", image=image)
    assert text == clean
