"""Rightsize gateway: OpenAI-compatible model-routing proxy with budgets and a spend log."""

__version__ = "0.1.0"
