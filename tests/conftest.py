"""Shared fixtures. Everything runs offline on the CPU; tiny models and data are built by the tests."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MMREC_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
