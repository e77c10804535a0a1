"""GPU memory of one process, per stage, from a `ModelShape` (parameter counts of the meta-device model) and the
prompt lengths: weights, trainable state, activations, logits and key/value caches, in bytes.

How each term is made (docs/plan.md says the same for users):
- weights: parameters x bytes of the loaded dtype; 4-bit NF4 with double quantization is 0.516 bytes per weight
  of the quantized linear layers, the rest (embeddings, lm_head, vision tower, projector, norms) stays unquantized,
  and QLoRA training holds that rest in float32 (peft's `prepare_model_for_kbit_training` up-casts it).
- trainable state: LoRA matrices r x (in + out) per targeted layer, kept in float32 by peft; their gradients
  (float32) and AdamW's two moments (float32): 16 bytes per trainable parameter.
- activations kept for backward, per decoder layer and token: each RMSNorm's float32 input and its output, attention's
  q, k, v, output and o_proj's input (SDPA/flash keep no T x T matrix), the MLP's gate, up, activation and product
  (4 x intermediate), and with LoRA dropout > 0 each targeted layer's own dropped-out input plus a 1-byte mask.
  With gradient checkpointing only each layer's input is kept, plus one layer's activations while it is recomputed.
  tests/test_plan.py checks this against the bytes autograd really saves on a tiny model.
- logits: the `full` loss holds rows x tokens x vocab logits in the compute dtype, their float32 copy and the
  float32 log-softmax; the `answer` loss the same at the 2 positions that predict the answer (issue 11's fix in
  finetune), `yes_no` at one position per row.
- key/value cache: 2 x layers x rows x tokens x kv_heads x head_dim x dtype bytes.
- inference activations: one layer's working set at a time (norm in float32, q/k/v/o, the MLP's three tensors).
Allocator fragmentation and the CUDA context (~0.5 GiB) are not included; the plan prints them as a margin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmrec.plan_model import ModelShape, weight_bytes, weight_dtype_bytes

ADAM_STATE_BYTES = 16  # float32 LoRA weight (4) + its gradient (4) + AdamW exp_avg (4) + exp_avg_sq (4)
ANSWER_POSITIONS = 2  # the `answer` loss projects only the positions that predict " Yes"/" No" and end of sequence
CONTEXT_MARGIN = 512 * 2**20  # CUDA context + allocator slack, printed beside every GPU total


@dataclass
class Batch:
    """What one forward sees: rows, their padded length, and the images' vision-tower crops."""

    rows: int
    tokens: int
    tiles: int = 0  # vision-tower crops per row (0: no image)


def compute_bytes(spec: Any, shape: ModelShape, precision: str = "no") -> int:
    """Bytes of the activations' dtype: the autocast dtype when training in mixed precision, else the weights'."""
    if precision in ("bf16", "fp16"):
        return 2
    if spec.quantization is not None:
        return 4 if spec.dtype == "float32" else 2  # 4-bit layers compute in the spec's dtype
    return weight_dtype_bytes(spec, shape)


def kv_cache_bytes(shape: ModelShape, rows: int, tokens: int, dtype_bytes: int) -> int:
    return 2 * shape.layers * rows * tokens * shape.kv_dim * dtype_bytes


def _layer_lora_inputs(shape: ModelShape, targets: str) -> int:
    """Summed input width of the LoRA-targeted linear layers of one decoder layer (layer 0 of the text model)."""
    names = [n for n in shape.lora_targets(targets) if ".layers.0." in n and "vision" not in n]
    return sum(shape.linears[n][0] for n in names)


def train_layer_bytes(shape: ModelShape, targets: str, dropout: float, d: int) -> int:
    """Bytes one decoder layer keeps for backward, per token (see the module docstring)."""
    h, kv, inter = shape.hidden, shape.kv_dim, shape.intermediate
    norms = 2 * (4 * h + h * d)  # each RMSNorm: its float32 input and its output (the next linear layers' input)
    attention = (3 * h + 2 * kv) * d  # q, k, v, SDPA's output and its re-laid-out copy (o_proj's input)
    mlp = 4 * inter * d  # gate, up, act(gate) and their product (down_proj's input)
    # With dropout each LoRA branch gets its own dropped-out copy of its input and a 1-byte mask.
    lora = _layer_lora_inputs(shape, targets) * (d + 1) if dropout > 0 else 0
    return norms + attention + mlp + lora


def kept_activations(shape: ModelShape, targets: str, dropout: float, d: int, tokens: int, checkpointing: bool) -> int:
    """Bytes the forward pass leaves for backward (the embeddings' output included)."""
    if checkpointing:
        return tokens * (shape.layers + 1) * shape.hidden * d  # each checkpointed layer's input, and the last output
    return tokens * (shape.hidden * d + shape.layers * train_layer_bytes(shape, targets, dropout, d))


def infer_layer_bytes(shape: ModelShape, d: int) -> int:
    """Bytes of one decoder layer's transient working set at inference, per token."""
    h, kv, inter = shape.hidden, shape.kv_dim, shape.intermediate
    return 4 * h + (2 * h + 2 * kv) * d + 3 * inter * d


def vision_bytes(shape: ModelShape, crops: int, d: int) -> int:
    """Transient working set of the (frozen) vision tower over `crops` crops, one layer at a time."""
    v = shape.vision
    if not v or crops <= 0:
        return 0
    return crops * v["tokens"] * (4 * v["hidden"] + v["intermediate"]) * d


def logits_bytes(shape: ModelShape, rows: int, positions: int, d: int, loss: bool) -> int:
    """Vocabulary logits; with a loss also their float32 copy (none when already float32) and float32 log-softmax."""
    return rows * positions * shape.vocab * (d + ((4 if d != 4 else 0) + 4 if loss else 0))


def training(spec: Any, shape: ModelShape, lora: Any, train: Any, loss: str, batch: Batch) -> dict[str, int]:
    """GPU bytes of one LoRA/QLoRA training process at its peak (forward + backward of one micro-batch)."""
    d = compute_bytes(spec, shape, train.precision)
    trainable = shape.lora_params(lora.targets, lora.r)
    tokens = batch.rows * batch.tokens
    acts = kept_activations(shape, lora.targets, lora.dropout, d, tokens, train.gradient_checkpointing)
    if train.gradient_checkpointing:  # one layer's activations exist again while it is recomputed in backward
        acts += tokens * train_layer_bytes(shape, lora.targets, lora.dropout, d)
    positions = {"full": batch.tokens, "answer": ANSWER_POSITIONS}.get(loss, 1)
    return {
        "weights": weight_bytes(spec, shape, upcast_unquantized=spec.quantization is not None),
        "LoRA weights+grads+AdamW": trainable * ADAM_STATE_BYTES,
        "activations": acts,
        "logits": logits_bytes(shape, batch.rows, positions, d, loss=True),
        "vision tower": vision_bytes(shape, batch.rows * batch.tiles, d),
    }


def scoring(spec: Any, shape: ModelShape, users: int, batch: Batch, prefix: int, prefix_cache: bool) -> dict[str, int]:
    """GPU bytes of one scoring forward: `users` cached prefixes of `prefix` tokens, then `batch.rows` suffixes of
    `batch.tokens`; without the prefix cache, `batch.rows` whole prompts of `prefix + batch.tokens`."""
    d = compute_bytes(spec, shape)
    if prefix_cache:
        # the prefix cache, a gathered copy of its rows when several users share a batch, and the suffix forward's
        # concatenated keys/values (prefix + suffix per row, all layers)
        kv = kv_cache_bytes(shape, users, prefix, d) + kv_cache_bytes(shape, batch.rows, prefix + batch.tokens, d)
        kv += kv_cache_bytes(shape, batch.rows, prefix, d) if users > 1 else 0
        tokens = max(users * prefix, batch.rows * batch.tokens)
    else:
        kv = kv_cache_bytes(shape, batch.rows, prefix + batch.tokens, d)  # forward builds a cache by default
        tokens = batch.rows * (prefix + batch.tokens)
    return {
        "weights": weight_bytes(spec, shape),
        "KV cache": kv,
        "activations": tokens * infer_layer_bytes(shape, d),
        "logits": logits_bytes(shape, batch.rows, 1, d, loss=False),
        "vision tower": vision_bytes(shape, batch.rows * batch.tiles, d),
    }


def generation(spec: Any, shape: ModelShape, batch: Batch, new_tokens: int) -> dict[str, int]:
    """GPU bytes of batched greedy generation: the cache grows to prompt + new tokens; the prefill's working set."""
    d = compute_bytes(spec, shape)
    return {
        "weights": weight_bytes(spec, shape),
        "KV cache": kv_cache_bytes(shape, batch.rows, batch.tokens + new_tokens, d),
        "activations": batch.rows * batch.tokens * infer_layer_bytes(shape, d),
        "logits": logits_bytes(shape, batch.rows, 1, 4, loss=False),
        "vision tower": vision_bytes(shape, batch.rows * batch.tiles, d),
    }


def gib(n: float) -> str:
    """Bytes in GiB (MiB below one GiB, so tiny models do not print as zero)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
