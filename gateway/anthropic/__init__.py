"""Anthropic's Messages API on the gateway: its request schema, the translation to and from the
internal (OpenAI-shaped) chat request, its stream events and its error shape."""

from gateway.anthropic.errors import error_body, error_type
from gateway.anthropic.schemas import CountTokensRequest, MessagesRequest
from gateway.anthropic.stream import MessageStream
from gateway.anthropic.translate import chat_body, chat_messages, message, usage

__all__ = [
    "CountTokensRequest",
    "MessageStream",
    "MessagesRequest",
    "chat_body",
    "chat_messages",
    "error_body",
    "error_type",
    "message",
    "usage",
]
