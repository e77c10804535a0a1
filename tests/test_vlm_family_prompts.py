"""Every prompt mmrec writes, rendered through its own prompt paths with each supported family's published chat
template and tokenizer: item summaries, recurrent and direct preference updates, the recommendation prompt of
MLLM-MSR and of the baselines (TALLRec, Rec-GPT4V, zero-shot); the Yes/No ids as they follow those prompts."""
from __future__ import annotations

from mmrec.summarize.generation import GenerationSettings, TextGenerator
from mmrec.vlm import render_prompt

LLAMA3 = "meta-llama/Meta-Llama-3-8B-Instruct"


def test_llama3_prompt_holds_the_text_not_a_python_list(family_loaded):
    """Llama-3's template does `message['content'] | trim`: given content parts it prints the Python list (with
    escaped newlines) instead of raising, so the text-only fallback never ran and every prompt was garbled."""
    loaded = family_loaded(LLAMA3)
    text = "Here is a list of items:\n1. \"A red lamp\"\nSummarize the user's preferences."
    prompt = TextGenerator(lambda: loaded, GenerationSettings()).prompt(text, image=False)
    assert "[{" not in prompt and "'type'" not in prompt
    assert prompt == ("<|start_header_id|>user<|end_header_id|>\n\n" + text + "<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_prompt(loaded, text, image=False) == prompt
