"""OpenAI chat completions <-> engine requests and events.

Mapping of parameters (anything not listed is refused by name, never ignored):

- ``messages``: roles system, developer (as system), user, assistant, tool; ``content`` a
  string or an array of text parts (joined with newlines). Assistant ``tool_calls`` and tool
  results are written as text turns (see ``tools``). Images, audio, function messages: 400.
- ``temperature`` (default 1, as OpenAI), ``top_p`` (default 1; 0 means greedy), ``seed``
  (choice i of ``n`` uses seed + i, so choices differ yet reproduce), ``stop`` (string or list),
  ``max_completion_tokens`` or ``max_tokens`` (default: the server's, clamped to the context).
- ``presence_penalty`` / ``frequency_penalty``: applied as OpenAI defines them, over the tokens
  generated so far; ``repeat_penalty`` (multiplicative, llama.cpp's) is accepted as an
  extension with ``top_k`` and ``min_p``.
- ``response_format``: ``json_object`` constrains output to a JSON object, ``json_schema`` to
  the given schema (both through the engine's JSON-schema grammar).
- ``n``: n engine requests, batched by the engine.
- ``logprobs`` / ``top_logprobs`` (0-20, needs ``logprobs: true``): each token's
  log-probability under the model's own distribution (before penalties, grammar and
  temperature; see ``TokenLogprob``) with that many alternatives, in OpenAI's shape, streamed
  too.
- ``tools`` / ``tool_choice`` (none, auto, required, a named function) /
  ``parallel_tool_calls``: see ``cuvee.serve.tools``; answers that are calls come back as
  ``tool_calls`` with finish_reason ``tool_calls``."""

from __future__ import annotations

from typing import Any

from cuvee.engine.base import Request, SamplingParams, TokenLogprob
from cuvee.serve import errors, tools
from cuvee.serve.generation import Envelope, Held, Plan
from cuvee.serve.schemas import MAX_STOP, ChatCompletionRequest, ChatMessage, SamplingFields

_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "user",  # a result, written as a user turn (templates have no tool role)
}


def check_token_limits(body: ChatCompletionRequest) -> None:
    """``max_tokens`` (deprecated by OpenAI) and ``max_completion_tokens`` may both be sent,
    but not with two different values."""
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise errors.invalid_param(
            "Give 'max_completion_tokens' or 'max_tokens', not two different values.",
            "max_tokens",
        )


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
    body: SamplingFields, choice: int, json_schema: dict | None = None, logprobs: int | None = None
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
        logprobs=logprobs,
    )


def _refuse_unsupported(body: ChatCompletionRequest) -> None:
    if body.functions:
        raise errors.unsupported("functions", "the deprecated functions API: send 'tools'")
    if body.function_call is not None:
        raise errors.unsupported("function_call", "the deprecated functions API: 'tool_choice'")
    if body.modalities is not None and body.modalities != ["text"]:
        raise errors.unsupported("modalities", "only text output is produced")
    for name in ("audio", "prediction", "reasoning_effort"):
        if getattr(body, name) is not None:
            raise errors.unsupported(name, "not available for the models this server runs")


def _logprobs(body: ChatCompletionRequest) -> int | None:
    """The engine's ``logprobs`` (None: not asked); ``top_logprobs`` needs ``logprobs``."""
    if body.top_logprobs is not None and not body.logprobs:
        raise errors.invalid_param(
            "'top_logprobs' requires 'logprobs' to be set to true.", "top_logprobs"
        )
    if not body.logprobs:
        return None
    return body.top_logprobs or 0


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


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise errors.unsupported(
                f"{where}.content[{j}].type",
                f"content parts of type '{part.type}' (this server handles text only)",
            )
        texts.append(part.text)
    return "\n".join(texts)


def engine_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """OpenAI messages as the chat template takes them: role and plain text content; tool
    calls and results become text turns (``tools.history_turn``)."""
    turns: list[dict[str, str]] = []
    from_tools: set[int] = set()
    calls_by_id: dict[str, str] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role not in _ROLES:
            raise errors.unsupported(
                f"{where}.role", f"'{message.role}' messages: use 'tool' messages and 'tools'"
            )
        for name in ("function_call", "audio"):
            if getattr(message, name):
                raise errors.unsupported(f"{where}.{name}", "legacy function calls and audio")
        if message.content is None and not message.tool_calls:
            raise errors.invalid_param(
                f"{where}.content must be a string or an array of text parts.", f"{where}.content"
            )
        content = _text(message.content, where)
        if message.tool_calls and message.role != "assistant":
            raise errors.invalid_param(
                f"{where}.tool_calls is only allowed on assistant messages.", f"{where}.tool_calls"
            )
        if message.role == "tool" or message.tool_calls:
            from_tools.add(len(turns))
            turns.append(tools.history_turn(message, content, where, calls_by_id))
        else:
            turns.append({"role": _ROLES[message.role], "content": content})
    return tools.merge_turns(turns, from_tools)


def chat_plan(body: ChatCompletionRequest) -> tuple[Plan, tools.ToolPlan | None]:
    """The engine requests, and the tool plan the formatter parses answers with."""
    check_sampling(body)
    _refuse_unsupported(body)
    check_token_limits(body)
    logprobs = _logprobs(body)
    tool_plan = tools.tool_plan(body)
    schema = tools.output_schema(tool_plan, _json_schema(body))
    messages = tools.with_tools(engine_messages(body.messages), tool_plan)
    requests = [
        Request(messages=messages, params=sampling_params(body, i, schema, logprobs))
        for i in range(body.n)
    ]
    plan = Plan(
        requests=requests,
        prompt_of=[0] * body.n,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        default_max_tokens=None,
        param="messages",
        schema_param="tools"
        if tool_plan is not None and tool_plan.constrained
        else "response_format",
    )
    return plan, tool_plan


def logprob_entry(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes,
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top
        ],
    }


class ChatFormatter(Envelope):
    """``chat.completion`` objects and ``chat.completion.chunk`` chunks, one id per response.

    With tools, a choice's text is held back while it may still be a call (all of it under a
    constrained ``tool_choice``); at its end it goes out as ``tool_calls`` deltas (the call's
    id, type and name with empty arguments, then the arguments, as OpenAI streams them) or,
    if it is no call after all, as content."""

    chunk_object = "chat.completion.chunk"

    def __init__(
        self,
        model: str,
        n: int,
        include_usage: bool,
        logprobs: bool = False,
        tool_plan: tools.ToolPlan | None = None,
    ) -> None:
        super().__init__("chatcmpl", model, include_usage)
        self.n = n
        self.logprobs = logprobs
        self.tool_plan = tool_plan
        self.held = [Held() for _ in range(n)]
        self.seen = ["" for _ in range(n)]  # a choice's whole text so far
        # holding: the answer may still be a call (always, under a constrained tool_choice)
        self.holding = [tool_plan is not None for _ in range(n)]

    def _logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return {"content": [logprob_entry(lp) for lp in entries], "refusal": None}

    def _choice(
        self, index: int, delta: dict[str, Any], lps: list[TokenLogprob], reason: str | None
    ) -> dict[str, Any]:
        return self.chunk(
            [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": self._logprobs(lps) if lps else None,
                    "finish_reason": reason,
                }
            ]
        )

    def opening(self) -> list[dict[str, Any]]:
        return [
            self._choice(i, {"role": "assistant", "content": ""}, [], None) for i in range(self.n)
        ]

    def delta(self, index: int, text: str, logprob: TokenLogprob | None) -> list[dict[str, Any]]:
        held = self.held[index]
        held.add(text, logprob)
        self.seen[index] += text
        if self.holding[index]:
            plan = self.tool_plan
            assert plan is not None
            if plan.constrained or tools.may_be_call(self.seen[index]):
                return []
            self.holding[index] = False  # plain text after all: it streams from now on
        if not held.text:
            return []  # logprobs of held-back bytes go with the text they end up in
        content, lps = held.take()
        return [self._choice(index, {"content": content}, lps, None)]

    def finish(self, index: int, reason: str) -> list[dict[str, Any]]:
        content, lps = self.held[index].take()
        calls = self._calls(index, reason)
        if calls is None:
            chunks = [self._choice(index, {"content": content}, lps, None)] if content else []
            return [*chunks, self._choice(index, {}, [] if content else lps, reason)]
        chunks = []
        for i, call in enumerate(calls):
            opening = {**call, "index": i, "function": {**call["function"], "arguments": ""}}
            args = {"index": i, "function": {"arguments": call["function"]["arguments"]}}
            chunks.append(self._choice(index, {"tool_calls": [opening]}, [], None))
            chunks.append(self._choice(index, {"tool_calls": [args]}, [], None))
        return [*chunks, self._choice(index, {}, lps, "tool_calls")]

    def _calls(self, index: int, reason: str) -> list[dict[str, Any]] | None:
        if self.tool_plan is None or not self.holding[index] or reason == "length":
            return None
        return tools.parse_calls(self.seen[index], self.tool_plan)

    def response(
        self,
        texts: list[str],
        reasons: list[str],
        usage: dict[str, int],
        logprobs: list[list[TokenLogprob]],
    ) -> dict[str, Any]:
        choices = []
        for i, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            calls = None
            if self.tool_plan is not None and reason != "length":
                calls = tools.parse_calls(text, self.tool_plan)
            if calls is not None:
                message = {**message, "content": None, "tool_calls": calls}
                reason = "tool_calls"
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": self._logprobs(logprobs[i]),
                    "finish_reason": reason,
                }
            )
        return {**self.wrap("chat.completion", choices), "usage": usage}
