"""The `distill:` section of a student model (`kind: sasrec | gru4rec | ctr`): which teacher, which training examples
and candidates the teacher scores, and how the ranking-distillation loss weighs the teacher's top items.

Defaults are DLLM2Rec's (Cui et al., RecSys 2024, public code `istarryn/DLLM2Rec`): top-K = 10, loss weight 0.8,
position / confidence / consistency weights 0.3 / 0.5 / 0.1, rank temperature 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DistillSection:
    """Distil model `teacher` (a `kind: vlm` model of the same config) into this student."""

    teacher: str
    # Which run of the teacher: None = the teacher's run of the student's seed (`teacher@seed<k>` under
    # experiment.seeds, else `teacher`); a run id (e.g. `teacher`) shares one teacher between every student seed.
    teacher_run: str | None = None
    # Training examples scored (one example = a training user's prefix and its next item):
    # all = every position, last = the last `last_k` positions of each user, sample = `sample` examples at random.
    examples: Literal["all", "last", "sample"] = "last"
    last_k: int = 1
    sample: int = 1000
    # Candidates per example: `sampled` training items, the top-M of a trained plain student run (`student_run`,
    # two-stage, closest to serving), or both. The example's own next item is always one of them.
    candidates: Literal["sampled", "student", "both"] = "sampled"
    n_sampled: int = 20
    student_run: str | None = None
    top_m: int = 20
    seed: int = 0  # candidate sampling; independent of the student's seed so student seeds share one artifact
    # Importance-aware ranking distillation.
    top_k: int = 10
    weight: float = 0.8
    position: bool = True
    confidence: bool = True
    consistency: bool = True
    gamma_position: float = 0.3
    gamma_confidence: float = 0.5
    gamma_consistency: float = 0.1
    rank_temperature: float = 1.0
    # Embedding distillation: `vlm` adds embedding_weight x Linear(teacher item embedding) to each item's embedding.
    embedding: Literal["none", "vlm"] = "none"
    embedding_weight: float = 0.2

    def __post_init__(self) -> None:
        for key in ("last_k", "sample", "n_sampled", "top_m", "top_k"):
            if getattr(self, key) < 1:
                raise ValueError(f"'distill.{key}' must be at least 1, got {getattr(self, key)}")
        if self.weight < 0 or min(self.gamma_position, self.gamma_confidence, self.gamma_consistency) < 0:
            raise ValueError("distill.weight and the distill.gamma_* weights must be >= 0")
        if self.rank_temperature <= 0:
            raise ValueError(f"'distill.rank_temperature' must be positive, got {self.rank_temperature}")
        if not (self.position or self.confidence or self.consistency):
            raise ValueError("distill: switch on at least one of position, confidence, consistency")
        if self.candidates in ("student", "both") and not self.student_run:
            raise ValueError(f"distill.candidates: {self.candidates} needs 'student_run' (a finished plain student "
                             "run, e.g. sasrec) whose top-M items the teacher scores")

    def signal_settings(self) -> dict:
        """What determines the teacher-signals artifact (the loss settings do not)."""
        keys = ("examples", "last_k", "sample", "candidates", "n_sampled", "student_run", "top_m", "seed", "embedding")
        return {k: getattr(self, k) for k in keys}
