"""The chunks of a relayed stream: the text a chunk adds, the request that asks a replica to go on
from the text already sent, and the chunks that close a stream (who served it, or why it broke).
Pure functions of the JSON, so the router keeps only the order of events."""

from __future__ import annotations

import time
from typing import Any

from cuvee.serve import errors


def options(body: dict[str, Any]) -> dict[str, Any]:
    """A request's ``stream_options`` (an empty dict where it has none or a bad one)."""
    found = body.get("stream_options")
    return found if isinstance(found, dict) else {}


def piece_of(chunk: dict) -> str:
    """The text a chunk adds (chat delta content, or a completion's text)."""
    out = ""
    for choice in chunk.get("choices") or []:
        if isinstance(choice, dict):
            delta = choice.get("delta")
            if isinstance(delta, dict):
                out += delta.get("content") or ""
            out += choice.get("text") or ""
    return out


def unowed(chunk: dict, piece: str, owed: str) -> tuple[str, str]:
    """Drop from the start of a one-choice ``chunk`` the whitespace that repeats ``owed`` (sent
    already); the piece that is left, and what is still owed (nothing once the text
    diverges)."""
    same = 0
    while same < min(len(piece), len(owed)) and piece[same] == owed[same]:
        same += 1
    choices = chunk.get("choices") or []
    if not same or len(choices) != 1 or not isinstance(choices[0], dict):
        return piece, ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
        delta["content"] = delta["content"][same:]
    elif isinstance(choice.get("text"), str):
        choice["text"] = choice["text"][same:]
    else:
        return piece, ""
    return piece[same:], owed[same:] if same == len(piece) else ""


def continuation(
    request: dict[str, Any], model: str, text: str, tokens: int, kind: str, path: str
) -> dict[str, Any]:
    """The request that asks a replica to go on from ``text``: the answer so far as an
    assistant message to continue (vLLM needs ``continue_final_message``), or, for a
    completion, appended to the prompt; the token limit less what was sent."""
    body = {**request, "model": model}
    body["stream_options"] = {**options(request), "include_usage": True}
    if path.endswith("/chat/completions"):
        body["messages"] = [*request.get("messages", []), {"role": "assistant", "content": text}]
        if kind == "vllm":
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
    elif isinstance(request.get("prompt"), str):
        body["prompt"] = request["prompt"] + text
    for limit in ("max_tokens", "max_completion_tokens"):
        if isinstance(request.get(limit), int):
            body[limit] = max(1, request[limit] - tokens)
    return body


def ends(chunk: dict) -> bool:
    return any(c.get("finish_reason") for c in chunk.get("choices") or [] if isinstance(c, dict))


def served(last: dict, label: str, attempts: list, public: str) -> dict[str, Any]:
    """A last, empty chunk saying who served the stream (the upstream's own chunks pass as
    they came)."""
    return {
        "id": last.get("id", "chatcmpl-gateway"),
        "object": last.get("object", "chat.completion.chunk"),
        "created": last.get("created", int(time.time())),
        "model": public,
        "choices": [],
        "cuvee": {"served_by": label, "attempts": attempts},
    }


def broken(last: dict, public: str, label: str, reason: str, attempts: list) -> dict:
    message = f"The stream from {label} broke after tokens were sent ({reason})."
    return {
        "id": last.get("id", "chatcmpl-gateway"),
        "object": last.get("object", "chat.completion.chunk"),
        "created": last.get("created", int(time.time())),
        "model": public,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
        "error": errors.error_body(message, type="server_error", code="upstream_broke")["error"],
        "cuvee": {"served_by": label, "attempts": attempts},
    }
