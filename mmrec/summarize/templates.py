"""Prompt templates of the summarize stages (paraphrases of MLLM-MSR's prompts, written for this toolkit).

Templates are plain text with `{placeholders}`; the chat format around them (`[INST] ... [/INST]`, Llama-3
headers, ...) is added by `mmrec.vlm.render_prompt` from the model. A config may name a built-in template or
give its own text; the text is part of every cache key, so editing it regenerates exactly what it changes.
"""
from __future__ import annotations

import string

from mmrec.errors import ConfigError

ITEM_TEMPLATES: dict[str, str] = {
    # MLLM-MSR's image-description prompt (a video cover in the paper).
    "image": ("Describe this image in detail in one continuous paragraph. Cover its content and its visual "
              "features: colours, objects, any text shown, and other notable elements."),
    "cover": ("This image is the cover of a video. Describe it in detail in one continuous paragraph, covering "
              "its content and visual features: colours, objects, any text shown, and other notable elements."),
    # The Amazon adaptation: a product photo.
    "product": ("This image shows a product sold online. Describe the product in one continuous paragraph: what "
                "it is, its colours, shape, material, any text or logo, and other notable visual details."),
    # The paper's fusion prompt: item text and image merged into one item description.
    "fusion": ("Here is an item titled \"{title}\". Its description: {text}\nWrite one concise paragraph that "
               "describes the item, combining what the title and description say with what the image shows."),
}
# Fusion when an item has no image: the same job from the text alone (never a silent drop).
FUSION_TEXT_ONLY = ("Here is an item titled \"{title}\". Its description: {text}\nWrite one concise paragraph "
                    "that describes the item.")
ITEM_FIELDS = {"title", "text", "item_id"}

_ANSWER_RULES = ("Write one continuous paragraph about the user's preferences only; do not repeat the item "
                 "details or this question; be concise. Start your answer with \"The user appears to have a "
                 "preference for\".")

USER_TEMPLATES: dict[str, dict[str, str]] = {
    "paper": {
        "first": ("Here is a chronological list of items a user interacted with, each with its title and a "
                  "description of its image:\n{items}\nSummarize the user's preferences from the content and "
                  "visual style of these items. " + _ANSWER_RULES),
        "next": ("Here is a chronological list of items a user interacted with, each with its title and a "
                 "description of its image:\n{items}\nWe also know the user's previous preference:\n{previous}\n"
                 "Update the summary of the user's preferences using both the content and visual style of these "
                 "items and the known previous preference. " + _ANSWER_RULES),
        "direct": ("Here is the chronological list of all items a user interacted with, each with its title and "
                   "a description of its image:\n{items}\nSummarize the user's preferences in one line. "
                   + _ANSWER_RULES),
        "item": "{index}. \"{title}\": {summary}",
        "item_no_summary": "{index}. \"{title}\"",
    },
}
USER_PARTS = {"first": {"items", "user_id"}, "next": {"items", "previous", "user_id"}, "direct": {"items", "user_id"},
              "item": {"index", "title", "summary", "item_id", "text"},
              "item_no_summary": {"index", "title", "item_id", "text"}}


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_template(template: str, allowed: set[str], key: str) -> None:
    """Refuse unknown placeholders and malformed braces with the config key in the message."""
    try:
        used = placeholders(template)
    except ValueError as e:
        raise ConfigError(f"key '{key}': malformed template ({e}); write literal braces as {{{{ and }}}}") from None
    unknown = used - allowed
    if unknown:
        raise ConfigError(f"key '{key}': unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def item_template(name_or_text: str) -> str:
    """A built-in item template by name, or the given text itself."""
    text = ITEM_TEMPLATES.get(name_or_text, name_or_text)
    check_template(text, ITEM_FIELDS, "item_summaries.template")
    return text


def user_templates(name: str, custom: dict[str, str]) -> dict[str, str]:
    """The built-in set `name` with the parts given in `custom` replacing its own."""
    if name not in USER_TEMPLATES:
        raise ConfigError(f"key 'user_summaries.template' must be one of {', '.join(USER_TEMPLATES)}, got {name!r}; "
                          "customise parts with user_summaries.custom_templates")
    parts = {**USER_TEMPLATES[name], **custom}
    for part, text in parts.items():
        if part not in USER_PARTS:
            raise ConfigError(f"key 'user_summaries.custom_templates.{part}' is not a template part; "
                              f"parts are {', '.join(USER_PARTS)}")
        check_template(text, USER_PARTS[part], f"user_summaries.custom_templates.{part}")
    return parts
