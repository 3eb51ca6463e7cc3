"""Upstream calls behind one interface: litellm, or direct OpenAI-compatible HTTP."""

from gateway.providers.base import EmbeddingProvider, Provider
from gateway.providers.litellm_provider import LiteLLMProvider
from gateway.providers.openai_http import OpenAIHTTPProvider

__all__ = ["EmbeddingProvider", "LiteLLMProvider", "OpenAIHTTPProvider", "Provider"]
