"""A forward pass through each VLM family built from its published config shrunk in widths and depths only, with
the published processor and a real (or same-kind) tokenizer: the model must accept exactly as many image tokens as
the processor writes for the real settings (transformers refuses a mismatch), so the shipped processor settings and
config agree and `image_token_count` is what the model consumes."""
from __future__ import annotations

import pytest
import torch
from family_fixtures import shrunk_config
from PIL import Image

from mmrec.vlm import families

VLMS = [h for h in families.SUPPORTED if families.is_vlm(h)]


@pytest.mark.parametrize("hub_id", VLMS)
def test_model_consumes_the_image_tokens_the_processor_writes(family_loaded, hub_id):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    loaded = family_loaded(hub_id)
    model = AutoModelForImageTextToText.from_config(shrunk_config(hub_id)).eval()
    text = "Describe this image."
    prompt = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}], add_generation_prompt=True)
    for width, height in [(1000, 750), (300, 900)]:
        inputs = loaded.processor(text=[prompt], images=[Image.new("RGB", (width, height), (10, 200, 90))],
                                  return_tensors="pt")
        image_id = loaded.tokenizer.convert_tokens_to_ids(loaded.image_token)
        assert int((inputs["input_ids"] == image_id).sum()) == families.image_token_count(hub_id, width, height)
        with torch.no_grad():
            out = model(**inputs, logits_to_keep=1)
        assert out.logits.shape == (1, 1, model.config.text_config.vocab_size)
        assert torch.isfinite(out.logits).all()
