"""Browsing document collections over HTTP: ``GET /v1/collections`` (what the key may see, with
sizes and embedding model) and ``GET /v1/collections/{name}/document`` (one document whole, so a
client such as the web UI can show a citation at its character offsets). The same key checks as
``rag:`` answers: a collection the key may not see answers 404 exactly as a missing one."""

from __future__ import annotations

from typing import Any

import anyio

from cuvee.errors import DocsError
from cuvee.serve import errors
from cuvee.serve.keys import ApiKey
from cuvee.serve.rag import PREFIX, DocsService


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
