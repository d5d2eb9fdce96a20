"""OpenAI tool calling on models whose chat template has no tool role.

The small models cuvee serves were not trained on a tool-calling format, so the server brings
its own, plain enough for any instruction-tuned model: the tools are described in a system
text block that asks for one JSON answer,

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}

and earlier calls and their results are written into the history as text turns (an assistant
turn holding that JSON, a user turn holding the result), so the template sees only the roles it
knows. ``tool_choice``:

- ``none``: no tools are described; the model answers in text.
- ``auto``: tools are described; an answer that parses as a call becomes ``tool_calls``, any
  other answer is content. Not constrained, so a model may also answer in text.
- ``required`` and a named function: sampling is constrained by a grammar made from the JSON
  schema of the answer (the mechanism ``response_format`` uses), so the answer always parses
  (unless ``max_tokens`` cuts it: then it is returned as content, finish_reason ``length``).
  A named function, or ``parallel_tool_calls: false``, allows exactly one call."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from cuvee.serve import errors
from cuvee.serve.schemas import ChatCompletionRequest, ChatMessage, Tool

ToolMode = Literal["auto", "required", "named"]


@dataclass(frozen=True)
class ToolPlan:
    """The tools a request offers the model and how it must use them."""

    tools: list[Tool]
    mode: ToolMode
    named: str | None = None
    parallel: bool = True

    @property
    def names(self) -> set[str]:
        return {t.function.name for t in self.tools}

    @property
    def constrained(self) -> bool:
        return self.mode != "auto"

    def offered(self) -> list[Tool]:
        """The tools the answer may call (only the named one for a named choice)."""
        return [t for t in self.tools if self.named is None or t.function.name == self.named]


def tool_plan(body: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tool plan, None when no tools are to be rendered; 400 for a
    ``tool_choice`` that names no given tool or comes without tools."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise errors.invalid_param(
                "'tool_choice' is only allowed when 'tools' are specified.", "tool_choice"
            )
        return None
    names = [t.function.name for t in body.tools]
    if len(set(names)) != len(names):
        raise errors.invalid_param("Function names in 'tools' must be unique.", "tools")
    parallel = body.parallel_tool_calls is not False
    if choice is None or choice == "auto":
        return ToolPlan(body.tools, "auto", parallel=parallel)
    if choice == "none":
        return None
    if choice == "required":
        return ToolPlan(body.tools, "required", parallel=parallel)
    name = choice.function.name
    if name not in names:
        raise errors.invalid_param(
            f"Invalid value for 'tool_choice': no function named '{name}' in 'tools' "
            f"(given: {', '.join(names)}).",
            "tool_choice",
        )
    return ToolPlan(body.tools, "named", named=name, parallel=False)


def _parameters(tool: Tool) -> dict[str, Any]:
    return tool.function.parameters or {"type": "object"}


def system_text(plan: ToolPlan) -> str:
    """The block that describes the tools and the answer format, for the system prompt."""
    lines = ["You can call these functions (tools):", ""]
    for tool in plan.tools:
        fn = tool.function
        lines.append(f"- {fn.name}: {fn.description or '(no description)'}")
        lines.append(f"  arguments (JSON schema): {json.dumps(_parameters(tool))}")
    example = '{"tool_calls": [{"name": "FUNCTION_NAME", "arguments": {ARGUMENTS}}]}'
    lines += [
        "",
        "To call functions, answer with only this JSON object, nothing before or after it:",
        example,
    ]
    if not plan.parallel:
        lines.append("Call one function at a time.")
    lines.append(
        {
            "auto": "If no function is needed, answer the user in plain text instead.",
            "required": "You must call at least one function now.",
            "named": f"You must call the function {plan.named} now.",
        }[plan.mode]
    )
    lines.append('Results of calls come back in a message that starts with "Tool result".')
    return "\n".join(lines)


def answer_schema(plan: ToolPlan) -> dict[str, Any]:
    """The JSON schema of a tool-call answer: the grammar that constrains ``required`` and
    named choices. Each call's ``name`` is a constant and its ``arguments`` follow the tool's
    own schema, so a call to an unknown function cannot even be sampled."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.function.name}, "arguments": _parameters(t)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in plan.offered()
    ]
    items: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if not plan.parallel:
        items["maxItems"] = 1
    return {
        "type": "object",
        "properties": {"tool_calls": items},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }


def output_schema(plan: ToolPlan | None, response_schema: dict | None) -> dict | None:
    """What constrains sampling: the call format for ``required`` and named choices; for
    ``auto`` with a ``response_format`` schema, either that schema or a call (so the answer is
    always one or the other); else ``response_format``'s schema, if any."""
    if plan is None:
        return response_schema
    if plan.constrained:
        return answer_schema(plan)
    if response_schema is not None:
        return {"anyOf": [answer_schema(plan), response_schema]}
    return None


# -- history ---------------------------------------------------------------------------------


def call_text(calls: list[dict[str, Any]]) -> str:
    """Calls as the model is asked to write them (``arguments`` as JSON, not a string)."""
    return json.dumps({"tool_calls": calls}, ensure_ascii=False)


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return raw  # shown as the client sent it


def history_turn(
    message: ChatMessage, content: str, where: str, calls_by_id: dict[str, str]
) -> dict[str, Any]:
    """An assistant message carrying ``tool_calls``, or a ``tool`` message, as a text turn the
    chat template accepts. ``calls_by_id`` (id -> function name) is filled from assistant
    messages and read by tool messages, so a result names the function it answers."""
    if message.role == "tool":
        if not message.tool_call_id:
            raise errors.invalid_param(
                f"{where}.tool_call_id is required for messages with role 'tool'.",
                f"{where}.tool_call_id",
            )
        name = calls_by_id.get(message.tool_call_id)
        if name is None:
            raise errors.invalid_param(
                f"{where}.tool_call_id '{message.tool_call_id}' answers no tool call of an "
                "earlier assistant message.",
                f"{where}.tool_call_id",
            )
        return {
            "role": "user",
            "content": f"Tool result ({name}, {message.tool_call_id}):\n{content}",
        }
    calls = []
    for call in message.tool_calls or []:
        calls_by_id[call.id] = call.function.name
        calls.append({"name": call.function.name, "arguments": _arguments(call.function.arguments)})
    text = call_text(calls)
    return {"role": "assistant", "content": f"{content}\n{text}" if content else text}


def merge_turns(turns: list[dict[str, Any]], merged_roles: set[int]) -> list[dict[str, Any]]:
    """Join a turn made from a tool message with a neighbour of the same role: templates that
    require alternating user and assistant turns then accept the history (several results
    after one call, a user question after a result)."""
    out: list[dict[str, Any]] = []
    came_from_tool: list[bool] = []
    for i, turn in enumerate(turns):
        tool = i in merged_roles
        if out and out[-1]["role"] == turn["role"] and (tool or came_from_tool[-1]):
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{turn['content']}"}
            came_from_tool[-1] = True
            continue
        out.append(turn)
        came_from_tool.append(tool)
    return out


def with_tools(messages: list[dict[str, Any]], plan: ToolPlan | None) -> list[dict[str, Any]]:
    """The tool block added to the first system message (or a system message put first)."""
    if plan is None:
        return messages
    block = system_text(plan)
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


# -- output ----------------------------------------------------------------------------------


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text[3:]
        text = text[4:] if text.startswith("json") else text
        text = text.rstrip()
        text = text[:-3] if text.endswith("```") else text
    return text.strip()


def parse_calls(text: str, plan: ToolPlan) -> list[dict[str, Any]] | None:
    """The OpenAI ``tool_calls`` an answer holds, or None when it is not a call to the offered
    functions (then it is content). Lenient about a Markdown fence and a bare
    ``{"name", "arguments"}`` object, which models write when they half follow the format."""
    try:
        data = json.loads(_strip_fence(text))
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict) and "tool_calls" not in data and "name" in data:
        data = {"tool_calls": [data]}
    if not isinstance(data, dict) or not isinstance(data.get("tool_calls"), list):
        return None
    offered = {t.function.name for t in plan.offered()}
    calls = []
    for item in data["tool_calls"]:
        if not isinstance(item, dict) or item.get("name") not in offered:
            return None
        arguments = item.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": item["name"], "arguments": arguments},
            }
        )
    return calls or None


def may_be_call(text: str) -> bool:
    """Whether streamed text so far could still turn out to be a call (it is held back until
    it is known); once it cannot, it streams as content."""
    head = text.lstrip()
    return head == "" or head[0] == "{" or "```".startswith(head[:3])
