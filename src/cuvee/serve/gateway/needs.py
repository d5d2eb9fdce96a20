"""What a request needs of the upstream that answers it (tools, a JSON schema, log-probs, a
context long enough), and how large its prompt is where the upstream does not say."""

from __future__ import annotations

import json
from typing import Any

from cuvee.serve.gateway.config import Upstream


def prompt_size(body: dict[str, Any]) -> int:
    """A prompt's tokens, roughly (4 bytes a token), where an upstream does not say."""
    prompt = body.get("messages") or body.get("prompt") or body.get("input") or ""
    return len(json.dumps(prompt)) // 4


def context_needed(body: dict[str, Any]) -> int:
    """The context one sequence of ``body`` needs: its prompt and completion; for texts to
    embed, the longest of them (each is a sequence of its own)."""
    texts = body.get("input")
    if isinstance(texts, list) and texts and "messages" not in body and "prompt" not in body:
        return max(len(json.dumps(t)) for t in texts) // 4
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    return prompt_size(body) + int(limit)


def needs(body: dict[str, Any]) -> list[str]:
    """What a request needs of the server that answers it."""
    out = []
    if body.get("tools"):
        out.append("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        out.append("json_schema")
    if body.get("logprobs"):
        out.append("logprobs")
    return out


def lacking(upstream: Upstream, body: dict[str, Any]) -> str | None:
    """Why ``upstream`` cannot honour ``body`` as its config declares it, or None."""
    if upstream.supports is not None:
        missing = [need for need in needs(body) if need not in upstream.supports]
        if missing:
            return f"{upstream.name} does not support {', '.join(missing)}"
    if upstream.context_length is not None:
        wanted = context_needed(body)
        if wanted > upstream.context_length:
            return (
                f"about {wanted} tokens asked, {upstream.name}'s context is "
                f"{upstream.context_length}"
            )
    return None
