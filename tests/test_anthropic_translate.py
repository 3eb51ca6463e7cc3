"""The Anthropic <-> OpenAI translation and the stream encoder, without a server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.anthropic import MessagesRequest, MessageStream, chat_body, message
from gateway.errors import UpstreamError


def request(**fields: Any) -> MessagesRequest:
    body = {"model": "auto", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    return MessagesRequest.model_validate({**body, **fields})


def completion(finish: str, **choice: Any) -> dict[str, Any]:
    reply = {"role": "assistant", "content": "done"}
    return {
        "model": "gpt-x",
        "choices": [{"index": 0, "message": reply, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 5},
    }


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(finish: str, stop_reason: str) -> None:
    answer = message(completion(finish), None, "direct")
    assert (answer["stop_reason"], answer["stop_sequence"]) == (stop_reason, None)


def test_a_stop_sequence_named_by_the_upstream_is_reported_as_stop_sequence() -> None:
    # vLLM and SGLang say which stop string ended the answer; OpenAI does not.
    answer = message(completion("stop", stop_reason="END"), ["END", "STOP"], "direct")
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("stop_sequence", "END")


def test_cached_prompt_tokens_are_reported_as_cache_reads_outside_input_tokens() -> None:
    result = completion("stop")
    result["usage"]["prompt_tokens_details"] = {"cached_tokens": 8}
    assert message(result, None, "direct")["usage"] == {
        "input_tokens": 22,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 8,
    }


def test_truncated_tool_arguments_are_kept_not_lost() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}
    result = completion("length")
    result["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
    [block] = message(result, None, "direct")["content"]
    assert block == {
        "type": "tool_use",
        "id": "c1",
        "name": "f",
        "input": {"_raw_arguments": '{"a": '},
    }


def test_tool_results_become_tool_messages_before_the_rest_of_the_user_turn() -> None:
    png = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    body = chat_body(
        request(
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "t1", "name": "w", "input": {"c": "P"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "no data"},
                                {"type": "image", "source": png},
                            ],
                        },
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ]
        )
    )
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Checking."}],  # the thinking block dropped
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c":"P"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "t1",
            "content": [
                {"type": "text", "text": "Error from the tool:"},
                {"type": "text", "text": "no data"},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "w", "disable_parallel_tool_use": True},
            {"tool_choice": {"type": "function", "function": {"name": "w"}},
             "parallel_tool_calls": False},
        ),
    ],
)  # fmt: skip
def test_tool_choice_maps_to_openais(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    tool = {"name": "w", "input_schema": {"type": "object"}}
    body = chat_body(request(tools=[tool], tool_choice=choice))
    assert {k: body[k] for k in expected} == expected


def test_structured_output_becomes_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    body = chat_body(request(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def test_a_stream_always_asks_the_upstream_for_usage() -> None:
    body = chat_body(request(stream=True))
    assert body["stream_options"] == {"include_usage": True}


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for frame in raw.decode().strip().split("\n\n"):
        kind, data = frame.split("\n")
        parsed.append((kind.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return parsed


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"model": "gpt-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_text_then_two_tool_calls_are_three_blocks_in_order() -> None:
    stream = MessageStream("direct", None)
    call = {"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x":'}}
    again = {"index": 0, "id": "a", "function": {"arguments": "1}"}}
    second = {"index": 1, "id": "b", "function": {"name": "g"}}
    raw = b"".join(
        [
            stream.feed(chunk({"role": "assistant", "content": "Let me"})),
            stream.feed(chunk({"content": " check."})),
            stream.feed(chunk({"tool_calls": [call]})),
            # Some servers repeat the id on every chunk of a call: still one block.
            stream.feed(chunk({"tool_calls": [again]})),
            stream.feed(chunk({"tool_calls": [second]})),
            stream.feed(chunk({}, finish="tool_calls")),
            stream.feed({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
            stream.end(),
        ]
    )  # fmt: skip
    sequence = [(kind, data.get("index")) for kind, data in events(raw)]
    assert sequence == [
        ("message_start", None),
        ("ping", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    parsed = dict((kind, data) for kind, data in events(raw) if kind == "message_delta")
    assert parsed["message_delta"]["delta"]["stop_reason"] == "tool_use"
    assert parsed["message_delta"]["usage"]["input_tokens"] == 9
    assert parsed["message_delta"]["usage"]["output_tokens"] == 4


def test_an_error_after_the_first_byte_is_an_anthropic_error_event() -> None:
    stream = MessageStream("direct", None)
    stream.feed(chunk({"content": "Hel"}))
    [(kind, data)] = events(stream.error(UpstreamError("direct", "connection reset")))
    assert kind == "error"
    assert data["type"] == "error" and data["error"]["type"] == "api_error"
    assert "connection reset" in data["error"]["message"]
