"""The `eval` section: defaults and the errors a user sees for bad values."""
from __future__ import annotations

import pytest

from mmrec.errors import ConfigError
from mmrec.experiment import ExperimentConfig


def _eval(**section):
    return ExperimentConfig.from_mapping({"eval": section}, source="exp.yaml").section("eval")


def test_defaults_are_the_documented_protocol() -> None:
    ev = _eval()
    assert ev.ks == [1, 3, 5, 10] and ev.tie_policy == "expected" and ev.protocol == "sampled"
    assert ev.stages == ["test"] and ev.mask_history is False


@pytest.mark.parametrize("section,message", [
    ({"tie_policy": "random"}, "eval.tie_policy"),
    ({"ks": [0, 5]}, "eval.ks"),
    ({"metrics": ["hr", "map"]}, "unknown metric"),
    ({"mask_history": True}, "protocol 'full' only"),
    ({"stages": ["train"]}, "eval.stages"),
    ({"protocl": "full"}, "did you mean 'protocol'"),
])
def test_bad_values_name_the_key(section, message) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        _eval(**section)
    assert "exp.yaml" in str(e.value)
