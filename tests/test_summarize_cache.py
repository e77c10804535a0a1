"""The generation cache: durable batches, torn-line recovery, merging writers by key, model fingerprints."""
from __future__ import annotations

from mmrec.summarize.cache import GenerationCache, cache_key, model_fingerprint
from mmrec.summarize.shard import Shard, parse_shard
from mmrec.vlm import ModelSpec


def test_batches_round_trip_and_merge_across_writers(tmp_path):
    a = GenerationCache(tmp_path, "shard-0-of-2")
    b = GenerationCache(tmp_path, "shard-1-of-2")
    a.put_batch([{"key": "k1", "text": "one"}, {"key": "k2", "text": "two"}])
    b.put_batch([{"key": "k3", "text": "three"}])
    merged = GenerationCache(tmp_path, "merge")
    assert {k: merged.text(k) for k in ("k1", "k2", "k3")} == {"k1": "one", "k2": "two", "k3": "three"}
    assert merged.text("missing") is None


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    cache = GenerationCache(tmp_path)
    cache.put_batch([{"key": "k1", "text": "kept"}])
    with open(cache.path, "ab") as f:  # a writer died in the middle of its second batch
        f.write(b'{"records":[{"key":"k2","text":"half')
    again = GenerationCache(tmp_path)
    assert again.text("k1") == "kept" and again.text("k2") is None and again.torn == 1
    again.put_batch([{"key": "k2", "text": "whole"}])
    final = GenerationCache(tmp_path)
    assert final.torn == 0 and final.text("k2") == "whole"
    assert cache.path.read_bytes().count(b"\n") == 2


def test_failures_are_recorded_but_not_served_and_success_wins(tmp_path):
    cache = GenerationCache(tmp_path)
    cache.put_batch([{"key": "k", "error": "corrupt image x.png"}])
    assert cache.get("k") is None and cache.failed("k") == "corrupt image x.png"
    cache.put_batch([{"key": "k", "text": "fine now"}])
    assert GenerationCache(tmp_path).text("k") == "fine now"


def test_cache_key_changes_with_each_part():
    base = dict(kind="item", model={"hub": "m", "revision": "main"}, template="T", inputs={"image": "abc"},
                settings={"max_new_tokens": 8})
    key = cache_key(**base)
    assert key == cache_key(**base)
    for part, value in [("model", {"hub": "m", "revision": "v2"}), ("template", "T2"), ("inputs", {"image": "abd"}),
                        ("settings", {"max_new_tokens": 9})]:
        assert cache_key(**{**base, part: value}) != key


def test_model_fingerprint_local_dir_follows_content(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    spec = ModelSpec(name_or_path=str(tmp_path))
    first = model_fingerprint(spec)
    assert model_fingerprint(ModelSpec(name_or_path=str(tmp_path))) == first
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert model_fingerprint(spec) != first
    hub = model_fingerprint(ModelSpec(name_or_path="llava-hf/llava-v1.6-mistral-7b-hf", revision="abc123"))
    assert hub["hub"] == "llava-hf/llava-v1.6-mistral-7b-hf" and hub["revision"] == "abc123"


def test_parse_shard(monkeypatch):
    import pytest

    from mmrec.errors import ConfigError

    assert parse_shard("1/3") == Shard(1, 3) and parse_shard(None) == Shard(0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard("auto") == Shard(2, 4)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    owned = [[p for p in range(10) if Shard(i, 3).owns(p)] for i in range(3)]
    assert sorted(sum(owned, [])) == list(range(10))
