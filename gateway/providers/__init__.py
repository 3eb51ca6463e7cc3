"""Upstream calls behind one interface: litellm, direct OpenAI-compatible HTTP, or Anthropic's
Messages API."""

from gateway.providers.anthropic_http import AnthropicHTTPProvider
from gateway.providers.base import EmbeddingProvider, Provider
from gateway.providers.litellm_provider import LiteLLMProvider
from gateway.providers.local import LocalProvider
from gateway.providers.openai_http import OpenAIHTTPProvider

__all__ = [
    "AnthropicHTTPProvider",
    "EmbeddingProvider",
    "LiteLLMProvider",
    "LocalProvider",
    "OpenAIHTTPProvider",
    "Provider",
]
