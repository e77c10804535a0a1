"""Item encoders: text (HF encoder, mean pooled) and image (open_clip), with an on-disk embedding cache."""
from mmrec.encoders.cache import EmbeddingCache
from mmrec.encoders.embed import embed_images, embed_texts
from mmrec.encoders.image import ImageEncoder, ImageEncoderConfig, build_tiny_open_clip
from mmrec.encoders.text import TextEncoder, TextEncoderConfig

__all__ = ["EmbeddingCache", "ImageEncoder", "ImageEncoderConfig", "TextEncoder", "TextEncoderConfig",
           "build_tiny_open_clip", "embed_images", "embed_texts"]
