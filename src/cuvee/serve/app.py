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
model, parameters, rate limits, queue). With a gateway, an upstream's embedding model (or a
route to one) is relayed with the same fallback as a chat model.

Document collections (``cuvee.serve.rag``): a chat completion for ``rag:NAME`` (or with
``collection``) is answered from the collection and verified; ``/v1/retrieve`` returns its
passages; ``/v1/models`` lists ``rag:NAME`` for the collections the key may see. A collection a
key may not see answers 404 exactly as a missing one does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.requests import Request as HTTPRequest

from cuvee import __version__
from cuvee.serve import errors
from cuvee.serve.bodylimit import BodyLimitMiddleware
from cuvee.serve.budget import SettleMiddleware, Use, charged, estimate, reservation_of
from cuvee.serve.deps import Key, check_model, parse
from cuvee.serve.gateway.router import Gateway
from cuvee.serve.generation import collect, start, stream
from cuvee.serve.keys import Authenticator
from cuvee.serve.manage import MANAGE_BODIES, attach_managers, router
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
from cuvee.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RetrieveRequest,
    request_body,
    with_body_schemas,
)
from cuvee.serve.state import Capacity, ServerState
from cuvee.serve.ui import install_ui

if TYPE_CHECKING:
    from cuvee.config import Settings

log = logging.getLogger("cuvee.serve")


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
    gateway: Gateway | None = None,
) -> FastAPI:
    """The server's app. ``auth`` None serves without keys; ``max_queue`` bounds the sequences
    running or waiting across all models (beyond it: 503); ``default_max_tokens`` caps a chat
    completion that names no limit; ``embedder_factory`` makes the embedder on first use
    (default: the model of ``settings.embedding_model``; tests inject a tiny one);
    ``request_log`` writes a JSON line per /v1 request (None: no request log); ``docs``
    serves the document collections (default: those under ``settings.home``, searched with
    ``settings.embedding_model``; tests inject a fake embedder and answerer); ``gateway``
    serves upstream models and routes beside the local ones (``cuvee.serve.gateway``)."""
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
    if gateway is not None:
        gateway.attach(state.metrics)
        state.extra["gateway"] = gateway

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
            if gateway is not None:
                await gateway.close()

    app = FastAPI(title="cuvee", version=__version__, lifespan=lifespan)
    app.state.cuvee = state  # read by the key dependency, and by tests
    errors.install_handlers(app)
    # innermost of the three, so the metrics and the request log count its 413s too
    max_bytes = int(settings.serve_max_body_mb * 1_000_000)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes)
    # settles budget reservations once a response has ended (inside the request log's, so a
    # request's cost is written before its log line)
    app.add_middleware(SettleMiddleware)
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
            if gateway is not None:
                described += [
                    m for m in gateway.model_objects() if key is None or key.allows(m["id"])
                ]
            return described

        if gateway is not None:
            await gateway.discover()
        return {"object": "list", "data": await anyio.to_thread.run_sync(describe)}

    @app.get("/v1/models/{model_id:path}")  # gateway ids hold a slash: UPSTREAM/MODEL
    async def get_model(model_id: str, key: Key) -> dict[str, Any]:
        collection = collection_of(model_id)
        if collection is not None:
            await anyio.to_thread.run_sync(state.docs.open, collection, key, "model")
            return await anyio.to_thread.run_sync(state.docs.describe, collection)
        if gateway is not None and (key is None or key.allows(model_id)):
            await gateway.discover()
            for described in gateway.model_objects():
                if described["id"] == model_id:
                    return described
        await check_model(state, key, model_id)
        if model_id == state.embeddings.model_id:
            return state.embeddings.describe()
        return await anyio.to_thread.run_sync(registry.describe, model_id)

    @app.post("/v1/chat/completions", openapi_extra=body_doc(ChatCompletionRequest))
    async def chat_completions(request: HTTPRequest, key: Key) -> Response:
        started = time.perf_counter()
        _check_open(state)
        routed = await _gateway_targets(state, request, key)
        if routed is not None:
            chat = ("/chat/completions", ChatCompletionRequest, _local_chat)
            return await _routed(state, request, key, routed, *chat, started)
        body = await parse(request, ChatCompletionRequest)
        _note_body(request, state, body.model, body.messages)
        if is_docs_request(body):
            return await answer_route(state, request, key, body)
        check_not_rag(body)
        return await _local_chat(state, request, key, body, started)

    @app.post("/v1/completions", openapi_extra=body_doc(CompletionRequest))
    async def completions(request: HTTPRequest, key: Key) -> Response:
        started = time.perf_counter()
        _check_open(state)
        routed = await _gateway_targets(state, request, key)
        if routed is not None:
            completion = ("/completions", CompletionRequest, _local_completion)
            return await _routed(state, request, key, routed, *completion, started)
        body = await parse(request, CompletionRequest)
        _note_body(request, state, body.model, body.prompt)
        return await _local_completion(state, request, key, body, started)

    @app.post("/v1/embeddings", openapi_extra=body_doc(EmbeddingRequest))
    async def embeddings(request: HTTPRequest, key: Key) -> Response:
        started = time.perf_counter()
        _check_open(state)
        # an upstream's embedding model, or a route to one, is relayed as chat models are
        routed = await _gateway_targets(state, request, key, embedding=True)
        if routed is not None:
            embedding = ("/embeddings", EmbeddingRequest, _local_embeddings)
            return await _routed(state, request, key, routed, *embedding, started)
        body = await parse(request, EmbeddingRequest)
        _note_body(request, state, body.model, body.input)
        return await _local_embeddings(state, request, key, body, started)

    @app.post("/v1/retrieve", openapi_extra=body_doc(RetrieveRequest))
    async def retrieve(request: HTTPRequest, key: Key) -> JSONResponse:
        _check_open(state)
        body = await parse(request, RetrieveRequest)
        _note_body(request, state, f"rag:{body.collection}", body.query)
        return JSONResponse(await docs_retrieve(state, request, key, body))

    attach_managers(state)
    bodies.extend(MANAGE_BODIES)
    app.include_router(router)
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


async def _gateway_targets(state: ServerState, request: HTTPRequest, key, embedding=False):
    """(targets, the body as sent) when the request's model is one of the gateway's routes or
    upstream models, else None. The key must allow that public id (the targets behind a route
    need no grant of their own); the request is admitted by the rate limits once, here, with
    the completion it may ask for reserved (none for an ``embedding``, which never streams)."""
    gateway: Gateway | None = state.extra.get("gateway")
    if gateway is None:
        return None
    try:
        raw = json.loads(await request.body() or b"null")
    except ValueError:
        return None  # the schema's own parse names the problem
    model = raw.get("model") if isinstance(raw, dict) else None
    targets = gateway.chain(model, request.headers) if isinstance(model, str) else None
    if targets is None:
        return None
    if embedding and raw.get("stream"):  # refused before the key is charged for it
        raise errors.invalid_param("/v1/embeddings does not stream.", "stream")
    note(request, model=model)
    if key is not None and not key.allows(model):
        raise errors.model_not_found(model)
    if key is not None:
        prices = gateway.prices(targets)
        limit = gateway.context_length(targets) or _UPSTREAM_MAX_TOKENS
        reserve = 0 if embedding else _reserved_tokens(raw, limit)
        state.auth.admit(key, request.scope, estimate(raw, reserve, prices))
    return targets, raw


# What a request naming no max_tokens reserves for an upstream that declares no context length.
_UPSTREAM_MAX_TOKENS = 4096


def _reserved_tokens(raw: dict[str, Any], default: int) -> int:
    """The completion tokens a request reserves per choice: its own limit, else ``default``."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = raw.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _admit_local(state: ServerState, request: HTTPRequest, key, body: BaseModel) -> None:
    """Admit a request for a local model (its rate limits and budgets; local tokens cost 0)."""
    raw = body.model_dump(exclude_none=True)
    reserve = _reserved_tokens(raw, state.default_max_tokens)
    state.auth.admit(key, request.scope, estimate(raw, reserve, ()))


async def _routed(state, request, key, routed, path: str, schema, answer_local, started: float):
    """The gateway's answer to a request for one of its routes or upstream models: a local
    target is answered by ``answer_local`` (the chat or completion path) with the fields its
    schema knows, every upstream's usage is recorded."""
    targets, raw = routed

    async def local(model: str, sent: dict[str, Any] | None = None) -> Response:
        body = _known_fields(schema, {**(sent or raw), "model": model})
        return await answer_local(state, request, key, body, started, raw["model"])

    on_usage = _usage_recorder(state, request, key, raw["model"])
    return await state.extra["gateway"].answer(path, raw, targets, local, on_usage)


def _usage_recorder(state: ServerState, request: HTTPRequest, key, public: str):
    """What the gateway calls with an upstream target's usage: counted against the key's
    tokens per minute and written with the request's reservation."""

    def record(target, prompt: int, completion: int, usd: float) -> None:
        if key is not None:
            state.auth.limiter.add_tokens(key, prompt + completion)
        charged(request, Use(public, target.label, prompt, completion, usd))

    return record


def _known_fields(schema: type[BaseModel], raw: dict[str, Any]):
    """The body for the local engine behind a route: the fields it knows (an upstream may have
    been sent others, e.g. vLLM's), validated as usual."""
    known = {f.alias or name for name, f in schema.model_fields.items()} | set(schema.model_fields)
    try:
        return schema.model_validate({k: v for k, v in raw.items() if k in known})
    except ValidationError as exc:
        raise errors.from_validation(list(exc.errors())) from None


async def _local_chat(state, request, key, body, started: float, public: str | None = None):
    """A chat completion on the local engine. ``public``: the route it serves (its model
    checked without the key, which was checked against the route; not admitted again)."""
    await check_model(state, None if public else key, body.model, purpose="generation")
    plan, tool_plan = chat_plan(body)
    if key is not None and public is None:
        _admit_local(state, request, key, body)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    formatter = ChatFormatter(
        public or body.model, body.n, include_usage, bool(body.logprobs), tool_plan
    )
    return await _generate(state, request, body, plan, key, started, formatter)


async def _local_completion(state, request, key, body, started: float, public: str | None = None):
    """A completion on the local engine (``public`` as for ``_local_chat``)."""
    await check_model(state, None if public else key, body.model, purpose="generation")
    plan, prompts = completion_plan(body)
    if key is not None and public is None:
        _admit_local(state, request, key, body)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    formatter = CompletionFormatter(
        public or body.model, prompts, body.n, body.echo, include_usage, body.logprobs
    )
    return await _generate(state, request, body, plan, key, started, formatter)


async def _local_embeddings(
    state, request, key, body, started: float, public: str | None = None
) -> JSONResponse:
    """Vectors from the served embedding model (``public`` as for ``_local_chat``)."""
    await check_model(state, None if public else key, body.model, purpose="embedding")
    texts = inputs_of(body)
    embedder = await state.embeddings.load()
    check_dimensions(body, embedder.dim)
    if key is not None and public is None:
        state.auth.admit(key, request.scope, estimate({"input": texts}, 0, ()))
    state.capacity.take(1)
    try:
        vectors, tokens = await run_embedder(embedder, texts)
    finally:
        state.capacity.give(1)
    state.metrics.prompt_tokens.labels(body.model).inc(tokens)
    note(request, prompt_tokens=tokens)
    if key is not None:
        state.auth.limiter.add_tokens(key, tokens)
        charged(request, Use(public or body.model, body.model, tokens, 0, 0.0))
    # JSONResponse as is: thousands of floats need no jsonable_encoder pass
    model = public or body.model
    return JSONResponse(embedding_response(model, vectors, tokens, body.encoding_format))


async def _generate(state, request, body, plan, key, started: float, formatter) -> Response:
    """Start the engine requests of a chat or completion and answer: a stream, or the whole
    response once every choice has finished."""
    generation = await start(state, body.model, plan, key, started)
    note(request, generation=generation)
    reservation = reservation_of(request.scope)
    if reservation is not None:  # its usage is read once it has ended
        reservation.generation = generation
        reservation.model, reservation.target = formatter.model, body.model
    if body.stream:
        return stream(generation, request, formatter, formatter.include_usage)
    return await collect(generation, request, formatter)
