"""Where the shipped artifact lives and how its manifest (router.json) is read and written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "router.json"
RUNTIMES: tuple[str, ...] = ("static", "onnx", "sentence-transformers")


def default_artifact_dir() -> Path:
    """The artifact directory shipped inside the package."""
    return Path(__file__).resolve().parent / "artifact"


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """Parse router.json of an artifact directory."""
    with open(artifact_dir / MANIFEST, encoding="utf-8") as handle:
        manifest: dict[str, Any] = json.load(handle)
    return manifest


def write_manifest(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    """Write router.json with stable key order so retraining gives identical bytes."""
    with open(artifact_dir / MANIFEST, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")


def artifact_id(artifact_dir: Path) -> str:
    """A short id of an artifact: a hash of its files' names and bytes (16 hex digits).

    Computed at load, so a retrained or tuned artifact gets a new id without anyone writing one;
    the spend log records it beside each estimate.
    """
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(p for p in artifact_dir.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
