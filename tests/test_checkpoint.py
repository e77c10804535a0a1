"""The training-state helpers every recipe shares: exact round trips, per-process RNG, the run guard,
and checkpoints in the layouts the recipes wrote before this module existed."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file, save_file

from finetune.checkpoint import (
    META_FILE,
    TENSORS_FILE,
    PreviousRun,
    capture_rng,
    check_previous_run,
    clear_stale,
    has_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    process_rng,
    run_fingerprint,
    save_checkpoint,
)
from mmrec.config import to_dict
from mmrec.errors import ConfigError
from mmrec.experiment import ExperimentConfig
from mmrec.io import hash_json, write_json


@dataclass
class Loop:
    epoch: int = 0
    best: float = -math.inf


def _trained(seed: int = 0, steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        _step(model, optimizer)
    return model, optimizer


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(8, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path):
    model, optimizer = _trained()
    save_checkpoint(tmp_path / "state", model, optimizer, Loop(epoch=3, best=0.5), note="kept")
    _step(model, optimizer)  # what the uninterrupted run does next (it draws its batch from the RNG)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    fresh, fresh_opt = _trained(seed=1, steps=0)
    torch.manual_seed(123)  # another RNG position, which the checkpoint must undo
    saved = load_checkpoint(tmp_path / "state", fresh_opt)
    fresh.load_state_dict(saved.model)
    assert saved.loop == {"epoch": 3, "best": 0.5} and Loop(**saved.loop) == Loop(3, 0.5)
    assert saved.meta["note"] == "kept" and saved.meta["processes"] == 1
    _step(fresh, fresh_opt)
    assert all(torch.equal(expected[k], v) for k, v in fresh.state_dict().items())


def test_optimizer_state_round_trips_through_tensors_and_json(tmp_path):
    _, optimizer = _trained()
    tensors, meta = optimizer_state(optimizer)
    assert set(tensors) == {f"optim.{i}.{k}" for i in range(4) for k in ("step", "exp_avg", "exp_avg_sq")}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    meta = json.loads(json.dumps(meta))
    _, other = _trained(seed=1, steps=0)
    load_optimizer_state(other, load_file(str(tmp_path / "t.safetensors")), meta)
    a, b = optimizer.state_dict(), other.state_dict()
    assert json.loads(json.dumps(a["param_groups"])) == b["param_groups"]  # betas come back as a list
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


def test_one_process_writes_the_layout_older_checkpoints_have(tmp_path):
    model, optimizer = _trained()
    save_checkpoint(tmp_path / "state", model, optimizer, Loop())
    keys = set(load_file(str(tmp_path / "state" / TENSORS_FILE)))
    assert {k for k in keys if k.startswith("rng.")} == {"rng.torch"} | {f"rng.cuda.{i}" for i in
                                                                          range(torch.cuda.device_count())}
    assert {k for k in keys if k.startswith("model.")} == {f"model.{k}" for k in model.state_dict()}
    meta = json.loads((tmp_path / "state" / META_FILE).read_text())
    assert {"loop", "param_groups", "optim_scalars"} <= set(meta) and has_checkpoint(tmp_path / "state")


def test_each_process_gets_its_own_rng_back(tmp_path):
    model, optimizer = _trained()
    states = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        states.append(capture_rng(all_devices=False))
    save_checkpoint(tmp_path / "state", model.state_dict(), optimizer, Loop(), states)
    tensors = load_file(str(tmp_path / "state" / TENSORS_FILE))
    assert {"rng.0.torch", "rng.1.torch"} <= set(tensors) and "rng.torch" not in tensors
    for rank, seed in ((1, 11), (0, 10), (5, 10)):  # rank 5: a run resumed on more processes gets process 0's
        load_checkpoint(tmp_path / "state", optimizer, rank=rank)
        drawn = torch.rand(3)
        torch.manual_seed(seed)
        assert torch.equal(drawn, torch.rand(3))


def test_packed_per_process_rng_of_earlier_vlm_checkpoints_still_restores():
    torch.manual_seed(7)
    cpu = torch.get_rng_state()
    packed = torch.cat([torch.tensor([cpu.numel()], dtype=torch.int64).view(torch.uint8), cpu])
    states = process_rng({"rng.0": packed, "model.w": torch.zeros(1)}, rank=0)
    assert torch.equal(states["torch"], cpu)
    with pytest.raises(ConfigError, match="--no-resume"):
        process_rng({"model.w": torch.zeros(1)}, rank=0)


def test_run_guard_refuses_other_settings_keeps_finished_runs_and_resumes_unfinished(tmp_path):
    run, state = tmp_path / "run.json", tmp_path / "checkpoint"
    assert check_previous_run(run, state, "m", "abc", resume=True) == PreviousRun(None, False, False)
    write_json({"fingerprint": "abc", "finished": False}, run)
    assert not check_previous_run(run, state, "m", "abc", resume=True).resuming  # nothing saved yet
    model, optimizer = _trained(steps=1)
    save_checkpoint(state, model, optimizer, Loop())
    guard = check_previous_run(run, state, "m", "abc", resume=True)
    assert guard.resuming and not guard.finished and guard.record["fingerprint"] == "abc"
    with pytest.raises(ConfigError, match=rf"{tmp_path}.*'m'.*--no-resume"):
        check_previous_run(run, state, "m", "other", resume=True)
    fresh = check_previous_run(run, state, "m", "other", resume=False)
    assert not fresh.finished and not fresh.resuming
    write_json({"fingerprint": "abc", "finished": True, "best": 0.7}, run)
    done = check_previous_run(run, state, "m", "abc", resume=True)
    assert done.finished and not done.resuming and done.record["best"] == 0.7


def test_clear_stale_removes_an_older_runs_files_and_nothing_else(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / META_FILE).write_text("{}")
    (tmp_path / "model.safetensors").write_text("x")
    (tmp_path / "items.parquet").write_text("x")
    clear_stale(tmp_path, "checkpoint", "model.safetensors", "train_log.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.parquet"]
    clear_stale(tmp_path / "new", "checkpoint")
    assert (tmp_path / "new").is_dir()


def test_split_dir_is_the_named_split_inside_the_experiment(tmp_path):
    cfg = ExperimentConfig.from_mapping({"experiment": {"dir": str(tmp_path)}, "split": {"name": "loo"}})
    assert cfg.split_dir == tmp_path / "splits" / "loo"


def test_epoch_bookkeeping_keeps_the_best_and_stops_after_patience():
    from finetune.checkpoint import TrainState

    state = TrainState()
    marks = [state.end_epoch(s, validated=True, patience=2, loss=1.0) for s in (0.5, 0.7, 0.6, float("nan"))]
    assert marks == [True, True, False, False] and state.stopped_early
    assert (state.epoch, state.best, state.best_epoch, state.bad_epochs) == (4, 0.7, 1, 2)
    assert state.history[1] == {"epoch": 2, "loss": 1.0, "best": True}
    unvalidated = TrainState()
    assert all(unvalidated.end_epoch(float("nan"), validated=False, patience=1) for _ in range(3))
    assert unvalidated.best_epoch == 2 and unvalidated.best == -math.inf and not unvalidated.stopped_early


# One model of each trained kind, every setting off its default where that is allowed, speed knobs included.
FINGERPRINT_MODELS = {
    "sas": {"kind": "sasrec", "hidden_size": 32, "max_len": 20, "device": "cpu", "score_batch_size": 64},
    "gru": {"kind": "gru4rec", "loss": "bce", "batch_size": 32, "device": "cpu", "score_batch_size": 7},
    "ctr": {"kind": "ctr", "variant": "id_only", "history_len": 5, "device": "cpu", "score_batch_size": 99},
    "vlm": {"kind": "vlm", "variant": "recgpt4v", "history_items": 3, "score": {"batch_size": 4}},
}


def test_run_fingerprint_keeps_the_values_of_the_recipes_own_formulas():
    """Runs trained before the recipes shared `run_fingerprint` must keep their fingerprints (a changed one would
    refuse to resume them, or retrain them): the three formulas the recipes had, written out here."""
    cfg = ExperimentConfig.from_mapping({"experiment": {"seed": 7}, "models": FINGERPRINT_MODELS}, source="e.yaml")
    cands, dataset, selection = "c" * 64, "d" * 64, {"metric": "ndcg@10", "protocol": "sampled"}

    def sequential_formula(name: str) -> str:  # finetune/sequential.py and finetune/ctr.py
        settings = {k: v for k, v in to_dict(cfg.model(name)).items() if k not in ("device", "score_batch_size")}
        extra = {"dataset": dataset} if name == "ctr" else {}
        return hash_json({"model": settings, "seed": cfg.seed, "candidates": cands, **extra, "selection": selection})

    vlm_settings = {k: v for k, v in to_dict(cfg.model("vlm")).items() if k != "score"}  # finetune/vlm_lora.py
    assert run_fingerprint(cfg.model("vlm"), cfg.seed, cands) == hash_json(
        {"model": vlm_settings, "seed": cfg.seed, "candidates": cands})
    for name in ("sas", "gru"):
        assert run_fingerprint(cfg.model(name), cfg.seed, cands, selection=selection) == sequential_formula(name)
    assert run_fingerprint(cfg.model("ctr"), cfg.seed, cands, dataset=dataset, selection=selection) \
        == sequential_formula("ctr")


def test_run_fingerprint_ignores_speed_knobs_only():
    def fingerprint(**overrides) -> str:
        cfg = ExperimentConfig.from_mapping({"models": {"m": {"kind": "sasrec", **overrides}}}, source="e.yaml")
        return run_fingerprint(cfg.model("m"), 0, "c" * 64)

    assert fingerprint() == fingerprint(device="cpu", score_batch_size=3)
    assert fingerprint() != fingerprint(hidden_size=32)
    with pytest.raises(ValueError, match="model"):
        run_fingerprint(ExperimentConfig.from_mapping({"models": {"m": {"kind": "pop"}}}).model("m"), 0, "c", model=1)
