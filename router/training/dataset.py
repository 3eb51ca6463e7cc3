"""Read the shared routing data (train/dev JSONL.gz) into typed records."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RoutingRecord:
    """One prompt with per-model outcomes and answer lengths (see the data README)."""

    id: str
    source: str
    prompt: str
    category: str | None
    difficulty: float | None
    outcomes: dict[str, float] = field(default_factory=dict)
    output_tokens: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def load_split(data_dir: str | Path, split: str) -> list[RoutingRecord]:
    """Load `<data_dir>/<split>.jsonl.gz` (split is 'train' or 'dev')."""
    path = Path(data_dir) / f"{split}.jsonl.gz"
    records: list[RoutingRecord] = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            records.append(
                RoutingRecord(
                    id=row["id"],
                    source=row["source"],
                    prompt=row["prompt"],
                    category=row.get("category"),
                    difficulty=row.get("difficulty"),
                    outcomes=row.get("outcomes") or {},
                    output_tokens=row.get("output_tokens") or {},
                    meta=row.get("meta") or {},
                )
            )
    return records
