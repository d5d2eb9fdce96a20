"""`/v1/embeddings` through the gateway: an upstream's embedding model, or a route over several
(upstreams and the local embedding model), relayed with the chat path's fallback and keys. The
upstreams are the fake OpenAI servers of test_gateway with an embeddings endpoint added."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.testclient import TestClient

from cuvee.serve.budget import Ledger
from cuvee.serve.keys import KeyStore
from helpers import uvicorn_in_thread
from test_gateway import FakeUpstream, config_of, gateway_app, live_upstreams
from test_serve import assert_error
from test_serve_fuzz import EMBEDDING_DIM, FakeEmbedder

LOCAL = "all-minilm-l6-v2"  # the id the server gives its packaged embedding model


class EmbeddingUpstream(FakeUpstream):
    """A fake upstream that also embeds: text ``i`` gets ``[len(text), i, 1.0]``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.app.post("/v1/embeddings")(self.embeddings)
        self.hold_first = False  # the first request waits until ``go`` is set
        self.plain = False  # an error status comes as plain text, not JSON
        self.arrived, self.go = threading.Event(), threading.Event()

    async def embeddings(self, request: Request):
        body = await request.json()
        self.seen.append(body)
        if self.hold_first and len(self.seen) == 1:
            self.arrived.set()
            while not self.go.is_set() and not self.released.is_set():
                await asyncio.sleep(0.01)
        if self.status is not None:
            if self.plain:
                return PlainTextResponse(f"{self.name}: no such route", status_code=self.status)
            error = {"error": {"message": f"{self.name} says {self.status}", "type": "x"}}
            return JSONResponse(error, status_code=self.status)
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), float(i), 1.0]}
            for i, t in enumerate(texts)
        ]
        tokens = sum(len(t) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": body["model"], "usage": usage}


@pytest.fixture
def upstreams() -> Iterator[dict[str, tuple[Any, str]]]:
    yield from live_upstreams(EmbeddingUpstream)


def app_for(upstreams, routes: dict, keys: KeyStore | None = None):
    app, _ = gateway_app(config_of(upstreams, routes), keys=keys)
    return app


def embed(client, model: str, texts: Any = ("one", "three"), **extra):
    return client.post("/v1/embeddings", json={"model": model, "input": list(texts), **extra})


@pytest.fixture(autouse=True)
def fake_local_embedder(monkeypatch) -> None:
    """The server's own embedding model without torch: FakeEmbedder's constant vectors."""
    from cuvee.serve import openai_embeddings

    monkeypatch.setattr(openai_embeddings, "_default_factory", lambda setting: FakeEmbedder)


def test_an_upstream_embedding_model_is_relayed_under_the_public_name(upstreams) -> None:
    client = TestClient(app_for(upstreams, {"embed": {"targets": ["a/m"]}}))
    r = embed(client, "embed")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "embed" and body["cuvee"]["served_by"] == "a/m"
    assert [d["embedding"] for d in body["data"]] == [[3.0, 0.0, 1.0], [5.0, 1.0, 1.0]]
    assert body["usage"]["prompt_tokens"] == 8
    sent = upstreams["a"][0].seen[-1]
    assert sent["model"] == "m" and sent["input"] == ["one", "three"]
    # the upstream's own model name works too, and unknown fields reach it unchanged
    r = embed(client, "a/m", truncate_prompt_tokens=16)
    assert r.status_code == 200 and upstreams["a"][0].seen[-1]["truncate_prompt_tokens"] == 16


def test_embeddings_fall_back_past_dead_and_failing_upstreams_to_the_local_model(
    upstreams,
) -> None:
    routes = {"embed": {"targets": ["down/m", "a/m", LOCAL]}}
    client = TestClient(app_for(upstreams, routes))
    r = embed(client, "embed")
    body = r.json()
    assert r.status_code == 200 and body["cuvee"]["served_by"] == "a/m"
    assert [a["target"] for a in body["cuvee"]["attempts"]] == ["down/m"]
    upstreams["a"][0].status = 503
    r = embed(client, "embed", texts=["x"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-cuvee-served-by"] == LOCAL and body["model"] == "embed"
    assert len(body["data"][0]["embedding"]) == EMBEDDING_DIM  # the local model's vectors
    # no target left: the chat path's explicit 503
    client = TestClient(app_for(upstreams, {"embed": {"targets": ["down/m", "a/m"]}}))
    error = assert_error(embed(client, "embed"), 503, code="no_target_available")
    assert "down/m" in error["message"] and "a/m" in error["message"]


def test_a_local_model_of_the_wrong_kind_is_passed_over_like_an_upstream_lacking_it(
    upstreams,
) -> None:
    # a route over a local chat model and the local embedding model, in both orders: each
    # path skips the target that cannot serve it, with the reason
    routes = {"both": {"targets": ["fake", LOCAL]}, "rev": {"targets": [LOCAL, "fake"]}}
    client = TestClient(app_for(upstreams, routes))
    r = embed(client, "both")
    assert r.status_code == 200, r.text
    (attempt,) = r.json()["cuvee"]["attempts"]
    assert attempt["target"] == "fake" and "not an embedding model" in attempt["error"]
    assert r.headers["x-cuvee-served-by"] == LOCAL
    r = client.post(
        "/v1/chat/completions",
        json={"model": "rev", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    assert r.status_code == 200 and r.headers["x-cuvee-served-by"] == "fake", r.text
    (attempt,) = r.json()["cuvee"]["attempts"]
    assert attempt["target"] == LOCAL and "is an embedding model" in attempt["error"]
    # a route with no target of the right kind: the request cannot be served there (a 400
    # naming each target's reason), not a failure to retry (503)
    client = TestClient(app_for(upstreams, {"chat": {"targets": ["fake", "other"]}}))
    error = assert_error(embed(client, "chat"), 400, code="model_not_supported_here")
    assert "'fake' is a chat model" in error["message"] and "other" in error["message"]


def test_an_upstream_s_refusal_is_passed_on_and_a_stream_is_refused(upstreams) -> None:
    upstreams["a"][0].status = 400
    client = TestClient(app_for(upstreams, {"embed": {"targets": ["a/m", "b/m"]}}))
    r = embed(client, "embed")
    # a 4xx says the request is wrong: the next upstream would say the same
    assert r.status_code == 400 and "a says 400" in r.text
    assert not upstreams["b"][0].seen
    assert_error(embed(client, "embed", stream=True), 400, param="stream")
    # a model neither routed nor local is still a 404
    assert_error(embed(client, "nothing"), 404, code="model_not_found")


def test_a_key_uses_the_route_only_and_its_tokens_are_counted(upstreams, tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("team", models=["embed"], budgets={"tokens/day": 1000})
    routes = {"embed": {"targets": ["a/m", LOCAL]}}
    auth = {"Authorization": f"Bearer {secret}"}
    with TestClient(app_for(upstreams, routes, keys=keys)) as client:
        r = client.post("/v1/embeddings", json={"model": "embed", "input": "four"}, headers=auth)
        assert r.status_code == 200 and r.json()["data"][0]["embedding"] == [4.0, 0.0, 1.0]
        upstreams["a"][0].status = 500  # the local model behind the route needs no grant
        r = client.post("/v1/embeddings", json={"model": "embed", "input": "xy"}, headers=auth)
        assert r.status_code == 200 and r.json()["cuvee"]["served_by"] == LOCAL
        direct = client.post("/v1/embeddings", json={"model": LOCAL, "input": "x"}, headers=auth)
        assert_error(direct, 404, code="model_not_found")
    rows = Ledger(tmp_path / "usage.sqlite").report()
    used = {(r["key"], r["model"], r["target"]): r for r in rows}
    upstream = used[("team", "embed", "a/m")]
    assert upstream["requests"] == 1 and upstream["prompt_tokens"] == 4  # the upstream's usage
    assert upstream["completion_tokens"] == 0
    local = used[("team", "embed", LOCAL)]
    assert local["requests"] == 1 and local["prompt_tokens"] == 2  # FakeEmbedder counts chars
    assert len(rows) == 2


def test_the_openai_client_embeds_through_a_route(upstreams) -> None:
    from openai import OpenAI

    app = app_for(upstreams, {"embed": {"targets": ["down/m", "b/m"]}})
    with uvicorn_in_thread(app) as base:
        client = OpenAI(base_url=base + "/v1", api_key="none", http_client=httpx.Client())
        result = client.embeddings.create(model="embed", input=["a", "bcd"])
    assert [d.embedding for d in result.data] == [[1.0, 0.0, 1.0], [3.0, 1.0, 1.0]]
    assert result.model == "embed"


def test_an_embedding_reserves_no_completion_against_a_budget(upstreams, tmp_path: Path) -> None:
    # a chat request reserves its max_tokens (4096 where the upstream declares no context)
    # while it runs; an embedding completes nothing, so a small budget admits a second one
    # while the first is still at the upstream
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("team", budgets={"tokens/day": 1000})
    auth = {"Authorization": f"Bearer {secret}"}
    fake = upstreams["a"][0]
    fake.hold_first = True
    app = app_for(upstreams, {"embed": {"targets": ["a/m"]}}, keys=keys)
    with uvicorn_in_thread(app) as base:
        url, body = base + "/v1/embeddings", {"model": "embed", "input": "four"}
        first: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: first.append(httpx.post(url, json=body, headers=auth, timeout=30))
        )
        waiting.start()
        try:
            assert fake.arrived.wait(10), "the first request never reached the upstream"
            second = httpx.post(url, json=body, headers=auth, timeout=30)
        finally:
            fake.go.set()
            waiting.join(30)
    assert second.status_code == 200, second.text
    assert first and first[0].status_code == 200


def test_a_batch_fits_an_upstream_context_text_by_text(upstreams) -> None:
    # the context bounds each text, not the batch: 64 short texts go to an upstream with a
    # 512-token context; one text longer than it skips that upstream, with the reason
    config = config_of(upstreams, {"embed": {"targets": ["a/m", "b/m"]}})
    config["upstreams"]["a"]["context_length"] = 512
    app, _ = gateway_app(config)
    client = TestClient(app)
    r = embed(
        client, "embed", texts=[f"text number {i} of the batch, a short one" for i in range(64)]
    )
    assert r.status_code == 200 and r.json()["cuvee"]["served_by"] == "a/m"
    r = embed(client, "embed", texts=["short", "long " * 600])
    body = r.json()
    assert r.status_code == 200 and body["cuvee"]["served_by"] == "b/m"
    (attempt,) = body["cuvee"]["attempts"]
    assert "skipped" in attempt["error"] and "context is 512" in attempt["error"]


def test_an_upstream_that_cannot_embed_is_passed_by_and_stays_in_use(upstreams) -> None:
    # llama-server without --embeddings answers 501: the next target embeds, and the upstream
    # is not cooled down for the chat requests it does serve
    a = upstreams["a"][0]
    a.status = 501
    config = config_of(upstreams, {"embed": {"targets": ["a/m", LOCAL]}})
    config["upstreams"]["a"]["cooldown"] = {"failures": 1, "window": 60}
    app, _ = gateway_app(config)
    client = TestClient(app)
    for _ in range(3):
        r = embed(client, "embed")
        assert r.status_code == 200 and r.json()["cuvee"]["served_by"] == LOCAL
        assert "501" in r.json()["cuvee"]["attempts"][0]["error"]
    a.status = None
    chat = {"model": "a/m", "messages": [{"role": "user", "content": "Hi"}]}
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200 and r.json()["cuvee"]["attempts"] == []


def test_a_refusal_is_not_charged_and_a_plain_text_one_is_passed_on(
    upstreams, tmp_path: Path
) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("team", rpm=2)
    auth = {"Authorization": f"Bearer {secret}"}
    a = upstreams["a"][0]
    a.status, a.plain = 404, True
    with TestClient(app_for(upstreams, {"embed": {"targets": ["a/m", "b/m"]}}, keys=keys)) as c:
        # a stream is refused before the key's requests per minute count it
        r = c.post("/v1/embeddings", json={"model": "embed", "input": "x", "stream": True},
                   headers=auth)  # fmt: skip
        assert_error(r, 400, param="stream")
        r = c.post("/v1/embeddings", json={"model": "embed", "input": "x"}, headers=auth)
        assert r.status_code == 404 and "no such route" in r.text  # the upstream's own words
        assert not upstreams["b"][0].seen
        a.status, a.plain = None, False
        r = c.post("/v1/embeddings", json={"model": "embed", "input": "four"}, headers=auth)
        assert r.status_code == 200  # the 2nd request of the minute: the stream was not one
    rows = Ledger(tmp_path / "usage.sqlite").report()
    assert [(r["target"], r["requests"], r["prompt_tokens"]) for r in rows] == [("a/m", 1, 4)]
