"""The structured request log: one JSON line per /v1 request, for operators who grep, ship to a
log store or bill by key.

Each line has the request id (also sent back as ``x-request-id``), the route, the model, the
key's *name* (never the key), the status, prompt and completion tokens, time to first token,
latency to the response's last byte and each choice's finish reason, plus the error's code and
parameter for a refused request. Prompt and output text stay out (they are the users' data)
unless the server runs with ``--log-prompts``.

An ASGI middleware opens the record and writes it once the response has been sent, so a
streamed response is logged when its last chunk has gone; the routes fill in what only they
know (model, key, the generation's counts) through the record it leaves in the request's
scope."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from starlette.requests import Request as HTTPRequest

_SCOPE_KEY = "cuvee_request_log"


class RequestLog:
    """Where the lines go: ``path`` (appended to), else ``stream`` (stderr by default)."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        stream: TextIO | None = None,
        log_prompts: bool = False,
    ) -> None:
        self.path = path
        self.log_prompts = log_prompts
        self._own = path is not None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream: TextIO = path.open("a", encoding="utf-8", buffering=1)
        else:
            self._stream = stream or sys.stderr
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._own:
            self._stream.close()


def record_of(request: HTTPRequest) -> dict[str, Any] | None:
    """The open record of a request (None when the server keeps no request log)."""
    return request.scope.get(_SCOPE_KEY)


def note(request: HTTPRequest, **fields: Any) -> None:
    """Add fields to the request's record (model, key, generation ...), if there is one."""
    record = record_of(request)
    if record is not None:
        record.update(fields)


class RequestLogMiddleware:
    """Opens a record for each /v1 request and writes it after the response's last byte."""

    def __init__(self, app: Any, log: RequestLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = f"req_{uuid.uuid4().hex}"
        record: dict[str, Any] = {}
        scope[_SCOPE_KEY] = record
        status = {"code": 500}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path_format", None) or scope.get("path")
            self.log.write(
                line(record, request_id, route, status["code"], started, self.log.log_prompts)
            )


def line(
    record: dict[str, Any],
    request_id: str,
    route: str | None,
    status: int,
    started: float,
    log_prompts: bool,
) -> dict[str, Any]:
    """The JSON object of one request: fixed fields first, the generation's figures read from
    it now that it has ended."""
    out: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request_id": request_id,
        "route": route,
        "model": record.get("model"),
        "key": record.get("key"),
        "status": status,
        "prompt_tokens": record.get("prompt_tokens"),
        "completion_tokens": record.get("completion_tokens"),
        "ttft_s": None,
        "latency_s": round(time.perf_counter() - started, 4),
        "finish_reasons": None,
    }
    generation = record.get("generation")
    if generation is not None:
        usage = generation.usage()
        out["prompt_tokens"] = usage["prompt_tokens"]
        out["completion_tokens"] = usage["completion_tokens"]
        if generation.first_token_s is not None:
            out["ttft_s"] = round(generation.first_token_s, 4)
        out["finish_reasons"] = generation.reasons()
    if "error" in record:
        out["error"] = record["error"]
    if log_prompts:
        out["prompt"] = record.get("prompt")
        out["output"] = list(generation.texts) if generation is not None else None
    return out
