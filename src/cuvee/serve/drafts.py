"""The drafts of document answers, written by the server's own engines: the same engine, KV
cache and batch as the model's ordinary requests (``serve.rag`` verifies what they write)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from cuvee.docs.generate import MAX_ANSWER_TOKENS
from cuvee.engine.base import Finished, Request, SamplingParams, TokenEvent
from cuvee.errors import CuveeError
from cuvee.serve.generation import acquire_engine


class Answerer(Protocol):
    """What :func:`cuvee.docs.answer.ask` calls: messages -> text. The server's own also has
    ``fits`` / ``context_length`` (so ``ask`` gives a small model fewer passages), ``usage``,
    ``cancel`` and ``close``; a test double may have none of them."""

    def __call__(self, messages: list[dict]) -> str: ...


# (state, answering model, sampling parameters) -> answerer; called in a worker thread
AnswererFactory = Callable[[Any, str, SamplingParams], Answerer]


class Cancelled(Exception):
    """The client left: the draft was cancelled and nobody waits for the answer."""


class EngineAnswerer:
    """A draft answer from the registry's engine for ``model``: the same engine, KV cache and
    batch as the model's ordinary requests. Opened in a worker thread (loading may take
    minutes), closed when the answer is done (the registry may then unload it)."""

    def __init__(self, state: Any, model: str, params: SamplingParams) -> None:
        self.state = state
        self.model = model
        self.params = params
        self.engine = acquire_engine(state, model)
        if params.max_tokens <= 0:  # none asked: leave most of the context to the passages
            params.max_tokens = min(MAX_ANSWER_TOKENS, max(16, self.engine.context_length // 4))
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.reason = "stop"
        self._handle = None
        self._cancelled = threading.Event()
        self._closed = False

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def fits(self, messages: list[dict]) -> bool:
        used = len(self.engine.prompt_tokens(Request(messages=messages, params=self.params)))
        return used + self.params.max_tokens <= self.engine.context_length

    def __call__(self, messages: list[dict]) -> str:
        if self._cancelled.is_set():
            raise Cancelled
        self._handle = self.engine.submit(Request(messages=messages, params=self.params))
        if self._cancelled.is_set():
            self._handle.cancel()
        parts: list[str] = []
        for event in self._handle:
            if isinstance(event, TokenEvent):
                parts.append(event.text)
            elif isinstance(event, Finished):
                self.usage["prompt_tokens"] += event.prompt_tokens
                self.usage["completion_tokens"] += event.completion_tokens
                self.reason = event.reason
                if event.reason == "cancelled":
                    raise Cancelled
                if event.reason == "error":
                    raise CuveeError(f"generation failed: {event.error}")
        return "".join(parts)

    def cancel(self) -> None:
        self._cancelled.set()
        if self._handle is not None:
            self._handle.cancel()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.state.registry.release(self.model)
