"""The sequential recipe end to end on split artifacts: resume equality, early stopping, fingerprints, the CLI,
and the sanity ordering on the synthetic benchmark (GRU4Rec, SASRec > popularity > random)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from crash import crash_on_call
from safetensors.torch import load_file

import finetune.checkpoint as checkpoint
import finetune.sequential as recipe
from mmrec.errors import ConfigError, MmrecError
from mmrec.experiment import ExperimentConfig, ExperimentPaths
from mmrec.metrics import evaluate_long
from mmrec.models.base import CatalogueScorer, load_scorer
from mmrec.selection import Selection

TINY = {"hidden_size": 16, "epochs": 3, "batch_size": 32, "max_len": 10, "patience": 5, "device": "cpu"}
MODELS = {
    "pop": {"kind": "pop"},
    "gru": {"kind": "gru4rec", "gru_size": 16, "dropout": 0.2, "loss": "bce", "bce_negatives": 2, **TINY},
    "sas": {"kind": "sasrec", "num_heads": 2, "inner_size": 32, "dropout": 0.2, **TINY},
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread per test process is faster than two fighting
    yield
    torch.set_num_threads(threads)


def experiment(root: Path, split_dir: Path, models: dict, seed: int = 0) -> ExperimentConfig:
    """An experiment in `root` whose splits/loo is (a link to) an existing split directory."""
    (root / "splits").mkdir(parents=True, exist_ok=True)
    if not (root / "splits" / "loo").exists():
        (root / "splits" / "loo").symlink_to(split_dir, target_is_directory=True)
    raw = {"experiment": {"dir": str(root), "seed": seed}, "split": {"protocol": "loo", "name": "loo"},
           "models": models}
    return ExperimentConfig.from_mapping(raw, source=str(root / "experiment.yaml"))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.parametrize("name", ["gru", "sas"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, synthetic_split, monkeypatch, name):
    cfg = experiment(tmp_path / "a", synthetic_split, MODELS)
    straight = recipe.train(cfg, name, tmp_path / "a" / "ckpt")

    cfg_b = experiment(tmp_path / "b", synthetic_split, MODELS)
    real_epoch = recipe.run_epoch
    monkeypatch.setattr(recipe, "run_epoch", crash_on_call(real_epoch, 2))  # dies in the second epoch
    with pytest.raises(KeyboardInterrupt):
        recipe.train(cfg_b, name, tmp_path / "b" / "ckpt")
    state = json.loads((tmp_path / "b" / "ckpt" / "checkpoint" / "state.json").read_text())
    assert (state["loop"]["epoch"] == 1
            and not json.loads((tmp_path / "b" / "ckpt" / "run.json").read_text())["finished"])
    monkeypatch.setattr(recipe, "run_epoch", real_epoch)
    resumed = recipe.train(cfg_b, name, tmp_path / "b" / "ckpt")

    for file in ("model.safetensors", "checkpoint/state.safetensors"):
        a, b = weights(straight / file), weights(resumed / file)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{file}:{key} differs after resume"
    log_a, log_b = train_log(straight), train_log(resumed)
    assert [untimed(r) for r in log_a] == [untimed(r) for r in log_b] and len(log_a) == 3


def train_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def untimed(record: dict) -> dict:
    """A log record without its wall-clock fields (the only ones a rerun may change)."""
    return {k: v for k, v in record.items() if k not in ("epoch_seconds", "examples_per_second")}


def test_train_log_has_seconds_and_examples_per_second_per_epoch(tmp_path, synthetic_split):
    cfg = experiment(tmp_path, synthetic_split, {"sas": {**MODELS["sas"], "epochs": 2}})
    out = recipe.train(cfg, "sas", tmp_path / "ckpt")
    run = json.loads((out / "run.json").read_text())
    for record in train_log(out):
        assert record["epoch_seconds"] > 0
        # every training target is one example: the epoch's targets over its seconds
        assert record["examples_per_second"] == pytest.approx(run["train_targets"] / record["epoch_seconds"], rel=0.01)
    assert run["epoch_seconds_mean"] > 0 and run["examples_per_second_mean"] > 0


def test_early_stopping_keeps_best_weights(tmp_path, synthetic_split, monkeypatch):
    models = {"gru": {**MODELS["gru"], "epochs": 10, "patience": 2}}
    cfg = experiment(tmp_path, synthetic_split, models)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])  # best at epoch 2, then 2 epochs without improvement
    monkeypatch.setattr(Selection, "score", lambda *a, **k: next(scores))
    saved = []
    real_save = checkpoint.save_checkpoint  # TrainState.save writes through it

    def remember(out_dir, model, optimizer, state):
        saved.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        real_save(out_dir, model, optimizer, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", remember)
    out = recipe.train(cfg, "gru", tmp_path / "ckpt")
    run = json.loads((out / "run.json").read_text())
    assert run["finished"] and run["stopped_early"] and run["epochs_run"] == 4 and run["best_epoch"] == 2
    assert run["best"] == pytest.approx(0.7)
    best = weights(out / "model.safetensors")
    assert all(torch.equal(best[k], saved[1][k]) for k in best)   # epoch 2's weights, not the last epoch's
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["best"] for entry in log] == [True, True, False, False]


def test_finished_run_is_kept_and_changed_settings_need_no_resume(tmp_path, synthetic_split, caplog):
    models = {"gru": {**MODELS["gru"], "epochs": 1}}
    cfg = experiment(tmp_path, synthetic_split, models)
    out = recipe.train(cfg, "gru", tmp_path / "ckpt")
    before = (out / "model.safetensors").stat().st_mtime_ns
    recipe.train(cfg, "gru", tmp_path / "ckpt")
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    changed = cfg.with_overrides(["models.gru.lr=0.01"])
    with pytest.raises(ConfigError, match="--no-resume"):
        recipe.train(changed, "gru", tmp_path / "ckpt")
    recipe.train(changed, "gru", tmp_path / "ckpt", resume=False)
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 0.01


def test_scorer_of_a_trained_run(tmp_path, synthetic_split):
    from mmrec.data.splits import load_split

    cfg = experiment(tmp_path, synthetic_split, {"sas": {**MODELS["sas"], "epochs": 1}})
    with pytest.raises(MmrecError, match="mmrec finetune"):
        load_scorer(cfg, "sas", tmp_path / "ckpt")
    recipe.train(cfg, "sas", tmp_path / "ckpt")
    scorer = load_scorer(cfg, "sas", tmp_path / "ckpt")
    assert isinstance(scorer, CatalogueScorer)
    split = load_split(synthetic_split)
    test = split.candidates_for("test")
    scores = scorer.score(test)
    assert scores.shape == (len(test),) and np.isfinite(scores).all()
    examples = split.examples_for("test").head(3)
    catalogue = scorer.score_catalogue(examples)
    assert catalogue.shape == (3, len(scorer.item_ids))
    first = test[test["user_id"] == examples["user_id"].iloc[0]]
    cols = [scorer.item_ids.index(i) for i in first["item_id"]]
    assert np.allclose(catalogue[0, cols], scores[first.index.to_numpy()], atol=1e-5)


def test_finetune_cli_then_score(tmp_path, synthetic_split, run_cli):
    root = tmp_path / "exp"
    experiment(root, synthetic_split, {})
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"experiment": {"dir": str(root)}, "split": {"protocol": "loo", "name": "loo"},
                                      "models": {"sasrec": {**MODELS["sas"], "epochs": 2}, "pop": {"kind": "pop"}}}))
    code, _, err = run_cli("finetune", config, "models.sasrec.epochs=1", "--model", "sasrec")
    assert code == 0, err
    ckpt = ExperimentPaths(root).checkpoint("sasrec")
    assert (ckpt / "model.safetensors").is_file() and json.loads((ckpt / "run.json").read_text())["epochs_run"] == 1
    code, _, err = run_cli("finetune", config, "models.sasrec.lr=0.5", "--model", "sasrec")
    assert code == 2 and "--no-resume" in err and "Traceback" not in err
    code, _, err = run_cli("finetune", config, "--model", "pop")
    assert code == 0, err
    code, _, err = run_cli("score", config, "models.sasrec.epochs=1", "--model", "sasrec", "--model", "pop")
    assert code == 0, err
    for run in ("sasrec", "pop"):
        scores = pd.read_parquet(ExperimentPaths(root).scores(run))
        assert len(scores) > 0 and np.isfinite(scores["score"]).all()
    code, out, err = run_cli("eval", config, "models.sasrec.epochs=1")
    assert code == 0, err
    metrics = {run: json.loads(ExperimentPaths(root).metrics(run).read_text()) for run in ("sasrec", "pop")}
    assert all("hr@10" in json.dumps(m) for m in metrics.values())


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_early_stopping_selects_on_the_experiments_protocol(tmp_path, synthetic_split, run_cli, protocol):
    """The best validation score in run.json is the number `mmrec eval` reports for the kept weights."""
    root = tmp_path / "exp"
    experiment(root, synthetic_split, {})
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"experiment": {"dir": str(root)}, "split": {"protocol": "loo", "name": "loo"},
                                      "models": {"sasrec": {**MODELS["sas"], "epochs": 2}},
                                      "eval": {"protocol": protocol, "ks": [5, 10], "metrics": ["hr", "ndcg"],
                                               "tie_policy": "pessimistic", "stages": ["valid"],
                                               "mask_history": protocol == "full"}}))
    for command in ("finetune", "score", "eval"):
        code, _, err = run_cli(command, config)
        assert code == 0, err
    paths = ExperimentPaths(root)
    run = json.loads((paths.checkpoint("sasrec") / "run.json").read_text())
    assert run["selection"]["protocol"] == protocol and run["selection"]["metric"] == "ndcg@10"
    assert run["selection"]["tie_policy"] == "pessimistic" and run["selection"]["stage"] == "valid"
    if protocol == "full":
        assert run["selection"]["mask_history"] is True and run["selection"]["catalogue"]["items"] > 0
    reported = json.loads(paths.metrics("sasrec").read_text())["metrics"]["valid"]["ndcg@10"]
    assert run["best"] == pytest.approx(reported, abs=1e-6)


def test_full_ranking_uses_one_catalogue_for_every_model(tmp_path, synthetic_split, run_cli):
    from mmrec.data.splits import load_split

    root = tmp_path / "exp"
    experiment(root, synthetic_split, {})
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"experiment": {"dir": str(root)}, "split": {"protocol": "loo", "name": "loo"},
                                      "models": {"sasrec": {**MODELS["sas"], "epochs": 1}, "pop": {"kind": "pop"}},
                                      "eval": {"protocol": "full", "metrics": ["hr", "ndcg"]}}))
    for command in ("finetune", "score"):
        code, _, err = run_cli(command, config)
        assert code == 0, err
    code, out, err = run_cli("eval", config, "--compare", "sasrec", "pop")
    assert code == 0, err
    n_items = len(load_split(synthetic_split).dataset.items)
    paths = ExperimentPaths(root)
    for run in ("sasrec", "pop"):
        ranks = pd.read_parquet(paths.scores(run).with_name(f"{run}.full.parquet"))
        assert (ranks["n_ranked"] == n_items).all(), run
    catalogues = [json.loads(paths.metrics(run).read_text())["manifest"]["protocol"]["catalogue"]
                  for run in ("sasrec", "pop")]
    assert catalogues[0] == catalogues[1] and catalogues[0]["items"] == n_items
    assert "sasrec vs pop" in out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gru4rec", "sasrec"])
def test_default_settings_stop_early_before_the_epoch_cap(tmp_path, synthetic_split, kind):
    """Defaults that converge: with nothing but the device set, early stopping fires before the epoch cap
    (bench/bench_convergence.py measures the same on larger, MovieLens-shaped data; docs/baselines.md)."""
    cfg = experiment(tmp_path, synthetic_split, {kind: {"kind": kind, "device": "cpu"}})
    run = json.loads((recipe.train(cfg, kind, tmp_path / "ckpt") / "run.json").read_text())
    assert run["stopped_early"] and run["epochs_run"] < run["config"]["epochs"]
    assert run["steps_per_epoch"] >= 10 and run["best_epoch"] > 1


# --- sanity on the synthetic benchmark ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    """The synthetic benchmark with 800 users (the 200-user default is too small for ID models to learn item
    similarities from co-occurrence), split leave-one-out with 20 uniform negatives."""
    from data_prep import synthetic
    from mmrec.data.splits import SplitConfig, make_split

    root = tmp_path_factory.mktemp("benchmark")
    synthetic.run(synthetic.SyntheticOptions(seed=0, users=800), root / "dataset")
    make_split(root / "dataset", SplitConfig(protocol="loo", negatives=20, seed=0), root / "splits" / "loo")
    return root


def test_sequential_models_beat_popularity_which_beats_random(benchmark):
    common = {"hidden_size": 32, "batch_size": 64, "max_len": 20, "epochs": 8, "patience": 2, "dropout": 0.2,
              "device": "cpu"}
    models = {"pop": {"kind": "pop"},
              "gru4rec": {"kind": "gru4rec", "gru_size": 64, "lr": 0.01, **common},
              "sasrec": {"kind": "sasrec", "inner_size": 64, "lr": 0.003, **common}}
    cfg = ExperimentConfig.from_mapping({"experiment": {"dir": str(benchmark)},
                                         "split": {"protocol": "loo", "name": "loo"}, "models": models})
    from finetune.cli import train_model
    from mmrec.data.splits import load_split

    test = load_split(benchmark / "splits" / "loo").candidates_for("test")
    groups = pd.factorize(test["user_id"])[0]

    def metrics(scores: np.ndarray) -> dict[str, float]:
        return evaluate_long(groups, test["label"].to_numpy(), scores, ks=[10], metrics=["hr", "ndcg"]).summary

    result = {}
    for name in models:
        out = train_model(cfg, name, ExperimentPaths(benchmark).checkpoint(name))
        result[name] = metrics(load_scorer(cfg, name, out).score(test))
    result["random"] = metrics(np.zeros(len(test)))  # expected tie policy: exactly a uniformly random ranking
    assert result["random"]["hr@10"] == pytest.approx(10 / 21)
    print(json.dumps(result, indent=1))
    for key in ("hr@10", "ndcg@10"):
        assert result["pop"][key] > result["random"][key] + 0.05, result
        assert result["gru4rec"][key] > result["pop"][key] + 0.02, result
        assert result["sasrec"][key] > result["pop"][key] + 0.02, result


def test_only_rank_zero_trains_under_a_multi_process_launcher(tmp_path, synthetic_split, monkeypatch):
    import finetune.pop

    cfg = experiment(tmp_path, synthetic_split, MODELS)
    monkeypatch.setenv("RANK", "1")
    assert recipe.train(cfg, "gru", tmp_path / "gru") == tmp_path / "gru"
    assert finetune.pop.train(cfg, "pop", tmp_path / "pop") == tmp_path / "pop"
    assert not (tmp_path / "gru").exists() and not (tmp_path / "pop").exists()
