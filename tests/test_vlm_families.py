"""The shipped family files: every supported hub id has its published config, processor settings and chat template,
transformers reads them, and image token counts come out of the real processor classes with the real settings."""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

from mmrec.errors import ConfigError
from mmrec.vlm import families

ROOT = Path(__file__).resolve().parents[1]

MODEL_TYPES = {
    "llava-hf/llava-1.5-7b-hf": ("llava", "llama", "clip_vision_model"),
    "llava-hf/llava-v1.6-mistral-7b-hf": ("llava_next", "mistral", "clip_vision_model"),
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": ("llava_onevision", "qwen2", "siglip_vision_model"),
    "meta-llama/Meta-Llama-3-8B-Instruct": ("llama", None, None),
    "mistralai/Mistral-7B-Instruct-v0.2": ("mistral", None, None),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2", None, None),
}


def test_every_supported_family_ships_its_files_and_sources():
    assert set(families.SUPPORTED) == set(MODEL_TYPES)
    sources = (families.ROOT / "SOURCES.md").read_text()
    for hub_id in families.SUPPORTED:
        d = families.family_dir(hub_id)
        assert d is not None and (d / "config.json").is_file() and (d / "tokenizer_config.json").is_file()
        assert f"## {hub_id}" in sources, f"SOURCES.md says nothing about {hub_id}"
        if families.is_vlm(hub_id):
            for name in ("preprocessor_config.json", "processor_config.json", "chat_template.json"):
                assert (d / name).is_file(), f"{hub_id} lacks {name}"
        assert families.chat_template(hub_id), f"{hub_id} has no chat template"
        for f in d.glob("*.json"):
            json.loads(f.read_text())  # every file parses


def test_unknown_ids_and_local_paths_have_no_family():
    assert families.family_dir("llava-hf/llava-1.5-13b-hf") is None
    assert families.family_dir("/tmp/my-model") is None
    with pytest.raises(ConfigError, match="supported offline: llava-hf/llava-1.5-7b-hf"):
        families.load_config("someone/else")


def test_package_data_ships_every_family_file():
    """A wheel holds exactly what `[tool.setuptools.package-data]` names: each shipped file must match a glob."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mmrec"]
    base = ROOT / "mmrec"
    for f in families.ROOT.rglob("*"):
        if f.is_file():
            rel = f.relative_to(base).as_posix()
            assert any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), rel


@pytest.mark.parametrize("hub_id", families.SUPPORTED)
def test_transformers_reads_the_config(hub_id):
    config = families.load_config(hub_id)
    top, text, vision = MODEL_TYPES[hub_id]
    assert config.model_type == top
    if text:
        assert config.text_config.model_type == text and config.vision_config.model_type == vision


def test_llava_15_images_take_576_tokens_whatever_their_size():
    for width, height in [(500, 500), (1000, 750), (1280, 720), (64, 2000)]:
        assert families.image_token_count("llava-hf/llava-1.5-7b-hf", width, height) == 576


def test_anyres_image_tokens_grow_with_the_image():
    """LLaVA-NeXT (anyres over five 336-px grids) and OneVision (anyres_max_9 over 36 grids of 384 px): the counts
    the real processors give for the real settings, in the ranges a real run meets."""
    sizes = [(500, 500), (1000, 750), (1280, 720)]
    nxt = [families.image_token_count("llava-hf/llava-v1.6-mistral-7b-hf", w, h) for w, h in sizes]
    ov = [families.image_token_count("llava-hf/llava-onevision-qwen2-7b-ov-hf", w, h) for w, h in sizes]
    assert nxt == [2928, 2340, 1948]
    assert ov == [3699, 4725, 5967]
    # A 336x336 image fits one grid cell: base (576) + 2x2 grid cells with their newlines.
    assert families.image_token_count("llava-hf/llava-v1.6-mistral-7b-hf", 336, 336) == 576 + 24 * 25


def test_image_token_count_rejects_bad_sizes_and_text_models():
    with pytest.raises(ValueError, match="positive"):
        families.image_token_count("llava-hf/llava-1.5-7b-hf", 0, 10)
    with pytest.raises(ConfigError, match="not a vision-language model"):
        families.image_token_count("Qwen/Qwen2.5-7B-Instruct", 500, 500)
    with pytest.raises(ConfigError, match="text-only"):
        families.load_image_processor("Qwen/Qwen2.5-7B-Instruct")
