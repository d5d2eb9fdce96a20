"""Which models the server can serve, and the engines loaded for them.

Every model in the store is servable under its store name: an engine is opened on first use
(``choose_target`` picks or makes its GGUF, then ``open_engine``), and beyond ``max_loaded``
engines the least recently used idle one is closed, so a small machine can offer many models
while keeping only a few in memory. An engine in use by a request is never closed under it: if
every loaded engine is busy the limit is exceeded for a while and enforced when one is released.

All methods block (loading can export a GGUF and take minutes): the app calls them from worker
threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cuvee.engine.base import Engine
from cuvee.errors import CuveeError, StoreError

Opener = Callable[[str], Engine]


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
        settings: Any,
        *,
        engine: str = "llamacpp",
        max_loaded: int = 2,
        preload: Iterable[str] = (),
        engine_options: dict[str, Any] | None = None,
        opener: Opener | None = None,
        names: Callable[[], Iterable[str]] | None = None,
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
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._closed = False

    # -- what can be served --------------------------------------------------------------

    def ids(self) -> list[str]:
        """Every servable id: the preloaded ones first, then the store's, sorted."""
        stored = sorted(self._names() if self._names is not None else self._store().names())
        return list(dict.fromkeys([*self.preload, *stored]))

    def exists(self, name: str) -> bool:
        if name in self.preload or name in self._slots:
            return True
        if self._names is not None:
            return name in set(self._names())
        try:
            return self._store().exists(name)
        except StoreError:  # not even a valid name ("a/b", "x:y" ...)
            return False

    def describe(self, name: str) -> dict[str, Any]:
        """The OpenAI model object for ``name`` (with cuvee's own extra fields)."""
        created, owned_by, kind = 0, "cuvee", None
        if self._names is None:
            try:
                manifest = self._store().get(name).manifest
                created = _timestamp(manifest.created_at)
                kind = manifest.kind
                owned_by = manifest.source.type
            except CuveeError:
                pass
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": owned_by,
            "kind": kind,
            "loaded": name in self._slots,
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
        """The engine for ``name``, loaded if needed; the caller must :meth:`release` it."""
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

    def release(self, name: str) -> None:
        """A request is done with ``name``'s engine; enforce ``max_loaded`` again. Engines
        over the limit are closed in a background thread: this is called from the event loop,
        and closing joins the engine's scheduler."""
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


def store_opener(settings: Any, engine: str, options: dict[str, Any]) -> Opener:
    """Open a stored model as ``cuvee run`` does: its GGUF (exported on first use) on llama.cpp.
    A GGUF without a chat template (a pretrained base's) gets its family's from the manifest,
    so chat requests work on it too."""

    def open_model(name: str) -> Engine:
        from cuvee.engine.base import open_engine
        from cuvee.engine.select import choose_target
        from cuvee.progress import SilentReporter

        target = choose_target(settings, name, engine, SilentReporter())
        extra = dict(options)
        if target.engine != "llamacpp":
            extra.pop("n_threads", None)
        elif "chat_template" not in extra:
            template = _family_template(settings, name)
            if template is not None:
                extra["chat_template"] = template
        return open_engine(target.engine, target.path, **extra)

    return open_model


def _family_template(settings: Any, name: str) -> str | None:
    from cuvee.chat_template import get_template
    from cuvee.store import ModelStore

    try:
        family = ModelStore(settings.models_dir).get(name).manifest.chat_template
        return get_template(family).jinja
    except CuveeError:
        return None
