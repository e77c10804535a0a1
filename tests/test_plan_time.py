"""`mmrec plan`'s GPU-time estimate: forwards counted from the config by hand, FLOPs from the tiny model's own linear
layers, the GPU and utilisation assumptions, shared signals, and the CLI's options."""
from __future__ import annotations

import pytest
import torch
import yaml

from mmrec.plan_time import GPUS

USERS = 100  # paper protocol 0.8 / 0.1 / 0.1: 80 training, 10 validation, 10 test users


@pytest.fixture(scope="module")
def tiny_next(tmp_path_factory):
    from mmrec.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("plan_time") / "llava_next", "llava_next", seed=0)


def _config(tmp_path, model_dir) -> str:
    distill = {"teacher": "rec", "examples": "last", "last_k": 2, "candidates": "sampled", "n_sampled": 3}
    cfg = {"experiment": {"dir": str(tmp_path / "run")}, "data": {"path": str(tmp_path / "no_data")},
           "split": {"protocol": "paper", "top_k": 6, "negatives": 20, "valid_negatives": 4},
           "models": {"rec": {"kind": "vlm", "model": {"name_or_path": str(model_dir)},
                              "train": {"batch_size": 4, "epochs": 3, "negatives": 1,
                                        "gradient_checkpointing": True}},
                      "student": {"kind": "sasrec", "distill": distill},
                      "student_again": {"kind": "gru4rec", "distill": dict(distill)}},
           "eval": {"stages": ["test"]}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _linear_weights(model_dir) -> tuple[int, int]:
    """(language-model, vision tower + projector) weights of nn.Linear layers, from the loaded model itself."""
    from mmrec.vlm import load_vlm
    from mmrec.vlm.spec import ModelSpec

    model = load_vlm(ModelSpec(name_or_path=str(model_dir), dtype="float32")).model
    lm = vision = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if "vision_tower" in name or "multi_modal_projector" in name:
                vision += module.weight.numel()
            elif "lm_head" not in name:
                lm += module.weight.numel()
    return lm, vision


def test_forwards_flops_and_seconds_by_hand(tmp_path, tiny_next):
    from mmrec.experiment import ExperimentConfig
    from mmrec.plan import make_plan
    from mmrec.plan_time import Assumptions

    plan = make_plan(ExperimentConfig.load(_config(tmp_path, tiny_next)), assumed=Assumptions("a100", 0.5, USERS))
    stages = {s.stage: s for s in plan.stages}
    assert (plan.users.train, plan.users.valid, plan.users.test) == (80, 10, 10)
    lm, vision = _linear_weights(tiny_next)
    score, signals, train = stages["score:rec"].time, stages["signals:student"].time, stages["finetune:rec"].time
    # the prompt's token counts are the plan's own (tests/test_plan.py checks those); its weights are the model's
    cost = _teacher_cost(tmp_path, tiny_next)
    assert (cost.lm_params, cost.vision_params) == (lm, vision)
    prefix, suffix, patches = cost.prefix, cost.suffix, cost.patches
    assert prefix > 0 and suffix > 0 and patches > 0 and cost.cached
    per_second = 312e12 * 0.5
    # score: 10 test users x 21 candidates; one prefix per user, one candidate part per candidate
    assert score.forwards == 210
    assert score.tokens == 10 * prefix + 210 * suffix
    assert score.flops == 2 * lm * (10 * prefix + 210 * suffix) + 2 * vision * 210 * patches
    assert score.seconds == pytest.approx(score.flops / per_second)
    # signals: 80 training users x the last 2 positions x (next item + 3 sampled), one prefix per user
    assert signals.forwards == 80 * 2 * 4 == 640
    assert signals.flops == 2 * lm * (80 * prefix + 640 * suffix) + 2 * vision * 640 * patches
    # the second student has the same teacher and signal settings: the cache serves it, nothing counted
    assert stages["signals:student_again"].time is None
    assert "cached teacher scores are reused" in " ".join(stages["signals:student_again"].notes)
    # finetune: 80 users x (1 positive + 1 negative) x 3 epochs, whole prompts, x3 (backward + recomputation),
    # validation after each epoch on 10 users x 5 candidates (prefix-cached)
    rows = 80 * 2 * 3
    assert train.forwards == rows + 3 * 10 * 5
    train_flops = 2 * lm * rows * (prefix + suffix) * 3 + 2 * vision * rows * patches
    valid_flops = 2 * lm * (30 * prefix + 150 * suffix) + 2 * vision * 150 * patches
    assert train.flops == train_flops + valid_flops
    assert "GPU time of the timed stages (estimate)" in plan.text() and "1 A100 (312 TFLOP/s" in plan.text()


def _teacher_cost(tmp_path, tiny_next):
    """The prompt cost the plan uses for the teacher (vlm_stages' second result)."""
    from mmrec.experiment import ExperimentConfig
    from mmrec.plan import data_stats, users_of, vlm_stages
    from mmrec.plan_time import Assumptions

    cfg = ExperimentConfig.load(_config(tmp_path, tiny_next))
    data = data_stats(cfg)
    return vlm_stages(cfg, "rec", data, users_of(cfg, None, Assumptions(users=USERS)))[1]


def test_cli_states_its_assumptions_and_scales_with_them(tmp_path, tiny_next, run_cli):
    config = _config(tmp_path, tiny_next)
    code, out, err = run_cli("plan", config, "--users", str(USERS))
    assert code == 0, err
    assert "at an assumed MFU of 0.40" in out and "H100 SXM (989 TFLOP/s dense bf16 peak)" in out
    assert "80 training users x last 2 x 4 candidates" in out and "10 test users x 21 candidates" in out
    code, slow, err = run_cli("plan", config, "--users", str(USERS), "--gpu", "4090", "--mfu", "0.2")
    assert code == 0 and "RTX 4090 (165 TFLOP/s" in slow and "MFU of 0.20" in slow
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        run_cli("plan", config, "--gpu", "tpu")
    code, _, err = run_cli("plan", config, "--mfu", "1.5")
    assert code == 2 and "--mfu 1.5" in err
    # without a dataset and without --users the plan says why there is no time
    code, out, _ = run_cli("plan", config)
    assert code == 0 and "GPU time: not estimated" in out and "--users N" in out


def test_every_gpu_has_a_dense_bf16_peak():
    assert set(GPUS) == {"h100", "h200", "a100", "l40s", "4090"}
    assert all(100e12 < peak < 2000e12 for _, peak in GPUS.values())


@pytest.mark.parametrize("settings, forwards", [
    ({"examples": "last", "last_k": 3, "n_sampled": 20}, 80 * 3 * 21),
    ({"examples": "last", "last_k": 9, "n_sampled": 20}, 80 * 5 * 21),  # a paper sequence has top_k - 1 = 5 positions
    ({"examples": "all", "n_sampled": 10}, 80 * 5 * 11),
    ({"examples": "sample", "sample": 50, "n_sampled": 20}, 50 * 21),
    ({"candidates": "student", "student_run": "sasrec", "top_m": 7}, 80 * 1 * 8),
    ({"candidates": "both", "student_run": "sasrec", "top_m": 7, "n_sampled": 4}, 80 * 1 * 12),
])
def test_signal_forwards_by_hand(settings, forwards):
    from mmrec.distill.config import DistillSection
    from mmrec.plan_time import Users, signals_forwards

    users = Users(train=80, valid=10, test=10, source="test")
    counted, how = signals_forwards(DistillSection(teacher="t", **settings), users, top_k=6)
    assert counted == forwards and "at most" in how
