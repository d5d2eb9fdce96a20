"""Running one HTTP request's generations on an engine, for both endpoints.

Engines expose blocking iterators; the server runs on an event loop. Each submitted handle is
iterated by its own daemon thread that hands events to the loop with ``call_soon_threadsafe``,
so the loop never blocks and every stream progresses as fast as the engine's batch does.

Whatever way a request ends (finished, client gone, error, task cancelled), :meth:`Generation.
close` cancels what is still running, gives back its queue slots and the engine, and is
idempotent: the streaming response calls it after its last byte *and* the event generator calls
it in its ``finally``, since a stream cancelled before it starts never runs its generator."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from cuvee.engine.base import (
    ContextLengthError,
    Engine,
    EngineError,
    Event,
    Finished,
    Handle,
    Request,
    TokenEvent,
    TokenLogprob,
)
from cuvee.errors import ConfigError, CuveeError, ModelNotFound
from cuvee.serve import errors
from cuvee.serve.keys import ApiKey
from cuvee.serve.state import ServerState

# How often a request waiting on the engine checks that its client is still there.
DISCONNECT_POLL_S = 0.25


@dataclass
class Plan:
    """What one HTTP request asks of the engine: one engine request per choice."""

    requests: list[Request]
    prompt_of: list[int]  # per choice: which distinct prompt (usage counts each prompt once)
    max_tokens: int | None  # as the client asked; None: ``default_max_tokens``
    default_max_tokens: int | None  # None: the server's default
    param: str  # the parameter holding the prompt: "messages" or "prompt"
    # the parameter a grammar came from, named when the engine refuses it
    schema_param: str = "response_format"


class Envelope:
    """What every object and stream chunk of one response carries: one id, the creation time
    and the model; chunks also carry ``usage: null`` when the client asked for a usage chunk."""

    def __init__(self, id_prefix: str, model: str, include_usage: bool) -> None:
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def wrap(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    # the ``object`` of a stream chunk ("chat.completion.chunk", "text_completion")
    chunk_object = ""

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = self.wrap(self.chunk_object, choices)
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        """The last chunk of a stream that asked for usage: no choices, the usage."""
        chunk = self.chunk([])
        chunk["usage"] = usage
        return chunk


class Held:
    """A choice's text and logprobs not sent yet (text of several tokens can go out in one
    chunk, with the logprobs of all of them)."""

    def __init__(self) -> None:
        self.text = ""
        self.logprobs: list[TokenLogprob] = []

    def add(self, text: str, logprob: TokenLogprob | None) -> None:
        self.text += text
        if logprob is not None:
            self.logprobs.append(logprob)

    def take(self) -> tuple[str, list[TokenLogprob]]:
        text, logprobs = self.text, self.logprobs
        self.text, self.logprobs = "", []
        return text, logprobs


class Formatter(Protocol):
    """Builds an endpoint's response objects from generated text (chat and completions differ
    in shape only). ``delta`` sees every token of a choice, with its logprob when asked for,
    and returns the chunks to send now: none while text or logprobs are held (a formatter may
    hold text back, as chat does while an answer may be a tool call); ``finish`` sends what is
    still held and the finish chunk."""

    def opening(self) -> list[dict[str, Any]]: ...

    def delta(
        self, index: int, text: str, logprob: TokenLogprob | None
    ) -> list[dict[str, Any]]: ...

    def finish(self, index: int, reason: str) -> list[dict[str, Any]]: ...

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]: ...

    def response(
        self,
        texts: list[str],
        reasons: list[str],
        usage: dict[str, int],
        logprobs: list[list[TokenLogprob]],
    ) -> dict[str, Any]: ...


class EventPump:
    """Events of blocking handles, delivered on the event loop as ``(choice index, event)``.

    Events wait in a deque; a reader with nothing to read parks on one future that the next
    event (or a timer) completes. ``asyncio.wait_for`` on a queue would make a task and a
    timer for every token, which the loop pays for while llama.cpp wants both cores."""

    def __init__(self, handles: list[Handle]) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque[tuple[int, Event]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        for index, handle in enumerate(handles):
            # the engine's thread hands each event straight to the loop: no thread per stream
            handle.subscribe(lambda event, i=index: self._put((i, event)))

    def _put(self, item: tuple[int, Event]) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self._loop.call_soon_threadsafe(self._deliver, item)

    def _deliver(self, item: tuple[int, Event]) -> None:
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float) -> tuple[int, Event] | None:
        """The next event, or None after ``timeout`` seconds without one."""
        if not self._items:
            self._waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, self._wake)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._items.popleft() if self._items else None


class Generation:
    """The handles of one HTTP request and what they hold: queue slots, an engine, metrics."""

    def __init__(
        self,
        state: ServerState,
        model: str,
        handles: list[Handle],
        plan: Plan,
        key: ApiKey | None,
        started: float,
    ) -> None:
        self.state = state
        self.model = model
        self.handles = handles
        self.plan = plan
        self.key = key
        self.started = started
        self.finished: list[Finished | None] = [None] * len(handles)
        self.texts = ["" for _ in handles]
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in handles]
        self.first_token_seen = False
        self.first_token_s: float | None = None
        # finish reasons as answered to the client ("tool_calls" included), for the request log
        self.reported: list[str | None] = [None] * len(handles)
        self.client_gone = False
        self._closed = False
        self._pump = EventPump(handles)
        state.metrics.active.labels(model).inc(len(handles))

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finished)

    async def events(self, http: HTTPRequest) -> AsyncIterator[tuple[int, Event]]:
        """Every event until all choices finish; stops early (cancelling the rest) if the
        client disconnects."""
        try:
            checked = -DISCONNECT_POLL_S  # the first event is checked at once
            while not self.done:
                item = await self._pump.get(DISCONNECT_POLL_S)
                # asking the server costs a cancel scope (and formatting a task's repr): once
                # per poll interval, not per token, is as prompt for a client that left
                now = time.monotonic()
                if item is None or now - checked >= DISCONNECT_POLL_S:
                    checked = now
                    if await http.is_disconnected():
                        self.client_gone = True
                        return
                if item is None:
                    continue
                index, event = item
                if isinstance(event, TokenEvent):
                    if not self.first_token_seen:
                        self.first_token_seen = True
                        elapsed = time.perf_counter() - self.started
                        self.first_token_s = elapsed
                        self.state.metrics.ttft.labels(self.model).observe(elapsed)
                    self.texts[index] += event.text
                    if event.logprob is not None:
                        self.logprobs[index].append(event.logprob)
                else:
                    self._record(index, event)
                yield index, event
        finally:
            self.close()

    def _record(self, index: int, event: Finished) -> None:
        if self.finished[index] is not None:
            return
        self.finished[index] = event
        metrics = self.state.metrics
        metrics.active.labels(self.model).dec()
        prompt = event.prompt_tokens if self._counts_prompt(index) else 0
        metrics.prompt_tokens.labels(self.model).inc(prompt)
        metrics.completion_tokens.labels(self.model).inc(event.completion_tokens)
        self.state.capacity.give(1)
        if self.key is not None:
            self.state.auth.limiter.add_tokens(self.key, prompt + event.completion_tokens)

    def _counts_prompt(self, index: int) -> bool:
        return self.plan.prompt_of.index(self.plan.prompt_of[index]) == index

    def usage(self) -> dict[str, int]:
        prompt = sum(
            f.prompt_tokens
            for i, f in enumerate(self.finished)
            if f is not None and self._counts_prompt(i)
        )
        completion = sum(f.completion_tokens for f in self.finished if f is not None)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def reasons(self) -> list[str | None]:
        """Each choice's finish reason as the client got it, else the engine's own reason
        ("cancelled" for a client that left, "error")."""
        return [
            reported or (f.reason if f is not None else None)
            for reported, f in zip(self.reported, self.finished, strict=True)
        ]

    def error(self) -> str | None:
        """Why a choice did not complete, if one did not (the client being gone aside)."""
        for f in self.finished:
            if f is not None and f.reason == "error":
                return f.error or "unknown engine error"
            if f is not None and f.reason == "cancelled" and not self.client_gone:
                return "the engine cancelled it (is the server shutting down?)"
        return None

    def close(self) -> None:
        """Cancel unfinished choices; give back queue slots and the engine (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for index, handle in enumerate(self.handles):
            if self.finished[index] is None:
                handle.cancel()
                self.finished[index] = Finished("cancelled", 0, 0)
                self.state.metrics.active.labels(self.model).dec()
                self.state.metrics.cancelled.labels(self.model).inc()
                self.state.capacity.give(1)
        self.state.registry.release(self.model)


def finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


async def start(
    state: ServerState, model: str, plan: Plan, key: ApiKey | None, started: float
) -> Generation:
    """Admit, load the engine and submit every choice; raise the APIError for any refusal
    (queue full, model unloadable, prompt too long, invalid request)."""
    n = len(plan.requests)
    state.capacity.take(n)
    limiter = engine_limiter(state)
    state.arrivals.enter(model)
    try:
        engine = await anyio.to_thread.run_sync(acquire_engine, state, model, limiter=limiter)
    except BaseException:
        state.arrivals.leave(model)
        state.capacity.give(n)
        raise
    hook = getattr(engine, "set_arrivals", None)
    if hook is not None:
        hook(functools.partial(state.arrivals.count, model))
    try:
        handles = await anyio.to_thread.run_sync(
            _submit_all, state, engine, plan, model, limiter=limiter
        )
    except BaseException:
        state.capacity.give(n)
        state.registry.release(model)
        raise
    return Generation(state, model, handles, plan, key, started)


def engine_limiter(state: ServerState) -> anyio.CapacityLimiter:
    """The worker threads of calls that wait on an engine. Requests waiting for a model to load
    (an export can take minutes) get threads of their own, so they never starve the default
    pool that other requests' quick calls use."""
    limiter = state.extra.get("engine_limiter")
    if limiter is None:
        limiter = state.extra["engine_limiter"] = anyio.CapacityLimiter(state.capacity.limit)
    return limiter


def acquire_engine(state: ServerState, model: str) -> Engine:
    """The registry's engine for ``model`` (blocking; release it with the registry), or the
    APIError a client should get."""
    try:
        return state.registry.acquire(model)
    except ModelNotFound:
        raise errors.model_not_found(model) from None
    except CuveeError as exc:
        raise errors.server_error(f"model '{model}' could not be loaded: {exc}") from exc


def _submit_all(state: ServerState, engine: Engine, plan: Plan, model: str) -> list[Handle]:
    """Fit ``max_tokens`` to the context, then submit; on any refusal cancel what went in.
    The request stops counting as arriving once submitted (or refused), from this thread, so
    an engine gathering a burst knows at once."""
    handles: list[Handle] = []
    lengths: dict[int, int] = {}
    try:
        for request, prompt in zip(plan.requests, plan.prompt_of, strict=True):
            if prompt not in lengths:
                lengths[prompt] = len(engine.prompt_tokens(request))
            request.params.max_tokens = _fit(engine, lengths[prompt], plan, state)
            handles.append(engine.submit(request))
    except BaseException as exc:
        for handle in handles:
            handle.cancel()
        raise _as_api_error(exc, plan) from exc
    finally:
        state.arrivals.leave(model)
    return handles


def _fit(engine: Engine, n_prompt: int, plan: Plan, state: ServerState) -> int:
    limit = engine.context_length
    if n_prompt >= limit:
        raise errors.context_length_exceeded(
            f"This model's maximum context length is {limit} tokens. However, your "
            f"{plan.param} resulted in {n_prompt} tokens. Please reduce the length of the "
            f"{plan.param}.",
            plan.param,
        )
    if plan.max_tokens is not None:
        if n_prompt + plan.max_tokens > limit:
            raise errors.context_length_exceeded(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {n_prompt + plan.max_tokens} tokens ({n_prompt} in the "
                f"{plan.param}, {plan.max_tokens} in the completion). Please reduce the "
                f"length of the {plan.param} or completion.",
                plan.param,
            )
        return plan.max_tokens
    default = plan.default_max_tokens or state.default_max_tokens
    return max(1, min(default, limit - n_prompt))


def _as_api_error(exc: BaseException, plan: Plan) -> BaseException:
    if isinstance(exc, errors.APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return errors.context_length_exceeded(str(exc.message), plan.param)
    if isinstance(exc, ConfigError):
        param = plan.param
        if "json_schema" in exc.message or "grammar" in exc.message:
            param = plan.schema_param
        return errors.invalid_param(str(exc.message), param)
    if isinstance(exc, EngineError):
        return errors.server_error(f"the engine refused the request: {exc.message}")
    return exc


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class EventStreamResponse(StreamingResponse):
    """A server-sent event stream that calls ``on_close`` however the response ends (sent,
    failed, or the client gone): a generation or an answer nobody reads stops using the engine."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self._stream_until_gone(receive, send)
        finally:
            self.on_close()

    async def _stream_until_gone(self, receive: Any, send: Any) -> None:
        """Stream the body; if the client hangs up first, stop it where it waits. Starlette
        does the same with an anyio task group per response (uvicorn speaks ASGI 2.3, so a
        send to a gone client does not fail); one plain watcher task costs a tenth of that."""
        streaming = asyncio.current_task()
        assert streaming is not None
        state = {"done": False, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["done"]:
                state["gone"] = True
                streaming.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            streaming.uncancel()  # the client left: a normal end for this response
        finally:
            state["done"] = True
            watcher.cancel()


def stream(
    generation: Generation, http: HTTPRequest, formatter: Formatter, include_usage: bool
) -> Response:
    """The SSE response: opening chunks, a chunk per piece of text, a finish chunk per
    choice, the usage chunk when asked, then ``data: [DONE]``."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in formatter.opening():
            yield sse(chunk)
        async for index, event in generation.events(http):
            if isinstance(event, TokenEvent):
                if event.text or event.logprob is not None:
                    for chunk in formatter.delta(index, event.text, event.logprob):
                        yield sse(chunk)
            elif event.reason in ("error", "cancelled"):
                failure = generation.error() or event.reason
                yield sse(errors.server_error(f"generation failed: {failure}").body())
                return
            else:
                for chunk in formatter.finish(index, finish_reason(event.reason)):
                    for choice in chunk["choices"]:
                        if choice.get("finish_reason"):
                            generation.reported[index] = choice["finish_reason"]
                    yield sse(chunk)
        if generation.client_gone:
            return
        if include_usage:
            yield sse(formatter.usage_chunk(generation.usage()))
        yield sse("[DONE]")

    return EventStreamResponse(body(), generation.close)


async def collect(generation: Generation, http: HTTPRequest, formatter: Formatter) -> Response:
    """The whole response as one JSON object."""
    async for _ in generation.events(http):
        pass
    if generation.client_gone:  # nobody reads this, but answer something well-formed
        return JSONResponse(errors.error_body("client disconnected"), status_code=499)
    failure = generation.error()
    if failure is not None:
        raise errors.server_error(f"generation failed: {failure}")
    reasons = [finish_reason(f.reason) for f in generation.finished if f is not None]
    body = formatter.response(generation.texts, reasons, generation.usage(), generation.logprobs)
    generation.reported = [choice["finish_reason"] for choice in body["choices"]]
    return JSONResponse(body)
