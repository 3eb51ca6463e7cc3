"""Rightsize router: reasoning demand, token budget and category for a prompt.

Imports nothing else of ours; the default runtime needs only numpy and tokenizers.
"""

from router.batcher import EstimateBatcher
from router.estimate import Estimate
from router.messages import prompt_from_messages
from router.router import Router

__all__ = ["Estimate", "EstimateBatcher", "Router", "prompt_from_messages"]
