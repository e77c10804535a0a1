"""Shared fixtures. Everything runs offline on the CPU; tiny models and data are built by the tests."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MMREC_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread; with several, small matmuls spend their time synchronising
# (10-40x slower when the cores are busy). Set before torch is imported; child processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from mmrec.cli import main as mmrec_main  # noqa: E402


@pytest.fixture
def run_cli(capsys):
    """Run `mmrec ARGS...` in-process; returns (exit_code, stdout, stderr)."""

    def _run(*args: str) -> tuple[int, str, str]:
        code = mmrec_main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """Path to a small synthetic canonical dataset (200 users, 120 items, seed 0; data_prep.synthetic), built
    once per session. Shared by many tests: treat it as read-only (copy it before changing anything)."""
    from data_prep import synthetic

    out = tmp_path_factory.mktemp("synthetic") / "dataset"
    synthetic.run(synthetic.SyntheticOptions(seed=0), out)
    return out


@pytest.fixture(scope="session")
def synthetic_split(synthetic_dataset):
    """Path to the leave-one-out split of `synthetic_dataset` (20 uniform negatives, seed 0) at
    `<dataset>/splits/loo`; load it with `mmrec.data.splits.load_split`. Read-only, like the dataset."""
    from mmrec.data.splits import SplitConfig, make_split

    out = synthetic_dataset / "splits" / "loo"
    make_split(synthetic_dataset, SplitConfig(protocol="loo", negatives=20, seed=0), out)
    return out


@pytest.fixture(scope="session")
def family_loaded(tmp_path_factory):
    """`get(hub_id)`: a weightless LoadedVLM / LoadedLM of a supported checkpoint (published configs, processor and
    chat template; real tokenizer where a package ships it, see mmrec.vlm.family_tokenizers), built once per session."""
    from family_fixtures import loaded_family

    built: dict[str, object] = {}

    def get(hub_id: str):
        if hub_id not in built:
            built[hub_id] = loaded_family(hub_id, tmp_path_factory.mktemp("tokenizer"))
        return built[hub_id]

    return get
