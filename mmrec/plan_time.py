"""GPU time of the VLM stages of `mmrec plan`: an estimate from FLOPs, never a measurement.

time = FLOPs / (the GPU's dense bf16 peak x an assumed model FLOPs utilisation), with
FLOPs = 2 x matmul parameters x tokens per forward pass (x3 for a LoRA training step: forward, the backward to the
activations, and the forward again under gradient checkpointing; x2 without it; the frozen base computes no weight
gradients), over the stage's forwards counted from the config. The language model's matmul weights meet every
language-model token (a user's prefix once per user with the prefix cache, else once per candidate), the vision
tower's meet each candidate image's patches. Embedding lookups, the one vocabulary row read and attention's own
T x T products are left out (a few % at these prompt lengths). The GPU and the utilisation are assumptions the
output states beside the number (`mmrec plan --gpu ... --mfu ...`).

Users are counted for the `paper` protocol (one example per user: the split's own fractions of the dataset's users,
or of `--users N` where the dataset is not prepared); other protocols get no time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s.
GPUS: dict[str, tuple[str, float]] = {
    "h100": ("H100 SXM", 989e12),
    "h200": ("H200 SXM", 989e12),
    "a100": ("A100", 312e12),
    "l40s": ("L40S", 362e12),
    "4090": ("RTX 4090", 165e12),
}
DEFAULT_GPU = "h100"
DEFAULT_MFU = 0.4
NOT_MATMUL = ("vision_tower", "multi_modal_projector", "lm_head")  # linears outside the language model's body
VISION = ("vision_tower", "multi_modal_projector")


@dataclass(frozen=True)
class Assumptions:
    """What the time estimate assumes: the GPU type, its utilisation, and (without a dataset) the user count."""

    gpu: str = DEFAULT_GPU
    mfu: float = DEFAULT_MFU
    users: int | None = None

    def __post_init__(self) -> None:
        from mmrec.errors import ConfigError

        if self.gpu not in GPUS:
            raise ConfigError(f"--gpu {self.gpu!r}: not a known GPU; choose one of {', '.join(GPUS)}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"--mfu {self.mfu}: the utilisation is a share of the peak, in (0, 1]")
        if self.users is not None and self.users < 1:
            raise ConfigError(f"--users {self.users}: give the number of users of the dataset (at least 1)")

    @property
    def flops_per_s(self) -> float:
        return GPUS[self.gpu][1] * self.mfu

    def text(self) -> str:
        name, peak = GPUS[self.gpu]
        return f"1 {name} ({peak / 1e12:,.0f} TFLOP/s dense bf16 peak) at an assumed MFU of {self.mfu:.2f}"


@dataclass(frozen=True)
class Users:
    """Users per stage of the split (paper protocol: one example each)."""

    train: int
    valid: int
    test: int
    source: str


def users_of(cfg: Any, dataset_users: int | None, assumed: Assumptions) -> Users | None:
    """The paper protocol's train / valid / test users, as `mmrec.data.protocols.paper` draws them, of `--users` or
    the dataset's users with 2 interactions or more (an upper bound: the split needs 2 distinct items)."""
    split = cfg.section("split")
    n = assumed.users or dataset_users
    if split.protocol != "paper" or not n:
        return None
    f = split.user_fractions
    train, valid = int(f[0] * n), int(f[1] * n)
    source = f"--users {n:,} (assumed)" if assumed.users else f"the dataset's {n:,} users with >= 2 interactions"
    return Users(train, valid, n - train - valid, f"{source}, split {train:,} / {valid:,} / {n - train - valid:,}")


@dataclass(frozen=True)
class PromptCost:
    """The parts of one VLM prompt that cost FLOPs."""

    lm_params: int  # matmul weights of the language model (its linear layers but lm_head)
    vision_params: int  # matmul weights of the vision tower and projector
    prefix: int  # tokens of the user part (preference)
    suffix: int  # median tokens of the candidate part (image tokens, title, question)
    patches: int  # vision-tower tokens of the median candidate image (0 without images)
    cached: bool  # prefix cache: one prefix forward per user, shared by the user's candidates

    @classmethod
    def of(cls, shape: Any, prefix: int, suffix: int, patches: int, cached: bool) -> PromptCost:
        lm = sum(i * o for name, (i, o) in shape.linears.items() if not any(s in name for s in NOT_MATMUL))
        vision = sum(i * o for name, (i, o) in shape.linears.items() if any(s in name for s in VISION))
        return cls(lm, vision, prefix, suffix, patches, cached)

    def tokens(self, users: int, forwards: int, cached: bool | None = None) -> int:
        """Language-model tokens of `forwards` candidates of `users` users."""
        prefixes = users if (self.cached if cached is None else cached) else forwards
        return prefixes * self.prefix + forwards * self.suffix

    def flops(self, users: int, forwards: int, passes: int = 1, cached: bool | None = None) -> float:
        return (2 * self.lm_params * self.tokens(users, forwards, cached) * passes
                + 2 * self.vision_params * forwards * self.patches)


@dataclass
class StageTime:
    """One stage's estimated GPU time and what it was counted from."""

    forwards: int
    tokens: int
    flops: float
    seconds: float
    counted: str

    @classmethod
    def of(cls, flops: float, forwards: int, tokens: int, counted: str, assumed: Assumptions) -> StageTime:
        return cls(forwards, tokens, flops, flops / assumed.flops_per_s, counted)

    def text(self) -> str:
        return (f"GPU time (estimate): {hours(self.seconds)}: {self.forwards:,} forwards, {self.tokens:,} "
                f"language-model tokens, {self.flops:.3g} FLOP; {self.counted}")


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f} GPU hours" if seconds >= 36 else f"{seconds:.3g} GPU seconds"


def score_time(cost: PromptCost, users: Users, cfg: Any, assumed: Assumptions) -> StageTime:
    """`mmrec score`: every persisted candidate of the evaluated stages, one forward each."""
    split = cfg.section("split")
    stages = cfg.section("eval").stages
    parts = [("test", users.test, split.negatives + 1)] if "test" in stages else []
    parts += [("valid", users.valid, split.n_valid_negatives + 1)] if "valid" in stages else []
    n_users = sum(u for _, u, _ in parts)
    forwards = sum(u * c for _, u, c in parts)
    counted = " + ".join(f"{u:,} {s} users x {c} candidates" for s, u, c in parts)
    return StageTime.of(cost.flops(n_users, forwards), forwards, cost.tokens(n_users, forwards),
                        f"{counted}{_cache_text(cost)}", assumed)


def finetune_time(cost: PromptCost, users: Users, cfg: Any, tcfg: Any, assumed: Assumptions) -> StageTime:
    """LoRA training over the training users' rows (positive + `train.negatives`) for `train.epochs`, plus the
    validation passes (`train.valid_users` users x the split's validation candidates)."""
    split = cfg.section("split")
    rows = users.train * (1 + tcfg.negatives)
    passes = 3 if tcfg.gradient_checkpointing else 2
    train_forwards = rows * tcfg.epochs
    steps = math.ceil(rows / (tcfg.batch_size * tcfg.grad_accum)) * tcfg.epochs
    evals = steps // tcfg.eval_every + 1 if tcfg.eval_every else tcfg.epochs
    valid_users = min(tcfg.valid_users or users.valid, users.valid)
    valid_forwards = evals * valid_users * (split.n_valid_negatives + 1)
    flops = (cost.flops(0, train_forwards, passes, cached=False)
             + cost.flops(evals * valid_users, valid_forwards))
    tokens = cost.tokens(0, train_forwards, cached=False) + cost.tokens(evals * valid_users, valid_forwards)
    counted = (f"{users.train:,} training users x {1 + tcfg.negatives} rows x {tcfg.epochs} epochs, whole prompts, "
               f"x{passes} for the backward{' and recomputation' if passes == 3 else ''}; {evals} validation(s) "
               f"of {valid_users:,} users x {split.n_valid_negatives + 1} candidates")
    return StageTime.of(flops, train_forwards + valid_forwards, tokens, counted, assumed)


def signals_forwards(dcfg: Any, users: Users, top_k: int) -> tuple[int, str]:
    """At most how many (user, candidate) pairs the teacher scores for one signals table (paper protocol: a training
    sequence holds at most `split.top_k` items, so at most top_k - 1 examples per user)."""
    positions = top_k - 1
    if dcfg.examples == "all":
        examples, how = users.train * positions, f"{users.train:,} training users x {positions} positions"
    elif dcfg.examples == "last":
        k = min(dcfg.last_k, positions)
        examples, how = users.train * k, f"{users.train:,} training users x last {k}"
    else:
        examples = min(dcfg.sample, users.train * positions)
        how = f"{examples:,} sampled examples"
    per = 1 + {"sampled": dcfg.n_sampled, "student": dcfg.top_m, "both": dcfg.top_m + dcfg.n_sampled}[dcfg.candidates]
    return examples * per, f"{how} x {per} candidates (next item + {dcfg.candidates}), at most"


def signals_time(cost: PromptCost, users: Users, dcfg: Any, top_k: int, items: int | None,
                 assumed: Assumptions) -> StageTime:
    """`mmrec distill-signals`: one forward per (user, candidate) pair, one prefix per user (a user's positions
    share the train-stage preference); `embedding: vlm` adds one item-only forward per training item."""
    forwards, counted = signals_forwards(dcfg, users, top_k)
    flops, tokens = cost.flops(users.train, forwards), cost.tokens(users.train, forwards)
    counted += _cache_text(cost)
    if dcfg.embedding == "vlm" and items:
        item_cost = PromptCost(cost.lm_params, cost.vision_params, 0, cost.suffix, cost.patches, True)
        flops, tokens, forwards = flops + item_cost.flops(0, items), tokens + items * cost.suffix, forwards + items
        counted += f"; + {items:,} item embeddings (at most: every item)"
    elif dcfg.embedding == "vlm":
        counted += "; the item embeddings (one forward per training item) are not counted: no dataset"
    return StageTime.of(flops, forwards, tokens, counted, assumed)


def _cache_text(cost: PromptCost) -> str:
    return (f"; prefix {cost.prefix:,} tokens once per user, candidate part {cost.suffix:,} (median)" if cost.cached
            else f"; whole prompts of {cost.prefix + cost.suffix:,} tokens (median), no prefix cache")
