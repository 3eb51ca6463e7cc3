"""classify: streams any file in bounded memory; bad rows become error rows."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from router import Estimate, Router
from router.classify import OverlongLine, classify_stream, read_lines
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


def _classify_file(tmp_path: Path, content: bytes) -> list[dict[str, object]]:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(content)
    result = CliRunner().invoke(classify, ["--input", str(src), "--output", str(out)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_a_lone_surrogate_in_a_prompt_or_an_id_is_estimated_and_the_id_kept(
    tmp_path: Path,
) -> None:
    rows = _classify_file(
        tmp_path,
        b'{"id": "a\\ud800", "prompt": "Sum 2 and \\udc00 3."}\n{"id": 2, "prompt": "Hi"}\n',
    )
    assert [row["id"] for row in rows] == ["a\ud800", 2]
    assert set(rows[0]) == OUTPUT_KEYS and set(rows[1]) == OUTPUT_KEYS


def test_a_file_starting_with_a_utf8_bom_reads_its_first_row(tmp_path: Path) -> None:
    rows = _classify_file(tmp_path, b'\xef\xbb\xbf{"id": 1, "prompt": "Hi"}\n')
    assert set(rows[0]) == OUTPUT_KEYS


def test_a_chat_row_is_read_as_the_gateway_reads_it(tmp_path: Path, router: Router) -> None:
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Translate 'hello' to French."},
        {"role": "assistant", "content": "Bonjour."},
        {"role": "user", "content": "Prove that there are infinitely many primes."},
    ]
    lines = [{"id": 1, "messages": chat}, {"id": 2, "messages": "not a chat"}]
    rows = _classify_file(tmp_path, "\n".join(map(json.dumps, lines)).encode())
    expected = router.estimate("Prove that there are infinitely many primes.").as_dict()
    assert rows[0] == {"id": 1, **expected}
    assert set(rows[1]) == {"id", "error"}


def test_a_line_over_the_limit_is_an_error_row_read_in_bounded_memory() -> None:
    huge = b'{"id": 1, "prompt": "' + b"x" * 2_000_000 + b'"}\n'
    stream = io.BytesIO(huge + b'{"id": 2, "prompt": "Hi"}\n')
    tracemalloc.start()
    lines = list(read_lines(stream, max_line_bytes=10_000))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert lines == [OverlongLine(len(huge)), '{"id": 2, "prompt": "Hi"}\n']
    assert peak < 200_000  # the 2 MB line was never held whole

    sink = io.StringIO()
    assert classify_stream(Router.load(), lines, sink) == (2, 1)
    first, second = map(json.loads, sink.getvalue().splitlines())
    assert first == {"id": None, "error": first["error"]} and "bytes, over" in first["error"]
    assert set(second) == OUTPUT_KEYS


def test_a_prompt_the_router_fails_on_is_an_error_row_and_its_batch_is_still_estimated(
    router: Router,
) -> None:
    class _FailsOnPoison:
        def estimate_batch(self, prompts: list[str]) -> list[Estimate]:
            if "poison" in prompts:
                raise RuntimeError("encoder broke")
            return router.estimate_batch(prompts)

    prompts = ["What is 2 + 2?", "poison", "Prove Fermat's little theorem."]
    source = [json.dumps({"id": i, "prompt": p}) for i, p in enumerate(prompts)]
    sink = io.StringIO()
    assert classify_stream(_FailsOnPoison(), source, sink, batch_size=8) == (3, 1)
    rows = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert rows[1] == {"id": 1, "error": "line 2: not estimated (RuntimeError: encoder broke)"}
    assert rows[0] == {"id": 0, **router.estimate(prompts[0]).as_dict()}
    assert rows[2] == {"id": 2, **router.estimate(prompts[2]).as_dict()}
