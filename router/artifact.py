"""Where the shipped artifact lives and how its manifest (router.json) is read and written."""

from __future__ import annotations

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
