"""summarize-users on tiny data with a tiny LLM: recurrence, batching across users, cache, resume, shards,
the leakage guard, the direct variant and the CLI."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest
import torch
from test_summarize_items import CrashAfter

from mmrec.cli import main as mmrec_main
from mmrec.data.splits import SplitConfig, load_split, make_split
from mmrec.errors import DataError
from mmrec.summarize.generation import TextGenerator
from mmrec.summarize.shard import Shard
from mmrec.summarize.users import (
    LeakageError,
    UserSummaryConfig,
    guard_prompt_items,
    merge_user_summaries,
    summarize_users,
)
from mmrec.tiny import build_tiny_llm
from mmrec.vlm import ModelSpec, load_llm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("users")
    exp = root / "exp"
    assert mmrec_main(["prep", "synthetic", "--users", "5", "--items", "14", "--interactions-per-user", "7",
                       "--min-length", "5", "--out", str(exp / "dataset")]) == 0
    make_split(exp / "dataset", SplitConfig(protocol="loo", negatives=2), exp / "splits" / "loo")
    split = load_split(exp / "splits" / "loo")
    items = split.dataset.items
    summaries = pd.DataFrame({"item_id": items["item_id"],
                              "summary": [f"picture number {i}" for i in range(len(items))],
                              "status": ["ok"] * len(items)})
    summaries.to_parquet(exp / "summaries.parquet", index=False)
    model_dir = build_tiny_llm(root / "llm")
    return {"exp": exp, "split": split, "summaries": exp / "summaries.parquet", "model": model_dir,
            "loaded": load_llm(ModelSpec(name_or_path=str(model_dir)))}


class Recording(TextGenerator):
    """A real generator that also keeps every user text it was asked to generate for."""

    def __init__(self, load, settings):
        super().__init__(load, settings)
        self.texts: list[str] = []

    def generate(self, user_texts, images=None):
        self.texts += user_texts
        return super().generate(user_texts, images)


def _cfg(world, **kw) -> UserSummaryConfig:
    return UserSummaryConfig(model=ModelSpec(name_or_path=str(world["model"])), max_new_tokens=5, batch_size=4, **kw)


def _run(world, tmp, cfg=None, cls=Recording, **kw):
    cfg = cfg or _cfg(world)
    gen = cls(lambda: world["loaded"], cfg.settings(), **kw.pop("gen_kw", {}))
    stats = summarize_users(cfg, world["split"], world["summaries"], tmp / "users.parquet", tmp / "cache",
                            generator=gen, **kw)
    return stats, gen


def _table(path):
    return pd.read_parquet(path).sort_values(["user_id", "stage"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    stats, gen = _run(world, tmp)
    return _table(tmp / "users.parquet"), stats, gen


def test_recurrence_keeps_every_step_and_batches_users_together(world, reference):
    table, stats, gen = reference
    examples = world["split"].examples
    assert len(table) == len(examples) == 15 and stats.complete
    merged = table.merge(examples, on=["user_id", "stage"])
    for row in merged.itertuples():
        assert len(row.steps) == math.ceil(len(row.history) / 3) and row.preference == row.steps[-1]
    # the stages of one user share their first blocks: those steps are generated once
    assert stats.steps < sum(len(s) for s in table["steps"])
    assert gen.sequences == stats.generated and stats.generated + stats.cached == stats.steps
    # all users at step t go through the model together, batch_size at a time
    assert gen.calls < stats.steps
    assert any("We also know the user's previous preference" in t for t in gen.texts)
    assert all("picture number" in t for t in gen.texts)


def test_rerun_is_deterministic_and_cache_hits_make_zero_model_calls(world, reference, tmp_path):
    _run(world, tmp_path)
    pd.testing.assert_frame_equal(_table(tmp_path / "users.parquet"), reference[0])
    gen = TextGenerator(lambda: pytest.fail("model loaded"), _cfg(world).settings())
    stats = summarize_users(_cfg(world), world["split"], world["summaries"], tmp_path / "users.parquet",
                            tmp_path / "cache", generator=gen)
    assert (stats.model_calls, stats.generated, gen.calls) == (0, 0, 0) and stats.complete


def test_crash_then_resume_equals_an_uninterrupted_run(world, reference, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(world, tmp_path, cls=CrashAfter, gen_kw={"after": 3})
    stats, gen = _run(world, tmp_path)
    assert stats.cached > 0 and gen.calls == reference[2].calls - 3
    pd.testing.assert_frame_equal(_table(tmp_path / "users.parquet"), reference[0])


def test_shards_merge_to_the_single_process_table(world, reference, tmp_path):
    first, _ = _run(world, tmp_path, shard=Shard(0, 2))
    assert not first.complete and not (tmp_path / "users.parquet").exists()
    second, _ = _run(world, tmp_path, shard=Shard(1, 2))
    assert second.complete and first.examples + second.examples == 15
    pd.testing.assert_frame_equal(_table(tmp_path / "users.parquet"), reference[0])
    (tmp_path / "users.parquet").unlink()
    merge_user_summaries(_cfg(world), world["split"], world["summaries"], tmp_path / "users.parquet",
                         tmp_path / "cache")
    pd.testing.assert_frame_equal(_table(tmp_path / "users.parquet"), reference[0])


def test_leakage_guard_refuses_target_and_later_items():
    history = ["a", "b", "c"]
    guard_prompt_items("u", "test", history, "d", ["b", "c"])  # a suffix of the history: fine
    guard_prompt_items("u", "test", ["d", "a"], "d", ["d", "a"])  # a repeat: "d" was consumed before, too
    with pytest.raises(LeakageError, match="before the target 'd'"):
        guard_prompt_items("u", "test", history, "d", ["c", "d"])
    for bad in (["a", "b", "c", "d"], ["c", "b"], ["a", "b"], ["x"]):
        with pytest.raises(LeakageError):
            guard_prompt_items("u", "test", history, "d", bad)


def test_prompts_only_ever_show_items_before_the_target(world, tmp_path):
    custom = {"first": "User {user_id}:\n{items}", "next": "User {user_id}:\n{items}\n{previous}",
              "item": "[{item_id}]"}
    cfg = _cfg(world, custom_templates=custom, stages=["train", "valid"])
    _, gen = _run(world, tmp_path, cfg=cfg)
    examples = world["split"].examples.set_index(["user_id", "stage"])
    later = {u: set(examples.loc[(u, "test"), "history"]) | {examples.loc[(u, "test"), "target"]}
             for u in examples.index.get_level_values(0)}
    for text in gen.texts:
        user = re.match(r"User (\S+):", text).group(1)
        shown = re.findall(r"\[(\w+)\]", text)
        valid_history = list(examples.loc[(user, "valid"), "history"])
        assert shown and set(shown) <= set(valid_history)
        test_target = examples.loc[(user, "test"), "target"]
        assert test_target not in shown or test_target in valid_history
        assert set(shown) <= later[user]


def test_direct_mode_and_titles_only_ablation(world, tmp_path):
    _, gen = _run(world, tmp_path, cfg=_cfg(world, mode="direct", use_image_summaries=False))
    table = _table(tmp_path / "users.parquet")
    assert (table["steps"].map(len) == 1).all() and (table["mode"] == "direct").all()
    assert gen.texts and not any("picture number" in t for t in gen.texts)
    assert all("all items" in t for t in gen.texts)


def test_missing_item_summaries_is_a_clear_error(world, tmp_path):
    with pytest.raises(DataError, match="summarize-items"):
        summarize_users(_cfg(world), world["split"], tmp_path / "nope.parquet", tmp_path / "u.parquet", tmp_path / "c")


def test_cli_writes_users_table(world, run_cli, tmp_path):
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(world["exp"] / "splits", exp / "splits")
    shutil.copytree(world["exp"] / "dataset", exp / "dataset")
    (exp / "summaries").mkdir()
    shutil.copy(world["summaries"], exp / "summaries" / "items.parquet")
    config = tmp_path / "exp.yaml"
    config.write_text(f"experiment: {{dir: {exp}}}\nsplit: {{negatives: 2}}\n"
                      f"user_summaries: {{model: {{name_or_path: {world['model']}}}, max_new_tokens: 3, "
                      "stages: [test], batch_size: 8}\n")
    code, out, err = run_cli("summarize-users", config, "--shard", "0/2")
    assert code == 0, err
    code, out, err = run_cli("summarize-users", config, "--shard", "1/2")
    assert code == 0 and "wrote" in out, err
    table = pd.read_parquet(exp / "summaries" / "users.parquet")
    assert set(table["stage"]) == {"test"} and len(table) == 5
    code, out, err = run_cli("summarize-users", config, "--merge")
    assert code == 0, err
    code, _, err = run_cli("summarize-users", config, "user_summaries.stages=[later]")
    assert code == 2 and "stages" in err
