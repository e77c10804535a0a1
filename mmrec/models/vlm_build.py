"""Builders of the VLM recommender's pieces from an experiment config: the model's validated settings, its prompt
builder, its context (preferences, titles, images), its prompt encoder, and whole scorers, from a base model or a
training run's checkpoint directory, whose layout (`RUN_FILE`, `ADAPTER_DIR`) is named here. Scoring, training and
benchmarks build through these, so a prompt is made the same way everywhere."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrec.data.splits import load_split
from mmrec.errors import ConfigError, MmrecError
from mmrec.models.vlm_context import VLMContext
from mmrec.models.vlm_encoder import PromptEncoder
from mmrec.models.vlm_forward import vision_dtype
from mmrec.models.vlm_prompt import PromptBuilder
from mmrec.models.vlm_scorer import VLMScorer

RUN_FILE = "vlm_rec.json"
ADAPTER_DIR = "adapter"


def resolve(cfg: Any, name: str) -> Any:
    """The validated `VLMRecConfig` of model `name`, checked to be of kind `vlm` (by its kind, so that this module
    does not import the config module that imports it to load scorers)."""
    mcfg = cfg.model(name)
    if mcfg.kind != "vlm":
        raise ConfigError(f"{cfg.source}: model '{name}' is of kind {mcfg.kind!r}, not 'vlm'")
    return mcfg


def make_builder(loaded: Any, use_image: bool, order: str, max_length: int | None) -> PromptBuilder:
    """A prompt builder with the Yes/No ids read from the tokenizer after a real rendered prompt; `max_length`
    None is the model's context length."""
    from mmrec.vlm.tokens import answer_token_ids

    probe = PromptBuilder(loaded, 0, 0, use_image=use_image, order=order, max_length=max_length)
    yes_id, no_id = answer_token_ids(loaded.tokenizer, "".join(probe.texts("a preference", "a title")))
    return PromptBuilder(loaded, yes_id, no_id, use_image=use_image, order=order, max_length=max_length)


def build_context(cfg: Any, mcfg: Any, split: Any) -> VLMContext:
    """The preferences, titles and images that model `mcfg` prompts with, read from experiment `cfg`'s artifacts."""
    paths = cfg.paths
    return VLMContext.build(split, mcfg.preference_source, mcfg.use_image, paths.user_summaries,
                            paths.item_summaries, mcfg.history_items)


def build_scorer(cfg: Any, name: str, adapter: Path | None = None, desc: str = "score") -> VLMScorer:
    """A scorer for model `name` of experiment `cfg`: the base model, plus `adapter` (a peft directory) if given.
    This is also the Python API for zero-shot scoring without any checkpoint."""
    from mmrec.vlm import load_vlm

    mcfg = resolve(cfg, name)
    split = load_split(cfg.split_dir)
    loaded = load_vlm(mcfg.model)
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise MmrecError(f"{adapter}: no LoRA adapter (adapter_config.json missing); re-run `mmrec finetune`")
        loaded.model = PeftModel.from_pretrained(loaded.model, str(adapter)).eval()
    if mcfg.use_image and loaded.processor is None:
        raise ConfigError(f"model '{name}' shows images but {mcfg.model.name_or_path} has no image processor")
    return make_scorer(loaded, make_encoder(cfg, mcfg, split, loaded), mcfg, desc)


def make_encoder(cfg: Any, mcfg: Any, split: Any, loaded: Any) -> PromptEncoder:
    """The prompt encoder of model `mcfg` on the `loaded` base model: its prompt builder, its context and one item
    cache of `score.cache_mb`, pixels kept in the base's vision dtype."""
    builder = make_builder(loaded, mcfg.use_image, mcfg.prompt_order, mcfg.train.max_length)
    context = build_context(cfg, mcfg, split)
    return PromptEncoder(builder, context, vision_dtype(loaded.model), mcfg.score.cache_mb)


def make_scorer(loaded: Any, encoder: PromptEncoder, mcfg: Any, desc: str) -> VLMScorer:
    """The scorer of the `loaded` model with `encoder`'s prompts and model `mcfg`'s `score` settings."""
    return VLMScorer(loaded.model, encoder, loaded.family, mcfg.score.batch_size, mcfg.score.prefix_cache, desc=desc)


def scorer_from_checkpoint(cfg: Any, name: str, ckpt_dir: Path | None) -> VLMScorer:
    """Base model (+ the run's best LoRA adapter when the model is finetuned) and the experiment's split.

    A model with `finetune: false` (zero-shot, Rec-GPT4V) needs no checkpoint: `ckpt_dir` may be None.
    """
    from mmrec.io import read_json

    mcfg = resolve(cfg, name)
    adapter = None
    if mcfg.finetune:
        if ckpt_dir is None or not (Path(ckpt_dir) / RUN_FILE).is_file():
            raise MmrecError(f"model '{name}' is finetuned but {ckpt_dir} holds no finished run; "
                             f"run `mmrec finetune {cfg.source} --model {name}` first")
        info = read_json(Path(ckpt_dir) / RUN_FILE)
        if not info.get("finished"):
            raise MmrecError(f"{ckpt_dir}: the training run of '{name}' has not finished; re-run `mmrec finetune`")
        adapter = Path(ckpt_dir) / ADAPTER_DIR
    return build_scorer(cfg, name, adapter=adapter, desc=f"score {name}")
