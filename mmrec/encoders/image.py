"""CLIP image embeddings through open_clip: a named architecture with a pretrained tag, or a local checkpoint.

`model` is an open_clip architecture name (`ViT-B-32`, with `pretrained: openai` or a local weights file), or a
local directory holding `open_clip_config.json` + `*.safetensors` (open_clip's `local-dir:` layout, which is what
`build_tiny_open_clip` writes for tests and the demo). Embeddings are L2-normalised like CLIP's own.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mmrec.device import resolve_device
from mmrec.errors import ConfigError
from mmrec.io import atomic_dir, hash_json, sha256_file, write_json
from mmrec.progress import progress

TINY_CLIP_NAME = "mmrec-tiny-clip"
# Small enough to build in milliseconds, real enough to run open_clip's whole image path (patching, attention).
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass
class ImageEncoderConfig:
    """Which CLIP model embeds item images."""

    model: str = "ViT-B-32"  # open_clip name, or a local directory (open_clip_config.json + weights)
    pretrained: str | None = "openai"  # open_clip tag or a local .safetensors file; ignored for a directory
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.pretrained:  # `~/clip.safetensors`: a file, as in a shell
            self.pretrained = os.path.expanduser(self.pretrained)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs routine notes ("No pretrained weights loaded") on the root logger; hide all but errors."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _local_dir(model: str) -> Path | None:
    path = Path(model.removeprefix("local-dir:")).expanduser()
    return path if path.is_dir() else None


class ImageEncoder:
    """Embeds image files into unit vectors; `identity` changes whenever the embeddings could change."""

    def __init__(self, cfg: ImageEncoderConfig, device: str = "auto") -> None:
        self.cfg = cfg
        self.device = resolve_device(device)
        self.local = _local_dir(cfg.model)
        pretrained = cfg.pretrained
        if self.local is not None:
            if not (self.local / "open_clip_config.json").is_file():
                raise ConfigError(f"image encoder directory {self.local} has no open_clip_config.json")
            weights = {p.name: sha256_file(p) for p in sorted(self.local.glob("*.safetensors"))}
            weights["config"] = sha256_file(self.local / "open_clip_config.json")
        elif pretrained and Path(pretrained).suffix in (".bin", ".pt", ".pth"):
            raise ConfigError(f"image encoder weights {pretrained}: only .safetensors checkpoints are loaded")
        elif pretrained and Path(pretrained).is_file():
            weights = {"name": cfg.model, "file": sha256_file(pretrained)}
        else:
            weights = {"name": cfg.model, "pretrained": pretrained}
        self.identity = hash_json({"kind": "image", "weights": weights, "normalize": True})
        self.calls = 0  # images actually run through the model (tests assert cache hits leave it at 0)
        self._model = None

    def _load(self):
        """Build the model and its eval transform on first use, so a fully cached run never pays for it."""
        if self._model is None:
            import open_clip

            name, pretrained = ((f"local-dir:{self.local}", None) if self.local
                                else (self.cfg.model, self.cfg.pretrained))
            try:
                with _quiet_open_clip():
                    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
            except (RuntimeError, FileNotFoundError, ValueError) as e:
                raise ConfigError(f"cannot load image encoder {self.cfg.model!r} "
                                  f"(pretrained={self.cfg.pretrained!r}): {e}") from None
            self._model, self._preprocess = model.eval().to(self.device), preprocess
        return self._model, self._preprocess

    @functools.cached_property
    def dim(self) -> int:
        """Embedding size, from the architecture config (no weights loaded)."""
        if self.local is not None:
            cfg = json.loads((self.local / "open_clip_config.json").read_text())
            return int(cfg.get("model_cfg", cfg)["embed_dim"])
        import open_clip

        cfg = open_clip.get_model_config(self.cfg.model)
        if cfg is None:
            raise ConfigError(f"unknown open_clip model {self.cfg.model!r}; see open_clip.list_models() "
                              "or give a local directory with open_clip_config.json")
        return int(cfg["embed_dim"])

    def encode(self, paths: list[Path], desc: str = "embed images") -> np.ndarray:
        """[len(paths), dim] float32 unit vectors. Bad files raise `ImageError` naming the file."""
        import torch

        from mmrec.data.images import load_image

        model, preprocess = self._load()
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        bs = self.cfg.batch_size
        bar = progress(total=len(paths), desc=desc, unit="img")
        with torch.inference_mode():
            for start in range(0, len(paths), bs):
                chunk = paths[start:start + bs]
                pixels = torch.stack([preprocess(load_image(p)) for p in chunk]).to(self.device)
                feats = model.encode_image(pixels, normalize=True)
                out[start:start + len(chunk)] = feats.float().cpu().numpy()
                self.calls += len(chunk)
                bar.update(len(chunk))
        bar.close()
        return out


def build_tiny_open_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random CLIP in open_clip's local-dir layout (config + safetensors) and register its
    config as `mmrec-tiny-clip`; returns the directory, usable as `ImageEncoderConfig(model=str(dir))`."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_json(TINY_CLIP_CFG, tmp / f"{TINY_CLIP_NAME}.json")
        config = {"model_cfg": TINY_CLIP_CFG,
                  "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                                     "std": list(open_clip.OPENAI_DATASET_STD)}}
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2))
        torch.manual_seed(seed)
        with _quiet_open_clip():
            model = open_clip.create_model(f"local-dir:{tmp}")  # no weights there yet: random init
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "open_clip_model.safetensors"))
    open_clip.add_model_config(out_dir / f"{TINY_CLIP_NAME}.json")  # the temp path above is gone after the rename
    return out_dir
