"""/v1/models through the gateway: an upstream configured with ``models: "*"`` (what `cuvee
serve --upstream NAME=URL` makes) serves NAME/MODEL for any MODEL, and lists what its own
/models says, so clients and the web UI's model picker see those models."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cuvee.serve.gateway import upstream as upstream_module
from cuvee.serve.keys import KeyStore
from helpers import uvicorn_in_thread
from test_gateway import FakeUpstream, free_port, gateway_app


class ListingUpstream(FakeUpstream):
    """A fake upstream whose /v1/models lists ``self.listed`` (or fails with ``list_status``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.listed = ["m1", "m2"]
        self.list_status: int | None = None
        self.listings = 0
        self.hold_list = threading.Event()  # set: /models answers only once ``released``
        self.app.get("/v1/models")(self.models)

    async def models(self):
        from fastapi.responses import JSONResponse

        self.listings += 1
        while self.hold_list.is_set() and not self.released.is_set():
            await asyncio.sleep(0.01)
        if self.list_status is not None:
            return JSONResponse({"error": {"message": "no"}}, status_code=self.list_status)
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in self.listed]}


@pytest.fixture
def wild() -> Iterator[dict[str, Any]]:
    """A live ``*`` upstream ``a``, and ``down``, a ``*`` upstream nobody listens for."""
    with ExitStack() as stack:
        fake = ListingUpstream("a")
        url = stack.enter_context(uvicorn_in_thread(fake.app)) + "/v1"
        stack.callback(fake.released.set)
        config = {
            "upstreams": {
                "a": {"name": "a", "base_url": url, "models": "*"},
                "down": {
                    "name": "down",
                    "base_url": f"http://127.0.0.1:{free_port()}/v1",
                    "models": "*",
                },
            },
            "routes": {},
        }
        yield {"fake": fake, "config": config}


def ids(client: TestClient, headers: dict | None = None) -> list[str]:
    r = client.get("/v1/models", headers=headers or {})
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["data"]]


def test_a_wildcard_upstream_lists_its_models_and_they_answer(wild) -> None:
    app, _ = gateway_app(wild["config"])
    client = TestClient(app)
    listed = ids(client)
    assert "a/m1" in listed and "a/m2" in listed
    assert not [m for m in listed if m.startswith("down/")]  # a dead upstream lists nothing
    data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert data["a/m1"]["owned_by"] == "a" and data["a/m1"]["kind"] == "upstream"
    body = {"model": "a/m1", "messages": [{"role": "user", "content": "Hi"}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["cuvee"]["served_by"] == "a/m1"
    assert wild["fake"].seen[-1]["model"] == "m1"


def test_the_list_is_asked_once_a_minute_and_kept_when_the_upstream_fails(
    wild, monkeypatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(upstream_module.time, "monotonic", lambda: clock[0])
    fake = wild["fake"]
    app, _ = gateway_app(wild["config"])
    client = TestClient(app)
    assert "a/m2" in ids(client) and fake.listings == 1
    fake.listed = ["m3"]
    assert "a/m2" in ids(client) and fake.listings == 1  # within the minute: the same list
    clock[0] += upstream_module.MODELS_TTL_S + 1
    listed = ids(client)
    assert "a/m3" in listed and "a/m2" not in listed and fake.listings == 2
    fake.list_status = 500  # a failing /models keeps the last list
    clock[0] += upstream_module.MODELS_TTL_S + 1
    assert "a/m3" in ids(client) and fake.listings == 3


def test_a_key_sees_only_the_upstream_models_it_may_use(wild, tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("team", models=["a/m2"])
    app, _ = gateway_app(wild["config"], keys=keys)
    assert ids(TestClient(app), {"Authorization": f"Bearer {secret}"}) == ["a/m2"]


def test_one_model_is_described_by_its_id_slash_included(wild) -> None:
    config = {**wild["config"], "routes": {"assistant": {"name": "assistant", "targets": ["a/m1"]}}}
    app, _ = gateway_app(config)
    client = TestClient(app)
    r = client.get("/v1/models/a/m1")
    assert r.status_code == 200 and r.json()["id"] == "a/m1" and r.json()["owned_by"] == "a"
    r = client.get("/v1/models/assistant")
    assert r.status_code == 200 and r.json()["kind"] == "route"
    assert client.get("/v1/models/a/nothing").status_code == 404
    assert client.get("/v1/models/fake").json()["id"] == "fake"  # a local model as before


def test_a_slow_upstream_list_does_not_hold_up_the_models_list(wild, monkeypatch) -> None:
    from cuvee.serve.gateway import router

    monkeypatch.setattr(router, "DISCOVER_WAIT_S", 0.05)
    fake = wild["fake"]
    fake.hold_list.set()
    app, _ = gateway_app(wild["config"])
    with TestClient(app) as client:
        listed = ids(client)  # answered while the upstream's /models has not
        assert "fake" in listed and not [m for m in listed if m.startswith("a/")]
        fake.hold_list.clear()  # it answers now; the fetch in flight finishes in the background
        for _ in range(500):
            if "a/m1" in ids(client):
                break
            threading.Event().wait(0.01)
        assert "a/m1" in ids(client) and fake.listings == 1  # the same fetch, not a new one
