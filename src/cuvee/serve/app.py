"""The FastAPI app: routes wired to explicit state (:class:`ServerState`), nothing global.

Order of checks on a generation request, so a client learns the most useful thing first:
body size (413, before any of it is parsed: ``serve_max_body_mb``), API key (401), body (400,
naming the parameter), model (404, also for a model the key may not use), parameters the
server cannot honour (400), the key's rate limits (429 with Retry-After), the server's queue
(503), then the prompt against the context (400 context_length_exceeded).

/health (the process answers), /ready (preloaded models are loaded) and /metrics need no key:
probes and Prometheus scrape them.

``/v1/embeddings`` serves one embedding model (``openai_embeddings``) beside the registry's chat
models, with the same keys, limits and metrics; its checks come in the same order (key, body,
model, parameters, rate limits, queue).

Document collections (``cuvee.serve.rag``): a chat completion for ``rag:NAME`` (or with
``collection``) is answered from the collection and verified; ``/v1/retrieve`` returns its
passages; ``/v1/models`` lists ``rag:NAME`` for the collections the key may see. A collection a
key may not see answers 404 exactly as a missing one does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, Header
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.requests import Request as HTTPRequest

from cuvee import __version__
from cuvee.serve import errors
from cuvee.serve.bodylimit import BodyLimitMiddleware
from cuvee.serve.collections import collections_route, document_route
from cuvee.serve.generation import collect, start, stream
from cuvee.serve.keys import ApiKey, Authenticator
from cuvee.serve.keys_routes import create_key, list_keys, revoke_key
from cuvee.serve.metrics import Metrics, MetricsMiddleware
from cuvee.serve.models import ModelRegistry
from cuvee.serve.openai_chat import ChatFormatter, chat_plan
from cuvee.serve.openai_completions import CompletionFormatter, completion_plan
from cuvee.serve.openai_embeddings import (
    EmbedderFactory,
    EmbeddingService,
    check_dimensions,
    inputs_of,
    run_embedder,
)
from cuvee.serve.openai_embeddings import response as embedding_response
from cuvee.serve.rag import (
    DocsService,
    answer_route,
    check_not_rag,
    collection_of,
    is_docs_request,
)
from cuvee.serve.rag import retrieve_route as docs_retrieve
from cuvee.serve.requestlog import RequestLog, RequestLogMiddleware, note
from cuvee.serve.runs import RunManager, require_admin
from cuvee.serve.runs import events as run_events
from cuvee.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    KeyRequest,
    RetrieveRequest,
    RunRequest,
    VoteRequest,
    request_body,
    with_body_schemas,
)
from cuvee.serve.state import Capacity, ServerState
from cuvee.serve.stored import list_route as store_list
from cuvee.serve.stored import model_route as store_model
from cuvee.serve.ui import install_ui
from cuvee.serve.votes import append as append_vote

if TYPE_CHECKING:
    from cuvee.config import Settings

log = logging.getLogger("cuvee.serve")


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


# FastAPI resolves annotations by name from the module, so the dependency lives here.
Key = Annotated[ApiKey | None, Depends(principal)]

Body = TypeVar("Body", bound=BaseModel)


def create_app(
    settings: Settings,
    registry: ModelRegistry,
    auth: Authenticator | None = None,
    *,
    metrics: Metrics | None = None,
    max_queue: int = 64,
    default_max_tokens: int = 512,
    embedder_factory: EmbedderFactory | None = None,
    request_log: RequestLog | None = None,
    docs: DocsService | None = None,
) -> FastAPI:
    """The server's app. ``auth`` None serves without keys; ``max_queue`` bounds the sequences
    running or waiting across all models (beyond it: 503); ``default_max_tokens`` caps a chat
    completion that names no limit; ``embedder_factory`` makes the embedder on first use
    (default: the model of ``settings.embedding_model``; tests inject a tiny one);
    ``request_log`` writes a JSON line per /v1 request (None: no request log); ``docs``
    serves the document collections (default: those under ``settings.home``, searched with
    ``settings.embedding_model``; tests inject a fake embedder and answerer)."""
    embeddings = EmbeddingService.from_settings(settings, embedder_factory)
    if docs is None:
        docs = DocsService.from_settings(
            settings, _shared_backend(settings, embeddings) if embedder_factory is None else None
        )
    state = ServerState(
        settings=settings,
        registry=registry,
        auth=auth or Authenticator(None),
        metrics=metrics or Metrics(),
        capacity=Capacity(max_queue),
        embeddings=embeddings,
        default_max_tokens=default_max_tokens,
        docs=docs,
    )
    state.metrics.track_loaded(lambda: len(registry.loaded()))
    if request_log is not None:
        state.extra["request_log"] = request_log

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = None
        if registry.preload:
            state.preload_error = None
            task = asyncio.create_task(_preload(state))
        try:
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()
            await anyio.to_thread.run_sync(registry.close)
            state.docs.close()

    app = FastAPI(title="cuvee", version=__version__, lifespan=lifespan)
    app.state.cuvee = state  # read by the key dependency, and by tests
    errors.install_handlers(app)
    # innermost of the three, so the metrics and the request log count its 413s too
    max_bytes = int(settings.serve_max_body_mb * 1_000_000)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    if request_log is not None:
        app.add_middleware(RequestLogMiddleware, log=request_log)

    # The routes parse their own bodies (the key first); the OpenAPI document still shows them.
    bodies: list[type[BaseModel]] = []

    def body_doc(model: type[BaseModel]) -> dict[str, Any]:
        bodies.append(model)
        return request_body(model)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_body_schemas(FastAPI.openapi(app), bodies)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state.draining:  # load balancers stop sending work here
            return JSONResponse({"status": "draining"}, status_code=503)
        loaded = registry.loaded()
        if state.preload_error is None:
            waiting = [m for m in registry.preload[: registry.max_loaded] if m not in loaded]
            return JSONResponse({"status": "loading", "loading": waiting}, status_code=503)
        if state.preload_error:
            body = {"status": "error", "error": state.preload_error}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", "loaded": loaded})

    @app.get("/metrics")
    async def metrics_route() -> Response:
        data, content_type = state.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/v1/models")
    async def list_models(key: Key) -> dict[str, Any]:
        def describe() -> list[dict[str, Any]]:
            embedding = state.embeddings.model_id
            ids = [m for m in registry.ids() if m != embedding and (key is None or key.allows(m))]
            described = [registry.describe(m) for m in ids]
            if key is None or key.allows(embedding):
                described.append(state.embeddings.describe())
            answering = _default_answer_model(state)
            if key is None or not answering or key.allows(answering):
                described += [state.docs.describe(n) for n in state.docs.visible(key)]
            return described

        return {"object": "list", "data": await anyio.to_thread.run_sync(describe)}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, key: Key) -> dict[str, Any]:
        collection = collection_of(model_id)
        if collection is not None:
            await anyio.to_thread.run_sync(state.docs.open, collection, key, "model")
            return await anyio.to_thread.run_sync(state.docs.describe, collection)
        await _check_model(state, key, model_id)
        if model_id == state.embeddings.model_id:
            return state.embeddings.describe()
        return await anyio.to_thread.run_sync(registry.describe, model_id)

    @app.post("/v1/chat/completions", openapi_extra=body_doc(ChatCompletionRequest))
    async def chat_completions(request: HTTPRequest, key: Key) -> Response:
        started = time.perf_counter()
        _check_open(state)
        body = await _parse(request, ChatCompletionRequest)
        _note_body(request, state, body.model, body.messages)
        if is_docs_request(body):
            return await answer_route(state, request, key, body)
        check_not_rag(body)
        await _check_model(state, key, body.model, purpose="generation")
        plan, tool_plan = chat_plan(body)
        if key is not None:
            state.auth.limiter.admit(key)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        formatter = ChatFormatter(body.model, body.n, include_usage, bool(body.logprobs), tool_plan)
        return await _generate(state, request, body, plan, key, started, formatter)

    @app.post("/v1/completions", openapi_extra=body_doc(CompletionRequest))
    async def completions(request: HTTPRequest, key: Key) -> Response:
        started = time.perf_counter()
        _check_open(state)
        body = await _parse(request, CompletionRequest)
        _note_body(request, state, body.model, body.prompt)
        await _check_model(state, key, body.model, purpose="generation")
        plan, prompts = completion_plan(body)
        if key is not None:
            state.auth.limiter.admit(key)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        formatter = CompletionFormatter(
            body.model, prompts, body.n, body.echo, include_usage, body.logprobs
        )
        return await _generate(state, request, body, plan, key, started, formatter)

    @app.post("/v1/embeddings", openapi_extra=body_doc(EmbeddingRequest))
    async def embeddings(request: HTTPRequest, key: Key) -> JSONResponse:
        _check_open(state)
        body = await _parse(request, EmbeddingRequest)
        _note_body(request, state, body.model, body.input)
        await _check_model(state, key, body.model, purpose="embedding")
        texts = inputs_of(body)
        embedder = await state.embeddings.load()
        check_dimensions(body, embedder.dim)
        if key is not None:
            state.auth.limiter.admit(key)
        state.capacity.take(1)
        try:
            vectors, tokens = await run_embedder(embedder, texts)
        finally:
            state.capacity.give(1)
        state.metrics.prompt_tokens.labels(body.model).inc(tokens)
        note(request, prompt_tokens=tokens)
        if key is not None:
            state.auth.limiter.add_tokens(key, tokens)
        # JSONResponse as is: thousands of floats need no jsonable_encoder pass
        return JSONResponse(embedding_response(body.model, vectors, tokens, body.encoding_format))

    @app.post("/v1/retrieve", openapi_extra=body_doc(RetrieveRequest))
    async def retrieve(request: HTTPRequest, key: Key) -> JSONResponse:
        _check_open(state)
        body = await _parse(request, RetrieveRequest)
        _note_body(request, state, f"rag:{body.collection}", body.query)
        return JSONResponse(await docs_retrieve(state, request, key, body))

    @app.get("/v1/collections")
    async def list_collections(key: Key) -> dict[str, Any]:
        """The document collections this key may see: documents, chunks, embedding model."""
        return await collections_route(state, key)

    @app.get("/v1/collections/{name}/document")
    async def get_document(name: str, key: Key, ref: str) -> dict[str, Any]:
        """One document's whole text, by ``ref`` (its id or the path a citation names), so a
        citation's character offsets can be shown in place."""
        return await document_route(state, key, name, ref)

    @app.post("/v1/votes", openapi_extra=body_doc(VoteRequest))
    async def vote(request: HTTPRequest, key: Key) -> JSONResponse:
        """A person's verdict on two models' answers (the web UI's compare screen), appended to
        the pairwise votes file that `cuvee eval --suite pairwise` reads."""
        body = await _parse(request, VoteRequest)
        note(request, model=f"{body.a.model} vs {body.b.model}")
        for side in (body.a, body.b):
            await _check_model(state, key, side.model, purpose="generation")
        stored = await anyio.to_thread.run_sync(append_vote, settings.home, body, key)
        return JSONResponse(stored)

    @app.get("/v1/store/models")
    async def list_store(key: Key) -> dict[str, Any]:
        """The stored models this key may use: kind, parent, licence, commercial use."""
        from cuvee.store import ModelStore

        return await store_list(ModelStore(settings.models_dir), key)

    @app.get("/v1/store/models/{name}")
    async def get_stored(name: str, key: Key) -> dict[str, Any]:
        """One stored model: its whole manifest (lineage, recipe, exports) and model card."""
        from cuvee.store import ModelStore

        return await store_model(ModelStore(settings.models_dir), key, name)

    runs = RunManager(settings)
    state.extra["runs"] = runs

    def admin(request: HTTPRequest, key: ApiKey | None) -> None:
        require_admin(state.auth.enabled, key, request)

    @app.get("/v1/runs")
    async def list_runs(request: HTTPRequest, key: Key) -> dict[str, Any]:
        """Training runs (admin): each one's status, and the shipped recipes to start from."""
        from cuvee.train.recipe import shipped_recipes

        admin(request, key)
        data = await anyio.to_thread.run_sync(runs.list)
        return {"object": "list", "data": data, "recipes": list(shipped_recipes())}

    @app.post("/v1/runs", openapi_extra=body_doc(RunRequest))
    async def start_run(request: HTTPRequest, key: Key) -> JSONResponse:
        """Start `cuvee train` with a shipped recipe and knobs, or an uploaded data file
        (admin); the recipe is checked before anything starts."""
        admin(request, key)
        body = await _parse(request, RunRequest)
        return JSONResponse(await anyio.to_thread.run_sync(runs.start, body))

    @app.get("/v1/runs/{name}")
    async def run_status(name: str, request: HTTPRequest, key: Key) -> dict[str, Any]:
        """Where a run stands: running, completed, stopped (with the resume command), failed."""
        admin(request, key)
        return await anyio.to_thread.run_sync(runs.status, name)

    @app.get("/v1/runs/{name}/events")
    async def follow_run(name: str, request: HTTPRequest, key: Key) -> Response:
        """The run's metrics as server-sent events while it trains, then its end (admin)."""
        admin(request, key)
        return await run_events(runs, name)

    @app.post("/v1/runs/{name}/stop")
    async def stop_run(name: str, request: HTTPRequest, key: Key) -> dict[str, Any]:
        """Stop a run after its current step; its checkpoint is kept for --resume (admin)."""
        admin(request, key)
        return await anyio.to_thread.run_sync(runs.stop, name)

    @app.get("/v1/keys")
    async def keys_list(request: HTTPRequest, key: Key) -> dict[str, Any]:
        """The active keys (admin): names, limits, scopes, dates; never a secret."""
        admin(request, key)
        return await anyio.to_thread.run_sync(list_keys, state.auth.store)

    @app.post("/v1/keys", openapi_extra=body_doc(KeyRequest))
    async def keys_create(request: HTTPRequest, key: Key) -> JSONResponse:
        """A new key (admin); its secret is in this answer and nowhere else, ever."""
        admin(request, key)
        body = await _parse(request, KeyRequest)
        return JSONResponse(await anyio.to_thread.run_sync(create_key, state.auth.store, body))

    @app.post("/v1/keys/{name}/revoke")
    async def keys_revoke(name: str, request: HTTPRequest, key: Key) -> dict[str, Any]:
        """Revoke a key (admin); it stops working at its next request."""
        admin(request, key)
        return await anyio.to_thread.run_sync(revoke_key, state.auth.store, name)

    install_ui(app)
    return app


def _default_answer_model(state: ServerState) -> str | None:
    from cuvee.docs.generate import default_model

    return default_model(state.settings)


def _check_open(state: ServerState) -> None:
    """503 while draining for shutdown: open streams finish, new work is refused."""
    if state.draining:
        raise errors.shutting_down()


def _note_body(request: HTTPRequest, state: ServerState, model: str, prompt: Any) -> None:
    """The model for the request log, and the prompt only when the server logs prompts."""
    note(request, model=model)
    log: RequestLog | None = state.extra.get("request_log")
    if log is not None and log.log_prompts:
        if isinstance(prompt, list):
            prompt = [
                p.model_dump(exclude_none=True) if isinstance(p, BaseModel) else p for p in prompt
            ]
        note(request, prompt=prompt)


async def _parse(request: HTTPRequest, model: type[Body]) -> Body:
    """The JSON body validated as ``model``; any problem is a 400 naming the parameter."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise errors.from_validation(list(exc.errors())) from None


async def _check_model(
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


async def _preload(state: ServerState) -> None:
    try:
        await anyio.to_thread.run_sync(state.registry.load_preloaded)
    except Exception as exc:
        state.preload_error = str(exc) or type(exc).__name__
        log.error("preloading models failed: %s", state.preload_error)
    else:
        state.preload_error = ""


def _shared_backend(settings: Settings, embeddings: EmbeddingService):
    """Document search with the embedder /v1/embeddings serves: one copy of the model in
    memory, not two (a local model only; an endpoint has nothing to share)."""

    def factory():
        from cuvee.docs.embedders import open_backend

        spec = getattr(settings, "embedding_model", None)
        shared = None if str(spec or "").startswith("openai:") else embeddings.get()
        return open_backend(spec, embedder=shared)

    return factory


async def _generate(state, request, body, plan, key, started: float, formatter) -> Response:
    """Start the engine requests of a chat or completion and answer: a stream, or the whole
    response once every choice has finished."""
    generation = await start(state, body.model, plan, key, started)
    note(request, generation=generation)
    if body.stream:
        return stream(generation, request, formatter, formatter.include_usage)
    return await collect(generation, request, formatter)
