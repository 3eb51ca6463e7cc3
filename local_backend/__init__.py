"""Local engines (vLLM, SGLang, llama.cpp, Ollama): health and load probes, spill-over to
remote tiers with hysteresis, and replica picking by load and prefix affinity."""

from local_backend.backend import LocalBackend, Pick, ReplicaReport
from local_backend.probe import ProbeLoop, engine_root, health_url
from local_backend.prometheus import EngineLoad, MetricsFormatError, parse_engine_load
from local_backend.replica import Replica
from local_backend.settings import AffinitySettings, LocalBackendSettings, SpillSettings
from local_backend.spill import SpillGate

__all__ = [
    "AffinitySettings",
    "EngineLoad",
    "LocalBackend",
    "LocalBackendSettings",
    "MetricsFormatError",
    "Pick",
    "ProbeLoop",
    "Replica",
    "ReplicaReport",
    "SpillGate",
    "SpillSettings",
    "engine_root",
    "health_url",
    "parse_engine_load",
]
