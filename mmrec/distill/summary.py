"""How much of the teacher-student gap distillation closed: per seed, (distilled - plain) / (teacher - plain),
and its mean with a 95% t-interval over seeds."""
from __future__ import annotations

import math


def gap_closed(teacher: float, plain: float, distilled: float) -> float:
    """Share of the plain student's gap to the teacher that the distilled student closed (1 = reached the teacher,
    above 1 = passed it, below 0 = worse than plain); NaN when the plain student is not below the teacher."""
    gap = teacher - plain
    return (distilled - plain) / gap if gap > 0 else math.nan


def gap_summary(teacher: list[float], plain: list[float], distilled: list[float]) -> dict[str, float]:
    """Per-seed shares (a single teacher value is used for every seed) and their mean ± 95% CI half-width."""
    from mmrec.metrics import mean_ci

    if len(teacher) == 1:
        teacher = teacher * len(plain)
    if not len(teacher) == len(plain) == len(distilled):
        raise ValueError("gap_summary needs one teacher value, or one per seed, and one plain and distilled per seed")
    shares = [gap_closed(t, p, d) for t, p, d in zip(teacher, plain, distilled)]
    mean, half, n = mean_ci(shares)
    return {"mean": mean, "ci95": half, "n": n, "per_seed": shares}
