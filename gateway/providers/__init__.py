"""Upstream calls behind one interface: litellm, or direct OpenAI-compatible HTTP."""

from gateway.providers.base import Provider
from gateway.providers.litellm_provider import LiteLLMProvider
from gateway.providers.local import LocalProvider
from gateway.providers.openai_http import OpenAIHTTPProvider

__all__ = ["LiteLLMProvider", "LocalProvider", "OpenAIHTTPProvider", "Provider"]
