"""Prompt encoders: a static token-embedding table (default), ONNX, sentence-transformers."""

from router.encoders.base import Encoder, l2_normalise

__all__ = ["Encoder", "l2_normalise"]
