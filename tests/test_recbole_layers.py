"""SASRec and GRU4Rec equal RecBole 1.2.1's layers: its forward equations, written out here from RecBole's
`recbole/model/layers.py` (MultiHeadAttention, FeedForward, TransformerLayer), `sasrec.py` and `gru4rec.py`,
run on the mmrec model's own weights. Eval mode must agree to float precision; train mode must agree too when
both draw their dropout masks from the same seed, which holds only if the dropouts sit where RecBole has them
(embedding; attention probabilities; attention output; FFN output -- none between the FFN's activation and its
second linear layer). Initialisation follows RecBole: normal(0, 0.02) for every SASRec projection; GRU4Rec
xavier for the embedding and the first GRU layer only."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from mmrec.models.gru4rec import GRU4Rec
from mmrec.models.sasrec import SASRec
from mmrec.models.sequential import pad_batch

SEQS = [[3, 1, 4, 1, 5, 9, 2, 6], [5, 3], [8, 9, 7, 9, 3, 2]]


def _dropout(x: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    return F.dropout(x, p, training=train)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H] -> [B, heads, L, H / heads]."""
    return x.view(x.shape[0], x.shape[1], heads, x.shape[2] // heads).transpose(1, 2)


def recbole_sasrec(model: SASRec, items: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    """RecBole SASRec.forward on `model`'s weights, every position's output [B, L, H]."""
    n_batch, length = items.shape
    emb = model.item_embedding.weight[items] + model.position_embedding.weight[:length][None]
    h = _dropout(F.layer_norm(emb, emb.shape[-1:], model.norm.weight, model.norm.bias, 1e-12), p, train)
    # additive mask: key j visible to query i iff j <= i and item j is not padding; hidden otherwise by -10000
    visible = torch.tril((items != 0)[:, None, None, :].expand(-1, -1, length, -1))
    mask = torch.where(visible, 0.0, -10000.0)
    for layer in model.encoder.layers:
        att = layer.self_attn
        heads = att.num_heads
        size = h.shape[-1] // heads
        wq, wk, wv = att.in_proj_weight.chunk(3)
        bq, bk, bv = att.in_proj_bias.chunk(3)

        q, k, v = (_heads(h @ w.T + b, heads) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(size) + mask, dim=-1)
        ctx = (_dropout(probs, p, train) @ v).transpose(1, 2).reshape(n_batch, length, -1)
        attn_out = _dropout(ctx @ att.out_proj.weight.T + att.out_proj.bias, p, train)
        h = F.layer_norm(attn_out + h, h.shape[-1:], layer.norm1.weight, layer.norm1.bias, 1e-12)
        inner = h @ layer.linear1.weight.T + layer.linear1.bias
        inner = inner * 0.5 * (1.0 + torch.erf(inner / math.sqrt(2.0)))  # RecBole's exact gelu
        ffn = _dropout(inner @ layer.linear2.weight.T + layer.linear2.bias, p, train)
        h = F.layer_norm(ffn + h, h.shape[-1:], layer.norm2.weight, layer.norm2.bias, 1e-12)
    return h


def recbole_gru4rec(model: GRU4Rec, items: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    """RecBole GRU4Rec.forward on `model`'s weights: embedding dropout -> bias-free GRU layers -> dense."""
    x = _dropout(model.item_embedding.weight[items], p, train)
    for layer in range(model.gru.num_layers):
        w_ih, w_hh = getattr(model.gru, f"weight_ih_l{layer}"), getattr(model.gru, f"weight_hh_l{layer}")
        state = x.new_zeros(x.shape[0], w_hh.shape[1])
        outs = []
        for t in range(x.shape[1]):
            ri, zi, ni = (x[:, t] @ w_ih.T).chunk(3, dim=-1)
            rh, zh, nh = (state @ w_hh.T).chunk(3, dim=-1)
            reset, update = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
            state = (1 - update) * torch.tanh(ni + reset * nh) + update * state
            outs.append(state)
        x = torch.stack(outs, dim=1)
    return x @ model.dense.weight.T + model.dense.bias


def _sasrec(p: float) -> SASRec:
    torch.manual_seed(0)
    return SASRec(n_items=12, max_len=10, hidden_size=16, num_layers=2, num_heads=2, inner_size=32, dropout=p)


@pytest.mark.parametrize("train", [False, True])
def test_sasrec_forward_is_recboles(train):
    p = 0.3
    model = _sasrec(p).train(train)
    items = pad_batch(SEQS)
    real = items != 0  # RecBole reads each sequence at its real positions; padding outputs are never used
    with torch.no_grad():
        torch.manual_seed(7)
        ours = model(items)
        torch.manual_seed(7)
        ref = recbole_sasrec(model, items, p, train)
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-5, atol=1e-5)


def test_sasrec_init_is_recboles():
    model = SASRec(n_items=500, hidden_size=64, inner_size=256)
    for layer in model.encoder.layers:
        for name, w in [("q/k/v", layer.self_attn.in_proj_weight), ("out", layer.self_attn.out_proj.weight),
                        ("ffn1", layer.linear1.weight), ("ffn2", layer.linear2.weight)]:
            assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002, name
        assert not layer.self_attn.in_proj_bias.any() and not layer.linear1.bias.any()
    assert abs(model.item_embedding.weight[1:].std().item() - 0.02) < 0.002
    assert not model.item_embedding.weight[0].any()


@pytest.mark.parametrize("train", [False, True])
def test_gru4rec_forward_is_recboles(train):
    p = 0.3
    torch.manual_seed(0)
    model = GRU4Rec(n_items=12, hidden_size=8, gru_size=16, num_layers=2, dropout=p).train(train)
    items = pad_batch(SEQS)
    with torch.no_grad():
        torch.manual_seed(7)
        ours = model(items)
        torch.manual_seed(7)
        ref = recbole_gru4rec(model, items, p, train)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_gru4rec_init_is_recboles():
    """xavier (uniform) on layer 0 only, as RecBole; deeper layers keep PyTorch's uniform(+-1/sqrt(hidden))."""
    torch.manual_seed(0)
    hidden = 128
    model = GRU4Rec(n_items=500, hidden_size=64, gru_size=hidden, num_layers=2)
    xavier = lambda w: math.sqrt(6 / sum(w.shape))  # noqa: E731  (bound of xavier_uniform_)
    for name in ("weight_ih_l0", "weight_hh_l0"):
        w = getattr(model.gru, name)
        assert w.abs().max().item() > 0.95 * xavier(w) and w.abs().max().item() <= xavier(w), name
    for name in ("weight_ih_l1", "weight_hh_l1"):
        w = getattr(model.gru, name)
        assert w.abs().max().item() <= 1 / math.sqrt(hidden) < 0.95 * xavier(w), name
    emb = model.item_embedding.weight[1:]
    assert abs(emb.std().item() - math.sqrt(2 / sum(emb.shape))) < 0.1 * math.sqrt(2 / sum(emb.shape))
