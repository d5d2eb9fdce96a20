"""Keys over HTTP, for the web UI's keys screen (admin only, as training is): list them (never
a secret), create one (its secret answered once, as `cuvee keys create` prints it once), revoke
one. The same ``KeyStore`` the CLI writes, so a key made either way works at once."""

from __future__ import annotations

from typing import Any

from cuvee.errors import ConfigError
from cuvee.serve import errors
from cuvee.serve.budget import parse_budgets
from cuvee.serve.keys import KeyStore
from cuvee.serve.schemas import KeyRequest


def _store(store: KeyStore | None) -> KeyStore:
    if store is None:
        raise errors.APIError(
            409, "This server was started without a keys file.", code="no_key_store"
        )
    return store


def list_keys(store: KeyStore | None) -> dict[str, Any]:
    return {"object": "list", "data": [k.public() for k in _store(store).list(False)]}


def create_key(store: KeyStore | None, body: KeyRequest) -> dict[str, Any]:
    try:
        budgets = parse_budgets(body.budgets or ())
        record, secret = _store(store).create(
            body.name,
            rpm=body.rpm,
            tpm=body.tpm,
            models=body.models,
            collections=body.collections,
            admin=body.admin,
            budgets=budgets,
        )
    except ConfigError as exc:
        raise errors.invalid_param(exc.message, None) from None
    return {"object": "key", **record.public(), "key": secret}


def revoke_key(store: KeyStore | None, name: str) -> dict[str, Any]:
    try:
        record = _store(store).revoke(name)
    except ConfigError as exc:
        raise errors.APIError(404, exc.message, code="key_not_found") from None
    return {"object": "key", **record.public()}
