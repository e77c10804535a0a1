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


def test_answer_loss_projects_only_the_answer_positions(tiny_models):
    """The `answer` loss equals the next-token loss over whole rows, but only the positions that predict the answer
    tokens reach the vocabulary projection (a 4k-token row at 32k vocabulary is 0.5-1 GB of logits otherwise)."""
    from mmrec.models.vlm_forward import EncodedItem, answer_loss, lm_loss, train_batch
    from mmrec.vlm import ModelSpec, load_vlm

    model = load_vlm(ModelSpec(name_or_path=str(tiny_models["llava"]))).model
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
    from test_vlm_rec import make_experiment, vlm_model

    from mmrec.experiment import ExperimentConfig
    from mmrec.models.vlm_build import build_scorer

    cfg = make_experiment(tmp_path, synthetic_split, {"m": vlm_model(tiny_models[family], variant="zero_shot")})
    return build_scorer(ExperimentConfig.load(cfg, [f"models.m.score.{k}={v}" for k, v in score.items()]), "m")


def _user_rows(scorer, n_suffix_lengths: int = 3):
    """The first validation user whose candidates' suffixes (title + question) have several token lengths."""
    valid = scorer.encoder.context.split.candidates_for("valid").astype({"user_id": str, "item_id": str})
    for _, rows in valid.groupby("user_id", sort=False):
        if len({len(scorer.encoder.item(i).ids) for i in rows["item_id"]}) >= n_suffix_lengths:
            return rows.reset_index(drop=True)
    raise AssertionError("no user with candidates of different suffix lengths")


def test_a_truncated_row_scores_the_same_on_every_path(tmp_path, tiny_models, synthetic_split):
    """One truncation rule for the cached, uncached and training paths: a row's prompt (and score) depends neither
    on `prefix_cache` nor on the user's other candidates, and training sees exactly the prompt scoring reads."""
    cached = _zero_shot(tmp_path / "a", tiny_models, synthetic_split, batch_size=32, prefix_cache=True)
    plain = _zero_shot(tmp_path / "b", tiny_models, synthetic_split, batch_size=1, prefix_cache=False)
    rows = _user_rows(cached)
    b = cached.encoder.builder
    longest = max(len(cached.encoder.item(i).ids) for i in rows["item_id"])
    for s in (cached, plain):  # every row of the user fits once cut, by different amounts
        s.encoder.builder.max_length = longest + len(b.answer_ids(1)) + b.min_prefix + 2
    together = cached.score(rows)
    alone = [plain.score(rows.iloc[[i]])[0] for i in range(len(rows))]
    assert np.isfinite(together).all() and b.truncated >= len(rows)
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)

    from mmrec.models.vlm_encoder import TrainingEncoder

    r = rows.iloc[0]
    prompts = plain.encoder
    prefix, suffix = prompts.encode(r.user_id, r.stage, r.item_id)
    batch = TrainingEncoder(prompts, rows, None, True, torch.device("cpu"), torch.float32).batch([0])
    answer = prompts.builder.answer_ids(int(r.label))
    assert batch.inputs["input_ids"][0].tolist() == prefix + suffix.ids + answer
    assert len(prefix + suffix.ids + answer) <= prompts.builder.max_length


def test_an_over_long_row_is_reported_and_scored_nan(tmp_path, tiny_models, synthetic_split, caplog):
    """A prompt whose image + question cannot fit `max_length` is a missing row (NaN, listed, counted), never an
    aborted run; training leaves it out through the same check."""
    from mmrec.models.vlm_context import TOO_LONG

    scorer = _zero_shot(tmp_path, tiny_models, synthetic_split)
    rows = _user_rows(scorer)
    lengths = np.array([len(scorer.encoder.item(i).ids) for i in rows["item_id"]])
    b = scorer.encoder.builder
    b.max_length = int(lengths.min() + b.min_prefix + len(b.answer_ids(1)))  # only the shortest suffixes fit
    scores = scorer.score(rows)
    long = lengths > lengths.min()
    assert long.any() and np.isnan(scores[long]).all() and np.isfinite(scores[~long]).all()
    assert sorted(scorer.missing["item_id"]) == sorted(rows.loc[long, "item_id"])
    assert set(scorer.missing["reason"]) == {TOO_LONG}
    assert "train.max_length" in caplog.text
    assert (scorer.encoder.check(rows) == np.where(long, TOO_LONG, "")).all()


def test_max_length_defaults_to_the_models_context_length(tiny_models):
    from mmrec.models.vlm_build import make_builder
    from mmrec.models.vlm_rec import VLMRecConfig
    from mmrec.vlm import ModelSpec, load_vlm

    assert VLMRecConfig().train.max_length is None
    loaded = load_vlm(ModelSpec(name_or_path=str(tiny_models["llava"])))
    builder = make_builder(loaded, True, "preference_first", None)
    assert builder.max_length == loaded.model.config.text_config.max_position_embeddings == 4096
    assert make_builder(loaded, True, "preference_first", 900).max_length == 900


PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def test_item_caches_are_bounded_by_bytes_with_real_llava_next_images(tmp_path, tiny_models, synthetic_split,
                                                                       monkeypatch):
    """LLaVA-NeXT's real processor settings make one 500 x 500 photo (1, 5, 3, 336, 336) pixels: 6.5 MiB in
    float32, ~26 GiB for the 4,096 items a count-bounded cache kept. The cache holds them in the model's dtype,
    within its byte budget, and re-processes an evicted item to exactly the same input."""
    from PIL import Image
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    from mmrec.models.vlm_cache import MiB
    from mmrec.models.vlm_encoder import item_nbytes

    encoder = _zero_shot(tmp_path, tiny_models, synthetic_split, family="llava_next", cache_mb=40).encoder
    items = encoder.context.split.dataset.items["item_id"].astype(str).tolist()[:20]

    ctx = encoder.context  # decoded images first: their own (smaller) byte budget
    image = ctx.image(items[0])
    ctx.image_cache_mb, ctx._decoded = 3.5 * image.width * image.height * 3 / MiB, None
    for item in items:
        ctx.image(item)
    assert len(ctx._decoded) == 3 and ctx._decoded.nbytes <= ctx.image_cache_mb * MiB
    assert ctx.image(items[0]).tobytes() == image.tobytes()

    real = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                   image_grid_pinpoints=PINPOINTS)
    b = encoder.builder
    b.processor = LlavaNextProcessor(image_processor=real, tokenizer=b.tokenizer, patch_size=14,
                                     vision_feature_select_strategy="default", image_token=b.image_token)
    photos = {item: Image.new("RGB", (500, 500), (k * 12, 255 - k * 12, 90)) for k, item in enumerate(items)}
    monkeypatch.setattr(ctx, "image", photos.__getitem__)
    encoder.pixel_dtype = torch.bfloat16  # what a bf16 model's vision tower reads
    first = encoder.item(items[0])
    assert tuple(first.pixel_values.shape) == (1, 5, 3, 336, 336) and first.pixel_values.dtype == torch.bfloat16
    assert 3.2 * MiB < item_nbytes(first) < 3.5 * MiB  # float32 pixels alone were 6.5 MiB
    for item in items:
        encoder.item(item)
    assert encoder.cache.nbytes <= 40 * MiB and 5 < len(encoder.cache) < 20
    again = encoder.item(items[0])  # evicted long ago: processed again, to the same ids and pixels
    assert again is not first and again.ids == first.ids and torch.equal(again.pixel_values, first.pixel_values)


def test_training_encodes_and_validates_through_one_encoder(tmp_path, run_cli, tiny_models, synthetic_split,
                                                           monkeypatch):
    """Training rows and validation share one prompt encoder, hence one item cache (two doubled the host memory);
    rows whose prompt cannot fit `max_length` are left out of training and NaN in validation, counted in the
    record."""
    import json

    from test_vlm_rec import make_experiment, vlm_model

    import finetune.vlm_lora as recipe
    from finetune.vlm_data import training_rows
    from mmrec.data.splits import load_split
    from mmrec.models import vlm_build

    probe = _zero_shot(tmp_path / "probe", tiny_models, synthetic_split).encoder
    rows = training_rows(load_split(synthetic_split), negatives=0, seed=0)
    lengths = np.array([len(probe.item(i).ids) for i in rows["item_id"]])
    b = probe.builder
    max_length = int(np.median(lengths)) + b.min_prefix + len(b.answer_ids(1))
    too_long = int((lengths > np.median(lengths)).sum())
    assert 0 < too_long < len(rows)

    encoders, scorers, trainers = [], [], []

    class CountedEncoder(vlm_build.PromptEncoder):
        def __init__(self, *args, **kwargs):
            encoders.append(self)
            super().__init__(*args, **kwargs)

    class CountedTrainer(recipe.TrainingEncoder):
        def __init__(self, *args, **kwargs):
            trainers.append(self)
            super().__init__(*args, **kwargs)

    def kept_scorer(*args, **kwargs):
        scorers.append(vlm_build.make_scorer(*args, **kwargs))
        return scorers[-1]

    monkeypatch.setattr(vlm_build, "PromptEncoder", CountedEncoder)
    monkeypatch.setattr(recipe, "TrainingEncoder", CountedTrainer)
    monkeypatch.setattr(recipe, "make_scorer", kept_scorer)
    train = {"epochs": 1, "batch_size": 64, "negatives": 0, "valid_users": 4, "log_every": 1,
             "max_length": max_length}
    cfg = make_experiment(tmp_path / "run", synthetic_split, {"m": vlm_model(tiny_models["llava"], train=train)})
    code, _, err = run_cli("finetune", cfg)
    assert code == 0, err
    assert len(encoders) == len(scorers) == len(trainers) == 1
    assert scorers[0].encoder is encoders[0] and trainers[0].prompts is encoders[0]
    assert len(encoders[0].cache) > 0
    info = json.loads((tmp_path / "run" / "checkpoints" / "m" / "vlm_rec.json").read_text())
    assert info["skipped_by_reason"] == {"prompt too long": too_long} and info["train_rows"] == len(rows) - too_long
    assert info["valid_missing"] > 0
