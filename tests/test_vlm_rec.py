"""VLM recommender: config variants, Yes/No ids per family, prefix-cache equivalence, missing rows, training rows.

Tiny random LLaVA / LLaVA-NeXT models on the synthetic benchmark (tests/conftest.py), CPU only.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mmrec.config import from_dict
from mmrec.errors import ConfigError
from mmrec.experiment import ExperimentConfig
from mmrec.models.vlm_rec import VLMRecConfig

TINY = {"llava": "tiny_llava", "llava_next": "tiny_llava_next"}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from mmrec.tiny import build_tiny_llava

    root = tmp_path_factory.mktemp("tiny_vlm")
    return {fam: build_tiny_llava(root / name, fam, seed=0) for fam, name in TINY.items()}


def make_experiment(root: Path, split_dir: Path, models: dict, split: dict | None = None, **sections) -> Path:
    """An experiment directory whose splits/<protocol> is the given split (linked, never modified)."""
    split = split or {"protocol": "loo"}
    (root / "splits").mkdir(parents=True, exist_ok=True)
    link = root / "splits" / split["protocol"]
    if not link.exists():
        os.symlink(split_dir, link)
    cfg = {"experiment": {"dir": str(root), "seed": 0}, "split": split, "models": models, **sections}
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def vlm_model(model_dir: Path, **fields) -> dict:
    return {"kind": "vlm", "model": {"name_or_path": str(model_dir)}, "preference_source": "truth", **fields}


def test_variants_set_defaults_and_flags_override():
    tallrec = VLMRecConfig(variant="tallrec")
    assert (tallrec.use_image, tallrec.preference_source, tallrec.finetune) == (False, "summaries", True)
    rec = VLMRecConfig(variant="recgpt4v")
    assert (rec.use_image, rec.preference_source, rec.finetune) == (True, "history", False)
    assert VLMRecConfig(variant="zero_shot", use_image=False).use_image is False
    assert VLMRecConfig().lora.r == 8 and VLMRecConfig().loss == "answer"
    with pytest.raises(ConfigError, match="lora"):
        from_dict(VLMRecConfig, {"lora": {"r": 0}}, where="x.yaml", prefix="models.m")
    with pytest.raises(ConfigError, match="did you mean 'prompt_order'"):
        from_dict(VLMRecConfig, {"prompt_ordr": "image_first"}, where="x.yaml")


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_yes_no_ids_come_from_the_tokenizer(tiny_models, family):
    from mmrec.models.vlm_build import make_builder
    from mmrec.vlm import ModelSpec, load_vlm

    loaded = load_vlm(ModelSpec(name_or_path=str(tiny_models[family])))
    b = make_builder(loaded, use_image=True, order="preference_first", max_length=512)
    tok = loaded.tokenizer
    assert tok.decode([b.yes_id]).strip() == "Yes" and tok.decode([b.no_id]).strip() == "No"
    # the leading-space piece that really follows "[/INST]", not the bare "Yes" the reference code read
    assert tok.convert_ids_to_tokens([b.yes_id, b.no_id]) == ["▁Yes", "▁No"]
    assert b.yes_id == tok.encode(" Yes", add_special_tokens=False)[-1]
    prompt = "".join(b.texts("The user likes red circles.", "Nova circle sticker"))
    assert tok.encode(prompt + " Yes", add_special_tokens=False)[-1] == b.yes_id
    assert b.answer_ids(1) == [b.yes_id, tok.eos_token_id] and b.answer_ids(0)[0] == b.no_id


def _scorer(cfg_path: Path, name: str, **score):
    from mmrec.models.vlm_build import build_scorer

    cfg = ExperimentConfig.load(cfg_path, [f"models.{name}.score.{k}={v}" for k, v in score.items()])
    return build_scorer(cfg, name)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_prefix_cache_equals_plain_forward(tmp_path, tiny_models, synthetic_split, family):
    from mmrec.data.splits import load_split

    cfg = make_experiment(tmp_path, synthetic_split, {"m": vlm_model(tiny_models[family], variant="zero_shot")})
    valid = load_split(synthetic_split).candidates_for("valid")
    rows = valid[valid["user_id"].isin(valid["user_id"].unique()[:3])]  # 3 users x 21 candidates
    cached = _scorer(cfg, "m", batch_size=8, prefix_cache=True)  # groups span users and split a user's rows
    assert cached.prefix_cache
    a = cached.score(rows)
    b = _scorer(cfg, "m", batch_size=5, prefix_cache=False).score(rows)
    one = _scorer(cfg, "m", batch_size=1, prefix_cache=False).score(rows.iloc[:7])
    assert np.isfinite(a).all() and ((a > 0) & (a < 1)).all()
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    np.testing.assert_allclose(one, b[:7], atol=1e-4, rtol=0)  # a row's score does not depend on its batch
    shuffled = rows.sample(frac=1.0, random_state=0)
    np.testing.assert_allclose(cached.score(shuffled), pd.Series(a, index=rows.index)[shuffled.index], atol=1e-4)


def test_missing_image_and_preference_are_reported_not_dropped(tmp_path, tiny_models, synthetic_split):
    from mmrec.data.splits import load_split

    split = load_split(synthetic_split)
    valid = split.candidates_for("valid")
    users = valid["user_id"].unique()[:2]
    rows = valid[valid["user_id"].isin(users)].reset_index(drop=True)
    summaries = pd.DataFrame({"user_id": [users[0]], "stage": ["valid"], "preference": ["The user likes red items."],
                              "steps": [["The user likes red items."]]})
    (tmp_path / "summaries").mkdir()
    summaries.to_parquet(tmp_path / "summaries" / "users.parquet")
    cfg = make_experiment(tmp_path, synthetic_split,
                          {"m": vlm_model(tiny_models["llava"], variant="zero_shot", preference_source="summaries")})
    scorer = _scorer(cfg, "m")
    no_image = rows.loc[0, "item_id"]
    scorer.encoder.context.split.dataset.items_by_id.at[no_image, "image"] = None  # in memory only
    rows = pd.concat([rows, pd.DataFrame({"user_id": [users[0]], "stage": ["valid"], "item_id": ["no-such-item"],
                                          "label": [0]})], ignore_index=True)
    scores = scorer.score(rows)
    assert len(scores) == len(rows)
    missing = scorer.missing.set_index(["user_id", "item_id"])["reason"]
    expect_nan = (rows["user_id"] == users[1]) | (rows["item_id"] == no_image) | (rows["item_id"] == "no-such-item")
    assert np.isnan(scores[expect_nan.to_numpy()]).all() and np.isfinite(scores[~expect_nan.to_numpy()]).all()
    assert len(missing) == int(expect_nan.sum())
    assert missing[(users[0], no_image)] == "no image" and missing[(users[0], "no-such-item")] == "unknown item"
    assert (missing.xs(users[1], level="user_id") == "no preference").all()


def test_text_only_and_history_prompts(tmp_path, tiny_models, synthetic_split):
    cfg = make_experiment(tmp_path, synthetic_split, {
        "tallrec": vlm_model(tiny_models["llava"], variant="tallrec", preference_source="truth"),
        "rec": vlm_model(tiny_models["llava"], variant="recgpt4v", preference_source="history",
                            history_items=3)})
    tallrec, rec = _scorer(cfg, "tallrec"), _scorer(cfg, "rec")
    prompts = tallrec.encoder
    item = prompts.item("i0001")
    assert item.pixel_values is None and prompts.builder.tokenizer.convert_tokens_to_ids("<image>") not in item.ids
    user = prompts.context.split.examples_for("valid").iloc[0]
    text = rec.encoder.context.preference(user.user_id, "valid")
    titles = prompts.context.split.dataset.items_by_id.loc[list(user.history)[-3:], "title"]
    assert text.count("\n- ") == 3 and all(t in text for t in titles)
    valid = prompts.context.split.candidates_for("valid").head(21)
    for scorer in (tallrec, rec):
        assert np.isfinite(scorer.score(valid)).all()


def test_training_rows_use_only_the_training_split(synthetic_split):
    from finetune.vlm_data import batches_per_epoch, epoch_batches, training_rows, validation_rows
    from mmrec.data.splits import load_split

    split = load_split(synthetic_split)
    rows = training_rows(split, negatives=3, seed=0)
    assert (rows["stage"] == "train").all()
    n_train = len(split.examples_for("train"))
    assert (rows["label"] == 1).sum() == n_train and (rows["label"] == 0).sum() == 3 * n_train
    train = split.examples_for("train")  # sampling_data: train -- what the user did up to their training target
    known = {u: set(before) | {t} for u, before, t in zip(train["user_id"], split.pre_target_items(train),
                                                          train["target"])}
    negs = rows[rows["label"] == 0]
    assert split.config.sampling_data == "train"
    assert not any(item in known[user] for user, item in zip(negs["user_id"], negs["item_id"]))
    assert not negs.duplicated(["user_id", "item_id"]).any()
    pd.testing.assert_frame_equal(rows, training_rows(split, negatives=3, seed=0))
    valid = validation_rows(split, max_users=10, seed=0)
    assert valid["user_id"].nunique() == 10 and set(valid["stage"]) == {"valid"}

    # two processes see disjoint halves of the same global batches; a restart at batch k continues identically
    n = batches_per_epoch(101, 4, 2)
    both = [np.concatenate([idx for _, idx in epoch_batches(101, 4, 2, r, 0, 0)]) for r in (0, 1)]
    assert n == 13 and len(np.intersect1d(*both)) == 0 and len(np.union1d(*both)) == 101
    tail = [idx for _, idx in epoch_batches(101, 4, 1, 0, 0, 0, start=5)]
    assert all((a == b).all() for a, b in zip(tail, [idx for _, idx in epoch_batches(101, 4, 1, 0, 0, 0)][5:]))
