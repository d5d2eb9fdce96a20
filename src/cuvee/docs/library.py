"""The collections of a ``CUVEE_HOME`` kept open for a long-running reader (the server), and the
one embedding backend they are searched with.

A collection is opened once and kept: it caches its vectors and sees later additions through
its version counter. One removed or re-created under the same name (a new file, a new inode) is
reopened; one removed is dropped, its connection closed once nobody holds it. The backend is
loaded once, on first use, however many readers ask at once; a failed load is not remembered,
so installing what was missing fixes a running reader. Thread-safe: readers run in worker
threads. Its errors are the docs package's; the server turns them into HTTP answers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

from cuvee.docs import index
from cuvee.docs.embedders import Backend
from cuvee.errors import DocsError


class CollectionMissing(DocsError):
    """No collection of that name (or not even a valid name)."""


class Library:
    def __init__(self, home: Path, backend_factory: Callable[[], Backend]) -> None:
        self.home = Path(home)
        self._backend_factory = backend_factory
        self._backend: Backend | None = None
        self._backend_lock = threading.Lock()
        self._collections: dict[str, tuple[int, index.Collection]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return index.list_names(self.home)

    def is_open(self, name: str) -> bool:
        return name in self._collections

    def open(self, name: str) -> index.Collection:
        """The collection ``name``, opened once and reopened when its file was replaced (blocks).
        CollectionMissing if there is none; DocsError if its file cannot be read."""
        try:
            path = index.collection_path(self.home, name)
            inode = path.stat().st_ino
        except (DocsError, OSError):  # not even a valid name, or no such file
            with self._lock:
                self._collections.pop(name, None)
            raise CollectionMissing(f"no collection '{name}'") from None
        with self._lock:
            cached = self._collections.get(name)
            if cached is not None and cached[0] == inode:
                return cached[1]
            try:
                collection = index.open_collection(self.home, name)
            except DocsError:
                if not path.is_file():
                    raise CollectionMissing(f"no collection '{name}'") from None
                raise
            self._collections[name] = (inode, collection)
            return collection

    def backend(self) -> Backend:
        """The embedding backend, loaded once (blocks); its load errors pass through."""
        if self._backend is None:
            with self._backend_lock:
                if self._backend is None:
                    self._backend = self._backend_factory()
        return self._backend

    def checked_backend(self, collection: index.Collection) -> Backend:
        """The backend, if it is the one ``collection`` was indexed with (else DocsError):
        searching with another would compare vectors of two models."""
        backend = self.backend()
        collection.check_embedder(backend.identity, backend.dim)
        return backend

    def close(self) -> None:
        with self._lock:
            collections, self._collections = self._collections, {}
        for _, collection in collections.values():
            with contextlib.suppress(Exception):
                collection.close()
