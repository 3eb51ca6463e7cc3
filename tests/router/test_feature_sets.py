"""Feature-set versioning: heads read the feature set they were fitted on, old files included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router import Router
from router.artifact import default_artifact_dir, read_manifest
from router.features import LATEST_FEATURE_SET, feature_names, features_batch
from router.heads import Heads

# Estimates of the transformer heads (2026-12-02, feature set 1) measured with main's code at
# e893559, before feature sets existed: demand as float.hex(), p50, p90, category. The heads
# file and the set-1 features are unchanged, so these must stay: the heads' arithmetic bit for
# bit, but the encoder's float32 matrix products round differently on another CPU (another
# SIMD path in torch), which moved the demand in its 7th significant digit between two hosts.
TRANSFORMER_ON_MAIN: dict[str, tuple[str, int, int, str]] = {
    "Prove that the square root of 2 is irrational.": ("0x1.b284deeaa860ap-2", 388, 912, "math"),
    "WHAT IS THE CAPITAL OF FRANCE?": ("0x1.13ccd787488cap-2", 93, 189, "chat"),
    (
        "A 2 kg block slides down a ramp. What is its speed?\n"
        "A. 5 m/s\nB. 9.9 m/s\nC. 12 m/s\nD. 20 m/s"
    ): ("0x1.129784443923ep-3", 248, 582, "math"),
    "Is this a reasonable price?\n\n\n1) yes\n2) no": (
        "0x1.c1e2002dfd6b5p-4",
        278,
        483,
        "reasoning",
    ),
    "Write a haiku about autumn leaves.": ("0x1.c4d12d48f3102p-4", 123, 401, "writing"),
}


def _shipped_heads(kind: str) -> Path:
    directory = default_artifact_dir()
    return directory / str(read_manifest(directory)[kind]["heads"])


def test_a_heads_file_without_a_feature_set_loads_as_set_1(tmp_path: Path) -> None:
    heads = Heads.load(_shipped_heads("static"))
    data = heads.to_json()
    assert data["feature_set"] == 2
    del data["feature_set"]
    assert (
        Heads.from_json(data, heads.neighbours.bank if heads.neighbours else None).feature_set == 1
    )


def test_the_shipped_transformer_heads_predate_feature_sets_and_read_set_1() -> None:
    path = _shipped_heads("transformer")
    assert "feature_set" not in json.loads(path.read_text())
    assert Heads.load(path).feature_set == 1


def test_the_shipped_static_heads_read_the_newest_set() -> None:
    heads = Heads.load(_shipped_heads("static"))
    assert heads.feature_set == LATEST_FEATURE_SET == 2
    assert heads.feature_range is not None
    assert heads.feature_range.shape[1] == len(feature_names(2))


def test_a_set_2_router_computes_set_2_features() -> None:
    router = Router.load(runtime="static", cache_size=0)
    prompt = "WHAT IS 2+2?\n(a) 3\n(b) 4"
    emb = router.embed_batch([prompt])
    expected = router.heads.estimates(emb, features_batch([prompt], 2))[0]
    assert router.estimate(prompt) == expected
    # The set-1 reading of the same prompt (another width, other values) is not what it used.
    assert features_batch([prompt], 1).shape[1] == features_batch([prompt], 2).shape[1] + 1


def test_the_transformer_heads_give_the_estimates_they_gave_before_feature_sets() -> None:
    router = Router.load(runtime="sentence-transformers", cache_size=0)
    for prompt, (demand, p50, p90, category) in TRANSFORMER_ON_MAIN.items():
        estimate = router.estimate(prompt)
        assert estimate.reasoning_demand == pytest.approx(float.fromhex(demand), abs=1e-5), prompt
        got = (estimate.token_budget_p50, estimate.token_budget_p90, estimate.category)
        assert got == (p50, p90, category), prompt


def test_heads_asking_for_an_unknown_feature_set_are_refused(tmp_path: Path) -> None:
    directory = default_artifact_dir()
    out = tmp_path / "artifact"
    out.mkdir()
    for path in directory.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    heads_path = out / _shipped_heads("static").name
    data = json.loads(heads_path.read_text())
    data["feature_set"] = 99
    heads_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"feature set 99.*retrain"):
        Router.load(out, runtime="static")
