"""Prefix affinity: which replica last served each block-aligned prefix of a prompt."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import orjson


def prompt_text(messages: Iterable[dict[str, Any]]) -> bytes:
    """The messages as one byte string, in order: what an engine's prefix cache sees first."""
    parts = []
    for message in messages:
        content = message.get("content")
        body = content if isinstance(content, str) else orjson.dumps(content).decode()
        parts.append(f"<{message.get('role', '')}>{body}")
    return "\n".join(parts).encode()


def prefix_hashes(text: bytes, block: int, max_blocks: int) -> list[bytes]:
    """Chained hashes of the whole blocks of `text`: equal prefixes give equal leading hashes."""
    hashes: list[bytes] = []
    previous = b""
    for start in range(0, min(len(text) // block, max_blocks) * block, block):
        previous = hashlib.blake2b(previous + text[start : start + block], digest_size=16).digest()
        hashes.append(previous)
    return hashes


class PrefixTable:
    """Block hash -> the replica that last served it; bounded, least recently used dropped."""

    def __init__(self, max_entries: int) -> None:
        self._owners: OrderedDict[bytes, str] = OrderedDict()
        self._max = max_entries

    def longest(self, hashes: Sequence[bytes]) -> tuple[str | None, int]:
        """The replica that served the longest known prefix, and its length in blocks."""
        for depth in range(len(hashes), 0, -1):
            owner = self._owners.get(hashes[depth - 1])
            if owner is not None:
                return owner, depth
        return None, 0

    def remember(self, hashes: Sequence[bytes], replica: str) -> None:
        owners = self._owners
        for digest in hashes:
            owners[digest] = replica
            owners.move_to_end(digest)
        while len(owners) > self._max:
            owners.popitem(last=False)
