"""What every /v1 route needs before its own work: the caller's API key (a FastAPI dependency,
run before the body is read) and the body parsed as its schema, a 400 naming the parameter."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Header
from pydantic import BaseModel, ValidationError
from starlette.requests import Request as HTTPRequest

from cuvee.serve import errors
from cuvee.serve.keys import ApiKey
from cuvee.serve.rag import collection_of
from cuvee.serve.requestlog import note
from cuvee.serve.state import ServerState


async def principal(
    request: HTTPRequest, authorization: Annotated[str | None, Header()] = None
) -> ApiKey | None:
    """The API key of a /v1 request (None when the server has no keys): 401 otherwise. Runs
    before the body is read, so a client without a key learns that first."""
    state: ServerState = request.app.state.cuvee
    key = state.auth.authenticate(authorization)
    if key is not None:
        note(request, key=key.name)  # the name only: the request log never holds a secret
    return key


# Route modules import this name: FastAPI resolves a route's annotations in its own module.
Key = Annotated[ApiKey | None, Depends(principal)]

Body = TypeVar("Body", bound=BaseModel)


async def parse(request: HTTPRequest, model: type[Body]) -> Body:
    """The JSON body validated as ``model``; any problem is a 400 naming the parameter."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise errors.from_validation(list(exc.errors())) from None


def state_of(request: HTTPRequest) -> ServerState:
    return request.app.state.cuvee


async def check_model(
    state: ServerState, key: ApiKey | None, model: str, purpose: str = "any"
) -> None:
    """404 for a model that does not exist or the key may not use; 400 for one that exists but
    is the wrong kind for the route (a chat model asked for embeddings, or the other way), so
    the client learns which model to send instead."""
    collection = collection_of(model)
    if collection is not None:  # rag:NAME answers chat completions only
        await anyio.to_thread.run_sync(state.docs.open, collection, key, "model")
        raise errors.invalid_param(
            f"The model '{model}' answers from documents on /v1/chat/completions only.",
            "model",
            code="model_not_supported_here",
        )
    if key is not None and not key.allows(model):
        raise errors.model_not_found(model)
    embedding = state.embeddings.model_id
    if model == embedding and purpose != "generation":
        return
    exists = await anyio.to_thread.run_sync(state.registry.exists, model)
    if purpose == "embedding":
        if exists:
            raise errors.invalid_param(
                f"The model '{model}' is a chat model, not an embedding model: "
                f"/v1/embeddings serves '{embedding}'.",
                "model",
                code="model_not_embedding",
            )
        raise errors.model_not_found(model)
    if not exists and model == embedding:
        raise errors.invalid_param(
            f"The model '{model}' is an embedding model: use it with /v1/embeddings, and a chat "
            "model (see /v1/models) here.",
            "model",
            code="model_not_chat",
        )
    if not exists:
        problem = await anyio.to_thread.run_sync(state.registry.adapter_problem, model)
        if problem is not None:
            raise errors.invalid_param(
                f"The model '{model}' cannot be served as an adapter over its base: {problem}. "
                "Serve the fine-tune by its own name instead.",
                "model",
                code="adapter_not_servable",
            )
        raise errors.model_not_found(model)


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def upload_name(name: str) -> str:
    """A client's file name made safe to write on the server: its last part only, with no
    character a path or a shell would read specially ('' when nothing is left)."""
    return _UNSAFE.sub("-", Path(name).name).strip(" .-")
