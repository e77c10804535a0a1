"""One split per experiment: every model trains, is scored and is evaluated on the split the `split` section names.

A per-model `split` key once let a VLM model train on one split and take its user context from it while
`mmrec score` and `mmrec eval` used the experiment's split's candidates: a wrong result without an error."""
from __future__ import annotations

import pytest

from mmrec.errors import ConfigError
from mmrec.experiment import ExperimentConfig


@pytest.mark.parametrize("kind", ["vlm", "sasrec", "gru4rec", "ctr", "pop"])
def test_a_model_cannot_name_its_own_split(kind):
    cfg = ExperimentConfig.from_mapping({"split": {"name": "a"}, "models": {"m": {"kind": kind, "split": "b"}}},
                                        source="exp.yaml")
    with pytest.raises(ConfigError, match=r"exp.yaml.*models\.m\.split"):
        cfg.model("m")


def test_split_dir_is_the_split_sections(tmp_path):
    cfg = ExperimentConfig.from_mapping({"experiment": {"dir": str(tmp_path)}, "split": {"name": "a"}})
    assert cfg.split_dir == tmp_path / "splits" / "a"
