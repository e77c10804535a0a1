"""The VLM LoRA recipe on several processes (two CPU processes over gloo, started by torchrun as `accelerate
launch` starts them): DDP and FSDP2 runs complete, the loss falls, the adapter loads, the validation AUC they
recorded equals a one-process re-scoring of that adapter, and an FSDP run resumes exactly. Plus the pieces:
the user split, the lockstep, the launch checks."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from crash import crash_on_call
from safetensors.torch import load_file
from test_finetune_vlm import QUICK_TRAIN, _adapter, _run_info
from test_vlm_rec import make_experiment, tiny_models, vlm_model  # noqa: F401  (fixture)

from finetune.distributed import launch_problem, make_accelerator, user_share
from mmrec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# FSDP runs get what `accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml` exports (`fsdp_env`: its
# FSDP variables, the layer classes renamed for the tiny Llama-based LLaVA). accelerate itself would run DDP on CPU
# processes; the recipe switches them to FSDP2. The vision tower's layers are FSDP units of their own, as in the
# shipped configs: text-only (prefix) and image forwards then all-gather different modules, which validation's
# lockstep must pair.
# 400 training rows, 25 steps of 2 x 8 rows. The default answer loss (answer token + end of sequence over the whole
# vocabulary) falls steadily from the first steps; 3 validation users split 2:1, so the processes run different
# numbers of forwards while validating.
TWO_PROC_TRAIN = {**QUICK_TRAIN, "lr": 1e-2, "batch_size": 8, "epochs": 1, "valid_users": 3, "log_every": 1,
                  "eval_every": 0, "checkpoint_every": 1000}
# Launched instead of `-m finetune`: every process crashes right after the first checkpoint is written, then the
# same command runs again and must resume from it (the processes and their process group are reused).
CRASH_THEN_RESUME = """import sys
import finetune.vlm_lora as recipe
from finetune.distributed import end_process
from mmrec.cli import main
real, calls = recipe.checkpoint, []
def crash_after_first(*args, **kwargs):
    real(*args, **kwargs)
    calls.append(1)
    if len(calls) == 1:
        raise KeyboardInterrupt
recipe.checkpoint = crash_after_first
assert main(["finetune", *sys.argv[1:]]) == 130
end_process(main(["finetune", *sys.argv[1:]]))
"""


def _torchrun(target: list[str], args: list[str], extra_env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMREC_NO_PROGRESS": "1", **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           *target, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def accelerate_launch_env(config_file: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file FILE -m finetune ...` gives its processes, made by
    accelerate's own launcher code (no process is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "-m", "finetune", "CONFIG"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def fsdp_env() -> dict[str, str]:
    env = accelerate_launch_env(ROOT / "configs" / "accelerate" / "fsdp_8gpu.yaml")
    fsdp = {k: v for k, v in env.items() if k.startswith("FSDP_") or k == "ACCELERATE_USE_FSDP"}
    assert fsdp["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "MistralDecoderLayer,CLIPEncoderLayer"
    return {**fsdp, "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer,CLIPEncoderLayer"}


def _losses(ckpt: Path) -> list[float]:
    log = [json.loads(x) for x in (ckpt / "train_log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in log if "loss" in e]


def _one_process_auc(cfg: Path, name: str, adapter: Path | None) -> float:
    """The validation AUC of `adapter` (None: the base model), re-scored in this process with `mmrec score`'s
    scorer."""
    from finetune.vlm_data import validation_rows
    from mmrec.data.splits import load_split
    from mmrec.experiment import ExperimentConfig
    from mmrec.metrics import global_auc
    from mmrec.models.vlm_build import build_scorer, resolve

    exp = ExperimentConfig.load(cfg)
    mcfg = resolve(exp, name)
    valid = validation_rows(load_split(exp.split_dir), mcfg.train.valid_users, exp.seed)
    return global_auc(valid["label"].to_numpy(), build_scorer(exp, name, adapter=adapter).score(valid))


def _check_finished_two_process_run(cfg: Path, ckpt: Path, llava: Path) -> None:
    from peft import PeftModel

    from mmrec.vlm import ModelSpec, load_vlm

    info = _run_info(ckpt)
    assert info["finished"] and info["processes"] == 2
    losses = _losses(ckpt)
    assert len(losses) == 25 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses  # 5.94 -> 5.34
    peft = PeftModel.from_pretrained(load_vlm(ModelSpec(name_or_path=str(llava))).model, str(ckpt / "adapter"))
    assert any("lora_A" in n for n, _ in peft.named_parameters())
    # the AUC the two processes computed from their gathered shares = one process scoring every row
    assert info["best_auc"] == pytest.approx(_one_process_auc(cfg, "m", ckpt / "adapter"), abs=1e-12)


def test_two_processes_with_gloo(tmp_path, tiny_models, synthetic_split):
    """DDP: torchrun, as `accelerate launch --multi_gpu` runs it (accelerate's own --cpu launcher starts one
    process); the recipe's Accelerator then sets up DDP over gloo. A zero-shot model is validated by both too."""
    cfg = make_experiment(tmp_path, synthetic_split, {
        "m": vlm_model(tiny_models["llava"], train=TWO_PROC_TRAIN),
        "z": vlm_model(tiny_models["llava"], variant="zero_shot", train={"valid_users": 3})})
    done = _torchrun(["-m", "finetune"], [str(cfg)])
    assert done.returncode == 0, done.stderr[-3000:]
    _check_finished_two_process_run(cfg, tmp_path / "checkpoints" / "m", tiny_models["llava"])
    zero_shot = _run_info(tmp_path / "checkpoints" / "z")
    assert zero_shot["finished"] and zero_shot["valid_missing"] == 0
    assert zero_shot["best_auc"] == pytest.approx(_one_process_auc(cfg, "z", None), abs=1e-12)


def test_fsdp2_on_two_processes_trains_validates_and_resumes_exactly(tmp_path, tiny_models, synthetic_split):
    # the same 25 steps of 2 x 8 rows, each accumulated from two micro-batches of 4 (FSDP2's no_sync path)
    models = {"m": vlm_model(tiny_models["llava"], lora={"dropout": 0.1},
                             train={**TWO_PROC_TRAIN, "batch_size": 4, "grad_accum": 2, "checkpoint_every": 10})}
    whole = make_experiment(tmp_path / "whole", synthetic_split, models)
    env = fsdp_env()
    done = _torchrun(["-m", "finetune"], [str(whole)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "switched from DDP to FSDP2" in done.stderr  # accelerate alone would run DDP on CPU processes
    ckpt = tmp_path / "whole" / "checkpoints" / "m"
    _check_finished_two_process_run(whole, ckpt, tiny_models["llava"])
    # the checkpoint holds the full (gathered) trainable tensors and optimizer state, as one process writes it
    state = load_file(str(ckpt / "last" / "state.safetensors"))
    adapter = _adapter(ckpt)
    lora = {k for k in state if k.startswith("model.") and "lora_" in k}
    assert len(lora) == len(adapter) and all(state[k].shape == adapter[_adapter_key(k)].shape for k in lora)
    assert {k.split(".", 2)[2] for k in state if k.startswith("optim.")} == {"step", "exp_avg", "exp_avg_sq"}

    cut = make_experiment(tmp_path / "cut", synthetic_split, models)
    script = tmp_path / "crash_then_resume.py"
    script.write_text(CRASH_THEN_RESUME)
    resumed = _torchrun([str(script)], [str(cut)], {**env, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 10/25" in resumed.stderr
    a, b = _adapter(ckpt), _adapter(tmp_path / "cut" / "checkpoints" / "m")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def _adapter_key(state_key: str) -> str:
    """model.base_model.model.X.lora_A.default.weight -> base_model.model.X.lora_A.weight (peft's file names)."""
    return state_key.removeprefix("model.").replace(".default.", ".")


# Two processes with different plans of text-only and image forwards on a model whose "vision" and "text" parts are
# FSDP units of their own (each all-gathered only when it runs): the lockstep pairs them, every output is right.
LOCKSTEP = """import copy
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from finetune.distributed import Lockstep, end_process

class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.vision, self.text = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, input_ids, pixel_values=None):
        x = input_ids if pixel_values is None else input_ids + self.vision(pixel_values)
        return self.text(x)

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = Toy()
reference = copy.deepcopy(model)
fully_shard(model.vision)
fully_shard(model.text)
fully_shard(model)
dummy = {Lockstep.TEXT: {"input_ids": torch.ones(1, 4)},
         Lockstep.IMAGE: {"input_ids": torch.ones(1, 4), "pixel_values": torch.ones(1, 4)}}
plan = {0: "ITI", 1: "TTTTI"}[rank]
with torch.no_grad(), Lockstep(model, dummy.__getitem__, torch.device("cpu")) as lock:
    for i, kind in enumerate(plan):
        x = {"input_ids": torch.full((2, 4), float(i + 10 * rank))}
        if kind == "I":
            x["pixel_values"] = torch.randn(2, 4)
        torch.testing.assert_close(model(**x), reference(**x))
print(f"rank {rank}: {len(plan)} forwards, {lock.throwaway} throwaway")
end_process(0)
"""


def test_lockstep_pairs_different_forward_plans_on_a_sharded_model(tmp_path):
    script = tmp_path / "lockstep.py"
    script.write_text(LOCKSTEP)
    done = _torchrun([str(script)], [], {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 waits through rank 1's three extra text forwards and one more; rank 1 mirrors rank 0's last two
    assert "rank 0: 3 forwards, 4 throwaway" in done.stdout and "rank 1: 5 forwards, 2 throwaway" in done.stdout


def test_user_shares_are_disjoint_whole_users_covering_every_row():
    valid = pd.DataFrame({"user_id": list("aaabbcddde"), "stage": "valid", "item_id": [str(i) for i in range(10)]})
    for n in (1, 2, 3, 7):
        shares = [user_share(valid, r, n) for r in range(n)]
        assert sorted(np.concatenate(shares).tolist()) == list(range(10))
        owners = [set(valid["user_id"].iloc[s]) for s in shares]
        assert all(not (owners[i] & owners[j]) for i in range(n) for j in range(i + 1, n))
    assert user_share(valid, 0, 2).tolist() == [0, 1, 2, 3, 4, 5]  # contiguous blocks: a, b, c | d, e


def test_unsupported_launches_are_refused_with_what_is_supported(tmp_path, run_cli, tiny_models, synthetic_split,
                                                                  monkeypatch):
    env = fsdp_env()
    assert launch_problem({}) is None and launch_problem(env) is None
    assert "fsdp_version: 2" in launch_problem({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})
    assert "gradient_checkpointing" in launch_problem({**env, "FSDP_ACTIVATION_CHECKPOINTING": "true"})
    assert "DDP" in launch_problem(env, quantized=True)
    assert "FSDP2" in launch_problem({"ACCELERATE_USE_DEEPSPEED": "true"})
    cfg = make_experiment(tmp_path, synthetic_split, {"m": vlm_model(tiny_models["llava"], train=QUICK_TRAIN)})
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    code, _, err = run_cli("finetune", cfg)
    assert code != 0 and "DeepSpeed is not supported" in err and "Traceback" not in err
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # FSDP_VERSION unset: accelerate's default, FSDP1
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        make_accelerator("no")


def test_a_checkpoint_takes_an_optimizer_state_dict_and_gives_it_back(tmp_path):
    from finetune.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "a", dict(model.state_dict()), optimizer.state_dict(), {"step": 1})
    save_checkpoint(tmp_path / "b", model, optimizer, {"step": 1})
    a = load_checkpoint(tmp_path / "a", None)
    b = load_checkpoint(tmp_path / "b", None)
    assert a.optimizer["state"].keys() == b.optimizer["state"].keys() == {0, 1}
    for i in (0, 1):
        assert all(torch.equal(a.optimizer["state"][i][k], optimizer.state_dict()["state"][i][k])
                   for k in ("step", "exp_avg", "exp_avg_sq"))
    assert [g["params"] for g in a.optimizer["param_groups"]] == [[0, 1]]


def test_a_model_fsdp_cannot_wrap_gets_a_config_error_naming_its_layer_classes():
    from accelerate.utils import DistributedType

    from finetune.distributed import prepare

    class NoSuchLayer:  # accelerate's FSDP2 prepare, when the config names a class the model does not have
        distributed_type = DistributedType.FSDP

        def prepare(self, *objects):
            raise ValueError("Could not find the transformer layer class MistralDecoderLayer in the model.")

    model = torch.nn.Linear(2, 2)
    model._no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    wanted = r"MistralDecoderLayer.*fsdp_transformer_layer_cls_to_wrap.*LlamaDecoderLayer"
    with pytest.raises(ConfigError, match=wanted):
        prepare(NoSuchLayer(), model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_checkpoint_resumes_only_on_as_many_processes_as_wrote_it(tmp_path, run_cli, tiny_models, synthetic_split,
                                                                      monkeypatch):
    import finetune.vlm_lora as recipe

    cfg = make_experiment(tmp_path, synthetic_split, {"m": vlm_model(tiny_models["llava"], train=QUICK_TRAIN)})
    real = recipe.checkpoint
    monkeypatch.setattr(recipe, "checkpoint", crash_on_call(real, 1, after=True))
    assert run_cli("finetune", cfg, "models.m.train.valid_users=2")[0] == 130
    monkeypatch.setattr(recipe, "checkpoint", real)
    meta_file = tmp_path / "checkpoints" / "m" / "last" / "state.json"
    meta = json.loads(meta_file.read_text())
    assert meta["processes"] == 1
    meta_file.write_text(json.dumps({**meta, "processes": 2}))  # as if two processes had written it
    code, _, err = run_cli("finetune", cfg, "models.m.train.valid_users=2")
    assert code != 0 and "written by 2 process(es)" in err and "--no-resume" in err


def test_the_main_processs_decision_or_error_reaches_every_process():
    from types import SimpleNamespace

    from finetune.distributed import on_main

    main = SimpleNamespace(is_main_process=True)
    assert on_main(main, lambda: {"resuming": True}) == {"resuming": True}

    def refuse():
        raise ConfigError("another run's settings")

    with pytest.raises(ConfigError, match="another run's settings"):
        on_main(main, refuse)


def test_end_process_outside_a_launch_is_a_plain_exit():
    from finetune.distributed import end_process

    with pytest.raises(SystemExit) as exit_:
        end_process(3)
    assert exit_.value.code == 3
