"""Every shipped config under configs/ loads, validates and dry-runs; accelerate configs parse as accelerate's own.

The experiment configs are for GPUs and downloaded weights, so here they are only validated and dry-run: the
dry run must plan every stage without touching the network, loading a model or writing a file.
"""
from __future__ import annotations

import dataclasses
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from mmrec.config import load_layered_yaml
from mmrec.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ACCELERATE = CONFIGS / "accelerate"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
EXPERIMENTS = [p for p in ALL_YAML if ACCELERATE not in p.parents]
ACCELERATE_CONFIGS = [p for p in ALL_YAML if ACCELERATE in p.parents]
# the experiments whose `data` section prepares the dataset (`mmrec prep` options) rather than naming one
PREPARING = [p for p in EXPERIMENTS if not (load_layered_yaml(p).get("data") or {}).get("path")]
LLAVA = "llava-hf/llava-v1.6-mistral-7b-hf"
LLAMA3 = "meta-llama/Meta-Llama-3-8B-Instruct"


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CONFIGS)) for p in paths]


def opening_comment(path: Path) -> str:
    """The comment block a config opens with (its leading lines that start with '#')."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_configs_are_shipped():
    names = set(ids(ALL_YAML))
    for dataset in ("microlens", "amazon_baby", "amazon_games"):
        assert {f"mllm_msr/{dataset}_paper.yaml", f"mllm_msr/{dataset}_loo.yaml"} <= names
        assert {f"mllm_msr/ablations/{dataset}_direct_preference.yaml",
                f"mllm_msr/ablations/{dataset}_no_image_summary.yaml"} <= names
    assert "mllm_msr/qlora_single_gpu.yaml" in names
    assert {f"mllm_msr/ablations/microlens_block_size_{b}.yaml" for b in (1, 2, 4, 5)} <= names
    assert len(ACCELERATE_CONFIGS) >= 2


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_opens_with_the_commands_that_run_it(path):
    comment = opening_comment(path)
    assert comment, f"{path} must open with a comment block"
    assert f"mmrec run configs/{path.relative_to(CONFIGS)}" in comment
    raw = yaml.safe_load(path.read_text())
    if (raw.get("data") or {}).get("path"):  # a prepared dataset: say how to prepare it
        assert "mmrec prep" in comment and f"--out {raw['data']['path']}" in comment


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_validates(path):
    cfg = ExperimentConfig.load(path)
    cfg.validate_all()
    assert cfg.model_names(), "an experiment trains or scores at least one model"
    assert not Path(cfg.raw["experiment"]["dir"]).is_absolute()
    for name in cfg.model_names():
        spec = getattr(cfg.model(name), "model", None)
        assert not getattr(spec, "trust_remote_code", False)


@pytest.mark.parametrize("path", PREPARING, ids=ids(PREPARING))
def test_data_options_are_options_of_the_source(path):
    """A `data` section that prepares its dataset gives only options its source has (its `mmrec prep` flags)."""
    from data_prep.config import load_options

    data = ExperimentConfig.load(path).section("data")
    assert dataclasses.is_dataclass(load_options(data, where=str(path)))


def _shared_nodes(node, seen: dict[int, str], where: str) -> list[str]:
    if not isinstance(node, (dict, list)):
        return []
    if id(node) in seen:
        return [f"{where} is the same object as {seen[id(node)]}"]
    seen[id(node)] = where
    children = node.items() if isinstance(node, dict) else enumerate(node)
    return [s for k, v in children for s in _shared_nodes(v, seen, f"{where}.{k}")]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_no_yaml_alias_shares_a_section(path):
    """`&x` / `*x` would share one mapping: an override of one model would silently change another. Merge keys
    (`{<<: *x}`) copy, and are what the configs use."""
    raw = yaml.safe_load(path.read_text())
    assert _shared_nodes(raw, {}, "config") == []


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run tried to open a network connection: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_dry_run(path, tmp_path, run_cli, no_network):
    out_dir = tmp_path / "run"
    code, out, err = run_cli("run", path, f"experiment.dir={out_dir}", "--dry-run")
    assert code == 0, err
    cfg = ExperimentConfig.load(path)
    planned = [line.split()[2] for line in out.splitlines() if line.startswith("[would run]")]
    expected = ["prep", "split", *(["summarize-items"] if cfg.has("item_summaries") else []),
                *(["summarize-users"] if cfg.has("user_summaries") else [])]
    assert planned[:len(expected)] == expected
    for name in cfg.model_names():
        assert f"finetune:{name}" in planned and f"score:{name}" in planned
    assert planned[-2:] == ["eval", "report"]
    assert not out_dir.exists(), "a dry run writes nothing"


def _main_config(ablation: Path) -> Path:
    dataset = next(d for d in ("microlens", "amazon_baby", "amazon_games") if ablation.stem.startswith(d))
    return CONFIGS / "mllm_msr" / f"{dataset}_paper.yaml"


ABLATIONS = sorted((CONFIGS / "mllm_msr" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", ABLATIONS, ids=ids(ABLATIONS))
def test_ablation_states_only_its_change(path):
    """An ablation builds on its paper config (`base:`) and states only what it changes: its directory and title,
    the preference setting under study, and which of the main run's models and stages it drops."""
    own = yaml.safe_load(path.read_text())
    assert (path.parent / own["base"]).resolve() == _main_config(path)
    assert set(own) <= {"base", "remove", "experiment", "user_summaries", "report"}
    assert set(own["experiment"]) == {"name", "dir"} and set(own["report"]) == {"title"}
    assert len(own["user_summaries"]) == 1 and set(own["user_summaries"]) <= {"mode", "block_size",
                                                                                 "use_image_summaries"}


@pytest.mark.parametrize("path", ABLATIONS, ids=ids(ABLATIONS))
def test_ablation_differs_from_its_main_run_only_in_the_preference(path):
    """Same dataset, split (so the same candidates), item summaries and recommender as the full run."""
    abl, main = ExperimentConfig.load(path).raw, ExperimentConfig.load(_main_config(path)).raw
    assert abl["data"] == main["data"] and abl["split"] == main["split"] and abl["eval"] == main["eval"]
    if "item_summaries" in abl:
        assert abl["item_summaries"] == main["item_summaries"]
    else:
        assert abl["user_summaries"]["use_image_summaries"] is False
    main_cfg, abl_cfg = ExperimentConfig.from_mapping(main), ExperimentConfig.from_mapping(abl)
    assert abl_cfg.model_names() == ["mllm_msr"]
    assert abl_cfg.model("mllm_msr") == main_cfg.model("mllm_msr")
    changed = {k for k, v in abl["user_summaries"].items() if main["user_summaries"].get(k) != v}
    assert changed and changed <= {"mode", "block_size", "use_image_summaries"}
    assert abl["experiment"]["dir"] != main["experiment"]["dir"]


PAPER = {"microlens": (6, [0.8, 0.1, 0.1], "cover"), "amazon_baby": (11, [0.7, 0.1, 0.2], "product"),
         "amazon_games": (11, [0.7, 0.1, 0.2], "product")}


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_paper_protocol_and_models(dataset):
    """The paper-faithful settings: top-k by popularity, random user split, 1 train/valid and 20 test negatives,
    the paper's models; the leave-one-out config keeps everything but the split."""
    top_k, fractions, template = PAPER[dataset]
    paper = ExperimentConfig.load(CONFIGS / "mllm_msr" / f"{dataset}_paper.yaml")
    split = paper.section("split")
    assert (split.protocol, split.top_k, split.user_fractions) == ("paper", top_k, fractions)
    assert (split.negatives, split.n_valid_negatives, split.train_negatives) == (20, 1, 1)
    assert split.sampling_data == "all"  # its training negatives avoid every item of the user, as the reference code
    assert paper.section("item_summaries").model.name_or_path == LLAVA
    assert paper.section("item_summaries").template == template
    users = paper.section("user_summaries")
    assert (users.model.name_or_path, users.mode, users.block_size, users.do_sample) == (LLAMA3, "recurrent", 3, False)
    mllm = paper.model("mllm_msr")
    assert (mllm.model.name_or_path, mllm.variant, mllm.lora.r, mllm.train.lr) == (LLAVA, "mllm_msr", 8, 2e-5)
    assert mllm.train.batch_size * mllm.train.grad_accum == 8
    kinds = {paper.model(n).kind for n in paper.model_names()}
    assert kinds == {"vlm", "ctr", "pop", "gru4rec", "sasrec"}
    variants = {paper.model(n).variant for n in paper.model_names() if paper.model(n).kind == "vlm"}
    assert variants == {"mllm_msr", "tallrec", "zero_shot", "recgpt4v"}

    loo = ExperimentConfig.load(CONFIGS / "mllm_msr" / f"{dataset}_loo.yaml")
    assert loo.section("split").protocol == "loo" and loo.section("split").n_valid_negatives == 20
    assert loo.section("data") == paper.section("data")
    assert loo.model_names() == paper.model_names()
    loo_mllm = loo.model("mllm_msr")  # LOO validates fewer users: each brings 21 candidates, not 2
    assert replace(loo_mllm, train=replace(loo_mllm.train, valid_users=mllm.train.valid_users)) == mllm


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_paper_split_runs_on_real_data(dataset, synthetic_dataset, tmp_path, run_cli):
    """The shipped split section, run for real through `mmrec run` on the synthetic dataset: history at most
    top_k - 1 items, users split by the configured fractions, 21 test and 2 validation candidates each."""
    from mmrec.data.splits import load_split

    path = CONFIGS / "mllm_msr" / f"{dataset}_paper.yaml"
    code, out, err = run_cli("run", path, f"data.path={synthetic_dataset}", f"experiment.dir={tmp_path}",
                             "--only", "prep", "--only", "split")
    assert code == 0, err
    top_k, fractions, _ = PAPER[dataset]
    split = load_split(tmp_path / "splits" / "paper")
    examples, candidates = split.examples, split.candidates
    assert examples["user_id"].is_unique and examples["history"].map(len).max() == top_k - 1
    shares = examples["stage"].value_counts(normalize=True)
    for stage, share in zip(("train", "valid", "test"), fractions):
        assert abs(shares[stage] - share) < 0.02
    per_example = candidates.groupby(["user_id", "stage"]).agg(n=("label", "size"), pos=("label", "sum"))
    assert set(per_example.loc[(slice(None), "test"), "n"]) == {21}
    assert set(per_example.loc[(slice(None), "valid"), "n"]) == {2}
    assert set(per_example["pos"]) == {1}
    assert len(split.train_negatives) == (examples["stage"] == "train").sum()


def test_qlora_config_quantizes_only_the_recommender():
    cfg = ExperimentConfig.load(CONFIGS / "mllm_msr" / "qlora_single_gpu.yaml")
    assert cfg.model("mllm_msr").model.quantization == "4bit"
    assert cfg.model("mllm_msr").train.gradient_checkpointing
    assert cfg.section("item_summaries").model.quantization is None
    assert cfg.section("user_summaries").model.quantization is None


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=ids(ACCELERATE_CONFIGS))
def test_accelerate_config(path):
    """Parsed by accelerate itself (unknown keys are an error there); the comment shows how to launch it; an FSDP
    config, turned by accelerate's launcher into the processes' environment, is one the recipe accepts (FSDP2)."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType
    from test_finetune_vlm_distributed import accelerate_launch_env

    from finetune.distributed import launch_problem

    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.distributed_type in (DistributedType.MULTI_GPU, DistributedType.FSDP)  # DDP or FSDP2
    env = accelerate_launch_env(path)
    assert launch_problem(env) is None
    if cfg.distributed_type == DistributedType.FSDP:
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2" and path.name.startswith("fsdp_")
    assert cfg.num_processes >= 2 and cfg.num_processes % cfg.num_machines == 0
    assert not cfg.use_cpu
    comment = opening_comment(path)
    assert f"accelerate launch --config_file configs/accelerate/{path.name}" in comment
    assert "-m finetune" in comment
    for config in {w for w in comment.split() if w.startswith("C=configs/")}:
        assert (ROOT / config.removeprefix("C=")).is_file(), f"{path.name} names a missing config {config}"
