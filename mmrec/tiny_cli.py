"""Build a tiny random model (LLaVA, LLaVA-NeXT, a text-only LLM, or an open_clip CLIP image encoder) in a local
directory, for tests and dry runs.

The directory loads like any checkpoint (`model.name_or_path: DIR` in a config; for `clip`,
`image_encoder.model: DIR` with `pretrained: null`). Its weights are random:
the text it generates is meaningless; it exists to run the real code paths quickly without downloads.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmrec.errors import MmrecError

FAMILIES = ("llava", "llava_next", "llm", "clip")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=FAMILIES, default="llava", help="model family (default: llava)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--hidden", type=int, default=64, help="language-model width (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="language-model layers (default 2)")
    parser.add_argument("--vision-hidden", type=int, default=32,
                        help="LLaVA vision-tower width (default 32; 64 separates image colours well enough for a "
                             "finetuned tiny LLaVA to learn the synthetic benchmark's colour match)")
    parser.add_argument("--force", action="store_true", help="replace an existing directory")


def main(args: argparse.Namespace) -> int:
    from mmrec.tiny import build_tiny_llava, build_tiny_llm

    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        raise MmrecError(f"{out} exists and is not empty; pass --force to replace it")
    if args.hidden % 4 or args.hidden < 8:
        raise MmrecError(f"--hidden must be a multiple of 4 and at least 8 (4 attention heads), got {args.hidden}")
    if args.vision_hidden % 2 or args.vision_hidden < 4:
        raise MmrecError(f"--vision-hidden must be even and at least 4 (2 attention heads), got {args.vision_hidden}")
    sizes = {"hidden": args.hidden, "layers": args.layers}
    if args.family == "clip":
        from mmrec.encoders.image import build_tiny_open_clip

        build_tiny_open_clip(out, seed=args.seed)  # fixed tiny shape: the size options do not apply
    elif args.family == "llm":
        build_tiny_llm(out, seed=args.seed, **sizes)
    else:
        build_tiny_llava(out, family=args.family, seed=args.seed, vision_hidden=args.vision_hidden, **sizes)
    print(f"wrote tiny {args.family} model to {out} (random weights: its generations are meaningless text)")
    return 0
