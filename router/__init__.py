"""Rightsize router: reasoning demand, token budget and category for a prompt.

Imports nothing else of ours. This package is the runtime `serve` loads: with the default
(static) encoder it needs only numpy and tokenizers. Training and evaluation live in
router.training (the `train` extra), which the runtime never imports.
"""

from router.batcher import EstimateBatcher
from router.estimate import Estimate
from router.messages import prompt_from_messages
from router.router import Router

__all__ = ["Estimate", "EstimateBatcher", "Router", "prompt_from_messages"]
