"""Every failure the server reports, in OpenAI's error shape, so OpenAI clients raise their own
exception classes (BadRequestError, AuthenticationError, NotFoundError, RateLimitError...):

    {"error": {"message": "...", "type": "...", "param": "...", "code": "..."}}

Status mapping: 400 invalid parameters (``param`` names the parameter) and prompts that do not
fit (``code: context_length_exceeded``), 401 a missing or wrong API key, 404 an unknown model or
one the key may not use, 413 a body over the server's size limit, 429 a key over its rate limit
(with ``Retry-After``), 503 when the server's queue is full, 500 when generation itself fails."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    """An error answered to the client as an OpenAI error object with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid_param(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, what: str) -> APIError:
    """A parameter the server understands but cannot honour: refused, never silently ignored."""
    return APIError(
        400, f"'{param}' is not supported by this server: {what}", param=param, code="unsupported"
    )


def missing_key() -> APIError:
    return APIError(
        401,
        "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
        "(create one with `cuvee keys create --name NAME`).",
        type="invalid_request_error",
        code="missing_api_key",
    )


def wrong_key() -> APIError:
    return APIError(
        401,
        "Incorrect API key provided (unknown or revoked). See `cuvee keys list`.",
        type="invalid_request_error",
        code="invalid_api_key",
    )


def model_not_found(model: str) -> APIError:
    # The same answer for a model that does not exist and one the key may not use, so a key
    # cannot discover models it has no access to.
    return APIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def body_too_large(limit_bytes: int) -> APIError:
    """Answered before the body is parsed: the connection is closed, since the rest of the body
    is left unread."""
    return APIError(
        413,
        f"The request body is larger than this server accepts ({limit_bytes / 1e6:g} MB). Send "
        "less (a shorter prompt, fewer inputs per request), or raise serve_max_body_mb "
        "(CUVEE_SERVE_MAX_BODY_MB) on the server.",
        code="request_too_large",
        headers={"Connection": "close"},
    )


def rate_limited(message: str, retry_after: float) -> APIError:
    seconds = max(1, math.ceil(retry_after))
    return APIError(
        429,
        f"{message} Please try again in {seconds}s.",
        type="requests",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(seconds)},
    )


def overloaded(limit: int) -> APIError:
    return APIError(
        503,
        f"The server is overloaded: {limit} sequences are already running or queued. "
        "Retry shortly.",
        type="server_error",
        code="server_overloaded",
        headers={"Retry-After": "1"},
    )


def shutting_down() -> APIError:
    """While the server drains before exiting: running streams finish, new work goes elsewhere."""
    return APIError(
        503,
        "The server is shutting down: it finishes the requests it has and takes no new ones. "
        "Retry against another instance, or once it is back.",
        type="server_error",
        code="server_shutting_down",
        headers={"Retry-After": "5"},
    )


def context_length_exceeded(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="context_length_exceeded")


def server_error(message: str) -> APIError:
    return APIError(500, message, type="server_error", code="server_error")


# Pydantic's location parts that name a union member or a validator, not a field.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def param_path(loc: tuple[Any, ...]) -> str | None:
    """``("body", "messages", 0, "content", "list[...]", 1, "type")`` -> ``messages[0].content
    [1].type``: the parameter as the client wrote it."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
        elif isinstance(item, str) and item.isidentifier() and item not in _TYPE_TAGS:
            parts.append(item)
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or None


def from_validation(errors: list[dict[str, Any]]) -> APIError:
    """The first pydantic error as a 400 naming its parameter."""
    if not errors:
        return invalid_param("The request body is invalid.", None)
    error = errors[0]
    param = param_path(tuple(error.get("loc", ())))
    kind = error.get("type", "")
    if kind == "json_invalid":
        return invalid_param(
            "We could not parse the JSON body of your request: send a JSON object.", None
        )
    if param is None:
        return invalid_param("The request body must be a JSON object.", None)
    if kind == "extra_forbidden":
        return invalid_param(f"Unrecognized request argument supplied: {param}", param)
    if kind == "missing":
        return invalid_param(f"Missing required parameter: '{param}'.", param)
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if "input" in error and kind != "extra_forbidden":
        shown = repr(error["input"])
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return invalid_param(f"Invalid value for '{param}' ({shown}): {message}.", param)
    return invalid_param(f"Invalid value for '{param}': {message}.", param)


def install_handlers(app: FastAPI) -> None:
    """Make every error the app can raise answer in OpenAI's shape."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        record = request.scope.get("cuvee_request_log")
        if record is not None:  # code and parameter only: a message may quote the input
            record["error"] = {"code": exc.code, "param": exc.param}
        return exc.response()

    async def request_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return from_validation(list(exc.errors())).response()

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "Unknown URL: this server serves /v1/chat/completions, /v1/completions, "
            message += "/v1/embeddings, /v1/retrieve, /v1/models, /health, /ready and /metrics."
        return JSONResponse(
            error_body(message, type=kind, code=str(exc.status_code)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # a bug, not a client's mistake: still OpenAI's shape, so clients raise their own
        # InternalServerError; the traceback goes to the server's log as before
        message = "The server had an error while processing your request; see its log."
        return server_error(message).response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(ValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
