"""`mmrec plan`: its estimates against what the tiny models really hold (tensors, autograd's saved activations, a
real key/value cache, the processor's image tokens) and against published 7B figures; the CLI and `mmrec run`."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from mmrec.models.vlm_rec import LoraSection, TrainSection
from mmrec.plan_memory import Batch, kept_activations, kv_cache_bytes, training
from mmrec.plan_model import NF4_BYTES, shape_of, weight_bytes
from mmrec.vlm.spec import ModelSpec


@pytest.fixture(scope="module")
def tiny_next(tmp_path_factory):
    from mmrec.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("plan") / "llava_next", "llava_next", seed=0)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from mmrec.tiny import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("plan") / "llm", seed=0)


def test_weights_and_lora_state_match_the_loaded_tensors(tiny_next):
    from mmrec.models.vlm_adapter import apply_lora
    from mmrec.vlm import load_vlm

    spec = ModelSpec(name_or_path=str(tiny_next), dtype="bfloat16")
    shape = shape_of(spec, True, "test")
    loaded = load_vlm(spec)
    assert weight_bytes(spec, shape) == sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    lora = LoraSection(r=4)
    model = apply_lora(loaded.model, lora, quantized=False, gradient_checkpointing=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == shape.lora_params(lora.targets, lora.r) > 0
    assert {p.dtype for p in trainable} == {torch.float32}  # peft keeps adapters in float32: 16 bytes with AdamW
    state = training(spec, shape, lora, TrainSection(), "yes_no", Batch(1, 8))
    assert state["LoRA weights+grads+AdamW"] == 16 * sum(p.numel() for p in trainable)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_kept_activations_match_what_autograd_saves(tiny_next, checkpointing, dropout):
    """Bytes of every tensor autograd keeps for backward (parameters excluded, shared storage counted once) on a
    real LoRA forward + full-sequence loss of the tiny LLaVA-NeXT, against the plan's formula (float32 model)."""
    from mmrec.models.vlm_adapter import apply_lora
    from mmrec.models.vlm_forward import lm_loss
    from mmrec.vlm import load_vlm

    spec = ModelSpec(name_or_path=str(tiny_next), dtype="float32")
    shape = shape_of(spec, True, "test")
    lora = LoraSection(dropout=dropout)
    model = apply_lora(load_vlm(spec).model, lora, quantized=False, gradient_checkpointing=checkpointing)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    rows, tokens = 2, 48
    ids = torch.randint(5, 100, (rows, tokens), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        lm_loss(logits, ids)
    log_softmax = rows * tokens * shape.vocab * 4  # cross-entropy keeps its float32 log-softmax
    estimate = kept_activations(shape, lora.targets, dropout, 4, rows * tokens, checkpointing) + log_softmax
    measured = sum(saved.values())
    assert 0.9 < estimate / measured < 1.1, (estimate, measured)


def test_kv_cache_estimate_is_the_real_cache(tiny_next):
    from mmrec.models.vlm_forward import prefix_cache
    from mmrec.vlm import load_vlm

    spec = ModelSpec(name_or_path=str(tiny_next), dtype="float32")
    loaded = load_vlm(spec)
    cache, _, _ = prefix_cache(loaded.model, [[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]], 0)
    real = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_cache_bytes(shape_of(spec, True, "test"), rows=2, tokens=5, dtype_bytes=4) == real


def test_image_tokens_crops_and_pixels_match_the_processor(tiny_next):
    from mmrec.plan_model import Tokens

    tokens = Tokens(tiny_next, True, "test")
    processor = tokens.processor
    for width, height in [(32, 32), (50, 20), (20, 70), (64, 64), (100, 33)]:
        out = processor(text=["<image>"], images=[Image.new("RGB", (width, height))], return_tensors="pt")
        assert tokens.image(width, height) == int((out["input_ids"] == processor.image_token_id).sum())
        assert tokens.tiles(width, height) == out["pixel_values"].shape[1]
        assert tokens.pixel_bytes(width, height) == out["pixel_values"].numel() * 4


def _saved_config(tmp_path, config) -> ModelSpec:
    config.save_pretrained(tmp_path)
    return ModelSpec(name_or_path=str(tmp_path))


def test_published_7b_figures(tmp_path):
    """transformers' default LlamaConfig / MistralConfig are Llama-2-7B and Mistral-7B: 6.74 B and 7.24 B parameters
    as published, 13-15 GB of bf16 weights; a 4-bit (QLoRA) Mistral-7B holds about 4-5 GB."""
    from transformers import LlamaConfig, MistralConfig

    llama = shape_of(_saved_config(tmp_path / "llama", LlamaConfig(torch_dtype="bfloat16")), False, "test")
    assert 6.70e9 < llama.params < 6.78e9
    spec = ModelSpec(name_or_path=str(tmp_path / "mistral"), dtype="bfloat16")
    mistral = shape_of(_saved_config(tmp_path / "mistral", MistralConfig()), False, "test")
    assert 7.20e9 < mistral.params < 7.28e9
    assert 13e9 < weight_bytes(spec, mistral) < 15e9 and 13e9 < llama.params * 2 < 15e9
    qlora = ModelSpec(name_or_path=spec.name_or_path, dtype="bfloat16", quantization="4bit")
    assert 4e9 < weight_bytes(qlora, mistral) < 5e9
    assert weight_bytes(qlora, mistral) < weight_bytes(qlora, mistral, upcast_unquantized=True)
    # LoRA r=8 on all 7 linear layers of 32 Mistral-7B layers: 21.0 M trainable parameters (peft's count).
    assert mistral.lora_params(r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)", 8) == 20_971_520
    assert abs(NF4_BYTES - 0.516) < 0.001


def _tiny_config(tmp_path, model_dir, llm_dir, **train) -> str:
    cfg = {"experiment": {"dir": str(tmp_path / "run")}, "data": {"path": str(tmp_path / "no_data")},
           "split": {"protocol": "paper", "top_k": 6, "negatives": 20},
           "item_summaries": {"model": {"name_or_path": str(model_dir)}, "template": "cover", "batch_size": 4},
           "user_summaries": {"model": {"name_or_path": str(llm_dir)}, "batch_size": 4},
           "models": {"rec": {"kind": "vlm", "model": {"name_or_path": str(model_dir)},
                              "train": {"batch_size": 2, "gradient_checkpointing": True, **train}},
                      "pop": {"kind": "pop"}}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_plan_cli_prints_every_stage_and_refuses_a_max_length_below_the_image(tmp_path, tiny_next, tiny_llm, run_cli):
    config = _tiny_config(tmp_path, tiny_next, tiny_llm, max_length=1024)
    code, out, err = run_cli("plan", config)
    assert code == 0, err
    for stage in ("summarize-items", "summarize-users", "finetune:rec", "score:rec"):
        assert f"\n{stage}  [" in out
    assert "ASSUMED image sizes 500x500 1000x750 1280x720" in out and "fits: needs >=" in out
    code, out, err = run_cli("plan", config, "models.rec.train.max_length=40")
    assert code == 2 and "models.rec.train.max_length' is 40" in err and "set models.rec.train.max_length=" in err
    need = int(err.split("set models.rec.train.max_length=")[1].split()[0])
    assert run_cli("plan", config, f"models.rec.train.max_length={need}")[0] == 0


def test_plan_reads_image_sizes_from_the_dataset(tmp_path, tiny_next, tiny_llm, synthetic_dataset):
    import pandas as pd

    from mmrec.experiment import ExperimentConfig
    from mmrec.plan import data_stats

    cfg = ExperimentConfig.load(_tiny_config(tmp_path, tiny_next, tiny_llm), [f"data.path={synthetic_dataset}"])
    stats = data_stats(cfg)
    items = pd.read_parquet(synthetic_dataset / "items.parquet")
    with_image = items[items["image"].notna()]
    first = with_image.iloc[0]
    with Image.open(synthetic_dataset / first["image"]) as img:
        assert stats.sizes[0] == img.size
    assert len(stats.sizes) == len(with_image) and "image sizes read" in stats.note
    from mmrec.plan import make_plan
    from mmrec.plan_model import Tokens

    plan = make_plan(cfg.with_overrides(["item_summaries.template=fusion"]))
    items_stage = next(s for s in plan.stages if s.stage == "summarize-items")
    tokens = Tokens(tiny_next, True, "test")
    most = max(tokens.image(w, h) for w, h in stats.sizes)
    assert items_stage.tokens_max > most  # the largest image's tokens plus the template, title and description
    assert [s.stage for s in plan.stages] == ["summarize-items", "summarize-users", "finetune:rec", "score:rec"]


def test_unknown_hub_id_offline_is_a_clear_error(tmp_path, tiny_next, tiny_llm, run_cli):
    config = _tiny_config(tmp_path, tiny_next, tiny_llm)
    code, _, err = run_cli("plan", config, "models.rec.model.name_or_path=nobody/no-such-model-7b")
    assert code == 2 and "models.rec.model" in err and "nobody/no-such-model-7b" in err and "offline" in err


def test_run_checks_the_plan_before_any_stage(tmp_path, tiny_next, tiny_llm, run_cli):
    config = _tiny_config(tmp_path, tiny_next, tiny_llm, max_length=40)
    code, out, err = run_cli("run", config)
    assert code == 2 and "models.rec.train.max_length' is 40" in err and "[      run]" not in out
    assert not (tmp_path / "run" / ".mmrec").exists()  # no stage started
    code, out, err = run_cli("run", config, "--dry-run")  # a dry run says it would refuse, and what would run
    assert code == 0 and "[would refuse]" in out and "models.rec.train.max_length' is 40" in out
    code, out, err = run_cli("run", config, "--dry-run", "--only", "summarize-items")  # only stages about to run count
    assert code == 0 and "[would refuse]" not in out
    code, out, err = run_cli("run", config, "--dry-run", "--no-plan")
    assert code == 0 and "would run" in out and "prompt tokens" not in out


PAPER_CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "mllm_msr").glob("*.yaml"))


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_paper_config_gets_a_budget(path, tmp_path, tiny_next, run_cli):
    """Offline, from the shipped family files (the datasets do not exist here: assumed image sizes, said so).
    Every max_length a config sets must fit its longest image prompt; a refusal may only name a max_length the
    config leaves at the dataclass default."""
    from mmrec.config import load_yaml
    from mmrec.vlm.families import SUPPORTED

    raw = load_yaml(path)
    # tiny_synthetic.yaml names a model `mmrec tiny` builds: the tiny LLaVA-NeXT stands in
    overrides = [f"models.{name}.model.name_or_path={tiny_next}" for name, spec in raw["models"].items()
                 if spec.get("kind") == "vlm" and spec["model"]["name_or_path"] not in SUPPORTED]
    code, out, err = run_cli("plan", path, *overrides)
    assert "ASSUMED image sizes" in out
    for name, spec in raw["models"].items():
        if spec.get("kind") == "vlm":
            assert f"\nscore:{name}  [" in out
            set_here = "max_length" in (spec.get("train") or {})
            if set_here:
                assert f"models.{name}.train.max_length={spec['train']['max_length']} (fits" in out
    refused = [k.split("'")[0] for k in err.split("key '")[1:]]
    assert code == 0 or all("max_length" not in (raw["models"][k.split(".")[1]].get("train") or {}) for k in refused)


# Published sizes (billions of parameters, as the model cards and papers state them).
PUBLISHED = {"llava-hf/llava-1.5-7b-hf": 7.06, "llava-hf/llava-v1.6-mistral-7b-hf": 7.57,
             "llava-hf/llava-onevision-qwen2-7b-ov-hf": 8.03, "meta-llama/Meta-Llama-3-8B-Instruct": 8.03,
             "mistralai/Mistral-7B-Instruct-v0.2": 7.24, "Qwen/Qwen2.5-7B-Instruct": 7.62}


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED))
def test_plan_shapes_of_the_shipped_families_have_their_published_sizes(hub_id):
    from mmrec.vlm.families import is_vlm

    shape = shape_of(ModelSpec(name_or_path=hub_id), is_vlm(hub_id), "test")
    assert abs(shape.params / 1e9 - PUBLISHED[hub_id]) < 0.01
    bf16 = weight_bytes(ModelSpec(name_or_path=hub_id, dtype="bfloat16"), shape)
    nf4 = weight_bytes(ModelSpec(name_or_path=hub_id, dtype="bfloat16", quantization="4bit"), shape)
    assert 14e9 < bf16 < 16.2e9 and 4e9 < nf4 < 6.5e9  # 4-bit: ~0.52 B per LM linear weight, the rest bf16
