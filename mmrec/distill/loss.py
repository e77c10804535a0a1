"""Importance-aware ranking distillation (DLLM2Rec): each of the teacher's top-K items of a training example is a
positive against a sampled negative, weighted by how much the item should count.

Per example, over its teacher items k = 1..K (rank r_k = 1 is the teacher's best):
- position weight    w_rank ∝ exp(-r_k / T)          (the teacher's top items matter more),
- confidence weight  w_conf ∝ exp(-d_k) = p_k         (d_k = -log P(Yes): BIGRec's "smaller distance = surer",
                                                       for a pointwise Yes/No teacher, is its own probability),
- consistency weight w_cons = 1 if the item is in the student's current top-K over the catalogue, else 0.
Each component is normalised to sum 1 over the example's items (a component that is zero everywhere stays zero),
the switched-on components are mixed with their gammas and the mix is normalised to sum 1 again.

The loss is `-log σ(s_pos) - log(1 - σ(s_neg))` = softplus(-s_pos) + softplus(s_neg), the correct binary
cross-entropy; the reference code's `log(σ(1 - s_neg))` is not a BCE term.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from mmrec.distill.config import DistillSection


def _normalise(w: torch.Tensor) -> torch.Tensor:
    """Rows scaled to sum 1; rows summing to 0 stay 0."""
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / total.clamp(min=1e-12), torch.zeros_like(w))


def item_weights(ranks: torch.Tensor, confidence: torch.Tensor, consistent: torch.Tensor, mask: torch.Tensor,
                 cfg: DistillSection) -> torch.Tensor:
    """[E, K] weights of the teacher items (summing to 1 per example with any item) from 1-based teacher ranks,
    teacher P(Yes) and whether the student already ranks the item in its top-K; `mask` marks real items."""
    mask = mask.to(confidence.dtype)
    mix = torch.zeros_like(confidence)
    if cfg.position:
        mix = mix + cfg.gamma_position * _normalise(torch.exp(-ranks.to(mix.dtype) / cfg.rank_temperature) * mask)
    if cfg.confidence:
        mix = mix + cfg.gamma_confidence * _normalise(confidence.clamp(min=0) * mask)
    if cfg.consistency:
        mix = mix + cfg.gamma_consistency * _normalise(consistent.to(mix.dtype) * mask)
    return _normalise(mix * mask)


def student_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[E, k] 1-based item indices of the student's best k items (scores over items 1..n)."""
    return scores.topk(min(k, scores.shape[-1]), dim=-1).indices + 1


def consistency(teacher_items: torch.Tensor, student_items: torch.Tensor) -> torch.Tensor:
    """[E, K] whether each teacher item is among the student's top items of the same example."""
    return (teacher_items[:, :, None] == student_items[:, None, :]).any(-1)


def ranking_loss(hidden: torch.Tensor, embedding: torch.nn.Embedding, teacher_items: torch.Tensor,
                 negatives: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over examples of the weighted BCE of each teacher item against its negative.
    hidden [E, D]; teacher_items, negatives, weights [E, K] (padding items carry weight 0)."""
    pos = (hidden[:, None, :] * embedding(teacher_items)).sum(-1)
    neg = (hidden[:, None, :] * embedding(negatives)).sum(-1)
    per_item = F.softplus(-pos) + F.softplus(neg)
    return (weights * per_item).sum(-1).mean()
