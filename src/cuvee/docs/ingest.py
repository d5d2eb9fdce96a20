"""Adding files to a collection: `docs add` and `docs sync`.

A document is identified by its resolved path and its content by sha256: a file whose hash is
already recorded for its path is skipped, a changed one is re-read and re-embedded (its old
chunks replaced), and with ``sync`` a recorded file that has vanished from the given folders
is removed. Everything is read, chunked and embedded before the index is touched, then written
in one transaction: an unreadable file stops the command with its name and leaves the index
unchanged (or is listed and skipped with ``skip_errors``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cuvee.docs import chunking, loaders
from cuvee.docs.embedders import Backend
from cuvee.docs.index import Collection, NewDocument, embedding_text
from cuvee.errors import DocsError
from cuvee.progress import Reporter, SilentReporter
from cuvee.store import sha256_file


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    chunks: int = 0
    embed_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": len(self.unchanged),
            "removed": self.removed,
            "skipped": self.skipped,
            "chunks_embedded": self.chunks,
            "embed_seconds": round(self.embed_seconds, 3),
        }


def expand(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(files to read, folders given): folders are walked recursively, hidden entries skipped,
    unsupported files ignored inside folders but refused when named directly."""
    files: list[Path] = []
    folders: list[Path] = []
    for given in paths:
        path = given.expanduser()
        if not path.exists():
            raise DocsError(f"{given}: no such file or folder")
        path = path.resolve()
        if path.is_dir():
            folders.append(path)
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path).parts
                if any(part.startswith(".") for part in relative):
                    continue
                if child.is_file() and loaders.supported(child):
                    files.append(child)
        else:
            if not loaders.supported(path):
                known = ", ".join(sorted(loaders.LOADERS))
                raise DocsError(f"{given}: unsupported file type (supported: {known})")
            files.append(path)
    return list(dict.fromkeys(files)), folders


def ingest(
    collection: Collection,
    backend: Backend,
    paths: list[Path],
    *,
    sync: bool = False,
    skip_errors: bool = False,
    reporter: Reporter | None = None,
) -> IngestReport:
    import time

    reporter = reporter or SilentReporter()
    collection.check_embedder(backend.identity, backend.dim)
    files, folders = expand(paths)
    known = {doc.path: doc for doc in collection.documents()}
    report = IngestReport()

    todo: list[tuple[Path, str, bool]] = []
    for path in files:
        digest = sha256_file(path)
        previous = known.get(str(path))
        if previous is not None and previous.sha256 == digest:
            report.unchanged.append(str(path))
        else:
            todo.append((path, digest, previous is not None))

    if sync:
        present = {str(p) for p in files}
        given = {str(p.expanduser().resolve()) for p in paths}
        for doc_path in known:
            inside = doc_path in given or any(Path(doc_path).is_relative_to(r) for r in folders)
            if inside and doc_path not in present:
                report.removed.append(doc_path)

    prepared: list[tuple[Path, str, bool, loaders.Extracted, list[chunking.Chunk]]] = []
    with reporter.items("reading", len(todo)) as advance:
        for path, digest, existed in todo:
            try:
                extracted = loaders.load(path)
            except DocsError as exc:
                if not skip_errors:
                    raise DocsError(
                        exc.message,
                        hint="nothing was indexed; fix or remove the file, or "
                        "pass --skip-errors to index the others",
                    ) from exc
                report.skipped.append({"path": str(path), "error": exc.message})
                advance(1)
                continue
            pieces = chunking.chunk(extracted, collection.chunk_size, collection.overlap)
            if not pieces:
                report.skipped.append({"path": str(path), "error": "no text"})
                if existed:  # emptied (or a scan replaced it): its old text must not be cited
                    report.removed.append(str(path))
            else:
                prepared.append((path, digest, existed, extracted, pieces))
            advance(1)

    texts = [
        embedding_text(extracted.title, piece.section, piece.text)
        for _, _, _, extracted, pieces in prepared
        for piece in pieces
    ]
    started = time.perf_counter()
    with reporter.items("embedding chunks", len(texts)) as advance:
        vectors = backend.embed(texts, progress=advance) if texts else np.zeros((0, backend.dim))
    report.embed_seconds = time.perf_counter() - started
    report.chunks = len(texts)

    new: list[NewDocument] = []
    cursor = 0
    for path, digest, existed, extracted, pieces in prepared:
        new.append(
            NewDocument(
                path=str(path),
                title=extracted.title,
                sha256=digest,
                size=path.stat().st_size,
                text=extracted.text,
                chunks=pieces,
                vectors=vectors[cursor : cursor + len(pieces)],
            )
        )
        cursor += len(pieces)
        (report.updated if existed else report.added).append(str(path))
    collection.apply(new, report.removed)
    return report


def reindex(collection: Collection, backend: Backend, reporter: Reporter | None = None) -> int:
    """Re-embed every chunk with ``backend`` and record it as the collection's model."""
    reporter = reporter or SilentReporter()
    rows = list(
        collection.db.execute(
            "SELECT c.id, d.title, c.section, c.text FROM chunks c "
            "JOIN documents d ON d.id = c.doc_id ORDER BY c.id"
        )
    )
    texts = [embedding_text(title, section, text) for _, title, section, text in rows]
    with reporter.items("re-embedding chunks", len(texts)) as advance:
        vectors = backend.embed(texts, progress=advance) if texts else np.zeros((0, backend.dim))
    collection.replace_vectors(
        backend.identity, backend.dim, {row[0]: vectors[i] for i, row in enumerate(rows)}
    )
    return len(rows)
