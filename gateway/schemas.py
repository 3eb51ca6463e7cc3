"""The OpenAI chat-completions request, as the gateway accepts it (unknown fields are rejected)."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Strict):
    data: str
    format: str


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_Strict):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: str


UserContentPart = Annotated[
    TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")
]
AssistantContentPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Strict):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[UserContentPart]
    name: str | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | list[AssistantContentPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    audio: dict[str, Any] | None = None


class ToolMessage(_Strict):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Strict):
    role: Literal["function"]
    content: str | None
    name: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


class FunctionDefinition(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class CustomTool(_Strict):
    type: Literal["custom"]
    custom: dict[str, Any]


Tool = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class AllowedToolsChoice(_Strict):
    type: Literal["allowed_tools"]
    allowed_tools: dict[str, Any]


class JSONSchemaFormat(_Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJSONObject(_Strict):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema,
    Field(discriminator="type"),
]


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatRequest(_Strict):
    """POST /v1/chat/completions body: every field the OpenAI API documents, nothing else."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    audio: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    functions: list[FunctionDefinition] | None = None
    logit_bias: dict[str, int] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[str, str] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    parallel_tool_calls: bool | None = None
    prediction: dict[str, Any] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    prompt_cache_key: str | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    response_format: ResponseFormat | None = None
    safety_identifier: str | None = None
    seed: int | None = None
    service_tier: str | None = None
    stop: str | list[str] | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    tool_choice: (
        Literal["none", "auto", "required"] | NamedToolChoice | AllowedToolsChoice | None
    ) = None
    tools: list[Tool] | None = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    user: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    web_search_options: dict[str, Any] | None = None

    # The decoded body itself when validating it coerced nothing: the upstream payload is then
    # that body, not the model serialised again (0.05 ms a request, several times over).
    _sent: dict[str, Any] | None = PrivateAttr(default=None)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ChatRequest:
        """Validate a decoded JSON body (ValidationError as model_validate raises it).

        Strict validation first: when it passes, every value already has its field's type, so
        the body can go upstream as sent. A body that needs coercion ("5" for 5, 1.0 for 1)
        is validated again leniently, as it always was, and re-serialised from the model.
        """
        try:
            chat = cls.model_validate(body, strict=True)
        except ValidationError:
            return cls.model_validate(body)
        if not _names_schema_by_field(body):
            chat._sent = body
        return chat

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def upstream_payload(self) -> dict[str, Any]:
        """The body as the client sent it, minus gateway-only fields (metadata tags the log).

        A new top-level dict each call (callers drop fields from it); nested values are shared
        and must not be changed.
        """
        return dict(self._payload)

    @functools.cached_property
    def _payload(self) -> dict[str, Any]:
        # Once per request (the run, the cache key and the relay each ask), and a plain dict
        # lookup after: reading a pydantic private attribute costs microseconds every time.
        if self._sent is not None:
            return {name: value for name, value in self._sent.items() if name != "metadata"}
        payload = self.model_dump(mode="json", exclude_unset=True, by_alias=True)
        payload.pop("metadata", None)
        return payload


def _names_schema_by_field(body: dict[str, Any]) -> bool:
    """Whether a validated body sent `schema_`, the one field accepted under two names: it must
    go upstream as `schema`, so that body is re-serialised."""
    format_ = body.get("response_format")
    schema = format_.get("json_schema") if isinstance(format_, dict) else None
    return isinstance(schema, dict) and "schema_" in schema
