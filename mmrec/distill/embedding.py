"""Embedding distillation (DLLM2Rec's collaborative embedding distillation): each item's representation in the
student is its own embedding plus `embedding_weight` x a learnt projection of the teacher's item embedding.

Teacher item embeddings (`distill.embedding: vlm`): the teacher VLM's last hidden state, mean-pooled over the
item's own prompt part (its image and title, no user text), one forward per training item, written by the signals
stage as `<signals>.items.safetensors` (ids in the same order as `<signals>.items.parquet`).

The students here tie input and output item embeddings, so the teacher's part enters both the sequence input and
the scoring side (DLLM2Rec's students score through a separate output layer, so there it reaches the input only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmrec.errors import DataError


def embeddings_path(signals: Path) -> tuple[Path, Path]:
    return signals.with_suffix(".items.safetensors"), signals.with_suffix(".items.parquet")


@torch.no_grad()
def teacher_item_embeddings(scorer: Any, item_ids: list[str], batch: int = 16) -> np.ndarray:
    """[len(item_ids), hidden] mean last hidden state of each item's prompt suffix (image + title)."""
    from mmrec.models.vlm_forward import _pad, model_device, stack_pixels, vision_dtype
    from mmrec.progress import progress

    model, encoder = scorer.model, scorer.encoder
    dev, out = model_device(model), []
    for start in progress(range(0, len(item_ids), batch), desc="teacher item embeddings", unit="batch"):
        items = [encoder.item(i) for i in item_ids[start:start + batch]]
        ids, mask = _pad([it.ids for it in items], encoder.pad_id)
        res = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), output_hidden_states=True,
                    **stack_pixels(items, dev, vision_dtype(model)), logits_to_keep=1)
        hidden = res.hidden_states[-1].float()
        m = mask.to(hidden.device)[..., None].float()
        if hidden.shape[1] != m.shape[1]:  # image placeholders expanded inside the model: pool every position
            m = torch.ones_like(hidden[..., :1])
        out.append(((hidden * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def write_item_embeddings(signals: Path, item_ids: list[str], vectors: np.ndarray) -> None:
    from safetensors.numpy import save_file

    from mmrec.io import atomic_path, write_parquet

    tensors, ids = embeddings_path(signals)
    write_parquet(pd.DataFrame({"item_id": item_ids}), ids)
    with atomic_path(tensors) as tmp:
        save_file({"embeddings": vectors.astype(np.float32)}, str(tmp))


def read_item_embeddings(signals: Path, vocab_ids: list[str]) -> torch.Tensor:
    """[len(vocab) + 1, hidden] teacher vectors in the student's item order (row 0 = padding, zeros)."""
    from safetensors.numpy import load_file

    tensors, ids = embeddings_path(signals)
    if not tensors.is_file() or not ids.is_file():
        raise DataError(f"{tensors}: no teacher item embeddings; re-run `mmrec distill-signals` "
                        "with distill.embedding set")
    vectors = load_file(str(tensors))["embeddings"]
    row = pd.Index(pd.read_parquet(ids)["item_id"].astype(str)).get_indexer(pd.Index(vocab_ids))
    if (row < 0).any():
        missing = vocab_ids[int(np.flatnonzero(row < 0)[0])]
        raise DataError(f"{tensors}: no teacher embedding for training item {missing!r}; "
                        "re-run `mmrec distill-signals`")
    out = np.zeros((len(vocab_ids) + 1, vectors.shape[1]), dtype=np.float32)
    out[1:] = vectors[row]
    return torch.from_numpy(out)


class TeacherAugmentedEmbedding(nn.Module):
    """An item table whose rows are `base + weight * proj(teacher)`; looks like an nn.Embedding to the models."""

    def __init__(self, base: nn.Embedding, teacher: torch.Tensor, weight: float):
        super().__init__()
        self.base = base
        self.register_buffer("teacher", teacher, persistent=True)
        self.proj = nn.Linear(teacher.shape[1], base.embedding_dim, bias=False)
        self.scale = weight
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.padding_idx = base.padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight + self.scale * self.proj(self.teacher)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base(ids) + self.scale * self.proj(self.teacher[ids])


def attach(model: nn.Module, teacher: torch.Tensor, weight: float) -> nn.Module:
    """Wrap `model.item_embedding` (same module in place; call before loading or training its weights)."""
    if teacher.shape[0] != model.item_embedding.num_embeddings:
        raise DataError(f"teacher embeddings for {teacher.shape[0] - 1} items, the student has "
                        f"{model.item_embedding.num_embeddings - 1}")
    model.item_embedding = TeacherAugmentedEmbedding(model.item_embedding, teacher, weight)
    return model
