"""OpenAI's ``POST /v1/embeddings`` over cuvee's :class:`~cuvee.embeddings.Embedder`.

One embedding model is served, under its own id (``all-minilm-l6-v2`` for the packaged one),
next to the chat models of the registry: it is small and not an engine, so it does not take a
registry slot and is never unloaded. It is loaded on first use, in a worker thread, so a
server that never embeds never pays for torch and the model, and the event loop keeps serving
chat requests while it loads.

``encoding_format`` "float" gives lists of numbers; "base64" gives the little-endian float32
bytes, base64-encoded: the official SDK asks for base64 by default and decodes it. Inputs given
as token ids are refused by name (the ids of another tokenizer would mean nothing here)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import numpy as np

from cuvee.serve import errors
from cuvee.serve.schemas import MAX_EMBEDDING_INPUTS, EmbeddingRequest

if TYPE_CHECKING:
    from cuvee.config import Settings


class EmbedderLike(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, int]: ...


EmbedderFactory = Callable[[], EmbedderLike]


class EmbeddingService:
    """The served embedding model: its id, and the embedder made by ``factory`` on first use.

    A failed load is not remembered: the next request tries again, so installing the missing
    package fixes a running server without a restart."""

    def __init__(self, model_id: str, factory: EmbedderFactory) -> None:
        self.model_id = model_id
        self._factory = factory
        self._embedder: EmbedderLike | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, factory: EmbedderFactory | None = None
    ) -> EmbeddingService:
        from cuvee.embeddings import embedding_model_id

        setting = getattr(settings, "embedding_model", None)
        return cls(embedding_model_id(setting), factory or _default_factory(setting))

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def describe(self) -> dict[str, Any]:
        """The OpenAI model object, with the same extra fields as the registry's models."""
        return {
            "id": self.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "cuvee",
            "kind": "embedding",
            "loaded": self.loaded,
        }

    def get(self) -> EmbedderLike:
        """The embedder, loaded once however many requests arrive together (blocks)."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = self._factory()
        return self._embedder

    async def load(self) -> EmbedderLike:
        """The embedder, loaded in a worker thread; a failure is a 500 that says why (the
        install hint when the packaged model is missing)."""
        try:
            return await anyio.to_thread.run_sync(self.get)
        except Exception as exc:
            raise errors.server_error(
                f"the embedding model '{self.model_id}' could not be loaded: {exc}"
            ) from exc


async def run_embedder(embedder: EmbedderLike, texts: list[str]) -> tuple[np.ndarray, int]:
    """Vectors and token count, computed in a worker thread (the embedder serialises calls)."""
    try:
        return await anyio.to_thread.run_sync(embedder.embed, texts)
    except Exception as exc:
        raise errors.server_error(f"embedding failed: {exc}") from exc


def _default_factory(setting: str | None) -> EmbedderFactory:
    def load() -> EmbedderLike:
        from cuvee.embeddings import Embedder, default_embedding_model_dir

        return Embedder(setting or default_embedding_model_dir())

    return load


def inputs_of(body: EmbeddingRequest) -> list[str]:
    """The texts to embed; token ids, empty lists and empty strings are 400s naming ``input``
    (OpenAI refuses empty strings too: they have no tokens to pool)."""
    raw = body.input
    texts = [raw] if isinstance(raw, str) else raw
    if not texts:
        raise errors.invalid_param("'input' is an empty list: send at least one string.", "input")
    if not all(isinstance(t, str) for t in texts):
        raise errors.unsupported("input", "inputs as token ids; send the text instead")
    strings = [t for t in texts if isinstance(t, str)]
    if len(strings) > MAX_EMBEDDING_INPUTS:
        raise errors.invalid_param(
            f"'input' has {len(strings)} items; at most {MAX_EMBEDDING_INPUTS} per request.",
            "input",
        )
    for i, text in enumerate(strings):
        if not text:
            where = "'input'" if isinstance(raw, str) else f"'input[{i}]'"
            raise errors.invalid_param(f"{where} is an empty string.", "input")
    return strings


def check_dimensions(body: EmbeddingRequest, dim: int) -> None:
    if body.dimensions is not None and body.dimensions != dim:
        raise errors.invalid_param(
            f"'dimensions' is {body.dimensions}, but this model's vectors have {dim} dimensions "
            f"and cannot be shortened: omit 'dimensions' or send {dim}.",
            "dimensions",
        )


def response(model: str, vectors: np.ndarray, tokens: int, encoding: str) -> dict[str, Any]:
    data = []
    for i, vector in enumerate(vectors):
        if encoding == "base64":
            value: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            value = vector.astype(np.float32).tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
