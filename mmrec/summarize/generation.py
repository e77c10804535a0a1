"""Batched text generation for the summarize stages, with the model loaded only when first needed.

A run whose every output is cached never loads the model. `calls` counts `generate` calls (one per batch) and
`sequences` the prompts generated, so tests can assert that cache hits cost zero model calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mmrec.vlm import render_prompt


@dataclass
class GenerationSettings:
    """Decoding options; greedy by default (deterministic). Part of every cache key."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def key(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed}


class TextGenerator:
    """Generate replies for batches of user texts (plus images for a VLM) with a lazily loaded model."""

    def __init__(self, load: Callable[[], Any], settings: GenerationSettings):
        self._load = load
        self._loaded: Any = None
        self.settings = settings
        self.calls = 0
        self.sequences = 0

    @property
    def loaded(self) -> Any:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def prompt(self, user_text: str, image: bool) -> str:
        """The full chat prompt the model sees for one user turn."""
        return render_prompt(self.loaded, user_text, image)

    def generate(self, user_texts: list[str], images: list[Any] | None = None) -> list[str]:
        """One batched `generate` call. `images[i]` is a PIL image or None (text-only prompt)."""
        import torch

        loaded = self.loaded
        images = images if images is not None else [None] * len(user_texts)
        prompts = [self.prompt(t, im is not None) for t, im in zip(user_texts, images)]
        present = [im for im in images if im is not None]
        if loaded.processor is not None:
            # the processor sizes each image itself (no padding by hand: outputs never depend on the batch)
            inputs = loaded.processor(text=prompts, images=present or None, return_tensors="pt", padding=True)
        else:
            inputs = loaded.tokenizer(prompts, return_tensors="pt", padding=True)
        model = loaded.model
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        s = self.settings
        kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens, "do_sample": s.do_sample,
                                  "eos_token_id": self._eos_ids(), "pad_token_id": loaded.tokenizer.pad_token_id}
        if s.do_sample:
            torch.manual_seed(s.seed)
            kwargs.update(temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs)
        self.calls += 1
        self.sequences += len(prompts)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in loaded.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def _eos_ids(self) -> list[int]:
        """The model's stop tokens plus the tokenizer's EOS (Llama-3-Instruct stops on <|eot_id|>)."""
        loaded = self.loaded
        ids = loaded.model.generation_config.eos_token_id
        ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
        if loaded.tokenizer.eos_token_id is not None and loaded.tokenizer.eos_token_id not in ids:
            ids.append(loaded.tokenizer.eos_token_id)
        return ids
