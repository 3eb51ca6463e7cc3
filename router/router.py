"""The Router: encoder + heads, one call from prompt text to Estimate."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from router.artifact import RUNTIMES, artifact_id, default_artifact_dir, read_manifest
from router.deployment_budgets import DeploymentBudgets
from router.encoders.base import Encoder
from router.estimate import Estimate
from router.features import (
    UnknownFeatureSetError,
    feature_names,
    features_batch,
    prompt_features,
)
from router.heads import Heads

# A check-box option line ("- [ ] text", "[x] text"). The features read such lines as options
# (feature set 2), but the encoder read the boxes' tokens, which no training prompt has (none of
# the 28,590), and moved demand by up to 0.075 against the same question lettered "A.".
_CHECKBOX_LINE = re.compile(r"^([ \t]*)(?:[-*+][ \t]+)?\[[ xX]\][ \t]+", re.MULTILINE)


def encoder_text(prompt: str) -> str:
    """The prompt as the encoder reads it: check-box options lettered "A.", "B.", ... in order.

    A no-op for every other prompt, so it leaves the training prompts' embeddings as they were.
    """
    if "[" not in prompt or not _CHECKBOX_LINE.search(prompt):
        return prompt
    letters = iter(range(1 << 30))

    def letter(match: re.Match[str]) -> str:
        n = next(letters)
        label = chr(65 + n) if n < 26 else str(n + 1)
        return f"{match.group(1)}{label}. "

    return _CHECKBOX_LINE.sub(letter, prompt)


V = TypeVar("V")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=16).digest()


class _LRU(Generic[V]):
    """Bounded map from a prompt's digest (`_digest`) to what was worked out for it (its
    embedding, its estimate); repeated prompts skip that work.

    Keys are 16-byte digests, so memory is bounded by `size` however long the prompts are.
    """

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[bytes, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: bytes, value: V) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def load_encoder(artifact_dir: Path, runtime: str, manifest: dict[str, object]) -> Encoder:
    """Build the encoder of one runtime; heavy libraries are imported only for their runtime."""
    transformer = manifest["transformer"]
    assert isinstance(transformer, dict)
    if runtime == "static":
        from router.encoders.static import StaticEncoder

        static = manifest["static"]
        assert isinstance(static, dict)
        return StaticEncoder.from_dir(artifact_dir, max_tokens=int(static["max_tokens"]))
    if runtime == "onnx":
        from router.encoders.onnx import OnnxEncoder

        return OnnxEncoder.for_model(
            str(transformer["model"]), max_seq_length=int(transformer["max_seq_length"])
        )
    if runtime == "sentence-transformers":
        from router.encoders.sentence_transformer import SentenceTransformerEncoder

        return SentenceTransformerEncoder(
            str(transformer["model"]), max_seq_length=int(transformer["max_seq_length"])
        )
    raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def _check_heads_read_known_features(heads: Heads, encoder_dim: int, path: Path) -> None:
    """Refuse heads whose feature set this code does not compute, or whose width differs."""
    try:
        names = feature_names(heads.feature_set)
    except UnknownFeatureSetError as exc:
        raise ValueError(
            f"{path}: {exc}; retrain it with `rightsize train --data DIR --out DIR`"
        ) from None
    width = encoder_dim + len(names) + (1 if heads.neighbours is not None else 0)
    if len(heads.input_mean) != width:
        raise ValueError(
            f"{path} reads {len(heads.input_mean)} inputs, but feature set {heads.feature_set} "
            f"({len(names)} features) with this encoder ({encoder_dim} dims) gives {width}: "
            "retrain it with `rightsize train --data DIR --out DIR`"
        )
    residual = heads.demand_residual
    if residual is not None and len(residual) != width + 2:
        raise ValueError(
            f"{path}: its tuned demand residual has {len(residual)} weights, its heads read "
            f"{width} inputs (expected {width + 2}): tune it again with `rightsize tune`"
        )


class Router:
    """Estimates reasoning demand, token budget and category for prompts."""

    def __init__(self, encoder: Encoder, heads: Heads, cache_size: int = 4096):
        self.encoder = encoder
        self.heads = heads
        self._cache: _LRU[npt.NDArray[np.float32]] = _LRU(cache_size)
        # Whole estimates of repeated prompts: the features and heads cost about as much as
        # the encoder on a short prompt (docs/benchmarks.md, "A fourth quiet run").
        self._estimates: _LRU[Estimate] = _LRU(cache_size)
        # Set by load(): the id of the artifact directory (router.artifact.artifact_id).
        self.artifact_id: str | None = None
        # Set by load(): budgets per deployment from `tune --spend-log` (none: the heads').
        self.deployment_budgets = DeploymentBudgets()

    @classmethod
    def load(
        cls,
        artifact_dir: str | Path | None = None,
        runtime: str | None = None,
        cache_size: int = 4096,
    ) -> Router:
        """Load an artifact (default: the shipped one) with a runtime (default: the manifest's).

        cache_size bounds the LRUs of repeated prompts' embeddings and estimates (0 disables
        them).
        """
        directory = Path(artifact_dir) if artifact_dir is not None else default_artifact_dir()
        manifest = read_manifest(directory)
        chosen = runtime or str(manifest["default_runtime"])
        heads_file = (
            manifest["static"]["heads"] if chosen == "static" else manifest["transformer"]["heads"]
        )
        encoder = load_encoder(directory, chosen, manifest)
        heads = Heads.load(directory / heads_file)
        _check_heads_read_known_features(heads, encoder.dim, directory / heads_file)
        router = cls(encoder, heads, cache_size)
        router.artifact_id = artifact_id(directory)
        router.deployment_budgets = DeploymentBudgets.from_manifest(manifest)
        return router

    def budget_for(self, estimate: Estimate, deployment: str) -> Estimate:
        """The estimate with the deployment's own token budgets, where the artifact has them."""
        return self.deployment_budgets.apply(estimate, deployment)

    def embed_batch(self, prompts: list[str]) -> npt.NDArray[np.float32]:
        """L2-normalised embeddings of the prompts, served from the LRU where possible."""
        return self._embed(prompts, [_digest(prompt) for prompt in prompts])

    def _embed(self, prompts: list[str], keys: list[bytes]) -> npt.NDArray[np.float32]:
        """embed_batch, the prompts' digests given (a long prompt's digest is not free)."""
        out = np.zeros((len(prompts), self.encoder.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        texts: dict[bytes, str] = {}
        for i, (prompt, key) in enumerate(zip(prompts, keys, strict=True)):
            hit = self._cache.get(key)
            if hit is None:
                missing.setdefault(key, []).append(i)
                texts.setdefault(key, prompt)
            else:
                out[i] = hit
        if missing:
            encoded = self.encoder.encode([encoder_text(texts[key]) for key in missing])
            for key, emb in zip(missing, encoded, strict=True):
                self._cache.put(key, emb)
                out[missing[key]] = emb
        return out

    def estimate_batch(self, prompts: list[str]) -> list[Estimate]:
        """One Estimate per prompt: a repeated one's from the LRU, the others' worked out in a
        single encoder call. Each prompt is digested once for both LRUs."""
        if len(prompts) == 1:
            return [self.estimate(prompts[0])]
        keys = [_digest(prompt) for prompt in prompts]
        known = [self._estimates.get(key) for key in keys]
        missing = {key: p for key, p, e in zip(keys, prompts, known, strict=True) if e is None}
        if not missing:
            return [e for e in known if e is not None]
        texts = list(missing.values())
        estimates = self.heads.estimates(
            self._embed(texts, list(missing)), features_batch(texts, self.heads.feature_set)
        )
        fresh = dict(zip(missing, estimates, strict=True))
        for key, found in fresh.items():
            self._estimates.put(key, found)
        return [e if e is not None else fresh[key] for key, e in zip(keys, known, strict=True)]

    def estimate(self, prompt: str) -> Estimate:
        """Estimate for one prompt: estimate_batch's steps without its lists and dicts (the
        gateway's path: a short prompt is estimated alone, on the event loop)."""
        key = _digest(prompt)
        found = self._estimates.get(key)
        if found is not None:
            return found
        embedding = self._cache.get(key)
        if embedding is None:
            embedding = self.encoder.encode([encoder_text(prompt)])[0]
            self._cache.put(key, embedding)
        found = self.heads.estimate_one(embedding, prompt_features(prompt, self.heads.feature_set))
        self._estimates.put(key, found)
        return found
