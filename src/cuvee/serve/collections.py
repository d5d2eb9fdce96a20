"""Document collections over HTTP, beside ``rag:`` answers. Reading, with the same key checks as
answers (a collection the key may not see answers 404 exactly as a missing one):
``GET /v1/collections`` (sizes and embedding model), ``.../{name}/documents`` (the list) and
``.../{name}/document?ref=`` (one document whole, so a citation's character offsets can be shown
in place). Writing, for admins (the routes check): upload files into a collection (created
with the server's embedding model if new; the files are kept in
``$CUVEE_HOME/docs/uploads/NAME/``, which become the documents' paths), sync it (every document
re-read from its file), remove one document."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import anyio

from cuvee.docs import index
from cuvee.errors import DocsError
from cuvee.serve import errors
from cuvee.serve.deps import upload_name
from cuvee.serve.keys import ApiKey
from cuvee.serve.rag import PREFIX, DocsService, collection_not_found
from cuvee.serve.schemas import UploadRequest


async def collections_route(state: Any, key: ApiKey | None) -> dict[str, Any]:
    """The collections the key may see, with their sizes and embedding model (no server paths)."""
    docs: DocsService = state.docs

    def listed() -> list[dict[str, Any]]:
        out = []
        for name in docs.visible(key):
            try:
                stats = docs.open(name, key, "collection").stats()
            except errors.APIError:
                continue  # removed or unreadable since it was listed
            out.append(
                {
                    "object": "collection",
                    "id": name,
                    "model": f"{PREFIX}{name}",
                    "documents": stats["documents"],
                    "chunks": stats["chunks"],
                    "embedding_model": stats["embedding_model"],
                    "updated": stats["updated"],
                }
            )
        return out

    return {"object": "list", "data": await anyio.to_thread.run_sync(listed)}


async def document_route(state: Any, key: ApiKey | None, name: str, ref: str) -> dict[str, Any]:
    """One document of a collection, whole (``ref``: its id or path, as a citation names it),
    so a client can show a citation at its offsets; 404 as for a missing collection when the
    key may not see it."""
    docs: DocsService = state.docs
    collection = await anyio.to_thread.run_sync(docs.open, name, key, "collection")

    def read() -> dict[str, Any]:
        try:
            found = collection.find_document(ref)
            text = collection.document_text(found.id)
        except DocsError as exc:
            raise errors.APIError(
                404, exc.message, param="document", code="document_not_found"
            ) from None
        return {
            "object": "collection.document",
            "collection": name,
            "id": found.id,
            "path": found.path,
            "title": found.title,
            "text": text,
        }

    return await anyio.to_thread.run_sync(read)


async def documents_route(state: Any, key: ApiKey | None, name: str) -> dict[str, Any]:
    """A collection's documents: id, path, title, passages."""
    docs: DocsService = state.docs
    collection = await anyio.to_thread.run_sync(docs.open, name, key, "collection")
    listed = await anyio.to_thread.run_sync(collection.documents)
    return {
        "object": "list",
        "collection": name,
        "data": [
            {"id": d.id, "path": d.path, "title": d.title, "chunks": d.chunks} for d in listed
        ],
    }


# ---- writing (admin only: the routes check) --------------------------------------------------

LOADABLE = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")


def uploads_dir(home: Path, name: str) -> Path:
    """Where the files uploaded into collection ``name`` are kept (the documents' paths)."""
    return Path(home) / "docs" / "uploads" / name


def _writable(state: Any, name: str) -> index.Collection:
    """The collection ``name`` opened for writing (created with the server's embedding model
    when new): a connection of its own, closed by the caller."""
    try:
        index.check_name(name)
    except DocsError as exc:
        raise errors.invalid_param(exc.message, "collection") from None
    home = state.settings.home
    if index.collection_path(home, name).is_file():
        return index.open_collection(home, name)
    backend = state.docs.backend()
    return index.create(home, name, backend.identity, backend.dim)


def upload(state: Any, name: str, body: UploadRequest) -> dict[str, Any]:
    """Save the files under the collection's uploads folder and index them (blocking)."""
    from cuvee.docs.ingest import ingest

    saved = []
    for item in body.files:
        safe = upload_name(item.name)
        if not safe.lower().endswith(LOADABLE):
            raise errors.invalid_param(
                f"'{item.name}': cuvee reads {', '.join(LOADABLE)} files.", "files"
            )
        try:
            data = base64.b64decode(item.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise errors.invalid_param(f"'{item.name}': content is not base64.", "files") from None
        saved.append((safe, data))
    folder = uploads_dir(state.settings.home, name)
    collection = _writable(state, name)
    try:
        backend = state.docs.checked_backend(collection, "collection")
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for safe, data in saved:
            path = folder / safe
            path.write_bytes(data)
            paths.append(path)
        try:
            report = ingest(collection, backend, paths, skip_errors=True)
        except DocsError as exc:
            raise errors.invalid_param(exc.message, "files") from None
    finally:
        collection.close()
    return {"object": "collection.ingest", "collection": name, **report.as_dict()}


def sync(state: Any, name: str) -> dict[str, Any]:
    """Re-read every document of the collection from its file: changed ones are indexed again,
    vanished ones dropped (blocking)."""
    from cuvee.docs.ingest import ingest

    if not index.collection_path(state.settings.home, name).is_file():
        raise collection_not_found(name, "collection")
    collection = index.open_collection(state.settings.home, name)
    try:
        backend = state.docs.checked_backend(collection, "collection")
        paths = [Path(d.path) for d in collection.documents()]
        present = [p for p in paths if p.is_file()]
        gone = [str(p) for p in paths if not p.is_file()]
        report = ingest(collection, backend, present, skip_errors=True)
        if gone:
            collection.apply([], gone)
            report.removed.extend(gone)
    finally:
        collection.close()
    return {"object": "collection.ingest", "collection": name, **report.as_dict()}


def remove(state: Any, name: str, ref: str) -> dict[str, Any]:
    """Take one document out of the collection (its uploaded file too, if it was uploaded)."""
    if not index.collection_path(state.settings.home, name).is_file():
        raise collection_not_found(name, "collection")
    collection = index.open_collection(state.settings.home, name)
    try:
        try:
            doc = collection.find_document(ref)
        except DocsError as exc:
            raise errors.APIError(
                404, exc.message, param="document", code="document_not_found"
            ) from None
        collection.apply([], [doc.path])
    finally:
        collection.close()
    path = Path(doc.path)
    if path.parent == uploads_dir(state.settings.home, name):
        path.unlink(missing_ok=True)
    return {"object": "collection.document", "collection": name, "id": doc.id, "removed": True}
