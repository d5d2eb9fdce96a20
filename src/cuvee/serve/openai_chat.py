"""OpenAI chat completions <-> engine requests and events.

Mapping of parameters (anything not listed is refused by name, never ignored):

- ``messages``: roles system, developer (as system), user, assistant; ``content`` a string or an
  array of text parts (joined with newlines). Images, audio, tool and function messages: 400.
- ``temperature`` (default 1, as OpenAI), ``top_p`` (default 1; 0 means greedy), ``seed``
  (choice i of ``n`` uses seed + i, so choices differ yet reproduce), ``stop`` (string or list),
  ``max_completion_tokens`` or ``max_tokens`` (default: the server's, clamped to the context).
- ``presence_penalty`` / ``frequency_penalty``: applied as OpenAI defines them, over the tokens
  generated so far; ``repeat_penalty`` (multiplicative, llama.cpp's) is accepted as an
  extension with ``top_k`` and ``min_p``.
- ``response_format``: ``json_object`` constrains output to a JSON object, ``json_schema`` to
  the given schema (both through the engine's JSON-schema grammar).
- ``n``: n engine requests, batched by the engine."""

from __future__ import annotations

from typing import Any

from cuvee.engine.base import Request, SamplingParams
from cuvee.serve import errors
from cuvee.serve.generation import Envelope, Plan
from cuvee.serve.schemas import MAX_STOP, ChatCompletionRequest, ChatMessage, SamplingFields

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def check_sampling(body: SamplingFields) -> None:
    """Refuse the shared parameters the engine cannot honour."""
    if body.logit_bias:
        raise errors.unsupported("logit_bias", "token biases are not applied by the engine")
    if body.stream_options is not None and not body.stream:
        raise errors.invalid_param(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    stops = body.stops()
    if len(stops) > MAX_STOP:
        raise errors.invalid_param(f"'stop' takes at most {MAX_STOP} strings.", "stop")


def sampling_params(
    body: SamplingFields, choice: int, json_schema: dict | None = None
) -> SamplingParams:
    """The engine's sampling parameters for choice ``choice`` (max_tokens is fitted later)."""
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0:  # only the most likely token survives: greedy
        temperature, top_p = 0.0, 1.0
    return SamplingParams(
        temperature=temperature,
        top_p=top_p,
        # OpenAI samples from the whole distribution unless told otherwise
        top_k=0 if body.top_k is None else body.top_k,
        min_p=0.0 if body.min_p is None else body.min_p,
        repeat_penalty=1.0 if body.repeat_penalty is None else body.repeat_penalty,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        seed=None if body.seed is None else body.seed + choice,
        max_tokens=1,
        stop=body.stops(),
        json_schema=json_schema,
    )


def _refuse_unsupported(body: ChatCompletionRequest) -> None:
    if body.tools or body.functions:
        param = "tools" if body.tools else "functions"
        raise errors.unsupported(param, "tool and function calling is not implemented yet")
    if body.tool_choice not in (None, "none"):
        raise errors.unsupported("tool_choice", "tool calling is not implemented yet")
    if body.function_call not in (None, "none"):
        raise errors.unsupported("function_call", "function calling is not implemented yet")
    if body.logprobs or body.top_logprobs:
        param = "logprobs" if body.logprobs else "top_logprobs"
        raise errors.unsupported(param, "log probabilities are not returned yet")
    if body.modalities is not None and body.modalities != ["text"]:
        raise errors.unsupported("modalities", "only text output is produced")
    for name in ("audio", "prediction", "reasoning_effort"):
        if getattr(body, name) is not None:
            raise errors.unsupported(name, "not available for the models this server runs")


def _json_schema(body: ChatCompletionRequest) -> dict | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise errors.invalid_param(
            "response_format of type 'json_schema' needs 'json_schema.schema'.",
            "response_format.json_schema.schema",
        )
    return fmt.json_schema.schema_


def engine_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """OpenAI messages as the chat template takes them: role and plain text content."""
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role not in _ROLES:
            raise errors.unsupported(
                f"{where}.role", f"'{message.role}' messages need tool calling (not implemented)"
            )
        for name in ("tool_calls", "function_call", "audio"):
            if getattr(message, name):
                raise errors.unsupported(f"{where}.{name}", "tool calls and audio are not served")
        content = message.content
        if content is None:
            raise errors.invalid_param(
                f"{where}.content must be a string or an array of text parts.", f"{where}.content"
            )
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise errors.unsupported(
                        f"{where}.content[{j}].type",
                        f"content parts of type '{part.type}' (this server handles text only)",
                    )
                texts.append(part.text)
            content = "\n".join(texts)
        out.append({"role": _ROLES[message.role], "content": content})
    return out


def chat_plan(body: ChatCompletionRequest) -> Plan:
    check_sampling(body)
    _refuse_unsupported(body)
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise errors.invalid_param(
            "Give 'max_completion_tokens' or 'max_tokens', not two different values.",
            "max_tokens",
        )
    schema = _json_schema(body)
    messages = engine_messages(body.messages)
    requests = [
        Request(messages=messages, params=sampling_params(body, i, schema)) for i in range(body.n)
    ]
    return Plan(
        requests=requests,
        prompt_of=[0] * body.n,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        default_max_tokens=None,
        param="messages",
    )


class ChatFormatter(Envelope):
    """``chat.completion`` objects and ``chat.completion.chunk`` chunks, one id per response."""

    def __init__(self, model: str, n: int, include_usage: bool) -> None:
        super().__init__("chatcmpl", model, include_usage)
        self.n = n

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return self.chunk("chat.completion.chunk", choices)

    def opening(self) -> list[dict[str, Any]]:
        return [
            self._chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i in range(self.n)
        ]

    def delta(self, index: int, text: str) -> dict[str, Any]:
        return self._chunk(
            [{"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]
        )

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        return self._chunk(
            [{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]
        )

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        chunk = self._chunk([])
        chunk["usage"] = usage
        return chunk

    def response(
        self, texts: list[str], reasons: list[str], usage: dict[str, int]
    ) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": reason,
            }
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        return {
            **self.wrap("chat.completion", choices),
            "usage": usage,
        }
