"""SASRec (Kang & McAuley 2018; RecBole's variant): item + position embeddings -> causal self-attention
blocks (post-LayerNorm, GELU) -> scored against the tied item embeddings. Sizes follow RecBole: hidden 64,
2 layers, 2 heads, inner 256, dropout 0.5, max length 50, LayerNorm eps 1e-12, normal(0, 0.02) init.

The layers are RecBole 1.2.1's (tests/test_recbole_layers.py runs its equations on these weights): dropout on
the embeddings, the attention probabilities, the attention output and the FFN output, none between the FFN's
activation and its second linear layer (where `nn.TransformerEncoderLayer` has one); every projection, Q/K/V
included, starts from normal(0, 0.02)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from torch.nn import functional as F

from mmrec.models.sequential import PAD, SequentialConfig, SequentialModel, SequentialScorer, load_sequential_scorer

if TYPE_CHECKING:
    from mmrec.experiment import ExperimentConfig


@dataclass
class SASRecConfig(SequentialConfig):
    kind: Literal["sasrec"] = "sasrec"
    dropout: float = 0.5
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_layers < 1 or self.num_heads < 1 or self.inner_size < 1:
            raise ValueError("'num_layers', 'num_heads' and 'inner_size' must be at least 1")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"'hidden_size' ({self.hidden_size}) must be divisible by 'num_heads' ({self.num_heads})")


class RecBoleLayer(nn.TransformerEncoderLayer):
    """A post-LayerNorm encoder layer with RecBole's dropout placement. In training, attention is computed
    explicitly so the attention-probability dropout is a plain dropout on the softmax output, as in RecBole
    (PyTorch's fused attention draws its mask differently); evaluation keeps PyTorch's path (no dropout there).
    The FFN's inner dropout is removed. Parameter names are `nn.TransformerEncoderLayer`'s."""

    def __init__(self, hidden_size: int, num_heads: int, inner_size: int, dropout: float):
        super().__init__(hidden_size, num_heads, inner_size, dropout, activation="gelu", layer_norm_eps=1e-12,
                         batch_first=True)
        self.dropout = nn.Identity()  # RecBole's FeedForward: dense_1 -> act -> dense_2 -> dropout

    def _sa_block(self, x: torch.Tensor, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                  is_causal: bool = False) -> torch.Tensor:
        if not self.training:
            return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
        att = self.self_attn
        n_batch, length, hidden = x.shape
        size = hidden // att.num_heads
        qkv = F.linear(x, att.in_proj_weight, att.in_proj_bias).view(n_batch, length, 3, att.num_heads, size)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, L, size]
        scores = q @ k.transpose(-1, -2) / math.sqrt(size)
        if attn_mask is not None:
            scores = scores + attn_mask
        probs = F.dropout(scores.softmax(-1), att.dropout, training=True)
        context = (probs @ v).transpose(1, 2).reshape(n_batch, length, hidden)
        return self.dropout1(att.out_proj(context))


class SASRec(SequentialModel):
    def __init__(self, n_items: int, max_len: int = 50, hidden_size: int = 64, num_layers: int = 2,
                 num_heads: int = 2, inner_size: int = 256, dropout: float = 0.5):
        super().__init__()
        self.item_embedding = nn.Embedding(n_items + 1, hidden_size, padding_idx=PAD)
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        layer = RecBoleLayer(hidden_size, num_heads, inner_size, dropout)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.MultiheadAttention):  # Q/K/V are one packed parameter, not nn.Linear
            nn.init.normal_(module.in_proj_weight, std=0.02)
            nn.init.zeros_(module.in_proj_bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """[B, L] right-padded item indices -> [B, L, hidden]. The causal mask lets position t attend to
        positions 0..t only; with padding after the items, no real position ever attends to padding."""
        length = items.shape[1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_len {self.position_embedding.num_embeddings}")
        positions = torch.arange(length, device=items.device)
        x = self.dropout(self.norm(self.item_embedding(items) + self.position_embedding(positions)))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=items.device)
        return self.encoder(x, mask=mask, is_causal=True)

    def final_hidden(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, hidden] state at each sequence's last item. In evaluation the last layer runs at that position only
        (its attention still reads every earlier position): the scorer's forward costs about a third less."""
        if self.training:
            return super().final_hidden(items, lengths)
        *first, last = self.encoder.layers
        positions = torch.arange(items.shape[1], device=items.device)
        x = self.norm(self.item_embedding(items) + self.position_embedding(positions))
        mask = nn.Transformer.generate_square_subsequent_mask(items.shape[1], device=items.device)
        for layer in first:
            x = layer(x, src_mask=mask, is_causal=True)
        query = x[torch.arange(items.shape[0], device=items.device), lengths - 1][:, None]  # [B, 1, hidden]
        after_last = positions[None, :] >= lengths[:, None]  # the causal mask of the query's row
        att = last.self_attn(query, x, x, key_padding_mask=after_last, need_weights=False)[0]
        h = last.norm1(query + last.dropout1(att))
        return last.norm2(h + last._ff_block(h))[:, 0]


def build_model(cfg: SASRecConfig, n_items: int) -> SASRec:
    return SASRec(n_items, cfg.max_len, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.inner_size, cfg.dropout)


def load_scorer(cfg: "ExperimentConfig", name: str, ckpt_dir: Path) -> SequentialScorer:
    return load_sequential_scorer(cfg, name, Path(ckpt_dir), build_model)
