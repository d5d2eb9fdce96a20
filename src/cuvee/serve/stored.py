"""The model store over HTTP, read-only, for the web UI's models screen: ``GET /v1/store/models``
(each model's kind, parent, licence and whether it may be used commercially) and
``GET /v1/store/models/{name}`` (the whole manifest: lineage with data hashes and licences,
recipe, run figures, exports with sizes and quantization fidelity; and the model card). A key
sees only the models it may use; any other answers 404 as a missing one."""

from __future__ import annotations

from typing import Any

import anyio

from cuvee.errors import CuveeError
from cuvee.serve import errors
from cuvee.serve.keys import ApiKey
from cuvee.store import ModelStore

CARD = "MODEL_CARD.md"


def _summary(manifest: Any) -> dict[str, Any]:
    extra = manifest.model_extra or {}
    return {
        "object": "store.model",
        "id": manifest.name,
        "kind": manifest.kind,
        "parent": manifest.parent,
        "architecture": manifest.architecture,
        "parameters": manifest.parameters,
        "created_at": manifest.created_at,
        "description": manifest.description,
        "licence": {"id": manifest.licence.id, "name": manifest.licence.name},
        "commercial_use": extra.get("commercial_use", manifest.licence.commercial_use),
        "exports": len(manifest.exports),
    }


async def list_route(store: ModelStore, key: ApiKey | None) -> dict[str, Any]:
    def listed() -> list[dict[str, Any]]:
        models, _ = store.list()
        return [_summary(m.manifest) for m in models if key is None or key.allows(m.manifest.name)]

    return {"object": "list", "data": await anyio.to_thread.run_sync(listed)}


async def model_route(store: ModelStore, key: ApiKey | None, name: str) -> dict[str, Any]:
    if key is not None and not key.allows(name):
        raise errors.model_not_found(name)

    def read() -> dict[str, Any]:
        try:
            stored = store.get(name)
        except CuveeError:
            raise errors.model_not_found(name) from None
        manifest = stored.manifest.model_dump(mode="json")
        manifest.pop("chat_template", None)  # long, and shown by `cuvee models show`
        card = stored.path / CARD
        return {
            **_summary(stored.manifest),
            "manifest": manifest,
            "card": card.read_text(encoding="utf-8") if card.is_file() else None,
        }

    return await anyio.to_thread.run_sync(read)
