"""GRU4Rec: RecBole-sized defaults, config validation naming the key, shapes."""
from __future__ import annotations

import pytest
import torch

from mmrec.errors import ConfigError
from mmrec.experiment import ExperimentConfig
from mmrec.models.gru4rec import GRU4Rec, GRU4RecConfig, build_model
from mmrec.models.sequential import pad_batch


def config(**fields) -> ExperimentConfig:
    return ExperimentConfig.from_mapping({"models": {"g": {"kind": "gru4rec", **fields}}}, source="exp.yaml")


def test_defaults_follow_recbole():
    cfg = config().model("g")
    assert isinstance(cfg, GRU4RecConfig)
    assert ((cfg.hidden_size, cfg.gru_size, cfg.num_layers, cfg.dropout, cfg.max_len, cfg.loss)
            == (64, 128, 1, 0.3, 50, "ce"))
    assert cfg.valid_metric == "ndcg@10" and cfg.device == "auto"


@pytest.mark.parametrize("fields, key", [({"loss": "bpr"}, "models.g.loss"), ({"hidden_sise": 8}, "hidden_size"),
                                         ({"valid_metric": "auc"}, "valid_metric"), ({"num_layers": 0}, "num_layers"),
                                         ({"dropout": 1.0}, "dropout")])
def test_bad_settings_name_the_key(fields, key):
    with pytest.raises(ConfigError, match=key) as err:
        config(**fields).model("g")
    assert "exp.yaml" in str(err.value)


def test_shapes_and_padding_embedding():
    model = build_model(config(hidden_size=8, gru_size=12, num_layers=2).model("g"), n_items=30)
    assert isinstance(model, GRU4Rec) and model.gru.num_layers == 2
    assert torch.count_nonzero(model.item_embedding.weight[0]) == 0
    hidden = model.eval()(pad_batch([[1, 2, 3], [4]]))
    assert hidden.shape == (2, 3, 8) and model.item_scores(hidden).shape == (2, 3, 30)
