"""What breaks only at real scale, checked on the CPU: layers on several devices (`device_map: auto`), the
vocabulary projection of the answer loss, prompt truncation and over-long prompts, and the host memory of the
item caches with LLaVA-NeXT's real image-processor settings."""
from __future__ import annotations

import pytest
import torch


def _cache(devices: list[str], users: int, length: int = 3):
    """A DynamicCache with one layer per device, `users` prefix rows, each row's keys filled with its index."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for dev in devices:
        keys = torch.arange(users, dtype=torch.float32)[:, None, None, None].expand(users, 2, length, 4).clone()
        layer = DynamicLayer()
        layer.lazy_initialization(keys.to(dev), keys.to(dev))
        layer.keys, layer.values = keys.to(dev), keys.clone().to(dev)
        cache.layers.append(layer)
    return cache


def test_select_cache_indexes_each_layer_on_its_own_device():
    """With `device_map: auto` layers sit on different GPUs; here layer 0 is on `meta` and layer 1 on the CPU."""
    from mmrec.models.vlm_forward import select_cache

    rows = torch.tensor([2, 0, 0, 1])
    new = select_cache(_cache(["meta", "cpu"], users=3), rows)
    assert new.layers[0].keys.device.type == "meta" and new.layers[0].keys.shape[0] == 4
    assert new.layers[1].keys.device.type == "cpu"
    assert new.layers[1].keys[:, 0, 0, 0].tolist() == [2.0, 0.0, 0.0, 1.0]
    assert new.layers[1].values[:, 0, 0, 0].tolist() == [2.0, 0.0, 0.0, 1.0]


def test_answer_loss_projects_only_the_answer_positions(tmp_path):
    """The `answer` loss equals the next-token loss over whole rows, but only the positions that predict the answer
    tokens reach the vocabulary projection (a 4k-token row at 32k vocabulary is 0.5-1 GB of logits otherwise)."""
    from mmrec.models.vlm_forward import EncodedItem, answer_loss, lm_loss, train_batch
    from mmrec.tiny import build_tiny_llava
    from mmrec.vlm import ModelSpec, load_vlm

    model = load_vlm(ModelSpec(name_or_path=str(build_tiny_llava(tmp_path / "m", "llava", seed=0)))).model
    prefixes, items = [[1, 5, 6, 7], [1, 8]], [EncodedItem(ids=[9, 10]), EncodedItem(ids=[11, 12, 13, 14, 15])]
    batch = train_batch(prefixes, items, [[20, 2], [21, 2]], 0, None, True, torch.device("cpu"), torch.float32)
    projected = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: projected.append(tuple(i[0].shape)))
    with torch.no_grad():
        old = lm_loss(model(**batch.inputs).logits, batch.labels)[0]
        new = answer_loss(model, batch)
    hook.remove()
    torch.testing.assert_close(new, old)
    assert projected == [(2, 9, model.config.text_config.hidden_size), (2, 2, model.config.text_config.hidden_size)]
