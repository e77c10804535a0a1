"""Tiny models built locally from configs: LLaVA, LLaVA-NeXT and a text-only Llama-style LM.

They exist so tests and the demo run the *real* loading and generation code (`from_pretrained(path)`) without
downloading anything. Their weights are random: whatever they generate is meaningless text.

The tokenizer is a BPE model trained here with `tokenizers`, shaped like a SentencePiece/Llama tokenizer: a
Metaspace pre-tokenizer (" Yes" -> "▁Yes"), a BOS token added in front, `<image>` and `<pad>` special tokens.
"Yes", "No", "yes" and "no" are single tokens, so yes/no scoring behaves as on a real checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from mmrec.io import atomic_dir

Family = Literal["llava", "llava_next"]

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"

# Mistral-style template as llava-hf ships it (llava-v1.6-mistral-7b-hf): "[INST] <image>\n... [/INST]".
# Message content may be a plain string or a list of {"type": "image"|"text"} parts.
MISTRAL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\\n' }}{% for p in parts %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}"
    "{{ '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for p in parts %}{% if p['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' }}{% for p in parts %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{{ '</s>' }}"
    "{% else %}{{ raise_exception('Only system, user and assistant roles are supported') }}{% endif %}"
    "{% endfor %}"
)

# Llama-3-Instruct template (the paper's preference LLM): header tokens, <|eot_id|> after each turn.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}"
    "{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + text | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Training text: words the prompts of this toolkit use, the chat-template markers, and the answer words.
_CORPUS = """
Yes No yes no YES NO Yes. No. yes, no, Yes! No!
[INST] <image>
Describe the image in detail in one continuous paragraph. [/INST]
[INST] Would the user interact with this item next? Answer only yes or no. [/INST] Yes
The user appears to have a preference for colourful items, red circles, blue squares and green triangles.
This is a chronological list of items the user interacted with: title, image description, text, summary.
We also know the user's previous preference. Summarize the preference of the user in one paragraph.
Based on the interaction history, the preference of the user can be summarized as follows.
Product image of an item for a baby, a video game cover, a video cover, a movie poster, a photo.
Item 1 2 3 4 5 6 7 8 9 0 "title" - : ; ( ) [ ] < > / | # ' * + = ? ! . , _ @ & % $
the a an of and or in on with to for is are was be this that it its from by as at
red green blue yellow purple orange black white grey gray pink brown cyan magenta colour color
circle square triangle star shape shapes object objects background text logo
Write a short description of the product shown. Combine the title, description and image into one summary.
assistant user system
"""


def _prompt_lines() -> list[str]:
    """The summarize stages' own prompt texts, so prompts tokenize about as compactly as with a real tokenizer."""
    from mmrec.summarize.templates import ITEM_TEMPLATES, USER_TEMPLATES

    texts = list(ITEM_TEMPLATES.values()) + [t for parts in USER_TEMPLATES.values() for t in parts.values()]
    return [line for t in texts for line in t.splitlines() if line.strip()]


def _train_tokenizer(specials: list[str], bos: str, eos: str, vocab_size: int = 1000):
    """A SentencePiece-like BPE tokenizer (Metaspace "▁" word marker), trained on `_CORPUS`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Newlines are their own tokens (SentencePiece's <0x0A>); words carry the "▁" space marker.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    alphabet = [chr(c) for c in range(33, 127)] + ["\n", "▁"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], initial_alphabet=alphabet,
                                  show_progress=False)
    lines = _CORPUS.strip().splitlines() + _prompt_lines()
    # "\nYes" makes the bare (no "▁") pieces too: chat templates ending in "\n\n" are followed by them.
    answers = [f"\n{w}" for w in ("Yes", "No", "yes", "no")]
    tok.train_from_iterator(lines * 4 + answers * 8 + ["\n".join(lines)], trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def _fast_tokenizer(specials: list[str], bos: str, eos: str, chat_template: str, extra: dict[str, Any]):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(specials, bos, eos), bos_token=bos, eos_token=eos, unk_token="<unk>",
        pad_token=PAD_TOKEN, padding_side="left", chat_template=chat_template, model_max_length=4096, **extra)
    return tok


def build_tokenizer(kind: Literal["mistral", "llama3"]):
    """The tiny tokenizer of a LLaVA family (Mistral-style) or of the text-only LM (Llama-3-style)."""
    if kind == "mistral":
        specials = ["<s>", "</s>", PAD_TOKEN, IMAGE_TOKEN]
        return _fast_tokenizer(specials, "<s>", "</s>", MISTRAL_TEMPLATE,
                               {"extra_special_tokens": {"image_token": IMAGE_TOKEN}})
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", PAD_TOKEN]
    return _fast_tokenizer(specials, "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE, {})


def _llama_config(vocab_size: int, tok, hidden: int, layers: int, heads: int, kv_heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False)


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_tiny_llava(out_dir: str | Path, family: Family = "llava", seed: int = 0, *, image_size: int = 32,
                     patch_size: int = 8, vision_hidden: int = 32, vision_layers: int = 2, hidden: int = 64,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Path:
    """Build, save (safetensors) and return the directory of a random tiny LLaVA / LLaVA-NeXT checkpoint.

    Default sizes: ~0.15 M parameters, 32 px images in 8 px patches (16 image tokens per image / tile).
    Load it back with `mmrec.vlm.load_vlm(ModelSpec(name_or_path=out_dir))` like any real checkpoint.
    """
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    if family not in ("llava", "llava_next"):
        raise ValueError(f"family must be 'llava' or 'llava_next', got {family!r}")
    tok = build_tokenizer("mistral")
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
                              num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size,
                              patch_size=patch_size, projection_dim=vision_hidden)
    text = _llama_config(len(tok), tok, hidden, layers, heads, kv_heads)
    n_img = (image_size // patch_size) ** 2
    common = dict(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                  vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=n_img,
                  tie_word_embeddings=False)
    proc_args = dict(tokenizer=tok, patch_size=patch_size, vision_feature_select_strategy="default",
                     num_additional_image_tokens=1, chat_template=MISTRAL_TEMPLATE)
    img_args = dict(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    _seeded(seed)
    if family == "llava":
        from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

        model = LlavaForConditionalGeneration(LlavaConfig(**common))
        processor = LlavaProcessor(image_processor=CLIPImageProcessor(**img_args), **proc_args)
    else:
        from transformers import (
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextImageProcessor,
            LlavaNextProcessor,
        )

        s = image_size
        pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(image_grid_pinpoints=pinpoints, **common))
        processor = LlavaNextProcessor(
            image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, **img_args), **proc_args)
    model.generation_config.pad_token_id = tok.pad_token_id
    return _save(out_dir, model, processor)


def build_tiny_llm(out_dir: str | Path, seed: int = 0, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                   kv_heads: int = 2) -> Path:
    """Build, save and return the directory of a random tiny text-only Llama-3-style causal LM (+ tokenizer)."""
    from transformers import LlamaForCausalLM

    tok = build_tokenizer("llama3")
    _seeded(seed)
    model = LlamaForCausalLM(_llama_config(len(tok), tok, hidden, layers, heads, kv_heads))
    model.generation_config.pad_token_id = tok.pad_token_id
    return _save(out_dir, model, tok)


def _save(out_dir: str | Path, model, processor) -> Path:
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return out_dir
