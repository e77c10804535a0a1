"""SASRec: RecBole-sized defaults, config validation, shapes, and the max_len guard."""
from __future__ import annotations

import pytest
import torch

from mmrec.errors import ConfigError
from mmrec.experiment import ExperimentConfig
from mmrec.models.sasrec import SASRec, SASRecConfig, build_model
from mmrec.models.sequential import pad_batch


def config(**fields) -> ExperimentConfig:
    return ExperimentConfig.from_mapping({"models": {"s": {"kind": "sasrec", **fields}}}, source="exp.yaml")


def test_defaults_follow_recbole():
    cfg = config().model("s")
    assert isinstance(cfg, SASRecConfig)
    assert ((cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.inner_size, cfg.dropout, cfg.max_len)
            == (64, 2, 2, 256, 0.5, 50))
    assert (cfg.loss, cfg.bce_negatives, cfg.lr) == ("ce", 1, 1e-3)


def test_heads_must_divide_hidden_size():
    with pytest.raises(ConfigError, match="divisible"):
        config(hidden_size=30, num_heads=4).model("s")
    with pytest.raises(ConfigError, match="models.s.device"):
        config(device="tpu").model("s")


def test_shapes_and_max_len():
    model = build_model(config(hidden_size=8, num_heads=2, inner_size=16, max_len=4).model("s"), n_items=10)
    assert isinstance(model, SASRec) and len(model.encoder.layers) == 2
    hidden = model.eval()(pad_batch([[1, 2, 3, 4], [5]]))
    assert hidden.shape == (2, 4, 8) and torch.isfinite(hidden).all()
    with pytest.raises(ValueError, match="max_len"):
        model(pad_batch([[1, 2, 3, 4, 5]]))
