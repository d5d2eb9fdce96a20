"""The routes beside the OpenAI API that the web UI (and any client) uses to look around and
manage the server: document collections and their documents, the model store, people's votes
on compared answers, and, for admins only, training runs, evaluations and keys. Each is in the
OpenAPI schema and behind the same key checks as /v1's generation routes."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request as HTTPRequest

from cuvee.serve import collections as collection_writes
from cuvee.serve.collections import collections_route, document_route, documents_route
from cuvee.serve.deps import Key, check_model, parse, state_of
from cuvee.serve.evals import EvalManager
from cuvee.serve.evals import events as eval_events
from cuvee.serve.keys import ApiKey
from cuvee.serve.keys_routes import create_key, list_keys, revoke_key
from cuvee.serve.requestlog import note
from cuvee.serve.runs import RunManager, require_admin
from cuvee.serve.runs import events as run_events
from cuvee.serve.schemas import (
    EvalRequest,
    KeyRequest,
    RemoveRequest,
    RunRequest,
    UploadRequest,
    VoteRequest,
    request_body,
)
from cuvee.serve.stored import list_route as store_list
from cuvee.serve.stored import model_route as store_model
from cuvee.serve.votes import append as append_vote

router = APIRouter()
# The bodies of this router's routes, for the OpenAPI document's schemas.
MANAGE_BODIES = [VoteRequest, RunRequest, KeyRequest, EvalRequest, UploadRequest, RemoveRequest]


def attach_managers(state: Any) -> None:
    """The server's training runs and evaluations, kept on its state."""
    state.extra["runs"] = RunManager(state.settings)
    state.extra["evals"] = EvalManager(state.settings)


def _runs(request: HTTPRequest) -> RunManager:
    return state_of(request).extra["runs"]


def _evals(request: HTTPRequest) -> EvalManager:
    return state_of(request).extra["evals"]


def _admin(request: HTTPRequest, key: ApiKey | None) -> None:
    require_admin(state_of(request).auth.enabled, key, request)


@router.get("/v1/collections")
async def list_collections(request: HTTPRequest, key: Key) -> dict[str, Any]:
    """The document collections this key may see: documents, chunks, embedding model."""
    return await collections_route(state_of(request), key)


@router.get("/v1/collections/{name}/document")
async def get_document(request: HTTPRequest, name: str, key: Key, ref: str) -> dict[str, Any]:
    """One document's whole text, by ``ref`` (its id or the path a citation names), so a
    citation's character offsets can be shown in place."""
    return await document_route(state_of(request), key, name, ref)


@router.get("/v1/collections/{name}/documents")
async def list_documents(request: HTTPRequest, name: str, key: Key) -> dict[str, Any]:
    """A collection's documents: id, path, title, passages."""
    return await documents_route(state_of(request), key, name)


@router.post("/v1/collections/{name}/documents", openapi_extra=request_body(UploadRequest))
async def upload_documents(request: HTTPRequest, name: str, key: Key) -> JSONResponse:
    """Upload files (txt, md, html, pdf, docx; base64) and index them into collection NAME,
    created if new (admin)."""
    _admin(request, key)
    body = await parse(request, UploadRequest)
    state = state_of(request)
    return JSONResponse(await anyio.to_thread.run_sync(collection_writes.upload, state, name, body))


@router.post("/v1/collections/{name}/sync")
async def sync_collection(request: HTTPRequest, name: str, key: Key) -> dict[str, Any]:
    """Re-read every document from its file: changed ones indexed again, vanished dropped
    (admin)."""
    _admin(request, key)
    return await anyio.to_thread.run_sync(collection_writes.sync, state_of(request), name)


@router.post("/v1/collections/{name}/documents/remove", openapi_extra=request_body(RemoveRequest))
async def remove_document(request: HTTPRequest, name: str, key: Key) -> dict[str, Any]:
    """Take one document out of collection NAME (admin)."""
    _admin(request, key)
    body = await parse(request, RemoveRequest)
    state = state_of(request)
    return await anyio.to_thread.run_sync(collection_writes.remove, state, name, body.ref)


@router.post("/v1/votes", openapi_extra=request_body(VoteRequest))
async def vote(request: HTTPRequest, key: Key) -> JSONResponse:
    """A person's verdict on two models' answers (the web UI's compare screen), appended to
    the pairwise votes file that `cuvee eval --suite pairwise` reads."""
    body = await parse(request, VoteRequest)
    note(request, model=f"{body.a.model} vs {body.b.model}")
    for side in (body.a, body.b):
        await check_model(state_of(request), key, side.model, purpose="generation")
    stored = await anyio.to_thread.run_sync(append_vote, state_of(request).settings.home, body, key)
    return JSONResponse(stored)


@router.get("/v1/store/models")
async def list_store(request: HTTPRequest, key: Key) -> dict[str, Any]:
    """The stored models this key may use: kind, parent, licence, commercial use."""
    from cuvee.store import ModelStore

    return await store_list(ModelStore(state_of(request).settings.models_dir), key)


@router.get("/v1/store/models/{name}")
async def get_stored(request: HTTPRequest, name: str, key: Key) -> dict[str, Any]:
    """One stored model: its whole manifest (lineage, recipe, exports) and model card."""
    from cuvee.store import ModelStore

    return await store_model(ModelStore(state_of(request).settings.models_dir), key, name)


@router.get("/v1/runs")
async def list_runs(request: HTTPRequest, key: Key) -> dict[str, Any]:
    """Training runs (admin): each one's status, and the shipped recipes to start from."""
    from cuvee.train.recipe import shipped_recipes

    _admin(request, key)
    data = await anyio.to_thread.run_sync(_runs(request).list)
    return {"object": "list", "data": data, "recipes": list(shipped_recipes())}


@router.post("/v1/runs", openapi_extra=request_body(RunRequest))
async def start_run(request: HTTPRequest, key: Key) -> JSONResponse:
    """Start `cuvee train` with a shipped recipe and knobs, or an uploaded data file
    (admin); the recipe is checked before anything starts."""
    _admin(request, key)
    body = await parse(request, RunRequest)
    return JSONResponse(await anyio.to_thread.run_sync(_runs(request).start, body))


@router.get("/v1/runs/{name}")
async def run_status(name: str, request: HTTPRequest, key: Key) -> dict[str, Any]:
    """Where a run stands: running, completed, stopped (with the resume command), failed."""
    _admin(request, key)
    return await anyio.to_thread.run_sync(_runs(request).status, name)


@router.get("/v1/runs/{name}/events")
async def follow_run(name: str, request: HTTPRequest, key: Key) -> Response:
    """The run's metrics as server-sent events while it trains, then its end (admin)."""
    _admin(request, key)
    return await run_events(_runs(request), name)


@router.post("/v1/runs/{name}/stop")
async def stop_run(name: str, request: HTTPRequest, key: Key) -> dict[str, Any]:
    """Stop a run after its current step; its checkpoint is kept for --resume (admin)."""
    _admin(request, key)
    return await anyio.to_thread.run_sync(_runs(request).stop, name)


@router.get("/v1/keys")
async def keys_list(request: HTTPRequest, key: Key) -> dict[str, Any]:
    """The active keys (admin): names, limits, scopes, dates; never a secret."""
    _admin(request, key)
    return await anyio.to_thread.run_sync(list_keys, state_of(request).auth.store)


@router.post("/v1/keys", openapi_extra=request_body(KeyRequest))
async def keys_create(request: HTTPRequest, key: Key) -> JSONResponse:
    """A new key (admin); its secret is in this answer and nowhere else, ever."""
    _admin(request, key)
    body = await parse(request, KeyRequest)
    return JSONResponse(
        await anyio.to_thread.run_sync(create_key, state_of(request).auth.store, body)
    )


@router.post("/v1/keys/{name}/revoke")
async def keys_revoke(name: str, request: HTTPRequest, key: Key) -> dict[str, Any]:
    """Revoke a key (admin); it stops working at its next request."""
    _admin(request, key)
    return await anyio.to_thread.run_sync(revoke_key, state_of(request).auth.store, name)


@router.get("/v1/evals")
async def evals_list(request: HTTPRequest, key: Key) -> dict[str, Any]:
    """Past and running evaluations (admin), and the suites there are."""
    from cuvee.eval.suites import suite_names

    _admin(request, key)
    data = await anyio.to_thread.run_sync(_evals(request).list)
    return {"object": "list", "data": data, "suites": suite_names()}


@router.post("/v1/evals", openapi_extra=request_body(EvalRequest))
async def evals_start(request: HTTPRequest, key: Key) -> JSONResponse:
    """Start `cuvee eval` on models and suites (admin)."""
    _admin(request, key)
    body = await parse(request, EvalRequest)
    return JSONResponse(await anyio.to_thread.run_sync(_evals(request).start, body))


@router.get("/v1/evals/{eval_id}")
async def evals_status(eval_id: str, request: HTTPRequest, key: Key) -> dict[str, Any]:
    """An evaluation: running, done (with its figures) or failed (admin)."""
    _admin(request, key)
    return await anyio.to_thread.run_sync(_evals(request).status, eval_id)


@router.get("/v1/evals/{eval_id}/events")
async def evals_follow(eval_id: str, request: HTTPRequest, key: Key) -> Response:
    """Its progress lines as server-sent events, then its figures (admin)."""
    _admin(request, key)
    return await eval_events(_evals(request), eval_id)


@router.get("/v1/evals/{eval_id}/report")
async def evals_report(eval_id: str, request: HTTPRequest, key: Key) -> Response:
    """The HTML report, under a policy that runs no script (admin)."""
    _admin(request, key)
    return await anyio.to_thread.run_sync(_evals(request).report, eval_id)
