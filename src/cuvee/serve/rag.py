"""Answers from document collections over the OpenAI API: ``rag:COLLECTION`` chat completions
and ``POST /v1/retrieve``, with the checks of ``cuvee ask`` (:func:`cuvee.docs.answer.ask`).

A chat completion is a document answer when its model is ``rag:NAME`` (the answer is written
by ``rag_model`` if the body gives one, else the configured default chat model, else the base
model) or when it names a chat model and ``collection`` (both sent with the SDK's
``extra_body``). The last user message is the question; the model's prompt is the retrieved
passages and that question (earlier turns are not given to it). Whatever the model writes is
verified sentence by sentence: the message content is the verified answer with its ``[n]``
markers followed by a sources list, and the response carries ``citations`` (each with a
verbatim ``quote`` of its source and its character offsets), ``abstained`` and
``abstain_reason``. Streaming works, but the answer is only known once verified: the stream
sends the role, then the whole answer as one content chunk, then the finish chunk (with the
citations), the usage chunk if asked and ``[DONE]``.

Generation is greedy unless the request sets ``temperature``; ``max_tokens`` bounds the
model's draft (fewer passages are given to a model whose context cannot hold them all with it).
Parameters that have no meaning for a verified answer (``n`` > 1, tools, ``response_format``,
logprobs) are refused by name.

Access: a key restricted to collections (``cuvee keys create --collections``) gets the same 404
for a collection it may not see as for one that does not exist, here, on ``/v1/retrieve`` and in
``/v1/models``, so it can neither read nor discover the others. The model writing the answer
must also be one the key may use.

The embedding backend (``settings.embedding_model``) and the open collections are the docs
package's ``Library``: loaded once, kept, reopened when replaced. Collections' SQLite
connections are shared across worker threads (``check_same_thread=False``; Python's sqlite3 is
built serialised, and the server only reads)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from cuvee.docs import index
from cuvee.docs import verify as verifying
from cuvee.docs.answer import AskResult, ask, place
from cuvee.docs.embedders import Backend
from cuvee.docs.generate import default_model
from cuvee.docs.library import CollectionMissing, Library
from cuvee.docs.retrieval import RERANKERS, retrieve
from cuvee.engine.base import SamplingParams
from cuvee.errors import CuveeError, DocsError
from cuvee.serve import errors
from cuvee.serve.budget import Use, charged, estimate
from cuvee.serve.drafts import Answerer, AnswererFactory, Cancelled, EngineAnswerer
from cuvee.serve.generation import (
    DISCONNECT_POLL_S,
    EventStreamResponse,
    engine_limiter,
    finish_reason,
    sse,
)
from cuvee.serve.keys import ApiKey
from cuvee.serve.openai_chat import (
    ChatFormatter,
    _text,
    check_sampling,
    check_token_limits,
    engine_messages,
    sampling_params,
)
from cuvee.serve.requestlog import note
from cuvee.serve.schemas import ChatCompletionRequest, RetrieveRequest

if TYPE_CHECKING:
    from cuvee.config import Settings

PREFIX = "rag:"


def collection_of(model: str) -> str | None:
    """``rag:NAME`` -> NAME; None for any other model id."""
    name = model[len(PREFIX) :] if model.startswith(PREFIX) else None
    return name or None


# ---- errors ---------------------------------------------------------------------------------


def collection_not_found(name: str, param: str) -> errors.APIError:
    # One answer for a collection that does not exist and one the key may not see, so a key
    # cannot discover the collections it has no access to.
    return errors.APIError(
        404,
        f"The collection '{name}' does not exist or you do not have access to it.",
        param=param,
        code="collection_not_found",
    )


def embedder_mismatch(exc: DocsError, param: str) -> errors.APIError:
    """The server's embedding model is not the one the collection was indexed with: searching
    would compare vectors of two models. A conflict between the server and the index that only
    the operator can fix, so the message says how."""
    message = exc.message + (f" (fix: {exc.hint})" if exc.hint else "")
    return errors.APIError(409, message, param=param, code="embedding_model_mismatch")


# Parameters a verified answer cannot honour: name -> (is it set?, why not).
_REFUSED: dict[str, tuple[Callable[[ChatCompletionRequest], bool], str]] = {
    "n": (lambda b: b.n != 1, "a document answer has one choice"),
    "tools": (lambda b: bool(b.tools), "a document answer calls no tools"),
    "tool_choice": (lambda b: b.tool_choice is not None, "a document answer calls no tools"),
    "response_format": (
        lambda b: b.response_format is not None and b.response_format.type != "text",
        "a document answer is verified text with citations",
    ),
    "logprobs": (lambda b: bool(b.logprobs), "the answer is rebuilt from verified sentences"),
    "top_logprobs": (
        lambda b: b.top_logprobs is not None,
        "the answer is rebuilt from verified sentences",
    ),
    "functions": (lambda b: bool(b.functions), "a document answer calls no tools"),
    "function_call": (lambda b: b.function_call is not None, "a document answer calls no tools"),
    "modalities": (
        lambda b: b.modalities is not None and b.modalities != ["text"],
        "only text output is produced",
    ),
    "audio": (lambda b: b.audio is not None, "only text output is produced"),
    "prediction": (lambda b: b.prediction is not None, "not available for document answers"),
    "reasoning_effort": (
        lambda b: b.reasoning_effort is not None,
        "not available for the models this server runs",
    ),
}

# Extensions that only mean something for a document answer.
# What one retrieved passage may add to a prompt, reserved against a key's token budget
# before the passages are known (a chunk is about 1,000 characters, at most a token each).
_PASSAGE_TOKENS = 1200

_RAG_ONLY = ("k", "rag_model", "reranker", "min_support")


def check_not_rag(body: ChatCompletionRequest) -> None:
    """An ordinary chat completion must not carry document-answer parameters: they would be
    silently ignored."""
    for name in _RAG_ONLY:
        if getattr(body, name) is not None:
            raise errors.invalid_param(
                f"'{name}' applies to answers from documents: use the model 'rag:COLLECTION' "
                "or give 'collection'.",
                name,
            )


# ---- the service ----------------------------------------------------------------------------


@dataclass
class Target:
    """What a document request is about: the collection, and for an answer, who writes it."""

    collection: index.Collection
    param: str  # where the collection was named: "model", "collection"
    model: str | None = None  # the answering model
    model_param: str = "model"


class DocsService:
    """The server's view of the collections (``docs.library.Library``): what a key may see, and
    the library's errors as HTTP answers."""

    def __init__(
        self,
        home: Path,
        backend_factory: Callable[[], Backend],
        answerer_factory: AnswererFactory | None = None,
    ) -> None:
        self.library = Library(home, backend_factory)
        self.answerer_factory: AnswererFactory = answerer_factory or EngineAnswerer

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        backend_factory: Callable[[], Backend] | None = None,
        answerer_factory: AnswererFactory | None = None,
    ) -> DocsService:
        def default_backend() -> Backend:
            from cuvee.docs.embedders import open_backend

            return open_backend(getattr(settings, "embedding_model", None))

        return cls(settings.home, backend_factory or default_backend, answerer_factory)

    def names(self) -> list[str]:
        return self.library.names()

    def visible(self, key: ApiKey | None) -> list[str]:
        return [name for name in self.names() if key is None or key.sees(name)]

    def open(self, name: str, key: ApiKey | None, param: str) -> index.Collection:
        """The collection ``name`` if the key may see it, else the 404 (blocking: run it in a
        worker thread)."""
        if key is not None and not key.sees(name):
            raise collection_not_found(name, param)
        try:
            return self.library.open(name)
        except CollectionMissing:
            raise collection_not_found(name, param) from None
        except DocsError as exc:
            raise errors.server_error(f"collection '{name}' cannot be read: {exc}") from exc

    def describe(self, name: str) -> dict[str, Any]:
        """The ``rag:NAME`` model object (cuvee's extra fields beside OpenAI's)."""
        loaded = self.library.is_open(name)  # before open() below, which loads it
        created = 0
        with contextlib.suppress(Exception):
            created = int(self.open(name, None, "model").stats()["created"])
        return {
            "id": f"{PREFIX}{name}",
            "object": "model",
            "created": created,
            "owned_by": "cuvee",
            "kind": "rag",
            "collection": name,
            "loaded": loaded,
        }

    def backend(self) -> Backend:
        try:
            return self.library.backend()
        except CuveeError as exc:
            raise errors.server_error(f"the embedding model could not be loaded: {exc}") from exc

    def checked_backend(self, collection: index.Collection, param: str) -> Backend:
        self.backend()  # a load failure is a 500, not a mismatch
        try:
            return self.library.checked_backend(collection)
        except DocsError as exc:
            raise embedder_mismatch(exc, param) from None

    def close(self) -> None:
        self.library.close()


# ---- POST /v1/retrieve ----------------------------------------------------------------------


def _check_reranker(name: str | None) -> str:
    if name is not None and name not in RERANKERS:
        raise errors.invalid_param(
            f"Invalid value for 'reranker' ({name!r}): one of {', '.join(RERANKERS)}.",
            "reranker",
        )
    return name or "none"


async def retrieve_route(
    state: Any, http: HTTPRequest, key: ApiKey | None, body: RetrieveRequest
) -> dict[str, Any]:
    """The collection's best passages for the query, with their scores: no generation."""
    docs: DocsService = state.docs
    collection = await anyio.to_thread.run_sync(docs.open, body.collection, key, "collection")
    if not body.query.strip():
        raise errors.invalid_param("'query' is empty.", "query")
    reranker = _check_reranker(body.reranker)
    backend = await anyio.to_thread.run_sync(docs.checked_backend, collection, "collection")
    if key is not None:
        state.auth.admit(key, http.scope, estimate({"input": body.query}, 0, ()))
        charged(http, Use(f"rag:{collection.name}", backend.identity, 0, 0, 0.0))
    state.capacity.take(1)
    try:
        hits = await anyio.to_thread.run_sync(
            lambda: retrieve(collection, backend, body.query, body.k, reranker=reranker)
        )
    finally:
        state.capacity.give(1)
    note(http, completion_tokens=0)
    return {
        "object": "list",
        "collection": collection.name,
        "query": body.query,
        "embedding_model": backend.identity,
        "data": [{"object": "retrieval.chunk", **hit.as_dict()} for hit in hits],
    }


# ---- POST /v1/chat/completions for documents ------------------------------------------------


def is_docs_request(body: ChatCompletionRequest) -> bool:
    return collection_of(body.model) is not None or body.collection is not None


async def _target(state: Any, key: ApiKey | None, body: ChatCompletionRequest) -> Target:
    """The collection (404 unless the key sees it) and the model that writes the answer (404
    unless it exists and the key may use it)."""
    docs: DocsService = state.docs
    named = collection_of(body.model)
    if named is not None:
        if body.collection is not None and body.collection != named:
            raise errors.invalid_param(
                f"'collection' ({body.collection!r}) contradicts the model '{body.model}'.",
                "collection",
            )
        collection = await anyio.to_thread.run_sync(docs.open, named, key, "model")
        model = body.rag_model or default_model(state.settings)
        target = Target(collection, "model", model, "rag_model" if body.rag_model else "model")
    else:
        if body.rag_model is not None and body.rag_model != body.model:
            raise errors.invalid_param(
                "'rag_model' applies to the model 'rag:COLLECTION': with 'collection', the "
                f"model '{body.model}' writes the answer.",
                "rag_model",
            )
        assert body.collection is not None
        collection = await anyio.to_thread.run_sync(docs.open, body.collection, key, "collection")
        target = Target(collection, "collection", body.model, "model")
    if not target.model:
        raise errors.invalid_param(
            "No model to write the answer: set default_chat_model (or default_base) in the "
            "server's configuration, or send 'rag_model'.",
            "rag_model",
        )
    model = target.model
    if (key is not None and not key.allows(model)) or collection_of(model) is not None:
        raise _model_not_found(model, target.model_param)
    if not await anyio.to_thread.run_sync(state.registry.exists, model):
        raise _model_not_found(model, target.model_param)
    return target


def _model_not_found(model: str, param: str) -> errors.APIError:
    error = errors.model_not_found(model)
    error.param = param
    return error


def _question(body: ChatCompletionRequest) -> str:
    engine_messages(body.messages)  # the same checks as any chat request (roles, parts)
    for i in range(len(body.messages) - 1, -1, -1):
        message = body.messages[i]
        if message.role == "user":
            question = _text(message.content, f"messages[{i}]").strip()
            if not question:
                raise errors.invalid_param(
                    f"messages[{i}].content is empty: it is the question.",
                    f"messages[{i}].content",
                )
            return question
    raise errors.invalid_param(
        "A document answer needs a user message: the last one is the question.", "messages"
    )


def _params(body: ChatCompletionRequest) -> SamplingParams:
    """The draft's sampling: greedy unless the client sets a temperature (a verified answer
    gains nothing from variety); ``max_tokens`` as asked, else fitted to the model later."""
    check_sampling(body)
    for name, (is_set, why) in _REFUSED.items():
        if is_set(body):
            raise errors.unsupported(name, why)
    check_token_limits(body)
    params = sampling_params(body, 0)
    if body.temperature is None:
        params.temperature = 0.0
    params.max_tokens = body.max_completion_tokens or body.max_tokens or 0
    return params


@dataclass
class _Outcome:
    result: AskResult
    usage: dict[str, int]
    reason: str


class _Job:
    """One answer being worked out in a worker thread. It owns its queue slot and engine and
    gives both back when the thread ends, whoever still waits for it."""

    def __init__(self, state: Any, key: ApiKey | None, http: HTTPRequest, run: Callable) -> None:
        self.state = state
        self.key = key
        self.http = http
        self.answerer: Answerer | None = None
        self._cancel = threading.Event()
        self.task = asyncio.ensure_future(
            anyio.to_thread.run_sync(run, self, limiter=engine_limiter(state))
        )
        # a client that left never reads the outcome: retrieve it so nothing is logged
        self.task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def cancel(self) -> None:
        self._cancel.set()
        answerer = self.answerer
        if answerer is not None and not self.task.done():
            stop = getattr(answerer, "cancel", None)
            if stop is not None:
                stop()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    async def outcome(self) -> _Outcome | None:
        """The outcome, or None if the client left first (the draft is then cancelled)."""
        while True:
            done, _ = await asyncio.wait({self.task}, timeout=DISCONNECT_POLL_S)
            if done:
                return self.task.result()
            if await self.http.is_disconnected():
                self.cancel()
                return None


def _as_api_error(exc: BaseException) -> BaseException:
    if isinstance(exc, errors.APIError | Cancelled):
        return exc
    if isinstance(exc, DocsError):  # the context cannot hold one passage and an answer
        return errors.context_length_exceeded(exc.message, "messages")
    if isinstance(exc, CuveeError):
        return errors.server_error(exc.message)
    return exc


def _content(result: AskResult) -> str:
    """The verified answer, then where each [n] comes from."""
    if not result.citations:
        return result.answer
    lines = [f"[{c.n}] {place(c.title, c.section)} ({Path(c.doc).name})" for c in result.citations]
    return result.answer + "\n\nSources:\n" + "\n".join(lines)


def _extras(result: AskResult) -> dict[str, Any]:
    return {
        "collection": result.collection,
        "abstained": result.abstained,
        "abstain_reason": result.reason,
        "language": result.language,
        "wording": result.wording,
        "citations": [c.as_dict() for c in result.citations],
        # what the model wrote and what the check made of it: the web UI shows the sentences
        # it dropped as dropped, not hidden
        "sentences": [
            {
                "text": s.text,
                "verdict": s.verdict,
                "n": s.citation.n if s.citation is not None and s.citation.n else None,
            }
            for s in result.sentences
        ],
    }


async def answer_route(
    state: Any, http: HTTPRequest, key: ApiKey | None, body: ChatCompletionRequest
) -> Response:
    """Checks in the app's order (model 404, parameters 400, embedder 409, rate limit 429,
    queue 503), then the answer worked out in a worker thread."""
    target = await _target(state, key, body)
    params = _params(body)
    question = _question(body)
    reranker = _check_reranker(body.reranker)
    min_support = verifying.DEFAULT_MIN_SUPPORT if body.min_support is None else body.min_support
    docs: DocsService = state.docs
    backend = await anyio.to_thread.run_sync(docs.checked_backend, target.collection, target.param)
    if key is not None:
        # the prompt holds passages not yet found: each reserves _PASSAGE_TOKENS
        raw = body.model_dump(exclude_none=True)
        limit = body.max_completion_tokens or body.max_tokens or state.default_max_tokens
        reserve = limit + _PASSAGE_TOKENS * (body.k or 5)
        state.auth.admit(key, http.scope, estimate(raw, reserve, ()))
    state.capacity.take(1)
    model = target.model
    assert model is not None

    def run(job: _Job) -> _Outcome:
        try:
            if job.cancelled:
                raise Cancelled
            job.answerer = state.docs.answerer_factory(state, model, params)
            try:
                if job.cancelled:  # the client left while the engine loaded
                    raise Cancelled
                result = ask(
                    target.collection,
                    backend,
                    question,
                    job.answerer,
                    k=body.k or 5,
                    min_support=min_support,
                    reranker=reranker,
                    model=model,
                )
            finally:
                close = getattr(job.answerer, "close", None)
                if close is not None:
                    close()
            usage = dict(getattr(job.answerer, "usage", None) or {})
            prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            state.metrics.prompt_tokens.labels(model).inc(prompt)
            state.metrics.completion_tokens.labels(model).inc(completion)
            if key is not None:
                state.auth.limiter.add_tokens(key, prompt + completion)
                charged(http, Use(body.model, model, prompt, completion, 0.0))
            note(http, prompt_tokens=prompt, completion_tokens=completion)
            reason = finish_reason(getattr(job.answerer, "reason", "stop"))
            return _Outcome(result, usage, reason)
        except BaseException as exc:
            converted = _as_api_error(exc)
            if converted is exc:
                raise
            raise converted from exc
        finally:
            state.capacity.give(1)

    job = _Job(state, key, http, run)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    formatter = ChatFormatter(body.model, 1, include_usage)
    if body.stream:
        return _stream(job, formatter, include_usage)
    try:
        outcome = await job.outcome()
    except Cancelled:
        outcome = None
    if outcome is None:  # nobody reads this, but answer something well-formed
        return JSONResponse(errors.error_body("client disconnected"), status_code=499)
    response = formatter.response([_content(outcome.result)], [outcome.reason], outcome.usage, [[]])
    return JSONResponse({**response, **_extras(outcome.result)})


def _stream(job: _Job, formatter: ChatFormatter, include_usage: bool) -> Response:
    """The role chunk at once (the client knows it is being answered), then the verified
    answer as one content chunk, the finish chunk with the citations, usage, [DONE]."""

    async def body():
        for chunk in formatter.opening():
            yield sse(chunk)
        try:
            outcome = await job.outcome()
        except Cancelled:
            return
        except errors.APIError as exc:
            yield sse(exc.body())
            return
        except Exception as exc:  # reported in the stream: its status went out already
            yield sse(errors.server_error(f"the answer failed: {exc}").body())
            return
        if outcome is None:
            return
        for chunk in formatter.delta(0, _content(outcome.result), None):
            yield sse(chunk)
        for chunk in formatter.finish(0, outcome.reason):
            if chunk["choices"] and chunk["choices"][0].get("finish_reason"):
                chunk.update(_extras(outcome.result))
            yield sse(chunk)
        if include_usage:
            yield sse(formatter.usage_chunk(outcome.usage))
        yield sse("[DONE]")

    return EventStreamResponse(body(), job.cancel)
