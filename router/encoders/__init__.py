"""Prompt encoders: a static token-embedding table (default), ONNX Runtime, sentence-transformers."""

from router.encoders.base import Encoder, l2_normalise

__all__ = ["Encoder", "l2_normalise"]
