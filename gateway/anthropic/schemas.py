"""The Anthropic Messages request (`POST /v1/messages`), as the gateway accepts it.

Every field this increment can translate for an OpenAI-format deployment, nothing else: an
unknown field, or one that has no faithful translation (`top_k`, enabled `thinking`, server
tools, documents), is a 400 naming it rather than a request silently answered otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Block(_Strict):
    # Prompt-cache breakpoints: OpenAI-format upstreams cache prompts by themselves, so the
    # marker is accepted and has nothing to translate into.
    cache_control: dict[str, Any] | None = None


class TextBlock(_Block):
    type: Literal["text"]
    text: str
    citations: list[dict[str, Any]] | None = None


class Base64Source(_Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLSource(_Strict):
    type: Literal["url"]
    url: str


ImageSource = Annotated[Base64Source | URLSource, Field(discriminator="type")]


class ImageBlock(_Block):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    # Set on answers from Anthropic (programmatic tool calling, tool sets) and sent back with
    # the history as they came: accepted, and nothing an OpenAI-format model could use.
    caller: dict[str, Any] | None = None
    toolset_name: str | None = None


ToolResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ToolResultPart] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Strict):
    """A reasoning block from an earlier answer, sent back in the history."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(_Block):
    """A client tool; server tools (web search, bash, …) run at Anthropic and have no
    OpenAI-format counterpart, so any other `type` is refused."""

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _names_the_tool(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("a tool_choice of type 'tool' names the tool in `name`")
        return self


class Metadata(_Strict):
    user_id: str | None = None


class JSONOutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OutputConfig(_Strict):
    """Structured output. `effort` waits for parameters fitted to the routed model (issue 23):
    sent to a deployment that does not reason, it would be refused upstream."""

    format: JSONOutputFormat | None = None


class ThinkingDisabled(_Strict):
    type: Literal["disabled"]


class PromptRequest(_Strict):
    """What a messages request and a count_tokens request share: the prompt."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    # Only `disabled` for now: extended thinking needs an upstream that reasons (issue 23).
    thinking: ThinkingDisabled | None = None
    # Automatic prompt caching: OpenAI-format upstreams cache by themselves (see _Block).
    cache_control: dict[str, Any] | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(PromptRequest):
    """POST /v1/messages body."""

    # Strict: "64" or true is not a count, as Anthropic's API says too.
    max_tokens: StrictInt = Field(ge=1)
    metadata: Metadata | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    service_tier: Literal["auto", "standard_only"] | None = None


class CountTokensRequest(PromptRequest):
    """POST /v1/messages/count_tokens body: the prompt of a messages request."""


# Blocks a turn of the other role may not hold, as Anthropic's API refuses them.
_MISPLACED = {
    "user": ("tool_use", "thinking", "redacted_thinking"),
    "assistant": ("tool_result",),
}


def turn_problem(request: PromptRequest) -> tuple[str, str] | None:
    """The first block out of its place in the conversation, as (field, why), or None.

    A tool_use or thinking block belongs to an assistant turn, a tool_result to a user turn
    that answers a tool_use of the turn just before it (Anthropic's API refuses the rest; an
    OpenAI-format upstream would refuse its translation, a tool message with no call).
    """
    previous: MessageParam | None = None
    for i, turn in enumerate(request.messages):
        blocks = turn.content if isinstance(turn.content, list) else []
        for j, block in enumerate(blocks):
            where = f"messages.{i}.content.{j}"
            if block.type in _MISPLACED[turn.role]:
                return where, f"a {block.type} block cannot be in a {turn.role} turn"
            if isinstance(block, ToolResultBlock) and block.tool_use_id not in _calls(previous):
                return (
                    f"{where}.tool_use_id",
                    f"the tool_result for {block.tool_use_id!r} answers no tool_use block of "
                    "the assistant turn just before it",
                )
        previous = turn
    return None


def _calls(turn: MessageParam | None) -> set[str]:
    if turn is None or turn.role != "assistant" or isinstance(turn.content, str):
        return set()
    return {b.id for b in turn.content if isinstance(b, ToolUseBlock)}
