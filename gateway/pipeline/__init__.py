"""The request pipeline shared by the API adapters (docs: README.md, "The request path")."""

from gateway.pipeline.relay import END, StreamEnd, StreamEvent
from gateway.pipeline.run import Answer, Inbound, Outcome, Refused, Replay, Stream, run

__all__ = [
    "END",
    "Answer",
    "Inbound",
    "Outcome",
    "Refused",
    "Replay",
    "Stream",
    "StreamEnd",
    "StreamEvent",
    "run",
]
