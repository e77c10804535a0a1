"""The token ids of the answers "Yes" and "No" as they really follow a rendered prompt.

`convert_tokens_to_ids("Yes")` is the classic bug (the MLLM-MSR reference code has it): after `[/INST]` a
SentencePiece model emits "▁Yes" (a leading-space piece), a different id. Here the id is derived by encoding
prompt + answer and taking what the answer added, then checked to decode back to the answer.
"""
from __future__ import annotations

from typing import Any

from mmrec.errors import MmrecError


def answer_token_id(tokenizer: Any, prompt: str, answer: str) -> int:
    """The single token the model emits for `answer` right after `prompt` (a space first unless the prompt
    already ends in whitespace, as chat templates that end in "\\n\\n" do)."""
    sep = "" if not prompt or prompt[-1].isspace() else " "
    base = tokenizer.encode(prompt, add_special_tokens=False)
    full = tokenizer.encode(prompt + sep + answer, add_special_tokens=False)
    added = full[len(base):]
    if full[: len(base)] != base or len(added) != 1:
        pieces = (tokenizer.convert_ids_to_tokens(added) if full[: len(base)] == base
                  else "(it merged with the prompt's end)")
        raise MmrecError(f"the answer {answer!r} after this prompt is not one token of the tokenizer "
                         f"({type(tokenizer).__name__}); it encodes as {pieces}. Use a prompt that ends with the "
                         "chat template's assistant marker, or a model whose tokenizer has the answer as one token")
    decoded = tokenizer.decode(added, skip_special_tokens=False).strip()
    if decoded != answer:
        raise MmrecError(f"the token {added[0]} taken for {answer!r} decodes to {decoded!r}; "
                         "refusing a wrong answer id")
    return int(added[0])


def answer_token_ids(tokenizer: Any, prompt: str, yes: str = "Yes", no: str = "No") -> tuple[int, int]:
    """(yes_id, no_id) of the tokens following `prompt` (pass the rendered chat prompt, BOS excluded)."""
    yes_id, no_id = answer_token_id(tokenizer, prompt, yes), answer_token_id(tokenizer, prompt, no)
    if yes_id == no_id:
        raise MmrecError(f"{yes!r} and {no!r} map to the same token id {yes_id}")
    return yes_id, no_id
