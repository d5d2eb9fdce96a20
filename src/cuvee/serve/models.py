"""Which models the server can serve, and the engines loaded for them.

Every model in the store is servable under its store name: an engine is opened on first use
(``resolve.open_model`` picks or makes its GGUF and opens the engine), and beyond ``max_loaded``
engines the least recently used idle one is closed, so a small machine can offer many models
while keeping only a few in memory. An engine in use by a request is never closed under it: if
every loaded engine is busy the limit is exceeded for a while and enforced when one is released.

``BASE:ADAPTER`` ids serve a LoRA fine-tune stored as an adapter (no merged weights) over the
engine of its base: the adapter's GGUF LoRA file (exported once, on first use) is loaded into
the base's engine, so any number of adapters share one copy of the base weights and one KV
cache, and requests for the base and for each adapter batch on the same engine (llama.cpp runs
one adapter per decode step, round-robin; see ``LlamaCppEngine``). The fine-tune stays
servable under its own name too, as a merged model with an engine of its own.

All methods block (loading can export a GGUF and take minutes): the app calls them from worker
threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cuvee import resolve
from cuvee.engine import DEFAULT_ENGINE
from cuvee.engine.base import Engine, Handle, Request
from cuvee.errors import ConfigError, CuveeError, StoreError

if TYPE_CHECKING:
    from cuvee.config import Settings

Opener = Callable[[str], Engine]
# (base, adapter) pairs that can be served as BASE:ADAPTER
AdapterLister = Callable[[], Iterable[tuple[str, str]]]
# adapter name -> its GGUF LoRA file (exported on first use)
AdapterFile = Callable[[str], str | Path]

SEPARATOR = ":"


def split_id(model_id: str) -> tuple[str, str] | None:
    """``BASE:ADAPTER`` -> (base, adapter); None for a plain id."""
    base, sep, adapter = model_id.partition(SEPARATOR)
    if not sep or not base or not adapter or SEPARATOR in adapter:
        return None
    return base, adapter


class AdapterEngine:
    """A base engine seen through one of its adapters: every request runs with ``lora`` set.
    Closing it closes nothing (the registry owns the base engine)."""

    def __init__(self, engine: Engine, adapter: str) -> None:
        self.engine = engine
        self.adapter = adapter
        self.name = engine.name

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def submit(self, request: Request) -> Handle:
        request.lora = self.adapter
        return self.engine.submit(request)

    def prompt_tokens(self, request: Request) -> list[int]:
        return self.engine.prompt_tokens(request)

    def render_messages(self, messages: list[dict[str, Any]]) -> str:
        return self.engine.render_messages(messages)

    def close(self) -> None:
        pass


@dataclass
class _Slot:
    engine: Engine
    users: int = 0
    last_used: float = 0.0


class ModelRegistry:
    """Servable model ids (store names) and their engines, loaded lazily, unloaded LRU.

    ``opener(name) -> Engine`` and ``names() -> ids`` can be injected (tests serve a fake
    engine this way); by default they read the store under ``settings``."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: str = DEFAULT_ENGINE,
        max_loaded: int = 2,
        preload: Iterable[str] = (),
        engine_options: dict[str, Any] | None = None,
        opener: Opener | None = None,
        names: Callable[[], Iterable[str]] | None = None,
        adapters: AdapterLister | None = None,
        adapter_file: AdapterFile | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_loaded < 1:
            raise CuveeError("--max-loaded must be at least 1")
        self.settings = settings
        self.engine = engine
        self.max_loaded = max_loaded
        self.preload = list(dict.fromkeys(preload))
        self._opener = opener or store_opener(settings, engine, engine_options or {})
        self._names = names
        # injected names without injected adapters: a test registry that has none
        self._adapters = adapters or (
            (lambda: ()) if names is not None else (lambda: resolve.adapters(settings))
        )
        self._adapter_file = adapter_file or (lambda name: resolve.adapter_file(settings, name))
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._closed = False

    # -- what can be served --------------------------------------------------------------

    def ids(self) -> list[str]:
        """Every servable id: the preloaded ones first, then the store's, sorted, then each
        base's adapters as BASE:ADAPTER."""
        stored = sorted(self._names() if self._names is not None else self._store().names())
        pairs = sorted(f"{b}{SEPARATOR}{a}" for b, a in self._adapters())
        return list(dict.fromkeys([*self.preload, *stored, *pairs]))

    def exists(self, name: str) -> bool:
        if name in self.preload or name in self._slots:
            return True
        pair = split_id(name)
        if pair is not None:
            return pair in set(self._adapters())
        if self._names is not None:
            return name in set(self._names())
        try:
            return self._store().exists(name)
        except StoreError:  # not even a valid name ("a/b", "x:y" ...)
            return False

    def adapter_problem(self, name: str) -> str | None:
        """Why ``BASE:ADAPTER`` is not servable although ADAPTER is a stored model (so the
        client learns it rather than reading "does not exist"), else None."""
        pair = split_id(name)
        if pair is None or self._names is not None:
            return None
        base, adapter = pair
        try:
            stored = self._store().get(adapter)
        except CuveeError:
            return None
        problem = resolve.adapter_problem(stored)
        if problem is None and stored.manifest.parent != base:
            problem = f"'{adapter}' was trained over '{stored.manifest.parent}', not '{base}'"
        if problem is None and not self._store().exists(base):
            problem = f"its base '{base}' is not in the store"
        return problem

    def describe(self, name: str) -> dict[str, Any]:
        """The OpenAI model object for ``name`` (with cuvee's own extra fields)."""
        pair = split_id(name)
        if pair is not None:
            base, adapter = pair
            slot = self._slots.get(base)
            loaded = slot is not None and adapter in getattr(slot.engine, "adapters", ())
            return {
                **self.describe(adapter),
                "id": name,
                "kind": "adapter",
                "parent": base,
                "adapter": adapter,
                "loaded": loaded,
            }
        created, owned_by, kind = 0, "cuvee", None
        lineage: dict[str, Any] = {}
        if self._names is None:
            try:
                manifest = self._store().get(name).manifest
                created = _timestamp(manifest.created_at)
                kind = manifest.kind
                owned_by = manifest.source.type
                # what a person comparing models needs beside each answer: what it was
                # tuned from, when, and whether its licence allows commercial use
                lineage = {
                    "parent": manifest.parent,
                    "created_at": manifest.created_at,
                    "licence": {
                        "id": manifest.licence.id,
                        # a fine-tune's own verdict (its data's licences included) comes first
                        "commercial_use": (manifest.model_extra or {}).get(
                            "commercial_use", manifest.licence.commercial_use
                        ),
                    },
                }
            except CuveeError:
                pass
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": owned_by,
            "kind": kind,
            "loaded": name in self._slots,
            **lineage,
        }

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._slots)

    # -- engines ---------------------------------------------------------------------------

    def _take_loaded(self, name: str) -> Engine | None:
        """A loaded engine, counted as in use (under the lock), or None."""
        slot = self._slots.get(name)
        if slot is None:
            return None
        slot.users += 1
        slot.last_used = self._clock()
        return slot.engine

    def acquire(self, name: str) -> Engine:
        """The engine for ``name``, loaded if needed; the caller must :meth:`release` it.
        For ``BASE:ADAPTER``: the base's engine, with the adapter loaded into it."""
        pair = split_id(name)
        if pair is not None:
            return self._acquire_adapter(*pair)
        with self._lock:
            self._check_open()
            engine = self._take_loaded(name)
            if engine is not None:
                return engine
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # one load per model, however many requests arrive for it at once
            with self._lock:
                self._check_open()
                engine = self._take_loaded(name)
                if engine is not None:
                    return engine
                # make room first, so two models are never in memory beyond what is needed
                evicted = self._evict_idle(room_for=1)
            _close_all(evicted)
            engine = self._opener(name)
            with self._lock:
                if self._closed:
                    engine.close()
                    self._check_open()
                self._slots[name] = _Slot(engine, users=1, last_used=self._clock())
            return engine

    def _acquire_adapter(self, base: str, adapter: str) -> Engine:
        engine = self.acquire(base)
        try:
            if adapter not in getattr(engine, "adapters", ()):
                load = getattr(engine, "load_adapter", None)
                if load is None:
                    raise ConfigError(
                        f"the {engine.name} engine cannot apply LoRA adapters per request",
                        hint=f"serve '{adapter}' by its own name (its merged weights)",
                    )
                with self._lock:
                    lock = self._loading.setdefault(f"{base}{SEPARATOR}{adapter}", threading.Lock())
                with lock:  # one export and load per adapter, however many ask at once
                    if adapter not in engine.adapters:
                        load(adapter, self._adapter_file(adapter))
        except BaseException:
            self.release(base)
            raise
        return AdapterEngine(engine, adapter)

    def release(self, name: str) -> None:
        """A request is done with ``name``'s engine; enforce ``max_loaded`` again. Engines
        over the limit are closed in a background thread: this is called from the event loop,
        and closing joins the engine's scheduler."""
        pair = split_id(name)
        if pair is not None:
            name = pair[0]  # an adapter holds its base's engine
        with self._lock:
            slot = self._slots.get(name)
            if slot is not None:
                slot.users = max(0, slot.users - 1)
                slot.last_used = self._clock()
            evicted = self._evict_idle(room_for=0)
        if evicted:
            threading.Thread(
                target=_close_all, args=(evicted,), name="cuvee-serve-unload", daemon=True
            ).start()

    def load_preloaded(self) -> None:
        """Open the engines of the ``preload`` models (at most ``max_loaded`` of them)."""
        for name in self.preload[: self.max_loaded]:
            self.acquire(name)
            self.release(name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            slots, self._slots = list(self._slots.values()), {}
        _close_all([s.engine for s in slots])

    def _evict_idle(self, room_for: int) -> list[Engine]:
        """Remove least recently used idle engines until ``room_for`` more fit (lock held)."""
        evicted = []
        idle = sorted((s.last_used, name) for name, s in self._slots.items() if s.users == 0)
        while len(self._slots) + room_for > self.max_loaded and idle:
            _, name = idle.pop(0)
            evicted.append(self._slots.pop(name).engine)
        return evicted

    def _check_open(self) -> None:
        if self._closed:
            raise CuveeError("the server is shutting down")

    def _store(self):
        from cuvee.store import ModelStore

        return ModelStore(self.settings.models_dir)


def _close_all(engines: list[Engine]) -> None:
    for engine in engines:
        engine.close()


def _timestamp(iso: str) -> int:
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def store_opener(settings: Settings, engine: str, options: dict[str, Any]) -> Opener:
    """Open a stored model as ``cuvee run`` does (``resolve.open_model``), silently."""

    def open_model(name: str) -> Engine:
        from cuvee.resolve import open_model

        return open_model(settings, name, engine, **options)[1]

    return open_model
