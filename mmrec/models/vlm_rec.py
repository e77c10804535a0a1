"""MLLM-MSR stage 2: a vision-language model that reads a user's preference, a candidate's image and title, and
answers Yes or No; its score is P(Yes) from one forward pass (`mmrec.models.vlm_scorer`).

One model kind ("vlm") covers the paper's recommender and the baselines that reuse its scorer; `variant` picks
the defaults, every flag can still be set on its own:

| variant    | image | preference                         | finetuned | paper row        |
|------------|-------|------------------------------------|-----------|------------------|
| mllm_msr   | yes   | summaries (recurrent preference)   | LoRA      | MLLM-MSR         |
| tallrec    | no    | summaries                          | LoRA      | TALLRec          |
| recgpt4v   | yes   | history (titles + image summaries) | no        | Rec-GPT4V (VST)  |
| zero_shot  | yes   | summaries                          | no        | "LLaVA"          |

`preference_source: truth` reads the synthetic benchmark's true-preference sentences (`user_preferences.parquet`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mmrec.vlm.spec import ModelSpec

if TYPE_CHECKING:
    from mmrec.experiment import ExperimentConfig
    from mmrec.models.vlm_scorer import VLMScorer

Variant = Literal["mllm_msr", "tallrec", "recgpt4v", "zero_shot"]
PreferenceSource = Literal["summaries", "truth", "history"]

# variant -> (use_image, preference_source, finetune)
VARIANTS: dict[str, tuple[bool, str, bool]] = {
    "mllm_msr": (True, "summaries", True),
    "tallrec": (False, "summaries", True),
    "recgpt4v": (True, "history", False),
    "zero_shot": (True, "summaries", False),
}

# Every linear layer of the language model; CLIP has modules with the same names, hence the anchor.
LM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class LoraSection:
    """LoRA on the language model. Paper: r=8 (alpha/dropout not given). Reference code: r=16, alpha=32,
    dropout=0.1, gaussian init (`r: 16, alpha: 32, dropout: 0.1, init: gaussian`)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: str = LM_LINEAR
    init: Literal["default", "gaussian"] = "default"
    train_vision: bool = False  # also train the whole vision tower (saved with the adapter)
    train_projector: bool = False  # also train the multimodal projector

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("lora needs r >= 1, alpha >= 1 and 0 <= dropout < 1")


@dataclass
class TrainSection:
    """Optimisation. lr 2e-5 / effective batch 8 are the paper's settings for a 7B model; tiny models need more."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 8  # per process
    grad_accum: int = 1
    warmup_steps: int = 0  # optimizer steps
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    clip: float = 1.0  # max gradient norm; 0 disables clipping
    # tokens per prompt + answer, every path (training, validation, scoring); None = the language model's context
    # length. The preference is cut, never the image tokens; a row that cannot fit is reported and scored NaN.
    max_length: int | None = None
    negatives: int = 1  # sampled negatives per training positive (the paper's 1:1)
    eval_every: int = 0  # validation AUC every N optimizer steps; 0 = at the end of each epoch only
    valid_users: int | None = None  # validate on at most this many validation users (seeded); None = all
    checkpoint_every: int = 100  # optimizer steps between resumable checkpoints
    precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    merge: bool = False  # also write base + best adapter merged into full weights (`merged/`)
    log_every: int = 10  # optimizer steps between log lines

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train needs lr > 0, epochs >= 1, batch_size >= 1 and grad_accum >= 1")
        too_short = self.max_length is not None and self.max_length < 8
        if self.negatives < 0 or self.checkpoint_every < 1 or self.log_every < 1 or too_short:
            raise ValueError("train needs negatives >= 0, checkpoint_every >= 1, log_every >= 1, max_length >= 8")


@dataclass
class ScoreSection:
    """Scoring: candidates per forward pass, whether a user's prompt prefix is computed once and reused, and the
    host memory of the encoded-item cache (per process; training shares it with validation)."""

    batch_size: int = 32
    prefix_cache: bool = True
    # MiB of encoded items (ids + pixels in the model's dtype) and prefixes kept in memory; beyond it, items are
    # re-processed from their image. LLaVA-NeXT: ~3.3 MiB per item in bf16 (~600 items), LLaVA-1.5: ~0.7 MiB.
    cache_mb: float = 2048

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.cache_mb < 0:
            raise ValueError("score needs batch_size >= 1 and cache_mb >= 0")


@dataclass
class VLMRecConfig:
    """A VLM Yes/No recommender (see the module docstring for the variants)."""

    kind: Literal["vlm"] = "vlm"
    model: ModelSpec = field(default_factory=ModelSpec)
    variant: Variant = "mllm_msr"
    use_image: bool | None = None  # None: from the variant
    preference_source: PreferenceSource | None = None
    finetune: bool | None = None
    history_items: int = 10  # recgpt4v / preference_source=history: the last N history items in the prompt
    prompt_order: Literal["preference_first", "image_first"] = "preference_first"
    # answer: next-token loss on the answer (Yes/No + end of sequence); full: the reference code's loss over every
    # prompt token too; yes_no: cross-entropy over the (Yes, No) logits only, the quantity scoring reads.
    loss: Literal["answer", "full", "yes_no"] = "answer"
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    score: ScoreSection = field(default_factory=ScoreSection)

    def __post_init__(self) -> None:
        image, source, finetune = VARIANTS[self.variant]
        self.use_image = image if self.use_image is None else self.use_image
        self.preference_source = source if self.preference_source is None else self.preference_source
        self.finetune = finetune if self.finetune is None else self.finetune
        if self.history_items < 1:
            raise ValueError("history_items must be >= 1")

    @property
    def prefix_cacheable(self) -> bool:
        return self.prompt_order == "preference_first" and self.score.prefix_cache


def load_scorer(cfg: "ExperimentConfig", name: str, ckpt_dir: Path) -> "VLMScorer":
    """The scorer of model `name` from its checkpoint directory (base model + best adapter, or base alone)."""
    from mmrec.models.vlm_build import scorer_from_checkpoint

    return scorer_from_checkpoint(cfg, name, Path(ckpt_dir))


