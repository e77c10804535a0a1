"""The Yes/No recommendation prompt of the VLM recommender, split into a shared prefix and a per-item suffix.

With `preference_first` (the default) the prompt is

    <template head> <preference section>  |  <image> <title + question> <template tail>
    '------------ prefix (per user) -----'  '-------------- suffix (per item) --------'

so every candidate of a user shares the prefix (its key/value cache is computed once) and the suffix depends only
on the item (it is tokenized, and its image processed, once per item). `image_first` is the paper's order
(image, then preference, then question): nothing user-specific is shared, so it is scored by plain forwards.

Both halves come from one chat-template rendering split at a sentinel, and are tokenized separately; training,
validation and scoring all use these same ids, so a model never sees one tokenization in training and another
at test time.

One truncation rule (`PromptBuilder.fit`) for every path: a row's prompt plus the answer's tokens must fit
`max_length`; if not, the prefix is cut from its end (the preference's tail) to exactly that room, whatever the
user's other candidates and whether the prefix is cached; a row that does not fit even with the preference cut
away (a large image) raises `PromptTooLong`, and callers report it and score it NaN like a missing image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

PromptOrder = Literal["preference_first", "image_first"]

_SPLIT = "\u0000MMREC_SPLIT\u0000"  # never produced by a tokenizer or a chat template
# Where the image goes; replaced by the processor's image token after rendering, because some chat templates drop
# special-token text (such as "<image>") that appears inside a text part.
_IMAGE = "\u0000MMREC_IMAGE\u0000"

PREFERENCE_INTRO = "Based on the user's interaction history, the user's preference can be summarized as follows: "
QUESTION_IMAGE = ('The image shows a candidate item titled "{title}". Given the preference above, would the user '
                  "interact with this item next? Answer with only Yes or No.")
QUESTION_TEXT = ('A candidate item is titled "{title}". Given the preference above, would the user interact with '
                 "this item next? Answer with only Yes or No.")


@dataclass
class EncodedItem:
    """One candidate's suffix: token ids (image placeholders already expanded) and its processed image."""

    ids: list[int]
    pixel_values: torch.Tensor | None = None  # [1, ...] as the processor returns it for one image
    image_sizes: torch.Tensor | None = None  # [1, 2] for LLaVA-NeXT (anyres), else None


class PromptTooLong(ValueError):
    """A row whose image + question + answer (+ the template's head) alone exceed `max_length`."""

    def __init__(self, needed: int, max_length: int):
        super().__init__(f"the prompt needs at least {needed} tokens, max_length is {max_length}")
        self.needed = needed


def context_length(loaded: Any) -> int:
    """The language model's context length (`max_position_embeddings` of its text config): the default
    `train.max_length`, so that only prompts the model cannot take at all are refused."""
    config = loaded.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "max_position_embeddings", None)
    if not isinstance(n, int) or n < 8:
        raise ValueError(f"{loaded.spec.name_or_path}: its config gives no max_position_embeddings; "
                         "set train.max_length")
    return n


class PromptBuilder:
    """Renders and tokenizes prompts for one model's processor/tokenizer.

    `answer_ids` are the ids the model must produce after the prompt (the leading-space " Yes"/" No" token, as
    the tokenizer really continues the prompt, then end-of-sequence); `yes_id`/`no_id` are read by the scorer.
    """

    def __init__(self, loaded: Any, yes_id: int, no_id: int, *, use_image: bool = True,
                 order: PromptOrder = "preference_first", max_length: int | None = None):
        self.loaded = loaded
        self.processor = loaded.processor
        self.tokenizer = loaded.tokenizer
        self.yes_id, self.no_id = int(yes_id), int(no_id)
        self.use_image = use_image
        self.order = order
        self.max_length = max_length if max_length is not None else context_length(loaded)
        self.truncated = 0  # prompts whose preference had to be shortened to fit max_length
        self.image_token = getattr(loaded, "image_token", None) or "<image>"
        self._min_prefix: int | None = None

    def texts(self, preference: str, title: str) -> tuple[str, str]:
        """(prefix text, suffix text) of one candidate's prompt, rendered by `mmrec.vlm.render_prompt`."""
        from mmrec.vlm.templates import render_prompt

        question = (QUESTION_IMAGE if self.use_image else QUESTION_TEXT).format(title=_clean(title))
        pref = PREFERENCE_INTRO + _clean(preference) + "\n"
        image = f"{_IMAGE}\n" if self.use_image else ""
        if self.order == "preference_first":
            user_text = pref + _SPLIT + image + question
        else:
            user_text = _SPLIT + image + pref + question
        rendered = render_prompt(self.loaded, user_text, image=False)
        prefix, sep, suffix = rendered.replace(_IMAGE, self.image_token).partition(_SPLIT)
        if not sep or (self.use_image and self.image_token not in prefix + suffix):
            raise ValueError(f"the chat template of {self.loaded.spec.name_or_path} dropped part of the prompt")
        return prefix, suffix

    def prefix_text(self, preference: str) -> str:
        return self.texts(preference, "")[0]

    def item_suffix_text(self, title: str) -> str:
        """The suffix of a `preference_first` prompt (independent of the user)."""
        return self.texts("", title)[1]

    def encode_prefix(self, text: str) -> list[int]:
        """Prefix ids, with the BOS token the tokenizer adds (rendered prompts never contain it)."""
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def encode_suffix(self, text: str, image: Any | None) -> EncodedItem:
        """Tokenize a suffix; with an image, the processor expands its placeholder into the image's tokens."""
        if not self.use_image:
            return EncodedItem(ids=self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if image is None:
            raise ValueError("this prompt needs an image")
        out = self.processor(text=[text], images=[image], add_special_tokens=False, return_tensors="pt")
        sizes = out.get("image_sizes")
        return EncodedItem(ids=out["input_ids"][0].tolist(), pixel_values=out["pixel_values"],
                           image_sizes=sizes if isinstance(sizes, torch.Tensor) else None)

    def answer_ids(self, label: int) -> list[int]:
        ids = [self.yes_id if label else self.no_id]
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        return ids

    @property
    def min_prefix(self) -> int:
        """Tokens of the prefix that are never cut: the template's head and the preference's introduction (the
        whole prefix with `image_first`, where the preference is in the suffix)."""
        if self._min_prefix is None:
            self._min_prefix = len(self.encode_prefix(self.prefix_text("")))
        return self._min_prefix

    def fit(self, prefix: list[int], suffix: list[int]) -> list[int]:
        """The prefix, cut from its end (the preference's tail) so that prefix + suffix + the answer fit
        `max_length`. Every path (cached, uncached, training) calls this per row, so a row's prompt depends on
        nothing else. The suffix is never cut: it holds the image tokens, and a prompt cut inside them crashes the
        model (the reference code's MAX_LENGTH failure); a row that cannot fit raises `PromptTooLong`."""
        answer = len(self.answer_ids(1))
        room = self.max_length - len(suffix) - answer
        if len(prefix) <= room:
            return prefix
        if room < min(self.min_prefix, len(prefix)):
            raise PromptTooLong(len(suffix) + answer + min(self.min_prefix, len(prefix)), self.max_length)
        self.truncated += 1
        return prefix[:room]


def _clean(text: Any) -> str:
    """Text without the sentinel, runs of spaces or blank lines (user data is never trusted to be tidy)."""
    lines = (" ".join(line.split()) for line in str(text).replace(_SPLIT, " ").replace(_IMAGE, " ").splitlines())
    return "\n".join(line for line in lines if line)
