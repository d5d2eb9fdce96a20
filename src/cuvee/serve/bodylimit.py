"""The request body size limit, enforced before any route parses or tokenizes a byte of it.

A declared ``Content-Length`` over the limit is refused at once, without reading the body; a
body without one (chunked) is counted as it arrives and refused as soon as it passes the
limit, so a client cannot make the server buffer, parse or tokenize more than the limit."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request as HTTPRequest

from cuvee.serve import errors
from cuvee.serve.requestlog import note


class _BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes the limit; caught by the middleware."""


class BodyLimitMiddleware:
    """413 (OpenAI's error shape) for an HTTP request whose body is over ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("the body size limit must be at least 1 byte")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def watching_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _BodyTooLarge:
            if started:  # a route that answered before reading its body: nothing to fix
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        error = errors.body_too_large(self.max_bytes)
        note(HTTPRequest(scope), error={"code": error.code, "param": error.param})
        await error.response()(scope, receive, send)


def _content_length(scope: dict) -> int | None:
    """The declared body length; None when absent or not a number (the server's HTTP parser
    refuses malformed framing; counting still bounds what is read)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
