"""Where answers come from: a model in the store (run on the local llama.cpp engine, every
prompt submitted at once so continuous batching shares each pass over the weights) or any
OpenAI-compatible endpoint (another local server, or the commercial model being replaced). One
registry keyed by the MODEL argument's scheme, so another source is one entry."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cuvee.config import SECRETS, secret
from cuvee.eval.suites import EvalError, Item
from cuvee.progress import Reporter

if TYPE_CHECKING:
    from cuvee.config import Settings
    from cuvee.engine.base import Completion, Request

# Sequences the local engine decodes together: enough to keep a small CPU's cores busy with one
# pass over the weights per step, small enough that the KV cache stays modest.
ENGINE_BATCH = 8
# Requests in flight to an endpoint: a local server batches them; an API rate-limits beyond.
ENDPOINT_CONCURRENCY = 4
ENDPOINT_TIMEOUT_S = 300.0
ENDPOINT_RETRIES = 3  # on 429, 5xx and dropped connections, with 1, 2, 4 s pauses
# Environment variables read, first set wins, for an endpoint's bearer key (config.SECRETS).
API_KEY_ENV = SECRETS["eval_api_key"][0]


@dataclass(frozen=True)
class GenerationSettings:
    """Pinned so that results are comparable and cacheable: greedy decoding (temperature 0), a
    fixed seed for backends that sample anyway, and the suite's token limit."""

    max_tokens: int
    temperature: float = 0.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(Protocol):
    """A source of answers. ``prepare`` resolves the model (an unknown one raises here, before
    anything is generated) and returns its identity: what a cache key needs and what results
    record (content hashes, template, endpoint)."""

    label: str

    def prepare(self, reporter: Reporter) -> dict[str, Any]: ...

    def generate(
        self, items: list[Item], settings: GenerationSettings, advance: Callable[[int], None]
    ) -> list[str]: ...

    def close(self) -> None: ...


def model_sha256(manifest) -> str:
    """One hash for a stored model: sha256 over its manifest's (path, sha256) file list, so it
    changes exactly when a file of the model does, without re-reading the weights."""
    lines = sorted(f"{f.path}\t{f.sha256}" for f in manifest.files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class StoreBackend:
    """A stored model (or a .gguf path) on the llama.cpp engine, as `cuvee run` picks it: the
    newest matching GGUF export, the GGUF it was pulled as, or a q8_0 export made once."""

    def __init__(self, settings: Settings, spec: str) -> None:
        self.settings = settings
        self.label = spec
        self.target = None
        self._engine = None

    def prepare(self, reporter: Reporter) -> dict[str, Any]:
        from cuvee.resolve import target
        from cuvee.store import ModelStore, sha256_file

        if self.label.endswith(".gguf"):
            self.target = target(self.settings, self.label, "llamacpp", reporter)
            digest = sha256_file(self.target.path)
            return {"backend": "gguf", "sha256": digest, "file_sha256": digest, "template": None}
        store = ModelStore(self.settings.models_dir)
        stored = store.get(self.label)  # ModelNotFound names the model and near matches
        self.target = target(self.settings, self.label, "llamacpp", reporter)
        stored = store.get(self.label)  # re-read: resolving may have recorded an export
        manifest = stored.manifest
        return {
            "backend": "store",
            "sha256": model_sha256(manifest),
            "file": self.target.path.name,
            "file_sha256": _file_sha(stored, self.target.path),
            "engine": "llamacpp",
            "template": manifest.chat_template,
            "kind": manifest.kind,
            "parent": manifest.parent,
            "run_dir": manifest.source.path if manifest.source.type == "training" else None,
        }

    def _open(self):
        if self._engine is None:
            from cuvee.engine import open_engine

            self._engine = open_engine(
                "llamacpp",
                self.target.path,
                chat_template=self.target.chat_template,
                n_seq_max=ENGINE_BATCH,
            )
        return self._engine

    def generate(
        self, items: list[Item], settings: GenerationSettings, advance: Callable[[int], None]
    ) -> list[str]:
        from cuvee.engine.base import Request, SamplingParams

        requests = [
            (
                item.where,
                Request(
                    messages=item.messages(),
                    params=SamplingParams(
                        temperature=settings.temperature,
                        seed=settings.seed,
                        max_tokens=settings.max_tokens,
                    ),
                ),
            )
            for item in items
        ]
        return [done.text for done in self.complete(requests, advance)]

    def complete(
        self, requests: list[tuple[str, Request]], advance: Callable[[int], None]
    ) -> list[Completion]:
        """Every request's whole result (text, tokens, finish reason), in order; ``where`` of
        each request (``file:line``) names it in errors. All are submitted at once, so the
        engine batches them; a failure cancels the rest."""
        from cuvee.engine.base import EngineError

        engine = self._open()
        handles = []
        try:
            for where, request in requests:
                try:
                    handles.append(engine.submit(request))
                except EngineError as exc:
                    raise EvalError(f"{where}: {self.label}: {exc.message}", exc.hint) from exc
            results = []
            for (where, _), handle in zip(requests, handles, strict=True):
                done = handle.collect()
                if done.finished.reason == "error":
                    raise EvalError(f"{where}: {self.label} failed: {done.finished.error}")
                results.append(done)
                advance(1)
            return results
        except BaseException:
            for handle in handles:
                handle.cancel()
            raise

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def _file_sha(stored, path: Path) -> str:
    """The recorded sha256 of the file the engine runs (the model's own GGUF or an export),
    read from the manifest so a cached re-run never re-hashes hundreds of MB."""
    from cuvee.store import sha256_file

    resolved = str(path.resolve())
    for entry in stored.manifest.files:
        if (stored.path / entry.path).resolve() == path.resolve():
            return entry.sha256
    for entry in stored.manifest.exports:
        if entry.get("path") == resolved and entry.get("sha256"):
            return entry["sha256"]
    return sha256_file(path)


class OpenAIBackend:
    """``openai:BASE_URL#MODEL_ID``: chat completions at ``BASE_URL/chat/completions`` (the
    base URL usually ends in ``/v1``), several requests in flight. A key, if the endpoint needs
    one, comes from the first of ``API_KEY_ENV`` that is set."""

    def __init__(self, settings: Settings, spec: str) -> None:
        self.label = spec
        rest = spec.split(":", 1)[1]
        base_url, sep, model = rest.partition("#")
        if not sep or not model or not base_url.startswith(("http://", "https://")):
            raise EvalError(
                f"cannot read endpoint {spec!r}",
                hint="write openai:BASE_URL#MODEL_ID, e.g. openai:http://127.0.0.1:8000/v1#demo",
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._client = None

    def prepare(self, reporter: Reporter) -> dict[str, Any]:
        # An endpoint's weights cannot be hashed: it is known by its URL and model id.
        return {"backend": "openai", "base_url": self.base_url, "model": self.model}

    def _headers(self) -> dict[str, str]:
        key = secret("eval_api_key")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _complete(self, item: Item, settings: GenerationSettings) -> str:
        import httpx

        body = {
            "model": self.model,
            "messages": item.messages(),
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "seed": settings.seed,
        }
        url = f"{self.base_url}/chat/completions"
        for attempt in range(ENDPOINT_RETRIES + 1):
            last = attempt == ENDPOINT_RETRIES
            try:
                response = self._client.post(url, json=body, headers=self._headers())
            except httpx.HTTPError as exc:
                if last:
                    raise EvalError(
                        f"{self.label}: cannot reach {url}: {exc}",
                        hint="is the server running and the base URL right (often ends in /v1)?",
                    ) from exc
            else:
                if response.status_code == 200:
                    return _reply_text(response, self.label, item)
                if last or response.status_code not in (429, 500, 502, 503, 504):
                    raise EvalError(
                        f"{self.label}: {url} answered {response.status_code} for {item.where}: "
                        f"{response.text[:300]}",
                        hint="check the model id after '#', and the key "
                        f"({' or '.join(API_KEY_ENV)})",
                    )
            time.sleep(2**attempt)
        raise AssertionError("unreachable")

    def generate(
        self, items: list[Item], settings: GenerationSettings, advance: Callable[[int], None]
    ) -> list[str]:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=ENDPOINT_TIMEOUT_S)

        def one(item: Item) -> str:
            text = self._complete(item, settings)
            advance(1)
            return text

        with ThreadPoolExecutor(ENDPOINT_CONCURRENCY) as pool:
            return list(pool.map(one, items))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _reply_text(response, label: str, item: Item) -> str:
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise EvalError(
            f"{label}: not an OpenAI chat completion for {item.where}: {response.text[:200]}"
        ) from exc
    return content or ""


# MODEL scheme -> backend class; a MODEL with no known scheme is a store name or .gguf path
# (store names cannot contain ':').
BACKENDS: dict[str, type] = {"openai": OpenAIBackend}


def open_backend(settings: Settings, spec: str) -> Backend:
    scheme, sep, _ = spec.partition(":")
    cls = BACKENDS.get(scheme) if sep else None
    if sep and cls is None and not spec.endswith(".gguf"):
        raise EvalError(
            f"unknown model {spec!r}",
            hint=f"a store name, a .gguf file, or {', '.join(f'{s}:...' for s in BACKENDS)}",
        )
    return (cls or StoreBackend)(settings, spec)
