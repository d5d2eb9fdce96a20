"""Everything a running server holds, in one object passed to the routes explicitly (no module
globals), so tests can build as many independent apps as they like."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cuvee.serve.errors import overloaded
from cuvee.serve.keys import Authenticator
from cuvee.serve.metrics import Metrics
from cuvee.serve.models import ModelRegistry
from cuvee.serve.openai_embeddings import EmbeddingService

if TYPE_CHECKING:
    from cuvee.config import Settings


class Capacity:
    """Sequences admitted across all models. Beyond ``limit`` a request is answered 503 at once
    rather than queued without bound: a client (or its load balancer) can retry elsewhere."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the queue limit must be at least 1")
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise overloaded(self.limit)
        self.used += n

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


class Arrivals:
    """Requests between their arrival and their submission to an engine, per model. An engine
    that wakes for the first request of a burst waits for the others counted here and reads
    all their prompts in one step (``set_arrivals`` of the llama.cpp engine), instead of
    starting on the first alone while the rest are still being parsed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def enter(self, model: str) -> None:
        with self._lock:
            self._counts[model] = self._counts.get(model, 0) + 1

    def leave(self, model: str) -> None:
        with self._lock:
            left = self._counts.get(model, 0) - 1
            if left > 0:
                self._counts[model] = left
            else:
                self._counts.pop(model, None)

    def count(self, model: str) -> int:
        return self._counts.get(model, 0)


@dataclass
class ServerState:
    settings: Settings
    registry: ModelRegistry
    auth: Authenticator
    metrics: Metrics
    capacity: Capacity
    embeddings: EmbeddingService
    # document collections and their embedding backend (rag:NAME, /v1/retrieve)
    docs: Any = None
    # max_tokens when a chat request gives none (clamped to what the context leaves). Bounded
    # so one request does not reserve a whole unified KV cache and stall the batch.
    default_max_tokens: int = 512
    # preloading: None while it runs, "" when done, else the error that stopped it
    preload_error: str | None = ""
    # set on a shutdown signal: new work gets 503, open streams finish (see serve.drain)
    draining: bool = False
    arrivals: Arrivals = field(default_factory=Arrivals)
    extra: dict[str, Any] = field(default_factory=dict)
