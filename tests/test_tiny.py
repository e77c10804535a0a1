"""Tiny local models: built from configs, saved as safetensors, loaded back through the real loader."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmrec.tiny import build_tiny_llava, build_tiny_llm
from mmrec.vlm import ModelSpec, load_llm, load_vlm, render_prompt


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "llava": build_tiny_llava(root / "llava", "llava"),
        "llava_next": build_tiny_llava(root / "next", "llava_next"),
        "llm": build_tiny_llm(root / "llm"),
    }


def _generate_vlm(path, images):
    loaded = load_vlm(ModelSpec(name_or_path=str(path)))
    prompt = render_prompt(loaded, "Describe the image.", image=True)
    inputs = loaded.processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:].tolist(), loaded


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_tiny_vlm_saves_safetensors_and_reloads_identically(tiny_dirs, family, tmp_path):
    path = tiny_dirs[family]
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin")), "weights must be safetensors only"
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 50), "blue")]
    first, loaded = _generate_vlm(path, images)
    assert loaded.family == family
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert 50_000 < n_params < 5_000_000
    # same seed -> same weights -> same generations, also when rebuilt elsewhere
    again, _ = _generate_vlm(build_tiny_llava(tmp_path / "again", family), images)
    assert first == again
    assert all(len(seq) == 6 for seq in first)


def test_tiny_seed_changes_weights(tmp_path):
    a = load_llm(ModelSpec(name_or_path=str(build_tiny_llm(tmp_path / "a", seed=0))))
    b = load_llm(ModelSpec(name_or_path=str(build_tiny_llm(tmp_path / "b", seed=1))))
    wa, wb = a.model.get_input_embeddings().weight, b.model.get_input_embeddings().weight
    assert not torch.equal(wa, wb)


def test_tiny_tokenizer_is_sentencepiece_like(tiny_dirs):
    loaded = load_vlm(ModelSpec(name_or_path=str(tiny_dirs["llava"])))
    tok = loaded.tokenizer
    assert tok.convert_ids_to_tokens(tok.encode(" Yes", add_special_tokens=False)) == ["▁Yes"]
    for word in ("Yes", "No", "yes", "no"):
        assert len(tok.encode(" " + word, add_special_tokens=False)) == 1
        assert len(tok.encode("\n" + word, add_special_tokens=False)) == 2  # "\n" + bare word piece
    ids = tok("x <image>\ny")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.convert_tokens_to_ids("<image>") == loaded.model.config.image_token_id
    assert tok.pad_token == "<pad>" and tok.padding_side == "left"
    assert (tok.decode(tok.encode("the user likes red circles", add_special_tokens=False))
            == "the user likes red circles")


def test_tiny_llm_generates_after_reload(tiny_dirs):
    loaded = load_llm(ModelSpec(name_or_path=str(tiny_dirs["llm"])))
    prompt = render_prompt(loaded, "Summarize the user.", image=False)
    batch = loaded.tokenizer([prompt, prompt + " red"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = loaded.model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 5)
    assert batch["attention_mask"][0, 0] == 0  # left padding


def test_tiny_cli_builds_each_family(run_cli, tmp_path):
    for family in ("llava", "llava_next", "llm"):
        code, out, err = run_cli("tiny", "--family", family, "--out", tmp_path / family)
        assert code == 0, err
        assert "meaningless" in out
        assert (tmp_path / family / "config.json").is_file()
    loaded = load_vlm(ModelSpec(name_or_path=str(tmp_path / "llava_next")))
    assert loaded.family == "llava_next"
    code, _, err = run_cli("tiny", "--family", "llm", "--out", tmp_path / "llm")
    assert code == 2 and "--force" in err
    code, _, err = run_cli("tiny", "--family", "llm", "--out", tmp_path / "llm", "--force", "--hidden", "30")
    assert code == 2 and "--hidden" in err
    code, _, err = run_cli("tiny", "--family", "llava", "--out", tmp_path / "wide", "--vision-hidden", "64")
    assert code == 0, err
    assert load_vlm(ModelSpec(name_or_path=str(tmp_path / "wide"))).model.config.vision_config.hidden_size == 64
    code, _, err = run_cli("tiny", "--family", "llava", "--out", tmp_path / "odd", "--vision-hidden", "3")
    assert code == 2 and "--vision-hidden" in err


def test_tiny_cli_builds_a_clip_image_encoder_that_embeds(run_cli, tmp_path):
    from mmrec.encoders.image import ImageEncoder, ImageEncoderConfig

    code, out, err = run_cli("tiny", "--family", "clip", "--out", tmp_path / "clip")
    assert code == 0, err
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    vectors = ImageEncoder(ImageEncoderConfig(model=str(tmp_path / "clip"), pretrained=None)).encode([image])
    assert vectors.shape[0] == 1 and abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-4
