"""A collection's index: one SQLite file under ``$CUVEE_HOME/docs/``.

Tables: ``meta`` (embedding model identity and dimension, chunking settings, a version counter
bumped on every change), ``documents`` (path, title, content sha256, extracted text),
``chunks`` (document, offsets, section, text, float32 vector) and ``chunks_fts`` (FTS5 over
the normalised terms of title, section and text, for BM25). Every change happens in one
transaction, so an error half-way (an unreadable file, an interrupted embedding) leaves the
index as it was."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cuvee.docs import chunking
from cuvee.docs.textnorm import search_text
from cuvee.errors import DocsError

SCHEMA_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# How long a write waits for another process writing the same collection (a `docs add` of many
# files commits tens of thousands of rows) before it gives up with a "busy" error.
WRITE_WAIT_S = 60.0

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    added REAL NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    section TEXT NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE chunks_fts USING fts5(terms, tokenize='unicode61 remove_diacritics 2');
"""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise DocsError(
            f"invalid collection name {name!r}: use lower-case letters, digits, '.', '_' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return name


def docs_dir(home: Path) -> Path:
    return home / "docs"


def collection_path(home: Path, name: str) -> Path:
    return docs_dir(home) / f"{check_name(name)}.sqlite"


def list_names(home: Path) -> list[str]:
    directory = docs_dir(home)
    return sorted(p.stem for p in directory.glob("*.sqlite")) if directory.is_dir() else []


@dataclass(frozen=True)
class Document:
    id: int
    path: str
    title: str
    sha256: str
    size: int
    added: float
    chunks: int


@dataclass(frozen=True)
class NewDocument:
    """A document read, chunked and embedded, ready to be written."""

    path: str
    title: str
    sha256: str
    size: int
    text: str
    chunks: list[chunking.Chunk]
    vectors: np.ndarray


def embedding_text(title: str, section: str, text: str) -> str:
    """What is embedded and BM25-indexed for a chunk: its title and section say what the
    chunk is about when its own sentences do not ("It takes three days.")."""
    head = " — ".join(part for part in (title, section) if part)
    return f"{head}\n{text}" if head else text


class CollectionExists(DocsError):
    """:func:`create` found the collection already there (another process may just have made
    it)."""


class Collection:
    """An open collection. Use :func:`create` or :func:`open_collection`."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA foreign_keys = ON")
        self._matrix: tuple[int, np.ndarray, np.ndarray] | None = None

    # ---- metadata ---------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta"))

    @property
    def embedding_model(self) -> str:
        return self.meta()["embedding_model"]

    @property
    def dim(self) -> int:
        return int(self.meta()["dim"])

    @property
    def chunk_size(self) -> int:
        return int(self.meta()["chunk_size"])

    @property
    def overlap(self) -> int:
        return int(self.meta()["overlap"])

    @property
    def version(self) -> int:
        return int(self.meta()["version"])

    def check_embedder(self, identity: str, dim: int) -> None:
        """Refuse to mix vectors of two models: similarities across them mean nothing."""
        recorded = self.embedding_model
        if recorded != identity or self.dim != dim:
            raise DocsError(
                f"collection {self.name!r} was embedded with {recorded} ({self.dim} dims), "
                f"but the embedding model now configured is {identity} ({dim} dims)",
                hint=f"cuvee docs reindex {self.name} (re-embeds every chunk with the "
                "configured model), or set CUVEE_EMBEDDING_MODEL back to the model it used",
            )

    # ---- reading ----------------------------------------------------------------------------

    def documents(self) -> list[Document]:
        rows = self.db.execute(
            "SELECT d.id, d.path, d.title, d.sha256, d.size, d.added, "
            "(SELECT COUNT(*) FROM chunks c WHERE c.doc_id = d.id) FROM documents d "
            "ORDER BY d.path"
        )
        return [Document(*row) for row in rows]

    def document_text(self, doc_id: int) -> str:
        row = self.db.execute("SELECT text FROM documents WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            raise DocsError(f"collection {self.name!r} has no document {doc_id}")
        return row[0]

    def find_document(self, ref: str) -> Document:
        """A document by id, exact path, or a unique path suffix (``guide.md``)."""
        docs = self.documents()
        exact = [d for d in docs if str(d.id) == ref or d.path == ref]
        if not exact:
            resolved = str(Path(ref).expanduser().resolve())
            wanted = Path(ref).parts
            exact = [
                d
                for d in docs
                if d.path == resolved or Path(d.path).parts[-len(wanted) :] == wanted
            ]
        if len(exact) == 1:
            return exact[0]
        if not exact:
            raise DocsError(f"collection {self.name!r} has no document {ref!r}")
        raise DocsError(
            f"{ref!r} matches {len(exact)} documents in {self.name!r}; give the full path",
            hint="cuvee docs show " + self.name,
        )

    def stats(self) -> dict:
        docs, chunks = self.db.execute(
            "SELECT (SELECT COUNT(*) FROM documents), (SELECT COUNT(*) FROM chunks)"
        ).fetchone()
        meta = self.meta()
        return {
            "name": self.name,
            "documents": docs,
            "chunks": chunks,
            "embedding_model": meta["embedding_model"],
            "dim": int(meta["dim"]),
            "chunk_size": int(meta["chunk_size"]),
            "overlap": int(meta["overlap"]),
            "created": float(meta["created"]),
            "updated": float(meta.get("updated", meta["created"])),
            "path": str(self.path),
        }

    def chunk_rows(self, ids: Iterable[int]) -> dict[int, dict]:
        ids = list(ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            "SELECT c.id, c.doc_id, c.start, c.end, c.section, c.text, d.path, d.title "
            f"FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})",
            ids,
        )
        keys = ("id", "doc_id", "start", "end", "section", "text", "doc", "title")
        return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, unit vectors) of the whole collection, cached until the next change."""
        version = self.version
        if self._matrix is None or self._matrix[0] != version:
            ids: list[int] = []
            blobs: list[bytes] = []
            for chunk_id, blob in self.db.execute("SELECT id, vector FROM chunks ORDER BY id"):
                ids.append(chunk_id)
                blobs.append(blob)
            dim = self.dim
            vectors = (
                np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim).copy()
                if ids
                else np.zeros((0, dim), dtype=np.float32)
            )
            self._matrix = (version, np.asarray(ids, dtype=np.int64), vectors)
        return self._matrix[1], self._matrix[2]

    def bm25(self, query: str, limit: int) -> list[tuple[int, float]]:
        """(chunk id, score) best first; the score is FTS5's BM25 negated (higher is better)."""
        rows = self.db.execute(
            "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
            "ORDER BY bm25(chunks_fts) LIMIT ?",
            (query, limit),
        )
        return [(rowid, -score) for rowid, score in rows]

    # ---- writing ----------------------------------------------------------------------------

    def apply(self, new: list[NewDocument], remove_paths: Iterable[str] = ()) -> None:
        """Add or replace ``new`` documents and remove ``remove_paths``, in one transaction.

        A replaced document keeps its id and reuses its chunks' ids, rewritten in place: a
        search that ranked chunks just before this commits still finds rows under those ids
        (showing the new text), where fresh ids would leave it with nothing to show."""
        remove = list(remove_paths)
        if not new and not remove:
            return
        now = time.time()
        with _transaction(self):
            for path in remove:
                self._delete_path(path)
            for doc in new:
                row = self.db.execute(
                    "SELECT id FROM documents WHERE path = ?", (doc.path,)
                ).fetchone()
                values = (doc.title, doc.sha256, doc.size, now, doc.text)
                if row is None:
                    cursor = self.db.execute(
                        "INSERT INTO documents (title, sha256, size, added, text, path) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (*values, doc.path),
                    )
                    doc_id, reused = cursor.lastrowid, []
                else:
                    doc_id = row[0]
                    self.db.execute(
                        "UPDATE documents SET title = ?, sha256 = ?, size = ?, added = ?, "
                        "text = ? WHERE id = ?",
                        (*values, doc_id),
                    )
                    reused = [
                        chunk_id
                        for (chunk_id,) in self.db.execute(
                            "SELECT id FROM chunks WHERE doc_id = ? ORDER BY ord", (doc_id,)
                        )
                    ]
                    for chunk_id in reused[len(doc.chunks) :]:
                        self._delete_chunk(chunk_id)
                for ord_, (piece, vector) in enumerate(zip(doc.chunks, doc.vectors, strict=True)):
                    fields = (
                        ord_,
                        piece.start,
                        piece.end,
                        piece.section,
                        piece.text,
                        np.asarray(vector, dtype=np.float32).tobytes(),
                    )
                    if ord_ < len(reused):
                        chunk_id = reused[ord_]
                        self.db.execute(
                            "UPDATE chunks SET ord = ?, start = ?, end = ?, section = ?, "
                            "text = ?, vector = ? WHERE id = ?",
                            (*fields, chunk_id),
                        )
                        self.db.execute("DELETE FROM chunks_fts WHERE rowid = ?", (chunk_id,))
                    else:
                        chunk_id = self.db.execute(
                            "INSERT INTO chunks (ord, start, end, section, text, vector, doc_id) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (*fields, doc_id),
                        ).lastrowid
                    self.db.execute(
                        "INSERT INTO chunks_fts (rowid, terms) VALUES (?, ?)",
                        (
                            chunk_id,
                            search_text(embedding_text(doc.title, piece.section, piece.text)),
                        ),
                    )
            self._touch(now)

    def replace_vectors(self, identity: str, dim: int, vectors: dict[int, np.ndarray]) -> None:
        """Re-embedding: new vectors for every chunk and the new model recorded, at once."""
        with _transaction(self):
            for chunk_id, vector in vectors.items():
                self.db.execute(
                    "UPDATE chunks SET vector = ? WHERE id = ?",
                    (np.asarray(vector, dtype=np.float32).tobytes(), chunk_id),
                )
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'embedding_model'", (identity,))
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'dim'", (str(dim),))
            self._touch(time.time())

    def _delete_path(self, path: str) -> None:
        row = self.db.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
        if row is None:
            return
        for (chunk_id,) in self.db.execute("SELECT id FROM chunks WHERE doc_id = ?", (row[0],)):
            self.db.execute("DELETE FROM chunks_fts WHERE rowid = ?", (chunk_id,))
        self.db.execute("DELETE FROM chunks WHERE doc_id = ?", (row[0],))
        self.db.execute("DELETE FROM documents WHERE id = ?", (row[0],))

    def _delete_chunk(self, chunk_id: int) -> None:
        self.db.execute("DELETE FROM chunks_fts WHERE rowid = ?", (chunk_id,))
        self.db.execute("DELETE FROM chunks WHERE id = ?", (chunk_id,))

    def _touch(self, now: float) -> None:
        self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('updated', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(now),),
        )

    def close(self) -> None:
        self.db.close()


class _transaction:
    """One write transaction. BEGIN IMMEDIATE takes the write lock before anything is read,
    so two writers queue up (each waits up to WRITE_WAIT_S) instead of both reading the old
    state and one failing at its first write. Whatever SQLite refuses (the lock not had in
    time, a full disk) is rolled back and becomes a DocsError that says so, not a traceback."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.db = collection.db

    def __enter__(self) -> None:
        self.db.execute(f"PRAGMA busy_timeout = {int(WRITE_WAIT_S * 1000)}")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._failed(exc) from exc

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as exc:  # readers held the file past the wait, or it is full
                value = exc
        if self.db.in_transaction:  # SQLite rolls some failures back by itself
            self.db.execute("ROLLBACK")
        if isinstance(value, sqlite3.Error):
            raise self._failed(value) from value

    def _failed(self, exc: sqlite3.Error) -> DocsError:
        name, text = self.collection.name, str(exc)
        if "locked" in text or "busy" in text:
            return DocsError(
                f"collection {name!r} is busy: another process kept it locked for "
                f"{WRITE_WAIT_S:.0f} s ({text})",
                hint="wait for the other `cuvee docs` command to finish, then run this one "
                "again; nothing was changed",
            )
        if "full" in text:
            return DocsError(
                f"cannot write collection {name!r} ({self.collection.path}): no space left on "
                f"the device ({text})",
                hint="nothing was changed; free some disk space and run the command again",
            )
        if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_IOERR"):
            return DocsError(
                f"cannot write collection {name!r} ({self.collection.path}): the disk refused "
                f"a write ({text}); it may be full or over a size limit",
                hint="nothing was changed; free some disk space and run the command again",
            )
        return DocsError(
            f"cannot write collection {name!r} ({self.collection.path}): {text}",
            hint="nothing was changed",
        )


def create(
    home: Path,
    name: str,
    embedding_model: str,
    dim: int,
    chunk_size: int = chunking.DEFAULT_SIZE,
    overlap: int = chunking.DEFAULT_OVERLAP,
) -> Collection:
    path = collection_path(home, name)
    if path.exists():
        raise CollectionExists(f"collection {name!r} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file of this process's own, linked into place only once complete and only if no other
    # process created the collection meanwhile (a link never replaces an existing name).
    handle, partial_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    partial = Path(partial_name)
    try:
        _write_empty(partial, embedding_model, dim, chunk_size, overlap)
        try:
            os.link(partial, path)
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: a rename, checked just before
            if path.exists():
                raise FileExistsError(path) from None
            os.replace(partial, path)
    except FileExistsError:
        raise CollectionExists(f"collection {name!r} already exists") from None
    finally:
        partial.unlink(missing_ok=True)
    return Collection(name, path)


def _write_empty(
    partial: Path, embedding_model: str, dim: int, chunk_size: int, overlap: int
) -> None:
    db = sqlite3.connect(partial)
    db.executescript(_SCHEMA)
    meta = {
        "schema": SCHEMA_VERSION,
        "embedding_model": embedding_model,
        "dim": dim,
        "chunk_size": chunk_size,
        "overlap": overlap,
        "created": time.time(),
        "version": 0,
    }
    db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
    db.commit()
    db.close()


def open_collection(home: Path, name: str) -> Collection:
    path = collection_path(home, name)
    if not path.is_file():
        known = list_names(home)
        raise DocsError(
            f"no collection named {name!r}"
            + (f" (collections: {', '.join(known)})" if known else " (there are none yet)"),
            hint=f"cuvee docs add {name} PATH...",
        )
    collection = Collection(name, path)
    schema = collection.meta().get("schema")
    if schema != str(SCHEMA_VERSION):
        raise DocsError(f"{path}: index schema {schema}, this cuvee reads {SCHEMA_VERSION}")
    return collection


def remove(home: Path, name: str) -> None:
    path = collection_path(home, name)
    if not path.is_file():
        raise DocsError(f"no collection named {name!r}")
    path.unlink()
    # a journal left by a killed writer must not be replayed into a new collection of this name
    for suffix in ("-journal", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def describe(collection: Collection) -> dict:
    out = collection.stats()
    out["documents_list"] = [
        {"id": d.id, "path": d.path, "title": d.title, "sha256": d.sha256, "chunks": d.chunks}
        for d in collection.documents()
    ]
    return json.loads(json.dumps(out))
