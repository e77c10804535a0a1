"""Model selection on the experiment's protocol: the validation number an epoch recipe stops on.

Early stopping picks the epoch whose weights are reported, so it must use the numbers the experiment reports:
under `eval.protocol: sampled` the split's persisted validation candidates, under `full` the validation examples
ranked over the experiment's catalogue (with `eval.mask_history`), both under `eval.tie_policy` and by the same
code as `mmrec score` / `mmrec eval` (`mmrec.ranking`). `Selection.record()` is what `run.json` states.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mmrec.errors import ConfigError
from mmrec.metrics import (
    DEFAULT_TIE_POLICY,
    TOPK_METRICS,
    evaluate_long,
    global_auc,
    metric_name,
)
from mmrec.ranking import catalogue_manifest, experiment_catalogue, full_ranking_result, rank_catalogue

AUTO = "auto"


def parse_selection_metric(name: str) -> tuple[str, int | None]:
    """'ndcg@10' -> ('ndcg', 10); 'auc' -> ('auc', None)."""
    metric, _, k = name.lower().partition("@")
    if metric == "auc" and not k:
        return "auc", None
    if metric not in TOPK_METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"'valid_metric' must be auc or one of {', '.join(TOPK_METRICS)} with a cutoff, like "
                         f"ndcg@10; got {name!r}")
    return metric, int(k)


def sampled_metric(scores: np.ndarray, candidates: pd.DataFrame, metric: str, k: int | None,
                   tie_policy: str = DEFAULT_TIE_POLICY) -> float:
    """`metric@k` averaged over the (user, stage) rows of sampled candidates (label 1 = target), or the global
    AUC for metric 'auc', by `mmrec.metrics` under `tie_policy`: the numbers `mmrec eval` reports."""
    labels = candidates["label"].to_numpy()
    if metric == "auc":
        return float(global_auc(labels, scores, tie_policy=tie_policy))
    groups, _ = pd.factorize(pd.MultiIndex.from_arrays([candidates["user_id"], candidates["stage"]]))
    ev = evaluate_long(groups, labels, scores, ks=[k], tie_policy=tie_policy, metrics=[metric])
    return float(ev.summary[metric_name(metric, k)])


@dataclass
class Selection:
    """How an epoch recipe scores its validation stage: protocol, metric and everything that changes the number."""

    protocol: str
    metric: str                       # e.g. "ndcg@10" or "auc"
    tie_policy: str = DEFAULT_TIE_POLICY
    mask_history: bool = False
    catalogue: list[str] | None = None  # full protocol: the experiment's catalogue

    @classmethod
    def of(cls, cfg: Any, split: Any, valid_metric: str, where: str) -> "Selection":
        """The selection of an experiment: its eval section's protocol and tie policy; `valid_metric` 'auto'
        means AUC under the sampled protocol and NDCG@<largest K> under full ranking (AUC needs sampled negatives)."""
        ev = cfg.section("eval")
        metric = valid_metric
        if metric == AUTO:
            metric = "auc" if ev.protocol == "sampled" else f"ndcg@{max(ev.ks)}"
        name, _ = parse_selection_metric(metric)
        if name == "auc" and ev.protocol == "full":
            raise ConfigError(f"{where}.valid_metric: auc is not defined under eval.protocol full (no sampled "
                              "negatives); select on a top-K metric such as ndcg@10, or valid_metric: auto")
        full = ev.protocol == "full"
        return cls(ev.protocol, metric.lower(), ev.tie_policy, bool(ev.mask_history and full),
                   experiment_catalogue(split) if full else None)

    def record(self) -> dict[str, Any]:
        """What run.json states (and the training fingerprint includes)."""
        out: dict[str, Any] = {"stage": "valid", "protocol": self.protocol, "metric": self.metric,
                               "tie_policy": self.tie_policy}
        if self.protocol == "full":
            out.update(mask_history=self.mask_history, catalogue=catalogue_manifest(self.catalogue or []))
        return out

    def available(self, split: Any) -> bool:
        """Whether the split has anything to validate on under this protocol."""
        if self.protocol == "sampled":
            return bool((split.candidates["stage"] == "valid").any())
        return bool((split.examples["stage"] == "valid").any())

    def score(self, scorer: Any, split: Any, batch_size: int = 512) -> float:
        """The validation number of `scorer` (NaN without validation examples)."""
        metric, k = parse_selection_metric(self.metric)
        if self.protocol == "sampled":
            valid = split.candidates[split.candidates["stage"] == "valid"].reset_index(drop=True)
            if valid.empty:
                return math.nan
            return sampled_metric(np.asarray(scorer.score(valid), dtype=np.float64), valid, metric, k,
                                  self.tie_policy)
        examples = split.examples[split.examples["stage"] == "valid"].reset_index(drop=True)
        if examples.empty:
            return math.nan
        if self.mask_history:  # the items `mmrec score` masks: the whole pre-target sequence
            examples = examples.assign(mask_items=split.pre_target_items(examples).to_numpy())
        ranks = pd.concat([rank_catalogue(scorer, examples.iloc[i:i + batch_size], self.catalogue or [],
                                          self.mask_history, "validation")
                           for i in range(0, len(examples), batch_size)], ignore_index=True)
        result = full_ranking_result(ranks, [k or 1], self.tie_policy, [metric])
        return float(result.summary[metric_name(metric, k)])
