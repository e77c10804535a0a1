"""GRU4Rec (Hidasi et al. 2016; RecBole's variant): item embeddings -> GRU -> projection, scored against the
tied item embeddings. Sizes follow RecBole: embedding 64, GRU hidden 128, 1 layer, embedding dropout 0.3.
Layers and initialisation are RecBole 1.2.1's (tests/test_recbole_layers.py): xavier-normal embeddings,
xavier-uniform on the first GRU layer only, PyTorch's defaults for deeper GRU layers and the projection."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from mmrec.models.sequential import PAD, SequentialConfig, SequentialModel, SequentialScorer, load_sequential_scorer

if TYPE_CHECKING:
    from mmrec.experiment import ExperimentConfig


@dataclass
class GRU4RecConfig(SequentialConfig):
    """`hidden_size` is the item embedding (and output) size; `gru_size` the recurrent state."""

    kind: Literal["gru4rec"] = "gru4rec"
    gru_size: int = 128
    num_layers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gru_size < 1 or self.num_layers < 1:
            raise ValueError("'gru_size' and 'num_layers' must be at least 1")


class GRU4Rec(SequentialModel):
    def __init__(self, n_items: int, hidden_size: int = 64, gru_size: int = 128, num_layers: int = 1,
                 dropout: float = 0.3):
        super().__init__()
        self.item_embedding = nn.Embedding(n_items + 1, hidden_size, padding_idx=PAD)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_size, gru_size, num_layers=num_layers, batch_first=True, bias=False)
        self.dense = nn.Linear(gru_size, hidden_size)
        nn.init.xavier_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[PAD].zero_()
        # as RecBole: xavier on the first layer only; deeper layers keep PyTorch's uniform(+-1/sqrt(gru_size))
        nn.init.xavier_uniform_(self.gru.weight_hh_l0)
        nn.init.xavier_uniform_(self.gru.weight_ih_l0)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """[B, L] right-padded item indices -> [B, L, hidden]; a GRU reads left to right, so position t
        depends on items 0..t only and padding after the last item never reaches it."""
        out, _ = self.gru(self.dropout(self.item_embedding(items)))
        return self.dense(out)


def build_model(cfg: GRU4RecConfig, n_items: int) -> GRU4Rec:
    return GRU4Rec(n_items, cfg.hidden_size, cfg.gru_size, cfg.num_layers, cfg.dropout)


def load_scorer(cfg: "ExperimentConfig", name: str, ckpt_dir: Path) -> SequentialScorer:
    return load_sequential_scorer(cfg, name, Path(ckpt_dir), build_model)
