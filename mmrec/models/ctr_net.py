"""The DLRM-style CTR network of MMREC: bottom MLP over dense item features, id embedding tables, pairwise
dot-product interaction, top MLP, one logit.

Items are addressed by their catalogue row `c` (0 = padding). The bottom MLP turns an item's dense features
(text / image / summary embeddings) into a `d`-wide content vector; the user's history is the pooled
(mean, or attention with the candidate as query) content and id vectors of their last N items, so the model is
sequential and can score items it never saw in training from their content alone. Because content vectors
depend on the item only, scoring reads them from a table computed once (`content_table`).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn


def mlp(sizes: list[int], dropout: float, last_activation: bool) -> nn.Sequential:
    """Linear layers of the given widths with ReLU (and dropout) between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """Scores (user, history, candidate) triples. Id index 0 is the shared "unknown" user / item."""

    def __init__(self, n_users: int, n_items: int, id_of_row: torch.Tensor, dense_dim: int, embed_dim: int,
                 bottom_mlp: list[int], top_mlp: list[int], pooling: str, dropout: float,
                 id_dropout: float = 0.0) -> None:
        super().__init__()
        d = embed_dim
        self.pooling = pooling
        self.id_dropout = id_dropout
        self.user_emb = nn.Embedding(n_users + 1, d)
        self.item_emb = nn.Embedding(n_items + 1, d)
        nn.init.normal_(self.user_emb.weight, std=0.05)
        nn.init.normal_(self.item_emb.weight, std=0.05)
        self.register_buffer("id_of_row", id_of_row.long(), persistent=True)  # catalogue row -> id index
        self.bottom = mlp([dense_dim, *bottom_mlp, d], dropout, last_activation=False) if dense_dim else None
        self.query = nn.Linear(d, d, bias=False) if pooling == "attention" else None
        n_vec = 5 if dense_dim else 3  # user, candidate id, history id (+ candidate content, history content)
        n_pairs = n_vec * (n_vec - 1) // 2
        self.top = mlp([2 * d + n_pairs, *top_mlp, 1], dropout, last_activation=False)
        rows, cols = torch.triu_indices(n_vec, n_vec, offset=1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        self.features: torch.Tensor | None = None        # [rows, dense_dim] while training
        self.content_table: torch.Tensor | None = None   # [rows, d] precomputed for scoring

    def content(self, rows: torch.Tensor) -> torch.Tensor:
        """Content vectors of catalogue rows (any shape) -> [..., d]."""
        if self.content_table is not None:
            return self.content_table[rows]
        assert self.bottom is not None and self.features is not None, "set .features or .content_table first"
        # Each distinct item goes through the bottom MLP once per batch (histories repeat items a lot).
        uniq, inverse = torch.unique(rows, return_inverse=True)
        return self.bottom(self.features[uniq])[inverse]

    @torch.no_grad()
    def build_content_table(self, features: torch.Tensor, batch: int = 65536) -> torch.Tensor:
        """Bottom-MLP output for every catalogue row (eval mode), row 0 (padding) zeroed."""
        assert self.bottom is not None
        table = torch.cat([self.bottom(features[i:i + batch]) for i in range(0, len(features), batch)])
        table[0] = 0
        return table

    def _pool(self, hist: torch.Tensor, mask: torch.Tensor,
              query: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [B, N] over the history and the pooled [B, d] vector. `mean`: 1/n each. `attention`: DIN-style
        gates sigmoid(<W q, h_i> / sqrt(d)) / n, not a softmax, so the pooled vector keeps how MANY history items
        resemble the candidate (a softmax would keep only the best match)."""
        m = mask.to(hist.dtype)
        w = m / m.sum(1, keepdim=True).clamp(min=1.0)
        if self.query is not None and query is not None:
            gates = torch.sigmoid((hist * self.query(query).unsqueeze(1)).sum(-1) / hist.shape[-1] ** 0.5)
            w = w * 2 * gates  # 2x so an untrained gate (0.5) starts as the plain mean
        return w, (w.unsqueeze(-1) * hist).sum(1)

    def _drop_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Replace ids by 0 ("unknown") at random, so that row learns to stand for users/items unseen in training."""
        return ids.masked_fill(torch.rand(ids.shape, device=ids.device) < self.id_dropout, 0)

    def forward(self, user: torch.Tensor, cand: torch.Tensor, hist: torch.Tensor,
                group: torch.Tensor | None = None) -> torch.Tensor:
        """user [E] id index and hist [E, N] catalogue rows (0 = padding), one row per example; cand [B]
        catalogue rows with `group` [B] naming each candidate's example (default: candidate i of example i).
        Grouping lets a scorer summarise each user's history once for all of their candidates."""
        take = (lambda t: t) if group is None else (lambda t: t[group])
        mask = hist > 0
        cand_id, hist_id = self.id_of_row[cand], self.id_of_row[hist]
        if self.training and self.id_dropout > 0:
            user, cand_id, hist_id = (self._drop_ids(t) for t in (user, cand_id, hist_id))
        u, c_id, h_ids = self.user_emb(user), self.item_emb(cand_id), self.item_emb(hist_id)
        c_ct = h_ct = None
        if self.bottom is not None:
            if group is None:  # training: one bottom-MLP pass over candidates and histories together
                both = self.content(torch.cat([cand.unsqueeze(1), hist], dim=1))
                c_ct, h_ct = both[:, 0], both[:, 1:]
            else:
                c_ct, h_ct = self.content(cand), self.content(hist)
        if self.query is None:  # mean pooling: per example, then shared by its candidates
            w, _ = self._pool(h_ids, mask, None)
            h_id = take((w.unsqueeze(-1) * h_ids).sum(1))
            h_ct_pooled = take((w.unsqueeze(-1) * h_ct).sum(1)) if h_ct is not None else None
        else:  # attention depends on the candidate: histories go to every candidate
            h_ids, mask = take(h_ids), take(mask)
            w, h_ct_pooled = self._pool(take(h_ct), mask, c_ct) if h_ct is not None else (None, None)
            if w is None:
                w, _ = self._pool(h_ids, mask, c_id)
            h_id = (w.unsqueeze(-1) * h_ids).sum(1)
        u = take(u)
        if c_ct is not None:
            vecs = torch.stack([u, c_id, h_id, c_ct, h_ct_pooled], dim=1)
            primary = [c_ct, h_ct_pooled]
        else:
            vecs = torch.stack([u, c_id, h_id], dim=1)
            primary = [c_id, h_id]
        dots = torch.bmm(vecs, vecs.transpose(1, 2))[:, self.pair_rows, self.pair_cols]
        return self.top(torch.cat([*primary, dots], dim=1)).squeeze(-1)
