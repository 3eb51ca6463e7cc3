"""Long CLI jobs show a progress bar on a terminal, and write none into a pipe or a log."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from router.training.embedding_cache import cached_encode


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class CountingEncoder:
    name = "counting"
    dim = 2

    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


@pytest.mark.parametrize(("stream", "shown"), [(Terminal, True), (Pipe, False)])
def test_encoding_a_dataset_shows_a_bar_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, stream: type[io.StringIO], shown: bool
) -> None:
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)

    out = cached_encode(CountingEncoder(), ["a", "bb", "ccc"] * 100, None, batch_size=64)  # type: ignore[arg-type]

    assert out.shape == (300, 2) and out[1][0] == 2.0
    assert ("encode (counting)" in err.getvalue()) is shown
    assert ("300/300" in err.getvalue()) is shown


def test_calibrate_counts_its_prompts_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gateway.routing import calibrate_policy
    from gateway.settings import Settings

    settings = Settings.model_validate(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'rs.db'}"},
            "models": [
                {"name": "small", "model": "openai/gpt-4o-mini", "tier": "light"},
                {"name": "big", "model": "openai/gpt-4o", "tier": "standard"},
            ],
            "policy": {
                "tiers": [
                    {"name": "light", "deployments": ["small"]},
                    {"name": "standard", "deployments": ["big"], "min_demand": 0.5},
                ]
            },
        }
    )
    traffic = tmp_path / "traffic.jsonl"
    prompts = [f"prove lemma {i} about primes" if i % 2 else f"capital {i}?" for i in range(300)]
    traffic.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)

    result = calibrate_policy(settings, "test", str(traffic), "standard=0.5", None)

    assert result["prompts"] == 300
    assert "calibrate" in err.getvalue() and "300/300" in err.getvalue()
