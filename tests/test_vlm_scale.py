"""What breaks only at real scale, checked on the CPU: layers on several devices (`device_map: auto`), the
vocabulary projection of the answer loss, prompt truncation and over-long prompts, and the host memory of the
item caches with LLaVA-NeXT's real image-processor settings."""
from __future__ import annotations

import numpy as np
import torch

from test_vlm_rec import tiny_models  # noqa: F401  (fixture)


def _cache(devices: list[str], users: int, length: int = 3):
    """A DynamicCache with one layer per device, `users` prefix rows, each row's keys filled with its index."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for dev in devices:
        keys = torch.arange(users, dtype=torch.float32)[:, None, None, None].expand(users, 2, length, 4).clone()
        layer = DynamicLayer()
        layer.lazy_initialization(keys.to(dev), keys.to(dev))
        layer.keys, layer.values = keys.to(dev), keys.clone().to(dev)
        cache.layers.append(layer)
    return cache


def test_select_cache_indexes_each_layer_on_its_own_device():
    """With `device_map: auto` layers sit on different GPUs; here layer 0 is on `meta` and layer 1 on the CPU."""
    from mmrec.models.vlm_forward import select_cache

    rows = torch.tensor([2, 0, 0, 1])
    new = select_cache(_cache(["meta", "cpu"], users=3), rows)
    assert new.layers[0].keys.device.type == "meta" and new.layers[0].keys.shape[0] == 4
    assert new.layers[1].keys.device.type == "cpu"
    assert new.layers[1].keys[:, 0, 0, 0].tolist() == [2.0, 0.0, 0.0, 1.0]
    assert new.layers[1].values[:, 0, 0, 0].tolist() == [2.0, 0.0, 0.0, 1.0]


def test_answer_loss_projects_only_the_answer_positions(tmp_path):
    """The `answer` loss equals the next-token loss over whole rows, but only the positions that predict the answer
    tokens reach the vocabulary projection (a 4k-token row at 32k vocabulary is 0.5-1 GB of logits otherwise)."""
    from mmrec.models.vlm_forward import EncodedItem, answer_loss, lm_loss, train_batch
    from mmrec.tiny import build_tiny_llava
    from mmrec.vlm import ModelSpec, load_vlm

    model = load_vlm(ModelSpec(name_or_path=str(build_tiny_llava(tmp_path / "m", "llava", seed=0)))).model
    prefixes, items = [[1, 5, 6, 7], [1, 8]], [EncodedItem(ids=[9, 10]), EncodedItem(ids=[11, 12, 13, 14, 15])]
    batch = train_batch(prefixes, items, [[20, 2], [21, 2]], 0, None, True, torch.device("cpu"), torch.float32)
    projected = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: projected.append(tuple(i[0].shape)))
    with torch.no_grad():
        old = lm_loss(model(**batch.inputs).logits, batch.labels)[0]
        new = answer_loss(model, batch)
    hook.remove()
    torch.testing.assert_close(new, old)
    assert projected == [(2, 9, model.config.text_config.hidden_size), (2, 2, model.config.text_config.hidden_size)]


def _zero_shot(tmp_path, tiny_models, synthetic_split, family="llava", **score):
    from mmrec.experiment import ExperimentConfig
    from mmrec.models.vlm_scorer import build_scorer
    from test_vlm_rec import make_experiment, vlm_model

    cfg = make_experiment(tmp_path, synthetic_split, {"m": vlm_model(tiny_models[family], variant="zero_shot")})
    return build_scorer(ExperimentConfig.load(cfg, [f"models.m.score.{k}={v}" for k, v in score.items()]), "m")


def _user_rows(scorer, n_suffix_lengths: int = 3):
    """The first validation user whose candidates' suffixes (title + question) have several token lengths."""
    valid = scorer.context.split.candidates_for("valid").astype({"user_id": str, "item_id": str})
    for _, rows in valid.groupby("user_id", sort=False):
        if len({len(scorer.item(i).ids) for i in rows["item_id"]}) >= n_suffix_lengths:
            return rows.reset_index(drop=True)
    raise AssertionError("no user with candidates of different suffix lengths")


def test_a_truncated_row_scores_the_same_on_every_path(tmp_path, tiny_models, synthetic_split):
    """One truncation rule for the cached, uncached and training paths: a row's prompt (and score) depends neither
    on `prefix_cache` nor on the user's other candidates, and training sees exactly the prompt scoring reads."""
    cached = _zero_shot(tmp_path / "a", tiny_models, synthetic_split, batch_size=32, prefix_cache=True)
    plain = _zero_shot(tmp_path / "b", tiny_models, synthetic_split, batch_size=1, prefix_cache=False)
    rows = _user_rows(cached)
    b = cached.builder
    longest = max(len(cached.item(i).ids) for i in rows["item_id"])
    for s in (cached, plain):  # every row of the user fits once cut, by different amounts
        s.builder.max_length = longest + len(b.answer_ids(1)) + b.min_prefix + 2
    together = cached.score(rows)
    alone = [plain.score(rows.iloc[[i]])[0] for i in range(len(rows))]
    assert np.isfinite(together).all() and cached.builder.truncated >= len(rows)
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)

    from finetune.vlm_lora import make_batch

    r = rows.iloc[0]
    prefix, suffix = plain.encode(r.user_id, r.stage, r.item_id)
    batch = make_batch(plain, *(rows[c].to_numpy() for c in ("user_id", "stage", "item_id", "label")), [0],
                       None, True, torch.device("cpu"), torch.float32)
    answer = plain.builder.answer_ids(int(r.label))
    assert batch.inputs["input_ids"][0].tolist() == prefix + suffix.ids + answer
    assert len(prefix + suffix.ids + answer) <= plain.builder.max_length


def test_an_over_long_row_is_reported_and_scored_nan(tmp_path, tiny_models, synthetic_split, caplog):
    """A prompt whose image + question cannot fit `max_length` is a missing row (NaN, listed, counted), never an
    aborted run; training leaves it out through the same check."""
    from mmrec.models.vlm_context import TOO_LONG

    scorer = _zero_shot(tmp_path, tiny_models, synthetic_split)
    rows = _user_rows(scorer)
    lengths = np.array([len(scorer.item(i).ids) for i in rows["item_id"]])
    b = scorer.builder
    b.max_length = int(lengths.min() + b.min_prefix + len(b.answer_ids(1)))  # only the shortest suffixes fit
    scores = scorer.score(rows)
    long = lengths > lengths.min()
    assert long.any() and np.isnan(scores[long]).all() and np.isfinite(scores[~long]).all()
    assert sorted(scorer.missing["item_id"]) == sorted(rows.loc[long, "item_id"])
    assert set(scorer.missing["reason"]) == {TOO_LONG}
    assert "train.max_length" in caplog.text
    assert (scorer.check(rows) == np.where(long, TOO_LONG, "")).all()


def test_max_length_defaults_to_the_models_context_length(tiny_models):
    from mmrec.models.vlm_rec import VLMRecConfig
    from mmrec.models.vlm_scorer import make_builder
    from mmrec.vlm import ModelSpec, load_vlm

    assert VLMRecConfig().train.max_length is None
    loaded = load_vlm(ModelSpec(name_or_path=str(tiny_models["llava"])))
    builder = make_builder(loaded, True, "preference_first", None)
    assert builder.max_length == loaded.model.config.text_config.max_position_embeddings == 4096
    assert make_builder(loaded, True, "preference_first", 900).max_length == 900
