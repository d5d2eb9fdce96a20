"""`cuvee serve` as a gateway: upstream servers and routes beside the local models. The upstreams
are small FastAPI apps on loopback ports with fault knobs (an error status, Retry-After, a cut
after k tokens), deterministic tokens ``t0 t1 t2 ...`` so a gap or a repeat would show, and
their own log of what they were sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient

from cuvee.config import load_settings
from cuvee.errors import ConfigError
from cuvee.serve.app import create_app
from cuvee.serve.gateway.config import GatewayConfig, load
from cuvee.serve.gateway.router import Gateway
from cuvee.serve.keys import Authenticator, KeyStore
from cuvee.serve.models import ModelRegistry
from helpers import uvicorn_in_thread
from test_serve import Fakes, assert_error

TOKENS = 6
WANT = "".join(f"t{i} " for i in range(TOKENS))  # the whole answer of a fake upstream
# the fake's stream goes silent here (until the client leaves or the test ends)
_STALL = object()
# small timeouts: a silent upstream is given up on at once
FAST = {"timeouts": {"connect": 1, "first_token": 0.5, "between_chunks": 0.5}}


class FakeUpstream:
    """An OpenAI-compatible server with knobs: ``status`` (answer every request with it),
    ``retry_after``, ``cut_after`` (a stream stops after that many tokens, without [DONE]),
    ``reset_after`` (the connection drops after that many tokens, mid-body), ``hang_first`` (no
    first token ever), ``delay_first`` (seconds before the first token), ``stall_after`` (a
    stream goes silent after that many tokens, the connection open), ``malformed_after`` (a
    ``data:`` line that is no chunk, ``malformed``, after that many tokens)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status: int | None = None
        self.retry_after: str | None = None
        self.cut_after: int | None = None
        self.reset_after: int | None = None
        # going on from an assistant message, first write again its trailing whitespace (what a
        # model does when its chat template trimmed the message it continues)
        self.rewrites_trimmed = False
        self.comments = False  # SSE comment lines before the first chunk and after the second
        # accept the request, then send no token at all (a stream: its headers, then nothing)
        self.hang_first = False
        self.delay_first = 0.0  # seconds before the first token (a stream: after its headers)
        self.stall_after: int | None = None  # a stream goes silent after that many tokens
        self.malformed_after: int | None = None  # a line that is no chunk after that many tokens
        self.malformed = "{not json"  # ... this one (then the rest of the answer, as if nothing)
        self.released = threading.Event()  # ends every hang: the test is over
        self.seen: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self, request: Request):
        body = await request.json()
        self.seen.append(body)
        if self.hang_first and not body.get("stream"):
            await self._hang(request)
        if self.delay_first and not body.get("stream"):
            await asyncio.sleep(self.delay_first)
        if self.status is not None:
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            error = {"error": {"message": f"{self.name} says {self.status}", "type": "x"}}
            return JSONResponse(error, status_code=self.status, headers=headers)
        # an answer to go on with (an assistant message last) picks up after its tokens
        messages = body.get("messages") or []
        start = 0
        if messages and messages[-1].get("role") == "assistant":
            start = len(messages[-1]["content"].split())
        words = [f"t{i} " for i in range(start, TOKENS)]
        if start and self.rewrites_trimmed:
            given = messages[-1]["content"]
            words.insert(0, given[len(given.rstrip()) :])
        if not body.get("stream"):
            return {
                "id": "up-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": TOKENS, "total_tokens": 9},
            }

        def chunk(delta: dict, finish: str | None = None) -> str:
            payload = {
                "id": "up-1",
                "object": "chat.completion.chunk",
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n"

        def events() -> Iterator[Any]:
            if self.hang_first:
                yield _STALL
            if self.comments:
                yield ": processing\n\n"
            yield chunk({"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                if self.cut_after is not None and i >= self.cut_after:
                    return  # the body ends mid-answer
                if self.reset_after is not None and i >= self.reset_after:
                    raise ConnectionResetError("fault: the connection drops mid-body")
                if self.stall_after is not None and i >= self.stall_after:
                    yield _STALL
                if self.malformed_after is not None and i == self.malformed_after:
                    yield f"data: {self.malformed}\n\n"
                yield chunk({"content": word})
                if self.comments and i == 1:
                    yield ": keep-alive\n\n"
            yield chunk({}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 3, "completion_tokens": len(words)}
                payload = {"id": "up-1", "object": "chat.completion.chunk",
                           "model": body["model"], "choices": [], "usage": usage}  # fmt: skip
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"

        async def stalling() -> AsyncIterator[str]:
            await asyncio.sleep(self.delay_first)
            for event in events():
                if event is _STALL:
                    await self._hang(request)
                    return
                yield event

        stalls = self.hang_first or self.stall_after is not None or self.delay_first
        return StreamingResponse(stalling() if stalls else events(), media_type="text/event-stream")

    async def _hang(self, request: Request) -> None:
        """Send nothing until the client leaves or the test ends (30 s at most)."""
        deadline = time.monotonic() + 30
        while not self.released.is_set() and time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_upstreams(kind: type[FakeUpstream] = FakeUpstream) -> Iterator[dict[str, Any]]:
    """Two live fake upstreams of ``kind`` (``a``, ``b``) and the URL of one that is down."""
    with ExitStack() as stack:
        out: dict[str, Any] = {}
        for name in ("a", "b"):
            fake = kind(name)
            out[name] = (fake, stack.enter_context(uvicorn_in_thread(fake.app)) + "/v1")
            stack.callback(fake.released.set)  # a hang ends before its server stops
        out["down"] = (None, f"http://127.0.0.1:{free_port()}/v1")
        yield out


@pytest.fixture
def upstreams() -> Iterator[dict[str, tuple[FakeUpstream, str]]]:
    yield from live_upstreams()


def gateway_app(config: dict, keys: KeyStore | None = None, **fakes: Any):
    settings = load_settings()
    fake_engines = Fakes(context=4096, **fakes)
    registry = ModelRegistry(settings, opener=fake_engines.open, names=lambda: ["fake", "other"])
    gateway = Gateway(GatewayConfig.model_validate(config))
    app = create_app(settings, registry, Authenticator(keys), gateway=gateway)
    return app, fake_engines


def config_of(upstreams, routes: dict, **extra) -> dict:
    ups = {
        name: {"name": name, "base_url": url, "models": ["m"], **extra.get(name, {})}
        for name, (_, url) in upstreams.items()
    }
    return {
        "upstreams": ups,
        "routes": {k: {"name": k, **v} for k, v in routes.items()},
    }


def ask(client, model: str, stream: bool = False, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}
    if stream:
        body["stream"] = True
    return client.post("/v1/chat/completions", json=body)


def events_of(response) -> list[Any]:
    out = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# -- config ------------------------------------------------------------------------------------


def test_the_serve_config_is_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "serve.yaml"
    good.write_text(
        "upstreams:\n  hosted:\n    base_url: http://127.0.0.1:9/v1\n    api_key_env: K\n"
        "    models: [big]\nroutes:\n  assistant:\n    targets: [hosted/big, quickstart]\n"
    )
    config = load(good, ("vllm=http://gpu1:8000/v1",))
    assert config.routes["assistant"].targets == ["hosted/big", "quickstart"]
    assert config.upstreams["vllm"].models == "*"
    assert config.upstreams["vllm"].api_key_env == "CUVEE_UPSTREAM_VLLM_API_KEY"
    bad = tmp_path / "bad.yaml"
    for text, words in [
        ("upstreams:\n  x:\n    base_url: ftp://nowhere\n", "base_url"),
        ("upstreams:\n  x:\n    base_url: http://h/v1\n    colour: red\n", "colour"),
        ("routes:\n  r:\n    targets: [nowhere/m]\n", "no upstream 'nowhere'"),
        ("routes:\n  r:\n    targets: []\n", "targets"),
        ("listen: 1\n", "unknown keys listen"),
        ("- a\n- b\n", "a mapping"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=words) as info:
            load(bad)
        assert "bad.yaml" in info.value.message
    with pytest.raises(ConfigError, match="NAME=URL"):
        load(None, ("no-equals-sign",))


# -- fallback ----------------------------------------------------------------------------------


def test_a_route_falls_back_past_a_dead_upstream_to_the_local_model(upstreams) -> None:
    app, _ = gateway_app(config_of(upstreams, {"assistant": {"targets": ["down/m", "fake"]}}))
    client = TestClient(app)
    r = ask(client, "assistant")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cuvee"]["served_by"] == "fake"
    (attempt,) = body["cuvee"]["attempts"]
    assert attempt["target"] == "down/m" and "Connect" in attempt["error"]
    assert r.headers["x-cuvee-served-by"] == "fake"
    assert body["model"] == "assistant"
    assert body["choices"][0]["message"]["content"].strip()


def test_a_stream_falls_back_on_5xx_and_429_and_arrives_whole(upstreams) -> None:
    a, _ = upstreams["a"]
    a.status, a.retry_after = 429, "7"
    b, _ = upstreams["b"]
    b.status = 503
    routes = {"assistant": {"targets": ["a/m", "b/m", "down/m", "fake"]}}
    app, _ = gateway_app(config_of(upstreams, routes))
    client = TestClient(app)
    a.status = None  # a works again: the chain starts with it
    r = ask(client, "assistant", stream=True)
    events = events_of(r)
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in events
        if isinstance(c, dict) and c.get("choices")
    )
    assert text == "".join(f"t{i} " for i in range(TOKENS))  # no gap, no repeat
    assert events[-1] == "[DONE]"
    assert events[-2]["cuvee"]["served_by"] == "a/m"
    assert all(c["model"] == "assistant" for c in events if isinstance(c, dict))
    # now a refuses (429 with Retry-After) and b fails (503): the local model serves
    a.status = 429
    b.status = 503
    r = ask(client, "assistant", stream=True)
    events = events_of(r)
    final = next(c for c in reversed(events) if isinstance(c, dict))
    assert r.headers["x-cuvee-served-by"] == "fake"
    attempts = ask(client, "assistant").json()["cuvee"]["attempts"]
    assert [x["target"] for x in attempts] == ["a/m", "b/m", "down/m"]
    assert attempts[0]["retry_after"] == 7.0 and "429" in attempts[0]["error"]
    assert "503" in attempts[1]["error"]
    assert final["cuvee"]["served_by"] == "fake" and events[-1] == "[DONE]"
    assert [a["target"] for a in final["cuvee"]["attempts"]] == ["a/m", "b/m", "down/m"]


def test_nothing_to_serve_is_an_explicit_503(upstreams) -> None:
    b, _ = upstreams["b"]
    b.status = 500
    app, _ = gateway_app(config_of(upstreams, {"assistant": {"targets": ["down/m", "b/m"]}}))
    r = ask(TestClient(app), "assistant", stream=True)
    error = assert_error(r, 503, code="no_target_available")
    assert "down/m" in error["message"] and "b/m" in error["message"]


@pytest.mark.parametrize("fault", ["cut_after", "reset_after"])
def test_a_stream_cut_after_tokens_ends_as_an_error_never_as_a_stop(upstreams, fault) -> None:
    a, _ = upstreams["a"]
    setattr(a, fault, 3)
    app, _ = gateway_app(config_of(upstreams, {"assistant": {"targets": ["a/m", "b/m"]}}))
    r = ask(TestClient(app), "assistant", stream=True)
    events = events_of(r)
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "error"
    assert last["error"]["code"] == "upstream_broke" and last["cuvee"]["served_by"] == "a/m"
    reasons = [c["choices"][0].get("finish_reason") for c in events[:-2] if c.get("choices")]
    assert "stop" not in reasons and "length" not in reasons
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-2])
    assert text == "t0 t1 t2 "


@pytest.mark.parametrize("fault", ["cut_after", "reset_after"])
def test_a_stream_broken_on_one_replica_goes_on_on_the_other_without_gap_or_repeat(
    upstreams, fault
) -> None:
    a, _ = upstreams["a"]
    b, _ = upstreams["b"]
    setattr(a, fault, 3)
    routes = {"assistant": {"policy": "balance", "targets": ["a/m", "b/m"]}}
    extra = {"b": {"kind": "vllm"}}
    app, _ = gateway_app(config_of(upstreams, routes, **extra))
    r = ask(TestClient(app), "assistant", stream=True, max_tokens=50)
    events = events_of(r)
    assert events[-1] == "[DONE]"
    chunks = [c for c in events if isinstance(c, dict)]
    text = "".join(
        (c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices")
    )
    assert text == "".join(f"t{i} " for i in range(TOKENS))  # no gap, no repeat
    reasons = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
    assert "error" not in reasons and reasons[-1] == "stop"
    roles = [c["choices"][0]["delta"].get("role") for c in chunks if c.get("choices")]
    assert roles.count("assistant") == 1  # the replica's opening chunk is not sent twice
    final = chunks[-1]["cuvee"]
    assert final["served_by"] == "b/m"
    assert final["attempts"][0]["target"] == "a/m"
    assert "broke after 3 tokens" in final["attempts"][0]["error"]
    # what the replica was asked: to continue the answer so far, with the limit less it
    resumed = b.seen[-1]
    assert resumed["messages"][-1] == {"role": "assistant", "content": "t0 t1 t2 "}
    assert resumed["continue_final_message"] is True and resumed["max_tokens"] == 47


@pytest.mark.parametrize("declared", [None, False, True])
def test_a_replica_that_would_start_a_new_answer_is_not_asked_to_resume(upstreams, declared):
    """An `openai`-kind replica (the OpenAI API, llama-cpp-python's server) answers a final
    assistant message with a new answer: asked to resume, it would repeat what was sent. It
    is skipped, and the stream ends with an error, unless the upstream declares it goes on."""
    a, _ = upstreams["a"]
    b, _ = upstreams["b"]
    a.cut_after = 3
    routes = {"assistant": {"policy": "balance", "targets": ["a/m", "b/m"]}}
    extra = {} if declared is None else {"b": {"continues": declared}}
    app, _ = gateway_app(config_of(upstreams, routes, **extra))
    events = events_of(ask(TestClient(app), "assistant", stream=True, max_tokens=50))
    text, reasons = _stream_text(events)
    assert events[-1] == "[DONE]"
    if declared:
        assert text == "".join(f"t{i} " for i in range(TOKENS)) and reasons[-1] == "stop"
        assert b.seen[-1]["messages"][-1] == {"role": "assistant", "content": "t0 t1 t2 "}
        return
    assert text == "t0 t1 t2 " and reasons[-1] == "error" and not b.seen
    final = events[-2]
    assert final["error"]["code"] == "upstream_broke"
    skipped = final["cuvee"]["attempts"][-1]
    assert skipped["target"] == "b/m" and "resume skipped: kind openai" in skipped["error"]


@pytest.mark.parametrize("kind", ["vllm", "cuvee"])
def test_whitespace_a_trimming_replica_writes_again_is_not_passed_on_twice(upstreams, kind) -> None:
    a, _ = upstreams["a"]
    b, _ = upstreams["b"]
    a.cut_after = 3  # "t0 t1 t2 " sent: the answer so far ends with a space
    b.rewrites_trimmed = True  # b starts its continuation with that space again
    routes = {"assistant": {"policy": "balance", "targets": ["a/m", "b/m"]}}
    app, _ = gateway_app(config_of(upstreams, routes, b={"kind": kind}))
    events = events_of(ask(TestClient(app), "assistant", stream=True))
    chunks = [c for c in events if isinstance(c, dict) and c.get("choices")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    if kind == "vllm":  # a chat template trims: the space written again is dropped
        assert text == "".join(f"t{i} " for i in range(TOKENS))
    else:  # cuvee goes on after the last character: what it writes is passed on
        assert text == "t0 t1 t2  t3 t4 t5 "


def test_unknown_fields_reach_the_upstream_unchanged_and_the_model_is_renamed(upstreams) -> None:
    extra = {"a": {"rename": {"assistant-large": "m"}}}
    app, _ = gateway_app(config_of(upstreams, {}, **extra))
    client = TestClient(app)
    r = ask(
        client,
        "assistant-large",
        top_k=7,
        chat_template_kwargs={"enable_thinking": False},
        structured_outputs={"choice": ["yes", "no"]},
    )
    assert r.status_code == 200, r.text
    a, _ = upstreams["a"]
    sent = a.seen[-1]
    assert sent["model"] == "m" and sent["top_k"] == 7
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert sent["structured_outputs"] == {"choice": ["yes", "no"]}
    assert r.json()["model"] == "assistant-large"
    assert r.json()["usage"]["completion_tokens"] == TOKENS
    # an upstream's own 4xx comes back as it is, not retried elsewhere
    a.status = 400
    r = ask(client, "assistant-large")
    assert r.status_code == 400 and "a says 400" in r.json()["error"]["message"]


def test_models_lists_routes_and_upstream_models_and_keys_guard_them(upstreams, tmp_path) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, routed = keys.create("routed", models=["assistant"])
    app, _ = gateway_app(
        config_of(upstreams, {"assistant": {"targets": ["a/m", "fake"]}}), keys=keys
    )
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {routed}"}
    ids = [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
    assert ids == ["assistant"]  # the key sees its route, not the targets behind it
    body = {"model": "assistant", "messages": [{"role": "user", "content": "Hi"}]}
    r = client.post("/v1/chat/completions", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["cuvee"]["served_by"] == "a/m"
    # the local target behind the route needs no grant of its own: a dead upstream falls
    # through to it
    upstreams["a"][0].status = 500
    r = client.post("/v1/chat/completions", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["cuvee"]["served_by"] == "fake"
    direct = client.post("/v1/chat/completions", json={**body, "model": "fake"}, headers=auth)
    assert_error(direct, 404, code="model_not_found")


def test_the_openai_client_streams_through_a_fallback(upstreams) -> None:
    from openai import OpenAI

    app, _ = gateway_app(config_of(upstreams, {"assistant": {"targets": ["down/m", "b/m"]}}))
    with uvicorn_in_thread(app) as base:
        client = OpenAI(base_url=base + "/v1", api_key="none", http_client=httpx.Client())
        stream = client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "".join(f"t{i} " for i in range(TOKENS))


def test_without_upstreams_or_routes_nothing_changes() -> None:
    settings = load_settings()
    registry = ModelRegistry(settings, opener=Fakes(context=4096).open, names=lambda: ["fake"])
    client = TestClient(create_app(settings, registry, Authenticator(None)))
    r = ask(client, "fake")
    assert r.status_code == 200 and "cuvee" not in r.json()
    assert "x-cuvee-served-by" not in r.headers


def test_a_failing_upstream_is_cooled_down_tried_last_and_checked_back_in(upstreams) -> None:
    a, _ = upstreams["a"]
    a.status = 500
    cooldown = {"failures": 2, "window": 60, "seconds": 0.2}
    routes = {"assistant": {"targets": ["a/m", "b/m"]}}
    app, _ = gateway_app(config_of(upstreams, routes, a={"cooldown": cooldown}))
    with TestClient(app) as client:  # one event loop: the health check runs in it
        for _ in range(2):
            r = ask(client, "assistant")
            assert r.json()["cuvee"]["served_by"] == "b/m"
        assert len(a.seen) == 2
        metrics = client.get("/metrics").text
        assert 'cuvee_gateway_target_up{target="a"} 0.0' in metrics
        assert 'cuvee_gateway_target_failures_total{target="a"} 2.0' in metrics
        # cooled down: b is asked first, a not at all
        r = ask(client, "assistant")
        assert r.json()["cuvee"] == {"served_by": "b/m", "attempts": []}
        assert len(a.seen) == 2
        # a recovers; its health check (GET /models) puts it back in use
        a.status = None
        a.app.get("/v1/models")(lambda: {"object": "list", "data": []})
        deadline = time.monotonic() + 10
        while 'cuvee_gateway_target_up{target="a"} 1.0' not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the health check never brought a back"
            time.sleep(0.05)
        assert ask(client, "assistant").json()["cuvee"]["served_by"] == "a/m"


def test_a_target_that_cannot_honour_the_request_is_skipped_with_the_reason(upstreams) -> None:
    routes = {"assistant": {"targets": ["a/m", "b/m"]}}
    declared = {"a": {"supports": ["logprobs"], "context_length": 64}}
    app, _ = gateway_app(config_of(upstreams, routes, **declared))
    client = TestClient(app)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    r = ask(client, "assistant", tools=[tool])
    (attempt,) = r.json()["cuvee"]["attempts"]
    assert attempt["target"] == "a/m" and "does not support tools" in attempt["error"]
    assert r.json()["cuvee"]["served_by"] == "b/m"
    assert upstreams["a"][0].seen == []  # never asked
    r = ask(client, "assistant", max_tokens=500)
    assert "context is 64" in r.json()["cuvee"]["attempts"][0]["error"]
    # what it declares it can do goes to it
    r = ask(client, "assistant", logprobs=True, max_tokens=8)
    assert r.json()["cuvee"] == {"served_by": "a/m", "attempts": []}
    # a route none of whose targets can: a 400 with the reason (nothing failed), not a 503
    routes = {"only-a": {"targets": ["a/m"]}}
    client = TestClient(gateway_app(config_of(upstreams, routes, **declared))[0])
    error = assert_error(ask(client, "only-a", tools=[tool]), 400, code="model_not_supported_here")
    assert "a does not support tools" in error["message"]


def test_a_config_reload_changes_routes_and_keeps_what_did_not_change(upstreams) -> None:
    routes = {"assistant": {"targets": ["a/m"]}}
    config = config_of(upstreams, routes)
    app, _ = gateway_app(config)
    gateway = app.state.cuvee.extra["gateway"]
    client = TestClient(app)
    assert ask(client, "assistant").json()["cuvee"]["served_by"] == "a/m"
    kept = gateway.clients["a"]
    gateway.health.breakers["a"].failures.append(time.monotonic())  # a state to keep
    changed = config_of(
        upstreams, {"assistant": {"targets": ["b/m"]}, "second": {"targets": ["a/m"]}}
    )
    changed["upstreams"]["b"]["timeouts"] = {"connect": 1}
    notes = gateway.reload(GatewayConfig.model_validate(changed))
    assert "route assistant set" in notes and "route second set" in notes
    assert "upstream b changed" in notes and not any("upstream a" in n for n in notes)
    assert gateway.clients["a"] is kept and len(gateway.health.breakers["a"].failures) == 1
    assert ask(client, "assistant").json()["cuvee"]["served_by"] == "b/m"
    assert ask(client, "second").json()["cuvee"]["served_by"] == "a/m"


def test_serve_reloads_its_config_file_on_sighup(upstreams, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    _, a_url = upstreams["a"]
    config = tmp_path / "serve.yaml"
    config.write_text(f"upstreams:\n  a:\n    base_url: {a_url}\n    models: [m]\n")
    port = free_port()
    env = {**os.environ, "CUVEE_HOME": str(tmp_path / "home")}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cuvee", "serve", "--port", str(port), "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "cuvee serve did not start"
                time.sleep(0.2)
        ids = lambda: [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]]  # noqa: E731
        assert "team" not in ids()
        config.write_text(
            f"upstreams:\n  a:\n    base_url: {a_url}\n    models: [m]\n"
            "routes:\n  team:\n    targets: [a/m]\n"
        )
        proc.send_signal(signal.SIGHUP)
        while "team" not in ids():
            assert time.monotonic() < deadline, "the route never appeared"
            time.sleep(0.1)
        body = {"model": "team", "messages": [{"role": "user", "content": "Hi"}]}
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
        assert r.json()["cuvee"]["served_by"] == "a/m"
        # a broken edit is refused and the config in use stays
        config.write_text("routes:\n  team:\n    targets: [nowhere/m]\n")
        proc.send_signal(signal.SIGHUP)
        while "the config in use stays" not in log.read_text():
            assert time.monotonic() < deadline + 30, log.read_text()
            time.sleep(0.1)
        assert "team" in ids()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    err = log.read_text()
    assert "reloaded: route team set" in err and "no upstream 'nowhere'" in err


def test_a_stream_broken_on_an_upstream_replica_goes_on_on_the_local_replica(upstreams) -> None:
    a, _ = upstreams["a"]
    a.cut_after = 3
    routes = {"assistant": {"policy": "balance", "targets": ["a/m", "fake"]}}
    script = tuple(f"t{i} " for i in range(TOKENS))
    app, fakes = gateway_app(config_of(upstreams, routes), script=script, continues=True)
    with TestClient(app) as client:
        events = events_of(ask(client, "assistant", stream=True, max_tokens=50))
    chunks = [c for c in events if isinstance(c, dict)]
    text = "".join(
        (c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices")
    )
    assert events[-1] == "[DONE]" and text == "".join(script)  # no gap, no repeat
    reasons = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
    assert "error" not in reasons and reasons[-1] == "stop"
    assert chunks[-1]["cuvee"]["served_by"] == "fake"
    assert "broke after 3 tokens" in chunks[-1]["cuvee"]["attempts"][0]["error"]
    asked = fakes.opened["fake"].submitted[-1]
    assert asked.messages[-1] == {"role": "assistant", "content": "t0 t1 t2 "}
    assert asked.params.max_tokens == 47


def test_a_session_header_keeps_a_session_on_its_replica_until_the_replica_fails(
    upstreams,
) -> None:
    routes = {
        "assistant": {"policy": "balance", "targets": ["a/m", "b/m"], "session_header": "x-s"}
    }
    app, _ = gateway_app(config_of(upstreams, routes))
    body = {"model": "assistant", "messages": [{"role": "user", "content": "Hi"}]}

    def served(client, session: str) -> str:
        r = client.post("/v1/chat/completions", json=body, headers={"x-s": session})
        assert r.status_code == 200, r.text
        return r.json()["cuvee"]["served_by"]

    with TestClient(app) as client:
        first = {f"s{i}": served(client, f"s{i}") for i in range(24)}
        assert set(first.values()) == {"a/m", "b/m"}  # sessions spread over both replicas
        for _ in range(2):  # and each stays where it went, whatever else is in flight
            assert {s: served(client, s) for s in first} == first
        upstreams["a"][0].status = 500
        moved = {s: served(client, s) for s in first}
    assert set(moved.values()) == {"b/m"}  # a's sessions went to b ...
    stayed = [s for s, t in first.items() if t == "b/m"]
    assert all(moved[s] == "b/m" for s in stayed)  # ... and b's never moved
    config = config_of(upstreams, {"bad": {"targets": ["a/m"], "session_header": "x s"}})
    with pytest.raises(ValueError, match="session_header"):
        GatewayConfig.model_validate(config)


def _three_fakes(stack: ExitStack) -> dict[str, tuple[FakeUpstream, str]]:
    out = {}
    for name in ("a", "b", "c"):
        fake = FakeUpstream(name)
        out[name] = (fake, stack.enter_context(uvicorn_in_thread(fake.app)) + "/v1")
    return out


def _stream_text(events: list[Any]) -> tuple[str, list[Any]]:
    chunks = [c for c in events if isinstance(c, dict) and c.get("choices")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    return text, [c["choices"][0].get("finish_reason") for c in chunks]


def _under_faults(app, faults, requests: int, stream: bool = True) -> list[tuple[int, Any]]:
    """``requests`` chat requests, 12 at a time, while ``faults(i)`` (called as request i is
    sent) changes the fakes' knobs: each answer's status and events (or JSON body)."""
    import asyncio

    async def run() -> list[tuple[int, Any]]:
        transport = httpx.ASGITransport(app=app)
        gate = asyncio.Semaphore(12)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:

            async def one(i: int) -> tuple[int, Any]:
                async with gate:
                    faults(i)
                    body = {"model": "pool", "messages": [{"role": "user", "content": "Hi"}],
                            "stream": stream, "max_tokens": 50}  # fmt: skip
                    r = await c.post("/v1/chat/completions", json=body)
                    return r.status_code, events_of(r) if stream else r.json()

            return await asyncio.gather(*(one(i) for i in range(requests)))

    return asyncio.run(run())


def _schedule(fakes: dict[str, tuple[FakeUpstream, str]]):
    """A fault schedule over three replicas, changing every 30 requests (12 in flight): a cut
    after k tokens, a 500, a 429 with Retry-After, a 503. At most two replicas fail in a
    phase, and one replica is healthy in both of any two phases in a row, so a request that
    spans a change of phase still has a replica that serves it whole."""
    phases = [
        {"a": ("cut", 2)},
        {"a": ("cut", 4), "b": ("status", 500)},
        {"b": ("cut", 1)},
        {"b": ("cut", 3), "c": ("status", 429)},
        {"c": ("cut", 3)},
        {"c": ("cut", 1), "a": ("status", 503)},
    ]

    def faults(i: int) -> None:
        phase = phases[(i // 30) % len(phases)]
        for name, (fake, _) in fakes.items():
            kind, value = phase.get(name, (None, None))
            fake.cut_after = value if kind == "cut" else None
            fake.status = value if kind == "status" else None
            fake.retry_after = "1" if value == 429 else None

    return faults


def test_a_replica_pool_under_a_fault_schedule_loses_no_request_and_no_token() -> None:
    with ExitStack() as stack:
        fakes = _three_fakes(stack)
        routes = {"pool": {"policy": "balance", "targets": ["a/m", "b/m", "c/m"]}}
        goes_on = {name: {"continues": True} for name in fakes}  # the fakes go on with an answer
        app, _ = gateway_app(config_of(fakes, routes, **goes_on))
        results = _under_faults(app, _schedule(fakes), 360)
        whole = _under_faults(app, _schedule(fakes), 60, stream=False)
    want = "".join(f"t{i} " for i in range(TOKENS))
    assert [status for status, _ in results + whole].count(200) == 420  # 0 non-2xx
    for _, events in results:
        text, reasons = _stream_text(events)
        assert events[-1] == "[DONE]" and reasons[-1] == "stop" and "error" not in reasons
        assert text == want  # 0 duplicated or missing tokens, 0 truncated successes
    assert all(body["choices"][0]["message"]["content"] == want for _, body in whole)
    resumed = sum(1 for _, events in results if any("broke after" in str(e) for e in events[-3:]))
    assert resumed > 0  # the schedule did break streams part-way, and they went on


def test_a_cross_model_chain_under_faults_never_passes_a_cut_answer_as_a_success() -> None:
    with ExitStack() as stack:
        fakes = _three_fakes(stack)
        routes = {"pool": {"policy": "fallback", "targets": ["a/m", "b/m", "c/m"]}}
        app, _ = gateway_app(config_of(fakes, routes))
        results = _under_faults(app, _schedule(fakes), 180)

        def all_down(i: int) -> None:
            for fake, _ in fakes.values():
                fake.status, fake.cut_after = 500, None

        down = _under_faults(app, all_down, 12)
    want = "".join(f"t{i} " for i in range(TOKENS))
    outcomes = {"whole": 0, "error": 0}
    for status, events in results:
        assert status == 200
        text, reasons = _stream_text(events)
        assert events[-1] == "[DONE]"
        if reasons[-1] == "stop":
            assert text == want  # a "stop" is only ever a whole answer
            outcomes["whole"] += 1
        else:
            assert reasons[-1] == "error" and want.startswith(text)
            errored = [e for e in events if isinstance(e, dict) and e.get("error")]
            assert errored and errored[-1]["error"]["code"] == "upstream_broke"
            outcomes["error"] += 1
    assert outcomes["whole"] > 0 and outcomes["error"] > 0
    for status, events in down:  # nothing can serve: an explicit error, never an empty 200
        assert status == 503
        assert events == [] or "no_target_available" in json.dumps(events)


def test_an_azure_openai_upstream_gets_its_deployment_url_version_and_api_key_header(
    monkeypatch,
) -> None:
    seen: list[dict[str, Any]] = []
    azure = FastAPI()

    @azure.post("/openai/deployments/{deployment}/chat/completions")
    async def chat(deployment: str, request: Request):
        seen.append(
            {"deployment": deployment, "version": request.query_params.get("api-version"),
             "key": request.headers.get("api-key"), "auth": request.headers.get("authorization")}
        )  # fmt: skip
        return {"id": "az", "object": "chat.completion", "model": "gpt-4o", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ]}  # fmt: skip

    @azure.get("/openai/models")
    async def models(request: Request):
        ok = request.query_params.get("api-version") == "2024-10-21"
        return JSONResponse({"data": []}, status_code=200 if ok else 400)

    monkeypatch.setenv("AZ_KEY", "secret-1")
    with uvicorn_in_thread(azure) as url:
        upstream = {"base_url": url, "kind": "azure-openai", "api_version": "2024-10-21",
                    "api_key_env": "AZ_KEY", "models": ["big"],
                    "deployments": {"big": "prod-4o"}}  # fmt: skip
        app, _ = gateway_app({"upstreams": {"az": {"name": "az", **upstream}}})
        with TestClient(app) as client:
            r = ask(client, "big")
            assert r.status_code == 200 and r.json()["cuvee"]["served_by"] == "az/big"
            gateway = app.state.cuvee.extra["gateway"]
            assert client.portal.call(gateway.clients["az"].alive) is True  # its health check
    assert seen == [{"deployment": "prod-4o", "version": "2024-10-21", "key": "secret-1",
                     "auth": None}]  # fmt: skip
    with pytest.raises(ValueError, match="api_version"):
        GatewayConfig.model_validate(
            {"upstreams": {"az": {"name": "az", "base_url": url, "kind": "azure-openai"}}}
        )


def test_sse_comments_pass_through_a_stream_unchanged(upstreams) -> None:
    a, _ = upstreams["a"]
    a.comments = True
    app, _ = gateway_app(config_of(upstreams, {}))
    with TestClient(app) as client:
        r = ask(client, "a/m", stream=True)
    lines = [line for line in r.text.splitlines() if line]
    assert lines[0] == ": processing" and ": keep-alive" in lines
    text, reasons = _stream_text(events_of(r))
    assert text == "".join(f"t{i} " for i in range(TOKENS)) and reasons[-1] == "stop"


# -- failure modes -----------------------------------------------------------------------------


def test_an_upstream_that_never_sends_a_first_token_is_timed_out_and_the_next_serves(
    upstreams,
) -> None:
    a, _ = upstreams["a"]
    b, _ = upstreams["b"]
    a.hang_first = True
    # between_chunks is long: what gives a up is the first-token timeout
    slow_reads = {"timeouts": {"connect": 1, "first_token": 0.5, "between_chunks": 5}}
    routes = {"assistant": {"targets": ["a/m", "b/m"]}}
    app, _ = gateway_app(config_of(upstreams, routes, a=slow_reads))
    with TestClient(app) as client:
        r = ask(client, "assistant")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] == WANT
        assert body["cuvee"]["served_by"] == "b/m" and r.headers["x-cuvee-served-by"] == "b/m"
        (attempt,) = body["cuvee"]["attempts"]
        assert attempt["target"] == "a/m" and "Timeout" in attempt["error"]
        # a stream: a sends its headers, then nothing
        r = ask(client, "assistant", stream=True)
        assert r.status_code == 200, r.text
        events = events_of(r)
        text, reasons = _stream_text(events)
        assert text == WANT and reasons[-1] == "stop" and "error" not in reasons
        assert events[-1] == "[DONE]"
        final = events[-2]["cuvee"]
        assert final["served_by"] == "b/m"
        (attempt,) = final["attempts"]
        assert attempt["target"] == "a/m" and "Timeout" in attempt["error"]
    assert len(a.seen) == 2 and len(b.seen) == 2  # a was asked each time, and b answered


def test_a_stream_that_stalls_between_chunks_goes_on_on_a_replica(upstreams) -> None:
    a, _ = upstreams["a"]
    b, _ = upstreams["b"]
    a.stall_after = 3  # t0 t1 t2, then silence with the connection open
    routes = {"assistant": {"policy": "balance", "targets": ["a/m", "b/m"]}}
    app, _ = gateway_app(config_of(upstreams, routes, a=FAST, b={"kind": "vllm"}))
    with TestClient(app) as client:
        r = ask(client, "assistant", stream=True, max_tokens=50)
    events = events_of(r)
    text, reasons = _stream_text(events)
    assert text == WANT  # no gap, no repeat
    assert events[-1] == "[DONE]" and reasons[-1] == "stop" and "error" not in reasons
    final = events[-2]["cuvee"]
    assert final["served_by"] == "b/m"
    (attempt,) = final["attempts"]
    assert attempt["target"] == "a/m" and "broke after 3 tokens" in attempt["error"]
    assert "Timeout" in attempt["error"]
    assert b.seen[-1]["messages"][-1] == {"role": "assistant", "content": "t0 t1 t2 "}
    assert b.seen[-1]["max_tokens"] == 47
    # neither replica is left counted as busy (balance orders by it)
    assert app.state.cuvee.extra["gateway"].in_flight == {"a/m": 0, "b/m": 0}


@pytest.mark.parametrize(
    "targets", [["a/m"], ["a/m", "b/m"], ["a/m", "fake"]], ids=["alone", "fallback", "cross-model"]
)
def test_a_stream_that_stalls_without_a_replica_ends_as_an_error(upstreams, targets) -> None:
    a, _ = upstreams["a"]
    b, _ = upstreams["b"]
    a.stall_after = 3
    app, _ = gateway_app(config_of(upstreams, {"assistant": {"targets": targets}}, a=FAST))
    with TestClient(app) as client:
        r = ask(client, "assistant", stream=True)
    events = events_of(r)
    text, reasons = _stream_text(events)
    assert text == "t0 t1 t2 " and events[-1] == "[DONE]"
    assert reasons[-1] == "error" and "stop" not in reasons and "length" not in reasons
    last = events[-2]
    assert last["error"]["code"] == "upstream_broke" and last["cuvee"]["served_by"] == "a/m"
    assert "Timeout" in last["cuvee"]["attempts"][-1]["error"]
    assert b.seen == []  # another model never goes on with a's answer


def _no_malformed_line(response, malformed: str) -> None:
    """Every ``data:`` line the client got is JSON or [DONE]; the upstream's broken line is not
    among them, nor in any text."""
    for line in response.text.splitlines():
        assert line != f"data: {malformed}"
        if line.startswith("data: ") and line != "data: [DONE]":
            assert isinstance(json.loads(line[6:]), dict), line
    text, _ = _stream_text(events_of(response))
    assert malformed not in text


@pytest.mark.parametrize(
    "malformed",
    ["{not json", "[1, 2]", '"a string"', '{"choices": 5}'],
)
def test_a_malformed_chunk_breaks_the_stream_and_a_replica_goes_on(upstreams, malformed) -> None:
    a, _ = upstreams["a"]
    b, _ = upstreams["b"]
    a.malformed_after, a.malformed = 2, malformed  # then t2..t5 and [DONE] from a, as if fine
    routes = {"assistant": {"policy": "balance", "targets": ["a/m", "b/m"]}}
    app, _ = gateway_app(config_of(upstreams, routes, a=FAST, b={"kind": "vllm"}))
    with TestClient(app) as client:
        r = ask(client, "assistant", stream=True, max_tokens=50)
    _no_malformed_line(r, malformed)
    events = events_of(r)
    text, reasons = _stream_text(events)
    assert text == WANT and reasons[-1] == "stop" and "error" not in reasons
    final = events[-2]["cuvee"]
    assert final["served_by"] == "b/m"  # not a's own rest of the answer
    (attempt,) = final["attempts"]
    assert attempt["target"] == "a/m" and "broke after 2 tokens" in attempt["error"]
    assert "malformed" in attempt["error"]
    assert b.seen[-1]["messages"][-1] == {"role": "assistant", "content": "t0 t1 "}


@pytest.mark.parametrize("targets", [["a/m"], ["a/m", "b/m"]], ids=["alone", "fallback"])
def test_a_malformed_chunk_without_a_replica_ends_the_stream_as_an_error(
    upstreams, targets
) -> None:
    a, _ = upstreams["a"]
    b, _ = upstreams["b"]
    a.malformed_after = 2
    app, _ = gateway_app(config_of(upstreams, {"assistant": {"targets": targets}}, a=FAST))
    with TestClient(app) as client:
        r = ask(client, "assistant", stream=True)
    _no_malformed_line(r, a.malformed)
    events = events_of(r)
    text, reasons = _stream_text(events)
    assert text == "t0 t1 " and events[-1] == "[DONE]"  # nothing of a's after the broken line
    assert reasons[-1] == "error" and "stop" not in reasons
    last = events[-2]
    assert last["error"]["code"] == "upstream_broke" and last["cuvee"]["served_by"] == "a/m"
    assert b.seen == []


@contextlib.contextmanager
def _serving_on(app, port: int) -> Iterator[None]:
    """Serve ``app`` with uvicorn on ``port`` (a fixed one) in a thread until the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-fixed-port", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, f"no server on {port}"
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the server did not stop"


def test_an_upstream_stopped_and_started_again_on_its_port_is_used_again(upstreams) -> None:
    port = free_port()
    c = FakeUpstream("c")
    c.app.get("/v1/models")(lambda: {"object": "list", "data": []})  # its health check
    fakes = {"c": (c, f"http://127.0.0.1:{port}/v1"), "b": upstreams["b"]}
    quick = {**FAST, "cooldown": {"failures": 1, "window": 60, "seconds": 0.05}}
    app, _ = gateway_app(config_of(fakes, {"assistant": {"targets": ["c/m", "b/m"]}}, c=quick))

    def up(client) -> str:
        return client.get("/metrics").text.split('cuvee_gateway_target_up{target="c"} ')[1][:3]

    def stream_served(client) -> dict[str, Any]:
        events = events_of(ask(client, "assistant", stream=True))
        text, reasons = _stream_text(events)
        assert text == WANT and reasons[-1] == "stop" and events[-1] == "[DONE]"
        return events[-2]["cuvee"]

    with TestClient(app) as client:  # one event loop: the health check runs in it
        with _serving_on(c.app, port):
            assert ask(client, "assistant").json()["cuvee"] == {"served_by": "c/m", "attempts": []}
            assert stream_served(client) == {"served_by": "c/m", "attempts": []}
        # c is gone (its kept-alive connection closed with it): b serves
        r = ask(client, "assistant")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == WANT
        (attempt,) = r.json()["cuvee"]["attempts"]
        assert attempt["target"] == "c/m" and "Connect" in attempt["error"]
        assert r.json()["cuvee"]["served_by"] == "b/m"
        assert up(client) == "0.0"
        # cooled down: b first, c not even tried, streamed or whole
        assert stream_served(client) == {"served_by": "b/m", "attempts": []}
        assert ask(client, "assistant").json()["cuvee"] == {"served_by": "b/m", "attempts": []}
        asked = len(c.seen)
        with _serving_on(c.app, port):  # the same port again
            deadline = time.monotonic() + 10
            while up(client) != "1.0":
                assert time.monotonic() < deadline, "the health check never brought c back"
                time.sleep(0.02)
            assert ask(client, "assistant").json()["cuvee"] == {"served_by": "c/m", "attempts": []}
            assert stream_served(client) == {"served_by": "c/m", "attempts": []}
        assert len(c.seen) == asked + 2


@pytest.fixture
def real_upstream(tiny_spm_gemma_dir: Path, tmp_path: Path) -> Iterator[str]:
    """A second `cuvee serve` process serving the tiny model ``tg`` (exported to GGUF, run by
    llama.cpp) on a loopback port; its /v1 URL."""
    pytest.importorskip("llama_cpp")
    from cuvee.export.formats import export
    from cuvee.progress import SilentReporter
    from helpers import store_tiny

    settings, store = store_tiny(tiny_spm_gemma_dir, name="tg")  # the test's own CUVEE_HOME
    export(settings, store, "tg", "gguf", quant="f32", reporter=SilentReporter())
    port = free_port()
    log = tmp_path / "upstream.log"
    command = [sys.executable, "-m", "cuvee", "serve", "--port", str(port), "--model", "tg",
               "--threads", "1", "--drain-timeout", "0"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with _server_process(command, base + "/ready", log):
        yield base + "/v1"


@contextlib.contextmanager
def _server_process(command: list[str], ready_url: str, log: Path) -> Iterator[None]:
    """A server process (its output in ``log``), from when ``ready_url`` answers 200 until
    it is stopped."""
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "never got ready: " + log.read_text()
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_real_cuvee_serve_upstream_answers_behind_a_route(upstreams, real_upstream) -> None:
    fakes = {"down": upstreams["down"], "real": (None, real_upstream)}
    extra = {"down": {"models": ["tg"]}, "real": {"kind": "cuvee", "models": ["tg"]}}
    app, _ = gateway_app(
        config_of(fakes, {"assistant": {"targets": ["down/tg", "real/tg"]}}, **extra)
    )
    asked = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}
    direct = httpx.post(
        real_upstream + "/chat/completions", json={"model": "tg", **asked}, timeout=60
    )
    assert direct.status_code == 200, direct.text
    expected = direct.json()["choices"][0]["message"]["content"]
    assert expected and direct.json()["usage"]["completion_tokens"] >= 1
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={"model": "assistant", **asked})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "assistant" and r.headers["x-cuvee-served-by"] == "real/tg"
        assert body["choices"][0]["message"]["content"] == expected  # greedy: the same answer
        assert body["usage"] == direct.json()["usage"]
        assert body["cuvee"]["served_by"] == "real/tg"
        (attempt,) = body["cuvee"]["attempts"]
        assert attempt["target"] == "down/tg" and "Connect" in attempt["error"]
        r = client.post(
            "/v1/chat/completions", json={"model": "assistant", "stream": True, **asked}
        )
        assert r.status_code == 200, r.text
    events = events_of(r)
    text, reasons = _stream_text(events)
    assert text == expected and events[-1] == "[DONE]"
    assert reasons[-1] == direct.json()["choices"][0]["finish_reason"]
    assert "error" not in reasons
    assert all(e["model"] == "assistant" for e in events if isinstance(e, dict))
    assert events[-2]["cuvee"]["served_by"] == "real/tg"
    assert [a["target"] for a in events[-2]["cuvee"]["attempts"]] == ["down/tg"]


@pytest.fixture
def llama_cpp_server(tiny_spm_gemma_dir: Path, tmp_path: Path) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`; its
    ``server`` extra is in cuvee's dev dependencies) on the tiny model's GGUF, as model id
    ``tg``: its /v1 URL."""
    pytest.importorskip("llama_cpp.server.app")
    from cuvee.export.formats import export
    from cuvee.progress import SilentReporter
    from helpers import store_tiny

    settings, store = store_tiny(tiny_spm_gemma_dir, name="tg")
    gguf = export(settings, store, "tg", "gguf", quant="f32", reporter=SilentReporter())["path"]
    port = free_port()
    log = tmp_path / "llama-cpp-server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", gguf,
               "--model_alias", "tg", "--host", "127.0.0.1", "--port", str(port),
               "--n_threads", "1", "--n_ctx", "512", "--chat_format", "gemma"]  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    with _server_process(command, base + "/models", log):
        yield base


def test_llama_cpp_python_s_server_as_an_upstream(upstreams, llama_cpp_server) -> None:
    """A real second implementation of the API behind a route: the answer of a fallback, whole
    and streamed, is the server's own (greedy), and, as an `openai`-kind replica, it is not
    asked to go on with a stream another replica broke."""
    a, _ = upstreams["a"]
    a.cut_after = 2
    fakes = {"a": upstreams["a"], "down": upstreams["down"], "lcs": (None, llama_cpp_server)}
    extra = {"down": {"models": ["tg"]}, "lcs": {"models": ["tg"]}}
    routes = {
        "assistant": {"targets": ["down/tg", "lcs/tg"]},
        "pool": {"policy": "balance", "targets": ["a/m", "lcs/tg"]},
    }
    app, _ = gateway_app(config_of(fakes, routes, **extra))
    asked = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}
    direct = httpx.post(
        llama_cpp_server + "/chat/completions", json={"model": "tg", **asked}, timeout=60
    )
    assert direct.status_code == 200, direct.text
    expected = direct.json()["choices"][0]["message"]["content"]
    assert direct.json()["usage"]["completion_tokens"] >= 1
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={"model": "assistant", **asked})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "assistant" and body["cuvee"]["served_by"] == "lcs/tg"
        assert body["choices"][0]["message"]["content"] == expected
        assert body["usage"] == direct.json()["usage"]
        assert [a["target"] for a in body["cuvee"]["attempts"]] == ["down/tg"]
        r = client.post(
            "/v1/chat/completions", json={"model": "assistant", "stream": True, **asked}
        )
        assert r.status_code == 200, r.text
        events = events_of(r)
        text, reasons = _stream_text(events)
        assert text == expected and events[-1] == "[DONE]" and "error" not in reasons
        assert reasons[-1] == direct.json()["choices"][0]["finish_reason"]
        assert events[-2]["cuvee"]["served_by"] == "lcs/tg"
        asked_before = len(a.seen)
        events = events_of(ask(client, "pool", stream=True, max_tokens=8))
    text, reasons = _stream_text(events)
    assert len(a.seen) == asked_before + 1 and text == "t0 t1 " and reasons[-1] == "error"
    assert "resume skipped: kind openai" in events[-2]["cuvee"]["attempts"][-1]["error"]


@pytest.mark.parametrize("fault", ["cut_after", "reset_after"])
def test_the_openai_client_streams_through_a_resume_on_a_replica(upstreams, fault) -> None:
    from openai import OpenAI

    a, _ = upstreams["a"]
    b, _ = upstreams["b"]
    setattr(a, fault, 3)
    routes = {"assistant": {"policy": "balance", "targets": ["a/m", "b/m"]}}
    app, _ = gateway_app(config_of(upstreams, routes, b={"kind": "vllm"}))
    with uvicorn_in_thread(app) as base:
        client = OpenAI(
            base_url=base + "/v1", api_key="none", http_client=httpx.Client(), max_retries=0
        )
        stream = client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        chunks = list(stream)  # no exception
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == WANT
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [r for r in reasons if r] == ["stop"]
    assert chunks[-1].model_extra["cuvee"]["served_by"] == "b/m"
    assert len(a.seen) == 1 and b.seen[-1]["messages"][-1]["content"] == "t0 t1 t2 "


def test_the_openai_client_raises_on_a_stream_broken_without_a_replica(upstreams) -> None:
    import openai

    a, _ = upstreams["a"]
    a.cut_after = 3
    app, _ = gateway_app(config_of(upstreams, {"assistant": {"targets": ["a/m", "b/m"]}}))
    got = []
    with uvicorn_in_thread(app) as base:
        client = openai.OpenAI(
            base_url=base + "/v1", api_key="none", http_client=httpx.Client(), max_retries=0
        )
        stream = client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="broke after tokens") as info:
            for c in stream:
                got.append(c)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "t0 t1 t2 "
    assert not any(c.choices and c.choices[0].finish_reason for c in got)  # never a "stop"
    assert info.value.body["code"] == "upstream_broke"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_slow_first_token_within_the_first_token_timeout_is_waited_for(upstreams, stream) -> None:
    a, _ = upstreams["a"]
    a.delay_first = 1.0  # longer than between_chunks, well within first_token
    timeouts = {"timeouts": {"connect": 1, "first_token": 10, "between_chunks": 0.3}}
    routes = {"assistant": {"targets": ["a/m", "b/m"]}}
    app, _ = gateway_app(config_of(upstreams, routes, a=timeouts))
    with TestClient(app) as client:
        r = ask(client, "assistant", stream=stream)
    assert r.status_code == 200, r.text
    if stream:
        events = events_of(r)
        assert _stream_text(events)[0] == WANT
        cuvee = events[-2]["cuvee"]
    else:
        assert r.json()["choices"][0]["message"]["content"] == WANT
        cuvee = r.json()["cuvee"]
    assert cuvee == {"served_by": "a/m", "attempts": []}
