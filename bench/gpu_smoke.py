"""GPU smoke test: a 7B-shaped LLaVA-NeXT (llava-hf/llava-v1.6-mistral-7b-hf's real config, random weights) runs a few
steps of item summaries, LoRA training and scoring through mmrec's own code, and prints measured peak memory and
throughput beside `mmrec plan`'s estimate for the same shapes.

    python bench/gpu_smoke.py                 # CUDA, bf16, the real 7B config (~15 GiB of weights; >= 40 GB GPU)
    python bench/gpu_smoke.py --tiny          # tiny sizes on the CPU (the default without CUDA): checks the wiring

The model is built on the meta device, moved with `to_empty` and initialised in place (no 30 GB float32 copy, no
download). The tokenizer is Mistral's real vocabulary (`mmrec.vlm.family_tokenizers`), the processor the real class
with the published settings (`mmrec.vlm.families`). Weights are random, so generated text is noise and generation
may stop early at a random end-of-sequence. Measured memory is `torch.cuda.max_memory_allocated` per phase (CPU:
not measured, printed as "-").
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrec.plan_memory import Batch, generation, gib, scoring, training  # noqa: E402

HUB_ID = "llava-hf/llava-v1.6-mistral-7b-hf"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU (automatic without CUDA)")
    p.add_argument("--real", action="store_true", help="the real config even without CUDA (with --layers: a check)")
    p.add_argument("--layers", type=int, default=None, help="keep only this many language-model layers")
    p.add_argument("--steps", type=int, default=3, help="batches of each phase (after one warm-up)")
    p.add_argument("--summary-batch", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--train-batch", type=int, default=1)
    p.add_argument("--score-batch", type=int, default=21)
    p.add_argument("--image", default="1000x750", help="WIDTHxHEIGHT of every test image")
    p.add_argument("--pref-words", type=int, default=300, help="words of the user preference in each prompt")
    args = p.parse_args(argv)
    args.device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    args.tiny = args.tiny or (args.device == "cpu" and not args.real)
    if args.tiny:
        args.image = "64x48" if args.image == "1000x750" else args.image
    args.width, args.height = (int(v) for v in args.image.lower().split("x"))
    return args


def build(args: argparse.Namespace, tmp: Path):
    """(LoadedVLM with a meta-built, to_empty'd and initialised model, ModelSpec the plan reads)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from mmrec.tiny import build_tiny_llava
    from mmrec.vlm.loading import LoadedVLM
    from mmrec.vlm.spec import ModelSpec

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    if args.tiny:
        folder = build_tiny_llava(tmp / "tiny", "llava_next", seed=0)
        config, processor = AutoConfig.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
        spec = ModelSpec(name_or_path=str(folder), dtype="float32")
    else:
        from mmrec.vlm.families import load_config, load_processor
        from mmrec.vlm.family_tokenizers import build_tokenizer

        tokenizer = build_tokenizer(HUB_ID, tmp / "tokenizer")  # Mistral's real vocabulary (mistral-common)
        config, processor = load_config(HUB_ID), load_processor(HUB_ID, tokenizer=tokenizer)
        spec = ModelSpec(name_or_path=HUB_ID, dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    if args.layers:
        config.text_config.num_hidden_layers = args.layers
        spec = _shrunk_spec(config, spec, tmp)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.to_empty(device=args.device)
    torch.manual_seed(0)
    model.initialize_weights()  # every parameter and buffer (rotary frequencies, position ids) in place
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not torch.isfinite(t).all()]
    if bad:
        raise SystemExit(f"initialisation left non-finite values in {bad[:3]}")
    model.eval()
    loaded = LoadedVLM(model=model, processor=processor, tokenizer=processor.tokenizer, family="llava_next", spec=spec)
    from mmrec.vlm.loading import _prepare_tokenizer

    _prepare_tokenizer(loaded.tokenizer, model)
    return loaded, spec


def _shrunk_spec(config, spec, tmp: Path):
    """A folder holding the shrunk config, so the plan sees the same shapes as the model."""
    import dataclasses

    config.save_pretrained(tmp / "shrunk")
    return dataclasses.replace(spec, name_or_path=str(tmp / "shrunk"))


class Phase:
    """Peak memory and wall time of a block (CUDA: synchronised, peak reset at the start)."""

    def __init__(self, device: str):
        self.device, self.peak, self.seconds = device, None, 0.0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        self.seconds = time.perf_counter() - self.t0


def summaries(args, loaded, image, shape, spec) -> tuple[Phase, dict, str]:
    from mmrec.summarize.generation import GenerationSettings, TextGenerator
    from mmrec.summarize.templates import ITEM_TEMPLATES

    gen = TextGenerator(lambda: loaded, GenerationSettings(args.new_tokens, False, 1.0, 1.0, 0))
    texts, images = [ITEM_TEMPLATES["product"]] * args.summary_batch, [image] * args.summary_batch
    gen.generate(texts, images)  # warm-up
    with Phase(args.device) as ph:
        for _ in range(args.steps):
            gen.generate(texts, images)
    prompt = len(loaded.processor(text=[gen.prompt(texts[0], True)], images=[image])["input_ids"][0])
    est = generation(spec, shape, Batch(args.summary_batch, prompt, tiles(loaded, args)), args.new_tokens)
    rate = f"{args.steps * args.summary_batch / ph.seconds:.2f} images/s"
    return ph, est, rate


def tiles(loaded, args) -> int:
    out = loaded.processor.image_processor(images=[_image(args)], return_tensors="pt")
    return int(out["pixel_values"].shape[1])


def _image(args):
    from PIL import Image

    return Image.new("RGB", (args.width, args.height), (200, 80, 40))


def prompts(args, builder, image):
    words = ("soft colourful practical striped wooden quiet bright small " * (args.pref_words // 8 + 1)).split()
    pref = "The user appears to have a preference for " + " ".join(words[: args.pref_words])
    prefix = builder.encode_prefix(builder.prefix_text(pref))
    item = builder.encode_suffix(builder.item_suffix_text("A striped wooden toy"), image)
    return prefix, item


def train(args, loaded, image, shape, spec) -> tuple[Phase, dict, str]:
    from mmrec.models.vlm_adapter import apply_lora
    from mmrec.models.vlm_build import make_builder
    from mmrec.models.vlm_forward import lm_loss, train_batch, vision_dtype
    from mmrec.models.vlm_rec import LoraSection, TrainSection

    lora = LoraSection(r=8, alpha=16, dropout=0.05)
    tcfg = TrainSection(batch_size=args.train_batch, gradient_checkpointing=True,
                        precision="bf16" if args.device == "cuda" else "no", max_length=8192)
    loaded.model = apply_lora(loaded.model, lora, quantized=False, gradient_checkpointing=True)
    builder = make_builder(loaded, True, "preference_first", tcfg.max_length)
    prefix, item = prompts(args, builder, image)
    n = args.train_batch
    batch = train_batch([prefix] * n, [item] * n, [builder.answer_ids(1)] * n, builder.tokenizer.pad_token_id,
                        loaded.model.config.image_token_index, True, torch.device(args.device),
                        vision_dtype(loaded.model))
    model = loaded.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else torch.autocast("cpu",
                                                                                                          enabled=False)

    def step():
        with autocast:
            loss = lm_loss(model(**batch.inputs).logits, batch.labels)[0]  # whole-row logits: the `full` loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocates AdamW's state)
    with Phase(args.device) as ph:
        for _ in range(args.steps):
            step()
    model.eval()
    est = training(spec, shape, lora, tcfg, "full", Batch(n, batch.tokens // n, tiles(loaded, args)))
    return ph, est, f"{args.steps * batch.tokens / ph.seconds:,.0f} tokens/s"


@torch.no_grad()
def score(args, loaded, image, shape, spec) -> tuple[Phase, dict, str]:
    from mmrec.models.vlm_build import make_builder
    from mmrec.models.vlm_forward import cached_p_yes, prefix_cache

    builder = make_builder(loaded, True, "preference_first", 8192)
    prefix, item = prompts(args, builder, image)
    pad = builder.tokenizer.pad_token_id
    items = [item] * args.score_batch
    owner = torch.zeros(len(items), dtype=torch.long)

    def one():
        cache, pmask, plen = prefix_cache(loaded.model, [prefix], pad)
        return cached_p_yes(loaded.model, cache, pmask, plen, owner, items, builder.yes_id, builder.no_id, pad)

    one()  # warm-up
    with Phase(args.device) as ph:
        for _ in range(args.steps):
            p = one()
    if not torch.isfinite(p).all():
        raise SystemExit("scoring produced non-finite P(Yes)")
    est = scoring(spec, shape, 1, Batch(args.score_batch, len(item.ids), tiles(loaded, args)), len(prefix), True)
    return ph, est, f"{args.steps * args.score_batch / ph.seconds:.1f} candidates/s"


def main(argv: list[str] | None = None) -> int:
    from mmrec.plan_model import shape_of

    args = parse(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        loaded, spec = build(args, Path(tmp))
        shape = shape_of(spec, True, "gpu_smoke")
        image = _image(args)
        from mmrec.vlm.families import image_token_count

        n_image = image_token_count(loaded.processor, args.width, args.height)
        print(f"model: {'tiny LLaVA-NeXT' if args.tiny else HUB_ID + ' (random weights)'}, {shape.params:,} "
              f"parameters, {args.device}, image {args.width}x{args.height} ({n_image} image tokens)")
        rows = [("item summaries", *summaries(args, loaded, image, shape, spec)),
                ("LoRA training", *train(args, loaded, image, shape, spec)),
                ("scoring", *score(args, loaded, image, shape, spec))]
    print(f"\n{'phase':<16} {'measured peak':>14} {'plan estimate':>14} {'measured/plan':>14}  throughput")
    for name, ph, est, rate in rows:
        plan = sum(est.values())
        measured = gib(ph.peak) if ph.peak is not None else "-"
        ratio = f"{ph.peak / plan:.2f}" if ph.peak is not None else "-"
        print(f"{name:<16} {measured:>14} {gib(plan):>14} {ratio:>14}  {rate}")
        print("    plan: " + ", ".join(f"{k} {gib(v)}" for k, v in est.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
