"""summarize-items on tiny data with a tiny LLaVA: determinism, cache hits, dedupe, resume, shards, CLI."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from mmrec.cli import main as mmrec_main
from mmrec.summarize.generation import TextGenerator
from mmrec.summarize.items import ItemSummaryConfig, merge_item_summaries, summarize_items
from mmrec.summarize.shard import Shard
from mmrec.tiny import build_tiny_llava
from mmrec.vlm import ModelSpec, load_vlm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than two fighting
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("items")
    assert mmrec_main(["prep", "synthetic", "--users", "4", "--items", "10", "--interactions-per-user", "4",
                       "--min-length", "3", "--out", str(root / "dataset")]) == 0
    model_dir = build_tiny_llava(root / "llava", "llava_next")
    return {"root": root, "dataset": root / "dataset", "model": model_dir,
            "loaded": load_vlm(ModelSpec(name_or_path=str(model_dir)))}


def _cfg(world, **kw) -> ItemSummaryConfig:
    return ItemSummaryConfig(model=ModelSpec(name_or_path=str(world["model"])), max_new_tokens=6, batch_size=3, **kw)


def _gen(world, cfg, cls=TextGenerator, **kw):
    return cls(lambda: world["loaded"], cfg.settings(), **kw)


def _run(world, tmp, cfg=None, dataset=None, **kw):
    cfg = cfg or _cfg(world)
    gen = kw.pop("generator", None) or _gen(world, cfg)
    stats = summarize_items(cfg, dataset or world["dataset"], tmp / "items.parquet", tmp / "cache", generator=gen, **kw)
    return stats, gen


def _table(path):
    return pd.read_parquet(path).sort_values("item_id").reset_index(drop=True)


def _copy_dataset(world, tmp):
    out = tmp / "dataset"
    shutil.copytree(world["dataset"], out)
    return out, pd.read_parquet(out / "items.parquet")


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """One uninterrupted, unsharded run: what every other way of running must reproduce."""
    tmp = tmp_path_factory.mktemp("ref")
    stats, _ = _run(world, tmp)
    return _table(tmp / "items.parquet"), stats


def test_every_item_gets_a_summary_and_a_rerun_makes_zero_model_calls(world, reference, tmp_path):
    table, stats = reference
    assert stats.complete and stats.generated == stats.units == 10 and stats.model_calls == 4  # ceil(10 / 3)
    assert list(table.columns[:3]) == ["item_id", "summary", "status"]
    assert (table["status"] == "ok").all() and table["summary"].str.len().gt(0).all()
    assert table["cache_key"].nunique() == 10
    # the same inputs in a fresh place: identical output (deterministic greedy decoding)
    stats2, _ = _run(world, tmp_path)
    pd.testing.assert_frame_equal(_table(tmp_path / "items.parquet"), table)
    # again over the now cached run: no model calls, the model is not even loaded
    stats3, gen = _run(world, tmp_path,
                       generator=TextGenerator(lambda: pytest.fail("model loaded"), _cfg(world).settings()))
    assert (stats3.model_calls, stats3.generated, stats3.cached) == (0, 0, 10) and gen.calls == 0


def test_identical_images_are_summarized_once(world, tmp_path):
    dataset, items = _copy_dataset(world, tmp_path)
    for col in ("image", "image_sha256", "image_width", "image_height"):
        items.loc[1:3, col] = items.loc[0, col]  # items 1..3 now show item 0's image
    items.to_parquet(dataset / "items.parquet", index=False)
    stats, gen = _run(world, tmp_path, dataset=dataset)
    assert stats.units == 7 and gen.sequences == 7 and stats.generated == 7
    table = _table(tmp_path / "items.parquet")
    assert table.loc[0:3, "summary"].nunique() == 1 and table.loc[0:3, "cache_key"].nunique() == 1


def test_template_change_regenerates_only_what_it_affects(world, tmp_path):
    dataset, items = _copy_dataset(world, tmp_path)
    custom = "Describe the product called {title}."
    stats, _ = _run(world, tmp_path, cfg=_cfg(world, template=custom), dataset=dataset)
    assert stats.generated == 10
    items.loc[4, "title"] = "a renamed item"
    items.to_parquet(dataset / "items.parquet", index=False)
    stats, _ = _run(world, tmp_path, cfg=_cfg(world, template=custom), dataset=dataset)
    assert (stats.generated, stats.cached) == (1, 9)
    stats, _ = _run(world, tmp_path, cfg=_cfg(world, template="product"), dataset=dataset)
    assert stats.generated == 10
    stats, _ = _run(world, tmp_path, cfg=_cfg(world, template=custom), dataset=dataset)
    assert (stats.generated, stats.model_calls) == (0, 0)


class CrashAfter(TextGenerator):
    """A generator whose process 'dies' (KeyboardInterrupt) when it is about to make call number `after + 1`."""

    def __init__(self, load, settings, after):
        super().__init__(load, settings)
        self.after = after

    def generate(self, *args, **kwargs):
        if self.calls >= self.after:
            raise KeyboardInterrupt("simulated crash")
        return super().generate(*args, **kwargs)


def test_crash_then_resume_equals_an_uninterrupted_run(world, reference, tmp_path):
    cfg = _cfg(world)
    with pytest.raises(KeyboardInterrupt):
        _run(world, tmp_path, generator=_gen(world, cfg, CrashAfter, after=2))
    assert not (tmp_path / "items.parquet").exists()
    with open(tmp_path / "cache" / "main.jsonl", "ab") as f:  # and it died while writing a batch
        f.write(b'{"records":[{"key":"')
    stats, gen = _run(world, tmp_path)
    assert gen.calls == 2 and stats.cached == 6 and stats.generated == 4  # only the unfinished batches
    pd.testing.assert_frame_equal(_table(tmp_path / "items.parquet"), reference[0])


def test_shards_merge_to_the_single_process_table(world, reference, tmp_path):
    results = [_run(world, tmp_path, shard=Shard(i, 3))[0] for i in range(3)]
    assert [s.complete for s in results] == [False, False, True]
    assert sum(s.generated for s in results) == 10
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {f"shard-{i}-of-3.jsonl" for i in range(3)}
    pd.testing.assert_frame_equal(_table(tmp_path / "items.parquet"), reference[0])
    (tmp_path / "items.parquet").unlink()
    merge_item_summaries(_cfg(world), world["dataset"], tmp_path / "items.parquet", tmp_path / "cache")
    pd.testing.assert_frame_equal(_table(tmp_path / "items.parquet"), reference[0])


def test_items_without_image_or_with_a_broken_one_are_marked(world, tmp_path):
    dataset, items = _copy_dataset(world, tmp_path)
    items.loc[0, ["image", "image_sha256", "image_width", "image_height"]] = None
    items.loc[2, ["image_sha256", "image_width", "image_height"]] = None  # unknown: hashed here, size unknown
    (dataset / items.loc[1, "image"]).write_bytes(b"not a png")
    items.loc[1, "image_sha256"] = "changed"
    items.to_parquet(dataset / "items.parquet", index=False)
    stats, _ = _run(world, tmp_path, dataset=dataset)
    table = _table(tmp_path / "items.parquet")
    assert (stats.no_image, stats.failed) == (1, 1) and len(table) == 10
    assert table.loc[0, "status"] == "no_image" and table.loc[0, "summary"] == ""
    assert table.loc[1, "status"] == "failed" and "corrupt" in table.loc[1, "error"]
    assert (table.loc[2:, "status"] == "ok").all()
    stats, _ = _run(world, tmp_path, dataset=dataset)  # failures are retried, never served from the cache
    assert stats.failed == 1 and stats.generated == 0
    stats, _ = _run(world, tmp_path / "fusion", cfg=_cfg(world, template="fusion"), dataset=dataset)
    table = _table(tmp_path / "fusion" / "items.parquet")
    assert table.loc[0, "status"] == "ok" and table.loc[0, "summary"] != ""  # summarized from its text


def test_bad_template_is_a_config_error(world, run_cli, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(f"experiment: {{dir: {tmp_path}}}\ndata: {{path: {world['dataset']}}}\n"
                      "item_summaries: {template: 'Describe {colour}'}\n")
    code, _, err = run_cli("summarize-items", config)
    assert code == 2 and "item_summaries.template" in err and "colour" in err


def test_cli_runs_shards_then_merges(world, run_cli, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(f"experiment: {{dir: {tmp_path}}}\ndata: {{path: {world['dataset']}}}\n"
                      f"item_summaries: {{model: {{name_or_path: {world['model']}}}, "
                      "max_new_tokens: 4, batch_size: 5}\n")
    code, out, err = run_cli("summarize-items", config, "--shard", "0/2")
    assert code == 0, err
    assert "other shards are still missing" in out and not (tmp_path / "summaries" / "items.parquet").exists()
    code, _, err = run_cli("summarize-items", config, "--merge")
    assert code == 2 and "not generated yet" in err
    code, out, err = run_cli("summarize-items", config, "--shard", "1/2")
    assert code == 0 and "wrote" in out and (tmp_path / "summaries" / "items.parquet").is_file()
    code, out, _ = run_cli("summarize-items", config, "item_summaries.batch_size=2")
    assert code == 0 and "generated 0, cached 10" in out and "model calls 0" in out
    code, _, err = run_cli("summarize-items", config, "--shard", "2/2")
    assert code == 2 and "--shard" in err


def test_fusion_prompt_renders_title_and_cut_text(world, tmp_path):
    from mmrec.summarize.items import plan

    dataset, items = _copy_dataset(world, tmp_path)
    items.loc[0, "text"] = "x" * 50
    items.to_parquet(dataset / "items.parquet", index=False)
    _, units, key_of = plan(_cfg(world, template="fusion", max_text_chars=10), dataset)
    unit = units[key_of[items.loc[0, "item_id"]]]
    assert unit.user_text == (f"Here is an item titled \"{items.loc[0, 'title']}\". Its description: xxxxxxxxxx\n"
                              "Write one concise paragraph that describes the item, combining what the title and "
                              "description say with what the image shows.")
    assert unit.image == items.loc[0, "image"]


def test_image_policy_fail_stops_with_the_file_name(world, tmp_path):
    from mmrec.data.images import ImageError

    dataset, items = _copy_dataset(world, tmp_path)
    (dataset / items.loc[2, "image"]).write_bytes(b"")
    with pytest.raises(ImageError, match="image_policy=skip") as e:
        _run(world, tmp_path, cfg=_cfg(world, image_policy="fail"), dataset=dataset)
    assert items.loc[2, "image"] in str(e.value)
