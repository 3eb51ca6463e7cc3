"""The semantic tier's index: per team and partition, prompt embeddings and their exact keys.

Vectors live in process as dense float32 matrices searched exactly (one matrix-vector product);
the answers themselves stay in the exact store. docs/cache.md explains the choice.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.cache.guard import PromptGuard

Vector = npt.NDArray[np.float32]

# Rows per matrix-vector product. OpenBLAS goes multi-threaded above about this size, and on a
# busy host its threads cost milliseconds (measured: p50 10 ms at 4096 rows, 0.16 ms in blocks).
_BLOCK_ROWS = 1024


class BadEmbedding(ValueError):
    """The caller's embedding has the wrong shape or is not a finite vector."""


@dataclass(frozen=True, slots=True)
class Neighbour:
    key: str
    similarity: float
    guard: PromptGuard | None = None


@dataclass(slots=True)
class _Partition:
    vectors: Vector
    keys: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    guards: dict[str, PromptGuard] = field(default_factory=dict)

    def put(self, key: str, vector: Vector, guard: PromptGuard | None) -> None:
        row = self.rows.get(key)
        if row is None:
            row = len(self.keys)
            if row == len(self.vectors):
                grown = np.zeros((max(8, 2 * row), self.vectors.shape[1]), dtype=np.float32)
                grown[:row] = self.vectors
                self.vectors = grown
            self.keys.append(key)
            self.rows[key] = row
        self.vectors[row] = vector
        if guard is not None:
            self.guards[key] = guard

    def remove(self, key: str) -> None:
        row = self.rows.pop(key, None)
        self.guards.pop(key, None)
        if row is None:
            return
        last = len(self.keys) - 1
        if row != last:
            moved = self.keys[last]
            self.vectors[row] = self.vectors[last]
            self.keys[row] = moved
            self.rows[moved] = row
        self.keys.pop()

    def nearest(self, vector: Vector) -> Neighbour | None:
        best_row, best = -1, -np.inf
        for start in range(0, len(self.keys), _BLOCK_ROWS):
            block = self.vectors[start : min(start + _BLOCK_ROWS, len(self.keys))] @ vector
            row = int(np.argmax(block))
            if block[row] > best:
                best_row, best = start + row, float(block[row])
        if best_row < 0:
            return None
        key = self.keys[best_row]
        return Neighbour(key, best, self.guards.get(key))


@dataclass(slots=True)
class _Team:
    partitions: dict[str, _Partition] = field(default_factory=dict)
    order: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)


class SemanticIndex:
    """Nearest stored prompt by cosine similarity, never across teams or partitions."""

    def __init__(self, dimensions: int, max_entries_per_team: int) -> None:
        self.dimensions = dimensions
        self._max_entries = max_entries_per_team
        self._teams: dict[str, _Team] = {}

    def vector(self, embedding: object) -> Vector:
        """The embedding as a unit float32 vector, or BadEmbedding."""
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.shape != (self.dimensions,) or not np.all(np.isfinite(vector)):
            raise BadEmbedding(
                f"expected {self.dimensions} finite floats, got shape {vector.shape}"
            )
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            raise BadEmbedding("the embedding is all zeros")
        return vector / norm

    def add(
        self,
        team: str,
        partition: str,
        key: str,
        vector: Vector,
        guard: PromptGuard | None = None,
    ) -> None:
        index = self._teams.setdefault(team, _Team())
        slot = index.partitions.get(partition)
        if slot is None:
            slot = index.partitions[partition] = _Partition(
                np.zeros((8, self.dimensions), dtype=np.float32)
            )
        slot.put(key, vector, guard)
        index.order[(partition, key)] = None
        index.order.move_to_end((partition, key))
        while len(index.order) > self._max_entries:
            old_partition, old_key = index.order.popitem(last=False)[0]
            self._drop(index, old_partition, old_key)

    def nearest(self, team: str, partition: str, vector: Vector) -> Neighbour | None:
        index = self._teams.get(team)
        slot = index.partitions.get(partition) if index else None
        return slot.nearest(vector) if slot else None

    def remove(self, team: str, partition: str, key: str) -> None:
        index = self._teams.get(team)
        if index is not None and (partition, key) in index.order:
            del index.order[(partition, key)]
            self._drop(index, partition, key)

    def invalidate_team(self, team: str) -> int:
        index = self._teams.pop(team, None)
        return len(index.order) if index else 0

    def size(self, team: str) -> int:
        index = self._teams.get(team)
        return len(index.order) if index else 0

    def _drop(self, index: _Team, partition: str, key: str) -> None:
        slot = index.partitions.get(partition)
        if slot is None:
            return
        slot.remove(key)
        if not slot.keys:
            del index.partitions[partition]
