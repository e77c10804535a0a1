"""The scorer contract every recommender meets, so evaluation never knows which model produced a number.

A model kind `K` registered in `mmrec.experiment.MODEL_KINDS` as "mmrec.models.K:KConfig" provides, in that
module, `load_scorer(cfg: ExperimentConfig, name: str, ckpt_dir: Path) -> Scorer`, which loads the trained
artifact from `ckpt_dir`. Its training recipe (`finetune.cli.RECIPES`) provides
`train(cfg, name, out_dir: Path, resume: bool) -> Path`. `cfg.seed` is the seed of this run (several seeds of one
model are separate runs, `<model>@seed<k>`, with their own checkpoint and scores; see `ExperimentPaths.run_id`).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mmrec.experiment import ExperimentConfig


@runtime_checkable
class Scorer(Protocol):
    """Scores (user context, candidate) pairs; higher means more likely. NaN marks an invalid score."""

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        """`candidates` has columns user_id, stage, item_id (one row per pair, any order); the user's context
        (history, preference) is looked up by (user_id, stage) in the split the scorer was built on.
        Returns float64 scores aligned with the rows."""
        ...


@runtime_checkable
class CatalogueScorer(Scorer, Protocol):
    """A scorer that can also rank the whole catalogue (full-ranking protocol)."""

    item_ids: list[str]

    def score_catalogue(self, examples: pd.DataFrame) -> np.ndarray:
        """`examples` has columns user_id, stage, history; returns [len(examples), len(item_ids)] scores."""
        ...


def load_scorer(cfg: "ExperimentConfig", name: str, ckpt_dir: Path) -> Scorer:
    """The trained scorer of model `name` of an experiment, whatever its kind."""
    from mmrec.experiment import MODEL_KINDS

    kind = cfg.model(name).kind
    module = importlib.import_module(MODEL_KINDS[kind].split(":")[0])
    return module.load_scorer(cfg, name, Path(ckpt_dir))
