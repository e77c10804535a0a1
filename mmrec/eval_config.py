"""The `eval` and `report` sections of an experiment config (run by the `eval/` stage package; validated here, in
the library, like every section).

`eval` fixes everything a number depends on besides the model: cutoffs, metrics, tie policy, stages and the
protocol (sampled candidates or full catalogue ranking, with or without history masking). All of it is
written into the manifest beside every metrics file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmrec.metrics import DEFAULT_TIE_POLICY, METRICS, TiePolicy


@dataclass
class EvalConfig:
    """Protocol and metrics of `mmrec score` / `mmrec eval`."""

    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    # any of hr, ndcg, mrr, recall, precision (one value per K), gauc, auc (global, sampled protocol only)
    metrics: list[str] = field(default_factory=lambda: ["hr", "ndcg", "mrr", "recall", "precision", "gauc", "auc"])
    tie_policy: TiePolicy = DEFAULT_TIE_POLICY
    stages: list[Literal["test", "valid"]] = field(default_factory=lambda: ["test"])
    # sampled: the split's persisted candidates; full: rank the whole catalogue (models that can score every item)
    protocol: Literal["sampled", "full"] = "sampled"
    # full protocol only: drop the user's history items (except the target) from the ranking
    mask_history: bool = False
    models: list[str] | None = None   # evaluate only these models (default: every model of the config)
    batch_users: int = 1024           # examples scored per batch (full protocol: rows of the catalogue matrix)

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"eval.ks must be a non-empty list of positive integers, got {self.ks}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"eval.metrics: unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
        if not self.stages:
            raise ValueError("eval.stages must name at least one of test, valid")
        if self.mask_history and self.protocol != "full":
            raise ValueError("eval.mask_history applies to protocol 'full' only (sampled negatives never include "
                             "history items)")
        if self.batch_users < 1:
            raise ValueError(f"eval.batch_users must be >= 1, got {self.batch_users}")


@dataclass
class ReportConfig:
    """What `mmrec report` renders (the report's owner extends this section)."""

    title: str | None = None
    formats: list[Literal["md", "html"]] = field(default_factory=lambda: ["md", "html"])
    gallery_users: int = 8
    # report fields below: see docs/report.md
    stage: Literal["test", "valid"] = "test"   # which evaluated stage the tables, plots and gallery show
    gallery_history: int = 10                  # last N history items shown per gallery user
    gallery_candidates: int = 10               # top N candidates shown per user (the true item is always added)
    ranking_model: str | None = None           # model whose ranking orders the gallery (default: best on NDCG@K)
    thumb_size: int = 96                       # thumbnail long side, pixels
    histogram_bins: int = 20

    def __post_init__(self) -> None:
        if not self.formats:
            raise ValueError("report.formats must name at least one of md, html")
        for key in ("gallery_users", "gallery_history", "gallery_candidates"):
            if getattr(self, key) < 0:
                raise ValueError(f"report.{key} must be >= 0, got {getattr(self, key)}")
        if not 8 <= self.thumb_size <= 512:
            raise ValueError(f"report.thumb_size must be between 8 and 512 pixels, got {self.thumb_size}")
        if self.histogram_bins < 1:
            raise ValueError(f"report.histogram_bins must be >= 1, got {self.histogram_bins}")
