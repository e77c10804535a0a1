"""Chat prompts: the checkpoint's own chat template when it ships one, a correct built-in one otherwise.

Built-in formats (what the checkpoints were trained with):
- mistral: `[INST] <image>\\n{text} [/INST]` (llava-v1.6-mistral-7b; Mistral-Instruct). The closing tag is `[/INST]`.
- vicuna: `USER: <image>\\n{text} ASSISTANT:` (llava-1.5, llava-v1.6-vicuna).
- llama3: `<|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|>...assistant...\\n\\n` (Llama-3-Instruct).
- chatml: `<|im_start|>user\\n<image>\\n{text}<|im_end|>\\n<|im_start|>assistant\\n`
  (llava-onevision on Qwen2, Qwen2-VL style).
- plain: `<image>\\n{text}` (base models without chat tuning).
The rendered prompt never contains the BOS token; the tokenizer adds it (see `encode_kwargs`).
"""
from __future__ import annotations

from typing import Any

from mmrec.errors import ConfigError

IMAGE = "<image>"


def _mistral(text: str, image: bool, image_token: str) -> str:
    return f"[INST] {image_token}\n{text} [/INST]" if image else f"[INST] {text} [/INST]"


def _vicuna(text: str, image: bool, image_token: str) -> str:
    return f"USER: {image_token}\n{text} ASSISTANT:" if image else f"USER: {text} ASSISTANT:"


def _llama3(text: str, image: bool, image_token: str) -> str:
    body = f"{image_token}\n{text}" if image else text
    return ("<|start_header_id|>user<|end_header_id|>\n\n" + body.strip() + "<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")


def _chatml(text: str, image: bool, image_token: str) -> str:
    body = f"{image_token}\n{text}" if image else text
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


def _plain(text: str, image: bool, image_token: str) -> str:
    return f"{image_token}\n{text}" if image else text


BUILTIN = {"mistral": _mistral, "vicuna": _vicuna, "llama3": _llama3, "chatml": _chatml, "plain": _plain}


def infer_format(config: Any) -> str:
    """The built-in format a checkpoint without a chat template was trained with, from its config."""
    text_cfg = getattr(config, "text_config", None) or config
    model_type = getattr(text_cfg, "model_type", "") or ""
    vocab = getattr(text_cfg, "vocab_size", 0) or 0
    if model_type in ("mistral", "mixtral"):
        return "mistral"
    if model_type.startswith("qwen"):
        return "chatml"
    if model_type == "llama" and vocab >= 128000:
        return "llama3"
    if model_type == "llama":
        return "vicuna"
    return "plain"


def _own_template(loaded: Any) -> Any:
    """The object whose `apply_chat_template` renders the checkpoint's own template, or None."""
    for obj in (getattr(loaded, "processor", None), loaded.tokenizer):
        if obj is not None and getattr(obj, "chat_template", None):
            return obj
    return None


def strip_special_tokens(text: str, tokenizer: Any, image_token: str = IMAGE) -> str:
    """`text` with every special-token string (`<image>`, `</s>`, `<|eot_id|>`, ...) replaced by a space.

    Titles, item texts and generated preferences are data, not markup: a literal `<image>` in a title would
    otherwise add an image placeholder without image features, and a literal end-of-turn would cut the prompt."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials |= {t.content if hasattr(t, "content") else str(t)
                 for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
                 if getattr(t, "special", False)}
    specials.add(image_token)
    for token in sorted((t for t in specials if t), key=len, reverse=True):
        if token in text:
            text = text.replace(token, " ")
    return text


def render_prompt(loaded: Any, user_text: str, image: bool) -> str:
    """The full generation prompt for one user turn (with an image placeholder when `image`), BOS excluded.

    Special-token strings inside `user_text` are neutralised first (`strip_special_tokens`)."""
    fmt = loaded.spec.prompt_format
    image_token = getattr(loaded, "image_token", IMAGE)
    user_text = strip_special_tokens(user_text, loaded.tokenizer, image_token)
    if fmt in ("auto", "own"):
        owner = _own_template(loaded)
        if owner is not None:
            return _apply_own(owner, loaded.tokenizer, user_text, image)
        if fmt == "own":
            raise ConfigError(f"model '{loaded.spec.name_or_path}' ships no chat template; "
                              f"set prompt_format to one of {', '.join(BUILTIN)}")
        fmt = infer_format(loaded.model.config)
    return BUILTIN[fmt](user_text, image, image_token)


def _apply_own(owner: Any, tokenizer: Any, user_text: str, image: bool) -> str:
    """The checkpoint's own template on one user turn. A text-only turn goes as a plain string, the form every
    chat template takes; only when the template drops it (LLaVA's processor templates read text from content parts
    only) as a list of parts. Never trust a template to fail loudly on the other form: Llama-3's prints a list given
    as content (`message['content'] | trim`) instead of raising. A turn with an image needs parts."""
    attempts: list[Any] = [[{"type": "image"}, {"type": "text", "text": user_text}]] if image else \
        [user_text, [{"type": "text", "text": user_text}]]
    wanted, rendered = user_text.strip(), ""
    for content in attempts:
        try:
            rendered = owner.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=False)
        except Exception:  # a template that refuses this form of content: try the next form
            continue
        if wanted in rendered:
            break
    else:
        name = getattr(tokenizer, "name_or_path", "") or type(owner).__name__
        raise ConfigError(f"the chat template of '{name}' does not render the prompt text (got {rendered[:200]!r}); "
                          f"set prompt_format to one of {', '.join(BUILTIN)}")
    bos = getattr(tokenizer, "bos_token", None)
    if bos and rendered.startswith(bos):
        rendered = rendered[len(bos):]  # the tokenizer adds BOS itself; keeping both would double it
    return rendered
