"""`ModelSpec`: which checkpoint to load and how (the `model` key of the summarize and VLM-model sections)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
PromptFormat = Literal["auto", "own", "mistral", "vicuna", "llama3", "chatml", "plain"]


@dataclass
class ModelSpec:
    """A checkpoint (hub id or local directory) and its loading options.

    `device_map`: None puts the whole model on this process's device (`cuda:$LOCAL_RANK` when a GPU is there,
    so shards under torchrun each use their own GPU; else the CPU); "auto" spreads one model over every GPU.
    `prompt_format`: "auto" uses the checkpoint's own chat template when it ships one and a built-in one
    chosen from the architecture otherwise; "own" insists on the checkpoint's template; the other names force a
    built-in template. Access tokens are never configured here: huggingface_hub reads HF_TOKEN itself.
    `allow_pickle`: weights load from safetensors only; true also accepts pickled `.bin` weights, which can run
    code hidden in the file (only for checkpoints you trust).
    """

    name_or_path: str = ""
    revision: str | None = None
    dtype: Dtype = "auto"
    device_map: str | dict[str, Any] | None = None
    attn_implementation: str | None = None
    quantization: Literal["4bit", "8bit"] | None = None
    trust_remote_code: bool = False
    image_backend: Literal["pil", "torchvision"] = "pil"
    prompt_format: PromptFormat = "auto"
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        self.name_or_path = os.path.expanduser(self.name_or_path)  # `~/models/x`: a folder, as in a shell
        if self.revision == "":
            raise ValueError("revision must be a branch, tag or commit, or null")
