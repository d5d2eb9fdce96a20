"""The request bodies of the OpenAI endpoints the server implements, validated by pydantic.

Unknown parameters are refused (``extra="forbid"``), as OpenAI does, so a client never believes
a parameter took effect when the server ignored it. Parameters the server knows but cannot honour
(logit_bias, audio, legacy functions ...) are declared here and refused by name in the
translation step, with a message saying so. Ranges follow OpenAI's (temperature 0-2,
penalties -2..2 ...).

Extensions beyond OpenAI's parameters, as llama.cpp's and vLLM's servers take them (the OpenAI
SDK sends them with ``extra_body``): ``top_k``, ``min_p`` and ``repeat_penalty``; for answers
from documents (``cuvee.serve.rag``), ``collection``, ``k``, ``rag_model``, ``reranker`` and
``min_support`` on chat completions.

The routes parse their bodies themselves (so the API key is checked before the body is read);
:func:`request_body` and :func:`with_body_schemas` put these models into the OpenAPI document
all the same, so /docs and HTTP fuzzers see the real shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from cuvee.engine.base import MAX_LOGPROBS

# Passages one document answer or search may retrieve (as `cuvee ask --k`).
MAX_RAG_K = 50
# Choices per request: each is a sequence in the engine's batch.
MAX_N = 16
MAX_STOP = 16
# The engine passes top_k to llama.cpp as a C int; any vocabulary is far smaller.
MAX_TOP_K = 2**31 - 1
# OpenAI's limit on the legacy completions endpoint's ``logprobs``.
MAX_COMPLETION_LOGPROBS = 5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class ContentPart(BaseModel):
    """One part of a message's content; only text parts can be served (others are refused)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    """A call as an assistant message carries it back: ``arguments`` is a JSON string."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    arguments: str = ""


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(BaseModel):
    # Extra keys are allowed: clients echo back assistant messages as received (with
    # ``refusal``, ``annotations`` ... set to null). Fields that would change the meaning
    # and cannot be served (audio, legacy function calls) are declared and refused when set.
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: Any | None = None
    audio: Any | None = None


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingFields(_Strict):
    """Parameters shared by chat completions and completions."""

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(default=None)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extensions (llama.cpp / vLLM servers)
    top_k: int | None = Field(default=None, ge=0, le=MAX_TOP_K)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[Any] | None = None
    function_call: Any | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = None
    audio: Any | None = None
    prediction: Any | None = None
    reasoning_effort: str | None = None
    # answers from documents (see cuvee.serve.rag), sent with extra_body
    collection: str | None = Field(default=None, min_length=1)
    k: int | None = Field(default=None, ge=1, le=MAX_RAG_K)
    rag_model: str | None = Field(default=None, min_length=1)
    reranker: str | None = None
    min_support: float | None = Field(default=None, ge=0, le=1)


class CompletionRequest(SamplingFields):
    """``POST /v1/completions`` (the legacy text completion endpoint). ``max_tokens`` defaults
    to 16 here, as OpenAI's does."""

    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)


# OpenAI's default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


# OpenAI's limit on the number of inputs of one embeddings request.
MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(_Strict):
    """``POST /v1/embeddings``. Token-id inputs validate here and are refused by name later, so
    the client learns why rather than reading a type error."""

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class RetrieveRequest(_Strict):
    """``POST /v1/retrieve``: a collection's best passages for ``query``, no generation."""

    collection: str = Field(min_length=1)
    query: str = Field(min_length=1)
    k: int = Field(default=5, ge=1, le=MAX_RAG_K)
    reranker: str | None = None


class VoteAnswer(_Strict):
    model: str = Field(min_length=1)
    answer: str


class VoteRequest(_Strict):
    """``POST /v1/votes``: a person's verdict on two models' answers to one prompt (the web UI's
    compare screen), appended to the pairwise votes file ``cuvee eval --suite pairwise`` reads."""

    prompt: str = Field(min_length=1)
    system: str | None = None
    a: VoteAnswer
    b: VoteAnswer
    winner: Literal["a", "b", "tie"]


class UploadedFile(_Strict):
    name: str = Field(min_length=1, max_length=200)
    content: str


class RunRequest(_Strict):
    """``POST /v1/runs``: start `cuvee train` (admin only). ``recipe`` is a shipped recipe's
    name; ``knobs`` are any other recipe knobs (``lr``, ``seq_len``, ...), checked as a recipe
    file's are; ``data`` names data files on the server (``starter`` is the bundled set) and
    ``data_file`` uploads one."""

    name: str = Field(min_length=1)
    recipe: str | None = None
    base: str | None = None
    data: list[str] = Field(default_factory=list)
    data_file: UploadedFile | None = None
    time_budget: str | None = None
    max_steps: int | None = Field(default=None, gt=0)
    knobs: dict[str, Any] = Field(default_factory=dict)


class KeyRequest(_Strict):
    """``POST /v1/keys`` (admin): a new key, as `cuvee keys create` makes one."""

    name: str = Field(min_length=1, max_length=64)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    models: list[str] | None = None
    collections: list[str] | None = None
    admin: bool = False
    # e.g. ["usd/month=20", "tokens/day=200000"], as `cuvee keys create --budget`
    budgets: list[str] | None = Field(default=None, max_length=4)


class EvalRequest(_Strict):
    """``POST /v1/evals`` (admin): `cuvee eval MODELS --suite SUITES [--limit N]`."""

    models: list[str] = Field(min_length=1, max_length=8)
    suites: list[str] = Field(default_factory=lambda: ["instructions"], min_length=1)
    limit: int | None = Field(default=None, ge=1)


class UploadFileBody(_Strict):
    name: str = Field(min_length=1, max_length=200)
    content_base64: str


class UploadRequest(_Strict):
    """``POST /v1/collections/{name}/documents`` (admin): files to index into the collection."""

    files: list[UploadFileBody] = Field(min_length=1, max_length=100)


class RemoveRequest(_Strict):
    """``POST /v1/collections/{name}/documents/remove`` (admin): one document, by id or path."""

    ref: str = Field(min_length=1)


# Where the OpenAPI document keeps the schemas that request bodies refer to.
_COMPONENTS = "#/components/schemas/{model}"


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's ``openapi_extra``: its JSON body is ``model`` (by reference, see
    :func:`with_body_schemas`)."""
    ref = {"$ref": _COMPONENTS.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def with_body_schemas(openapi: dict[str, Any], models: Sequence[type[BaseModel]]) -> dict[str, Any]:
    """``openapi`` with the JSON schemas of ``models`` (and the models they use) among its
    components, as pydantic validates them."""
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_COMPONENTS)
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(top.get("$defs", {}))
    return openapi
