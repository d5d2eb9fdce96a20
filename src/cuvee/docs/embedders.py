"""Sentence-embedding backends for document search, in a registry.

A collection records the identity of the model that embedded it (``Backend.identity``); a
question must be embedded by the same model, or the similarities mean nothing. Two kinds:

- ``local``: a sentence-transformers directory run in-process (the packaged all-MiniLM-L6-v2
  by default), through :class:`cuvee.embeddings.Embedder` so the server's ``/v1/embeddings``
  and search compute the same vectors. Texts are sorted by length before batching (a batch is
  padded to its longest member, so mixing short and long texts wastes most of the work), and on
  CPUs with native bfloat16 the matrix products run in bfloat16 (autocast keeps layer norms and
  the pooling in float32): twice the fp32 speed with vectors within 1e-4 of cosine of fp32
  (measured by ``bench/rag_bench.py``), so the identity does not depend on it.
- ``openai``: ``openai:BASE_URL#MODEL`` for any OpenAI-compatible ``/embeddings`` endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cuvee.config import secret
from cuvee.errors import ConfigError, DocsError
from cuvee.store import sha256_file

Progress = Callable[[int], None]


class Backend(Protocol):
    identity: str
    dim: int

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in order."""


def _bf16_native() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _weights_digest(directory: Path) -> str:
    """A short content hash of the weights: two directories with the same name and different
    weights are different models."""
    for name in ("model.safetensors", "pytorch_model.bin", "model.onnx"):
        path = directory / name
        if path.is_file():
            return sha256_file(path)[:12]
    return "noweights"


@dataclass
class LocalBackend:
    directory: Path
    precision: str = "auto"
    batch_size: int = 16
    name: str | None = None
    embedder: Any = None  # an Embedder of this directory already loaded (the server's)

    def __post_init__(self) -> None:
        from cuvee.embeddings import Embedder, embedding_model_id

        self._embedder = self.embedder or Embedder(self.directory, batch_size=self.batch_size)
        self.dim = self._embedder.dim
        if self.precision == "auto":
            self.precision = "bf16" if _bf16_native() else "fp32"
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(
                f"embedding precision must be bf16, fp32 or auto, not {self.precision}"
            )
        name = self.name or embedding_model_id(self.directory)
        self.identity = f"{name}@{_weights_digest(self.directory)}"
        self.max_length = self._embedder.max_length

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        import contextlib

        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        cast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with cast:
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                vectors, _ = self._embedder.embed([texts[i] for i in index])
                out[index] = vectors
                if progress:
                    progress(len(index))
        return out


@dataclass
class OpenAIBackend:
    """``openai:http://host:port/v1#model-id``; the key comes from CUVEE_EMBEDDINGS_API_KEY or
    OPENAI_API_KEY when the endpoint needs one."""

    base_url: str
    model: str
    batch_size: int = 64
    timeout: float = 120.0

    def __post_init__(self) -> None:
        self.identity = f"openai:{self.base_url}#{self.model}"
        self.dim = int(self.embed(["dimension probe"]).shape[1])

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        import httpx

        key = secret("embeddings_api_key")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        rows: list[list[float]] = []
        url = self.base_url.rstrip("/") + "/embeddings"
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            try:
                response = httpx.post(
                    url,
                    json={"model": self.model, "input": batch, "encoding_format": "float"},
                    headers=headers,
                    timeout=self.timeout,
                )
            except httpx.HTTPError as exc:
                raise DocsError(f"embedding endpoint {url} unreachable: {exc}") from exc
            if response.status_code != 200:
                raise DocsError(
                    f"embedding endpoint {url} answered {response.status_code}: "
                    f"{response.text[:300]}"
                )
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            rows.extend(item["embedding"] for item in data)
            if progress:
                progress(len(batch))
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.maximum(norms, 1e-12)


def _open_local(spec: str, embedder: Any = None) -> Backend:
    from cuvee.embeddings import DEFAULT_EMBEDDING_MODEL_ID, default_embedding_model_dir

    if spec:
        return LocalBackend(Path(spec).expanduser(), embedder=embedder)
    return LocalBackend(
        default_embedding_model_dir(), name=DEFAULT_EMBEDDING_MODEL_ID, embedder=embedder
    )


def _open_openai(spec: str, embedder: Any = None) -> Backend:
    rest = spec.removeprefix("openai:")
    base_url, sep, model = rest.partition("#")
    if not sep or not base_url or not model:
        raise ConfigError(f"embedding model {spec!r}: expected openai:BASE_URL#MODEL_ID")
    return OpenAIBackend(base_url, model)


# prefix -> factory; the empty prefix is a local directory (or the packaged default)
EMBEDDERS: dict[str, Callable[..., Backend]] = {"openai:": _open_openai, "": _open_local}


def open_backend(spec: str | None, embedder: Any = None) -> Backend:
    """The backend for a setting value (``None``: the packaged all-MiniLM-L6-v2). Loading one
    takes a second or more: callers that embed repeatedly (the server) keep it, and a server
    that already loaded the same model for /v1/embeddings passes that ``embedder`` (a local
    backend uses it instead of loading a second copy)."""
    key = str(spec or "")
    prefix = next(p for p in EMBEDDERS if key.startswith(p))
    return EMBEDDERS[prefix](key, embedder=embedder)
