"""Vision-language and language models: loading (hub id or local dir, dtype, 4/8-bit), chat prompts,
Yes/No answer token ids and batched generation. Heavy libraries are imported only when a function runs."""
from mmrec.vlm.loading import LoadedLM, LoadedVLM, load_llm, load_vlm
from mmrec.vlm.spec import ModelSpec
from mmrec.vlm.templates import render_prompt
from mmrec.vlm.tokens import answer_token_id, answer_token_ids

__all__ = ["LoadedLM", "LoadedVLM", "ModelSpec", "answer_token_id", "answer_token_ids", "load_llm", "load_vlm",
           "render_prompt"]
