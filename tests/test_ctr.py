"""MMREC's CTR model: hand-checked building blocks, then training on the synthetic benchmark through the real code."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from crash import crash_on_call
from safetensors.torch import load_file

import finetune.ctr as recipe
from mmrec.errors import ConfigError, DataError
from mmrec.experiment import ExperimentConfig, ExperimentPaths
from mmrec.models.ctr import CTRConfig, build_model, load_scorer
from mmrec.models.ctr_features import Catalogue, item_texts

VARIANTS = ("id_only", "text", "text_image", "mmrec")
FAST = {"epochs": 8, "patience": 8, "batch_size": 512}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, synthetic_split):
    """An experiment directory over the shared synthetic split, a tiny CLIP, and item summaries that say what a
    perfect VLM would see in each image (colour, pattern, shape); returns a function writing a config."""
    from mmrec.encoders import build_tiny_open_clip

    root = tmp_path_factory.mktemp("ctr")
    (root / "exp" / "splits").mkdir(parents=True)
    os.symlink(synthetic_split, root / "exp" / "splits" / "loo")
    clip = build_tiny_open_clip(root / "tiny_clip")
    attrs = pd.read_parquet(Path(synthetic_split).parents[1] / "item_attributes.parquet")
    summaries = pd.DataFrame({"item_id": attrs["item_id"],
                              "summary": [f"A {p} {c} {s}."
                                          for c, s, p in zip(attrs["colour"], attrs["shape"], attrs["pattern"])]})
    target = ExperimentPaths(root / "exp").item_summaries
    target.parent.mkdir(parents=True)
    summaries.to_parquet(target)

    def write(models: dict, name: str = "exp.yaml", seed: int = 0, eval_section: dict | None = None) -> Path:
        for spec in models.values():
            spec.setdefault("kind", "ctr")
            spec.setdefault("image_encoder", {"model": str(clip)})
            spec.setdefault("device", "cpu")
        cfg = {"experiment": {"name": "ctr", "dir": str(root / "exp"), "seed": seed},
               "split": {"protocol": "loo", "name": "loo", "negatives": 20}, "models": models,
               **({"eval": eval_section} if eval_section else {})}
        path = root / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write


def _train(config: Path, name: str, out: Path | None = None, resume: bool = False) -> dict:
    cfg = ExperimentConfig.load(config)
    out = out or cfg.paths.checkpoint(name)
    recipe.train(cfg, name, out, resume=resume)
    return json.loads((out / "run.json").read_text())


# --- building blocks --------------------------------------------------------------------------------------------

def test_history_rows_are_right_aligned_last_n():
    cat = Catalogue(["a", "b", "c", "d"])
    rows = cat.history_rows([["a", "b", "c", "d"], [], ["c"], ["d", "a"]], 3)
    assert rows.tolist() == [[2, 3, 4], [0, 0, 0], [0, 0, 3], [0, 4, 1]]
    with pytest.raises(DataError, match="not in the dataset's item table, e.g. 'zz'"):
        cat.rows(["a", "zz"])


def test_positives_take_every_position_with_its_last_n_items():
    cat = Catalogue(["a", "b", "c", "d"])
    seqs = pd.Series([["a", "b", "c", "d"], ["c", "a"]], index=["v", "u"])
    users = pd.Index(["u", "v"])
    user, target, hist = recipe.positives(seqs, users, cat, 2, "all")
    assert user.tolist() == [2, 2, 2, 1] and target.tolist() == [2, 3, 4, 1]
    assert hist.tolist() == [[0, 1], [1, 2], [2, 3], [0, 3]]
    user, target, hist = recipe.positives(seqs, users, cat, 2, "last")
    assert user.tolist() == [2, 1] and target.tolist() == [4, 1] and hist.tolist() == [[2, 3], [0, 3]]


def test_sampled_negatives_avoid_the_users_training_items():
    cat = Catalogue([f"i{k}" for k in range(6)])
    seqs = pd.Series([["i0", "i1", "i2", "i3", "i4"], ["i5"]], index=["u", "v"])
    users = pd.Index(["u", "v"])
    seen = recipe.seen_keys(seqs, users, cat)
    negs = recipe.sample_negatives(np.random.default_rng(0), np.array([1] * 50 + [2] * 50), 3, len(cat), seen)
    assert (negs[:50] == 6).all()            # user u's only unseen item is i5 (row 6)
    assert not (negs[50:] == 6).any() and negs.min() >= 1


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_dlrm_ignores_padding_and_grouped_scoring_matches(pooling):
    torch.manual_seed(0)
    for dense in (0, 7):
        model = build_model(CTRConfig(embed_dim=8, bottom_mlp=[16], top_mlp=[16], dropout=0.0, history_pooling=pooling),
                            3, 5, torch.arange(6), dense).eval()
        model.features = torch.randn(6, dense)
        hist = torch.tensor([[0, 0, 2, 3], [0, 1, 2, 3]])
        out = model(torch.tensor([1, 1]), torch.tensor([4, 4]), hist)
        short = model(torch.tensor([1]), torch.tensor([4]), torch.tensor([[2, 3]]))
        assert out.shape == (2,) and torch.allclose(out[0], short[0], atol=1e-6)
        assert not torch.allclose(out[0], out[1])  # the extra history item counts
        # Scoring path: each history once for several candidates, content vectors from the precomputed table.
        model.content_table = model.build_content_table(model.features) if dense else None
        cands, group = torch.tensor([4, 5, 4]), torch.tensor([0, 0, 1])
        grouped = model(torch.tensor([1, 2]), cands, hist, group)
        one_by_one = model(torch.tensor([1, 1, 2]), cands, hist[group])
        assert torch.allclose(grouped, one_by_one, atol=1e-5)
        assert torch.allclose(grouped[0], out[0], atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"variant": "image"}, "variant' must be one of"),
    ({"fusion_template": "{item_text} {colour}"}, "unknown field"),
    ({"fusion_template": "{item_text}"}, "must contain {summary}"),
    ({"history_len": 0}, "'history_len' must be at least 1"),
    ({"text_encoder": {"modle": "x"}}, "did you mean 'model'"),
])
def test_bad_model_settings_name_the_key(overrides, message):
    cfg = ExperimentConfig.from_mapping({"models": {"m": {"kind": "ctr", **overrides}}}, source="e.yaml")
    with pytest.raises(ConfigError, match=message):
        cfg.model("m")


def test_item_text_fields_must_exist():
    items = pd.DataFrame({"item_id": ["a"], "title": ["T"], "text": [None]})
    assert item_texts(items, ["title", "text"], "w") == ["T"]
    with pytest.raises(ConfigError, match=r"text_fields \['brand'\]"):
        item_texts(items, ["brand"], "w")


def test_shipped_configs_load_and_validate():
    configs = sorted(Path(__file__).parents[1].glob("configs/mmrec/*.yaml"))
    assert configs, "configs/mmrec/ ships the variants"
    seen = set()
    for path in configs:
        cfg = ExperimentConfig.load(path)
        assert path.read_text().startswith("#")  # each opens with the command that runs it
        for name in cfg.model_names():
            if cfg.raw["models"][name]["kind"] == "ctr":
                seen.add(cfg.model(name).variant)
    assert seen == set(VARIANTS)


# --- training on the synthetic benchmark ------------------------------------------------------------------------

def test_image_features_beat_text_only_on_validation_auc(experiment):
    """The benchmark's signal is visual (colour and pattern are in the image only): CLIP features must help."""
    config = experiment({"text": {"variant": "text", **FAST}, "text_image": {"variant": "text_image", **FAST}})
    text = _train(config, "text")
    image = _train(config, "text_image")
    print(f"valid AUC: text {text['best']:.4f}, text+image {image['best']:.4f}")
    assert image["best"] > text["best"] + 0.01, (image["best"], text["best"])
    assert text["features"]["text"]["dim"] == 384 and image["dense_dim"] == 384 + 32


def test_training_is_deterministic_and_reuses_cached_embeddings(experiment, tmp_path):
    config = experiment({"m": {"variant": "mmrec", "epochs": 2, "patience": 2}}, name="det.yaml")
    a = _train(config, "m", tmp_path / "a")
    b = _train(config, "m", tmp_path / "b")
    assert b["features"]["text"]["encoded"] == 0 and b["features"]["text"]["misses"] == 0  # all from the cache
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["best"] == b["best"]
    logs = [[json.loads(line) for line in (tmp_path / d / "train_log.jsonl").read_text().splitlines()] for d in "ab"]
    timing = ("epoch_seconds", "examples_per_second")
    assert all(r["epoch_seconds"] > 0 and r["examples_per_second"] > 0 for r in logs[0])
    assert [{k: v for k, v in r.items() if k not in timing} for r in logs[0]] == \
        [{k: v for k, v in r.items() if k not in timing} for r in logs[1]]


def test_early_stopping_selects_on_the_experiments_protocol(experiment, tmp_path):
    full = {"protocol": "full", "ks": [5, 10], "metrics": ["hr", "ndcg"]}
    config = experiment({"m": {"variant": "id_only", "epochs": 2, "patience": 2}}, name="full.yaml", eval_section=full)
    info = _train(config, "m", tmp_path / "full")
    assert info["selection"]["protocol"] == "full" and info["selection"]["metric"] == "ndcg@10"
    assert info["selection"]["catalogue"]["items"] == info["n_catalogue"]
    log = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert all(0 <= r["valid_ndcg@10"] <= 1 for r in log) and info["best"] == max(r["valid_ndcg@10"] for r in log)
    sampled = _train(experiment({"m": {"variant": "id_only", "epochs": 1}}, name="sampled.yaml"), "m", tmp_path / "s")
    assert sampled["selection"] == {"stage": "valid", "protocol": "sampled", "metric": "auc", "tie_policy": "expected"}
    with pytest.raises(ConfigError, match="valid_metric: auc is not defined under eval.protocol full"):
        _train(experiment({"m": {"variant": "id_only", "valid_metric": "auc"}}, name="bad.yaml", eval_section=full),
               "m", tmp_path / "bad")


def test_an_interrupted_run_resumes_to_the_same_weights(experiment, tmp_path, monkeypatch):
    config = experiment({"m": {"variant": "text", "epochs": 3, "patience": 3, "dropout": 0.2}}, name="resume.yaml")
    _train(config, "m", tmp_path / "whole")
    real = recipe.run_epoch
    monkeypatch.setattr(recipe, "run_epoch", crash_on_call(real, 3))  # dies in epoch 3
    with pytest.raises(KeyboardInterrupt):
        _train(config, "m", tmp_path / "resumed")
    monkeypatch.setattr(recipe, "run_epoch", real)
    assert not json.loads((tmp_path / "resumed" / "run.json").read_text())["finished"]
    info = _train(config, "m", tmp_path / "resumed", resume=True)
    assert info["finished"] and info["epochs_run"] == 3
    whole, resumed = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    with pytest.raises(ConfigError, match="--no-resume"):
        other = experiment({"m": {"variant": "text", "epochs": 3, "lr": 0.01}}, name="other.yaml")
        _train(other, "m", tmp_path / "resumed", resume=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_and_scores_through_the_cli(experiment, run_cli, variant):
    name = f"cli_{variant}"
    config = experiment({name: {"variant": variant, "epochs": 2, "patience": 2}}, name=f"{name}.yaml")
    code, _, err = run_cli("finetune", config, "--model", name)
    assert code == 0, err
    code, _, err = run_cli("score", config, "--model", name)
    assert code == 0, err
    cfg = ExperimentConfig.load(config)
    paths = cfg.paths
    scores = pd.read_parquet(paths.scores(name))
    from mmrec.data.splits import load_split

    split = load_split(paths.split("loo"))
    candidates = split.candidates_for("test")
    assert len(scores) == len(candidates) and np.isfinite(scores["score"]).all()
    scorer = load_scorer(cfg, name, paths.checkpoint(name))
    merged = candidates.merge(scores, on=["user_id", "stage", "item_id"])
    np.testing.assert_allclose(scorer.score(merged), merged["score"], rtol=1e-6)
    matrix = scorer.score_catalogue(split.examples_for("test").head(2))
    assert matrix.shape == (2, len(scorer.item_ids))
    col = {item: i for i, item in enumerate(scorer.item_ids)}
    first = merged[merged["user_id"] == split.examples_for("test")["user_id"].iloc[0]]
    np.testing.assert_allclose(matrix[0, [col[i] for i in first["item_id"]]], first["score"], rtol=1e-5, atol=1e-5)


def test_mmrec_variant_without_summaries_says_what_to_run(experiment, tmp_path):
    config = experiment({"m": {"variant": "mmrec"}}, name="nosum.yaml")
    raw = yaml.safe_load(config.read_text())
    raw["experiment"]["dir"] = str(tmp_path / "exp")
    (tmp_path / "exp" / "splits").mkdir(parents=True)
    os.symlink((config.parent / "exp" / "splits" / "loo").resolve(), tmp_path / "exp" / "splits" / "loo")
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match="run `mmrec summarize-items .*nosum.yaml` first"):
        _train(config, "m", tmp_path / "out")
