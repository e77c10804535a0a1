"""Shared sequential code: windows, padding, the all-position loss, scoring and the validation metric."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from mmrec.data.sequences import training_sequences
from mmrec.errors import DataError
from mmrec.models.gru4rec import GRU4Rec
from mmrec.models.sasrec import SASRec
from mmrec.models.sequential import (
    PAD,
    ItemVocab,
    SequentialScorer,
    encode_histories,
    last_hidden,
    pad_batch,
    sample_negatives,
    sequence_loss,
    windows,
)
from mmrec.selection import sampled_metric as validation_metric


def tiny_models(n_items: int = 12, max_len: int = 8):
    torch.manual_seed(0)
    return {"sasrec": SASRec(n_items, max_len, hidden_size=16, num_layers=2, num_heads=2, inner_size=32, dropout=0.0),
            "gru4rec": GRU4Rec(n_items, hidden_size=16, gru_size=24, num_layers=1, dropout=0.0)}


def test_windows_cover_every_target_once_with_recent_context_kept():
    seq = list(range(1, 8))  # 7 items -> targets 2..7
    ws = windows(seq, max_len=3)
    assert ws == [[1, 2, 3, 4], [4, 5, 6, 7]]
    targets = [t for w in ws for t in w[1:]]
    assert targets == seq[1:]
    assert windows([5], max_len=3) == []  # a single item has no target
    assert windows([1, 2], max_len=50) == [[1, 2]]


def test_vocab_and_padding():
    vocab = ItemVocab.from_sequences([["a", "b"], ["b", "c"]])
    assert vocab.item_ids == ["a", "b", "c"] and len(vocab) == 3
    assert vocab.encode(["c", "zz", "a"]) == [3, 1]          # unseen item dropped from a history
    assert vocab.lookup(["zz", "b"]).tolist() == [PAD, 2]
    batch = pad_batch([[1, 2, 3], [4]])
    assert batch.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_batch([[1, 2, 3, 4]], 2).tolist() == [[3, 4]]  # keeps the most recent items


def test_training_sequences_from_split_rows():
    ex = pd.DataFrame({"user_id": ["u", "u", "v"], "stage": ["train", "valid", "train"],
                       "history": [["a"], ["a", "b"], ["c", "d"]], "target": ["b", "c", "e"]})
    seqs = training_sequences(ex)
    assert seqs["u"] == ["a", "b"] and seqs["v"] == ["c", "d", "e"]
    with pytest.raises(DataError, match="no train rows"):
        training_sequences(ex[ex["stage"] == "valid"])


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_shapes_and_causality(kind):
    model = tiny_models()[kind].eval()
    batch = pad_batch([[1, 2, 3, 4, 5], [6, 7]], 6)
    hidden = model(batch)
    assert hidden.shape == (2, 6, 16)
    assert model.item_scores(hidden).shape == (2, 6, 12)
    changed = batch.clone()
    changed[0, 4] = 9  # a later item must not change earlier positions
    assert torch.allclose(model(changed)[0, :4], hidden[0, :4], atol=1e-6)
    # padding after a sequence does not change its last hidden state
    assert torch.allclose(last_hidden(model, pad_batch([[6, 7]], 2)), last_hidden(model, batch)[1:], atol=1e-5)


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_all_position_loss_equals_sum_of_prefix_losses(kind):
    """One pass over a sequence = the RecBole scheme's one sample per prefix, summed."""
    model = tiny_models()[kind].eval()
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 2], [9, 10]]
    all_positions = sequence_loss(model, pad_batch(seqs), "ce", reduction="sum")
    per_prefix = torch.zeros(())
    for s in seqs:
        for t in range(1, len(s)):
            h = last_hidden(model, pad_batch([s[:t]]))
            per_prefix = per_prefix + F.cross_entropy(model.item_scores(h), torch.tensor([s[t] - 1]), reduction="sum")
    assert torch.allclose(all_positions, per_prefix, rtol=1e-5)
    assert sequence_loss(model, pad_batch(seqs), "ce", reduction="none").shape == (5 + 2 + 1,)


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_training_reduces_loss(kind, loss):
    model = tiny_models()[kind].train()
    seqs = [[(u + i) % 12 + 1 for i in range(7)] for u in range(12)]  # a cycle: next item = current + 1
    batch = pad_batch(seqs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(30):
        value = sequence_loss(model, batch, loss, negatives=2, generator=gen)
        first = value.item() if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    model.eval()
    assert sequence_loss(model, batch, loss, negatives=2, generator=gen).item() < 0.7 * first


def test_bce_negatives_uniform_and_never_the_target():
    gen = torch.Generator().manual_seed(1)
    target = torch.tensor([1, 2, 3] * 100)
    neg = sample_negatives(target, 3, 50, gen)
    assert neg.shape == (300, 50)
    assert not (neg == target[:, None]).any()
    for t in (1, 2, 3):
        counts = torch.bincount(neg[target == t].flatten(), minlength=4)[1:].float()
        assert counts[t - 1] == 0 and counts.max() / counts[counts > 0].min() < 1.2
    model = tiny_models(n_items=3)["gru4rec"]
    assert torch.isfinite(sequence_loss(model, pad_batch([[1, 2, 3, 1, 2, 3]]), "bce", negatives=4, generator=gen))


def test_scorer_looks_up_history_and_handles_unseen_items():
    model = tiny_models()["gru4rec"]
    vocab = ItemVocab([f"i{k}" for k in range(12)])
    ex = pd.DataFrame({"user_id": ["u", "u", "u"], "stage": ["train", "valid", "test"],
                       "history": [["i0"], ["i0", "i1"], ["i0", "i1", "new"]], "target": ["i1", "i2", "i3"]})
    scorer = SequentialScorer(model, vocab, ex, max_len=8, device=torch.device("cpu"))
    cands = pd.DataFrame({"user_id": ["u"] * 4, "stage": ["valid", "test", "test", "valid"],
                          "item_id": ["i2", "i3", "unseen", "i5"]})
    scores = scorer.score(cands)
    assert scores.dtype == np.float64 and scores.shape == (4,)
    assert scores[2] == -math.inf and np.isfinite(scores[[0, 1, 3]]).all()
    catalogue = scorer.score_catalogue(ex[ex["stage"] != "train"])
    assert catalogue.shape == (2, 12)
    assert scores[0] == pytest.approx(catalogue[0, 2]) and scores[3] == pytest.approx(catalogue[0, 5])
    # the unseen history item is dropped, so the test context equals the valid context
    assert np.allclose(catalogue[0], catalogue[1])
    with pytest.raises(DataError, match="no example"):
        scorer.score(pd.DataFrame({"user_id": ["ghost"], "stage": ["test"], "item_id": ["i1"]}))


def reference_scores(model, vocab: ItemVocab, examples: pd.DataFrame, max_len: int, cands: pd.DataFrame) -> np.ndarray:
    """The straightforward computation, one candidate row at a time: the history's last max_len known items,
    one forward at full max_len width, the state after the last item dotted with the candidate's embedding."""
    history = {(u, s): h for u, s, h in zip(examples["user_id"], examples["stage"], examples["history"])}
    out = []
    with torch.no_grad():
        for u, s, item in zip(cands["user_id"], cands["stage"], cands["item_id"]):
            known = [vocab.index[i] for i in history[(u, s)] if i in vocab.index][-max_len:]
            batch = torch.tensor([known + [PAD] * (max_len - len(known))])
            state = model.eval()(batch)[0, max(len(known), 1) - 1]
            out.append(float(state @ model.item_embedding.weight[vocab.index[item]]) if item in vocab.index
                       else -math.inf)
    return np.array(out)


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_vectorised_scores_equal_the_per_row_reference(kind):
    """Truncation to max_len, unseen history items dropped, unseen candidates at UNSEEN_SCORE, an empty history,
    rows of several users and stages interleaved: the batched scorer gives the reference's scores."""
    max_len = 5
    model, vocab = tiny_models(max_len=max_len)[kind], ItemVocab([f"i{k}" for k in range(12)])
    rng = np.random.default_rng(0)
    users = [f"u{k}" for k in range(7)]
    histories = [[f"i{k}" for k in rng.integers(0, 14, size=n)] for n in (0, 1, 3, 5, 6, 9, 12)]  # i12, i13 unseen
    ex = pd.DataFrame({"user_id": users * 2 + ["u0"], "stage": ["test"] * 7 + ["valid"] * 7 + ["train"],
                       "history": histories + histories[::-1] + [["i1"]], "target": "i0"})
    cands = pd.DataFrame([(u, s, f"i{k}") for u in users for s in ("test", "valid") for k in rng.integers(0, 14, 4)],
                         columns=["user_id", "stage", "item_id"]).sample(frac=1.0, random_state=0)
    scorer = SequentialScorer(model, vocab, ex, max_len=max_len, device=torch.device("cpu"), batch_size=3)
    expected = reference_scores(model, vocab, ex, max_len, cands)
    got = scorer.score(cands)
    assert np.isneginf(expected).any() and (np.isneginf(got) == np.isneginf(expected)).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    catalogue = scorer.score_catalogue(ex[ex["stage"] == "test"])
    first = cands[(cands["stage"] == "test") & cands["item_id"].isin(vocab.item_ids)].iloc[0]
    row, col = users.index(first["user_id"]), vocab.index[first["item_id"]] - 1
    assert catalogue[row, col] == pytest.approx(reference_scores(model, vocab, ex, max_len, first.to_frame().T)[0],
                                                abs=1e-6)


def test_encode_histories_matches_encode_then_pad():
    vocab = ItemVocab([f"i{k}" for k in range(6)])
    hists = [[], ["x"], ["i1", "x", "i2"], [f"i{k % 6}" for k in range(9)], np.array(["i5", "i4"], dtype=object)]
    items, lengths = encode_histories(vocab, hists, 4)
    expected = pad_batch([vocab.encode(list(h))[-4:] or [PAD] for h in hists], 4)
    assert items.tolist() == expected.tolist() and lengths.tolist() == [0, 0, 2, 4, 2]


def test_validation_metric_hand_computed():
    cands = pd.DataFrame({"user_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3, "stage": ["valid"] * 9,
                          "label": [1, 0, 0] * 3})
    # a: target first (rank 1); b: one negative above (rank 2); c: tied with one negative (rank 1 or 2)
    scores = np.array([0.9, 0.1, 0.2, 0.5, 0.7, 0.1, 0.3, 0.3, 0.0])
    assert validation_metric(scores, cands, "hr", 1, "pessimistic") == pytest.approx(1 / 3)
    assert validation_metric(scores, cands, "hr", 1, "expected") == pytest.approx((1 + 0.5) / 3)
    assert validation_metric(scores, cands, "hr", 2) == pytest.approx(1.0)
    assert validation_metric(scores, cands, "mrr", 10, "pessimistic") == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert validation_metric(scores, cands, "ndcg", 10, "pessimistic") == pytest.approx((1 + 2 / math.log2(3)) / 3)
    scores[0] = np.nan  # a NaN target is a miss
    assert validation_metric(scores, cands, "hr", 2, "pessimistic") == pytest.approx(2 / 3)


@pytest.mark.parametrize("users, windows_per_user", [(943, 2), (6040, 3), (1_000_000, 1)])
def test_default_batch_gives_enough_steps_per_epoch_from_1k_to_1m_users(users, windows_per_user):
    """The default batch follows the rule in docs/baselines.md: at least ~100 optimizer steps per epoch where the
    data allows (ML-100K: 943 users, 2-3 windows of up to 50 targets each), batches of at most 256 sequences on
    large data. A fixed 256 gives ML-100K 10 steps per epoch, which 50 epochs do not train to convergence."""
    from mmrec.models.gru4rec import GRU4RecConfig
    from mmrec.models.sasrec import SASRecConfig
    from mmrec.models.sequential import AUTO_STEPS_PER_EPOCH, auto_batch_size

    for config in (GRU4RecConfig(), SASRecConfig()):
        assert config.batch_size == "auto" and config.epochs >= 100 and config.patience == 10
    n = users * windows_per_user
    batch = auto_batch_size(n)
    assert 16 <= batch <= 256
    assert math.ceil(n / batch) >= AUTO_STEPS_PER_EPOCH or batch == 16
    if users >= 100_000:
        assert batch == 256


def test_cuda_without_a_device_is_a_config_error():
    from mmrec.device import resolve_device
    from mmrec.errors import ConfigError

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device"):
            resolve_device("cuda")
