"""classify: streams any file in bounded memory; bad rows become error rows."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from router import Router
from router.classify import classify_stream
from router.cli import classify

OUTPUT_KEYS = {
    "id",
    "reasoning_demand",
    "token_budget_p50",
    "token_budget_p90",
    "category",
}


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load()


def test_bad_rows_become_error_rows_and_the_run_continues(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": 1, "prompt": "What is 2 + 2?"}),
        "{not json",
        json.dumps({"id": 3}),
        json.dumps({"id": 4, "prompt": "   "}),
        json.dumps({"id": 5, "prompt": "x" * 1_000_001}),
        json.dumps(["a", "list"]),
        json.dumps({"id": 7, "prompt": "Prove that there are infinitely many primes."}),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(
        classify, ["--input", str(src), "--output", str(out), "--batch-size", "3"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(lines)
    assert set(rows[0]) == OUTPUT_KEYS and set(rows[6]) == OUTPUT_KEYS
    assert [r["id"] for r in rows] == [1, None, 3, 4, 5, None, 7]
    assert all("error" in rows[i] for i in (1, 2, 3, 4, 5))


def test_classifying_10000_rows_streams_in_bounded_memory(router: Router) -> None:
    router = Router(router.encoder, router.heads, cache_size=0)  # measure the stream, not the LRU
    prompt = "Explain, step by step, why the sky looks blue at noon and red at sunset. " * 12
    source = (json.dumps({"id": i, "prompt": f"{prompt} #{i}"}) + "\n" for i in range(10_000))

    class _CountingSink(io.StringIO):
        """Counts rows instead of keeping them, so only the pipeline's memory is measured."""

        rows = 0

        def write(self, text: str) -> int:
            self.rows += text.count("\n")
            return len(text)

    sink = _CountingSink()
    tracemalloc.start()
    rows, errors = classify_stream(router, source, sink, batch_size=64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (rows, errors, sink.rows) == (10_000, 0, 10_000)
    # The input is ~9 MB of text; holding it all would show up here.
    assert peak < 3 * 1024 * 1024
