"""`cuvee serve` without a model: a fake engine that emits scripted tokens, injected through the
registry, behind the real app. Response shapes, streaming, every error mapping, API keys and
their limits, client disconnects, concurrent streams and metrics."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cuvee.config import load_settings
from cuvee.errors import ConfigError
from cuvee.serve.app import create_app
from cuvee.serve.keys import Authenticator, KeyStore, RateLimiter, digest
from cuvee.serve.models import ModelRegistry
from fakes import FakeEngine


class Fakes:
    """Engines opened by the registry, by model name (the last one opened for each)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.opened: dict[str, FakeEngine] = {}
        self.count = 0

    def open(self, name: str) -> FakeEngine:
        self.count += 1
        self.opened[name] = FakeEngine(name, **self.options)
        return self.opened[name]


def make_app(fakes: Fakes | None = None, *, keys: KeyStore | None = None, clock=None, **kw):
    fakes = fakes or Fakes()
    settings = load_settings()
    registry = ModelRegistry(
        settings,
        opener=fakes.open,
        names=lambda: ["fake", "other"],
        max_loaded=kw.pop("max_loaded", 2),
        preload=kw.pop("preload", ()),
        adapters=kw.pop("adapters", None),
        adapter_file=kw.pop("adapter_file", None),
    )
    limiter = RateLimiter(clock) if clock else RateLimiter()
    app = create_app(settings, registry, Authenticator(keys, limiter), **kw)
    return app, fakes


@pytest.fixture
def served():
    app, fakes = make_app()
    return TestClient(app), fakes


def chat(client, headers=None, **body):
    payload = {"model": "fake", "messages": [{"role": "user", "content": "hi there"}], **body}
    return client.post("/v1/chat/completions", json=payload, headers=headers or {})


def sse_events(text: str) -> list[Any]:
    """The data of each server-sent event: parsed JSON, or the literal [DONE]."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_error(response, status: int, param: str | None = None, code: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# -- chat ---------------------------------------------------------------------------------------


def test_chat_completion_has_openai_shape_and_maps_the_request(served) -> None:
    client, fakes = served
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": t} for t in ("one", "two")]},
    ]
    r = chat(client, messages=messages, temperature=0.5, top_p=0.9, seed=3, stop="!")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "fake" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello, world", "refusal": None}
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    usage = body["usage"]
    assert usage["completion_tokens"] == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    (request,) = fakes.opened["fake"].submitted
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one\ntwo"},
    ]
    p = request.params
    assert (p.temperature, p.top_p, p.seed, p.stop) == (0.5, 0.9, 3, ["!"])
    assert p.top_k == 0 and p.min_p == 0.0  # OpenAI semantics unless extensions say otherwise


def test_max_tokens_n_and_extensions(served) -> None:
    client, fakes = served
    r = chat(
        client,
        max_completion_tokens=2,
        n=2,
        seed=7,
        top_k=5,
        repeat_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-1,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert all(c["message"]["content"] == "Hello," for c in body["choices"])
    first, second = fakes.opened["fake"].submitted
    assert (first.params.seed, second.params.seed) == (7, 8)  # choices differ, reproducibly
    assert first.params.max_tokens == 2 and first.params.top_k == 5
    assert first.params.repeat_penalty == 1.1
    assert first.params.presence_penalty == 0.5 and first.params.frequency_penalty == -1
    # the prompt is counted once, the completions of both choices
    n_prompt = len(fakes.opened["fake"].prompt_tokens(first))
    assert body["usage"] == {
        "prompt_tokens": n_prompt,
        "completion_tokens": 4,
        "total_tokens": n_prompt + 4,
    }


def test_default_max_tokens_is_clamped_to_the_context(served) -> None:
    client, fakes = served
    assert chat(client).status_code == 200
    (request,) = fakes.opened["fake"].submitted
    n_prompt = len(fakes.opened["fake"].prompt_tokens(request))
    assert request.params.max_tokens == 64 - n_prompt


def test_response_format_becomes_a_json_schema(served) -> None:
    client, fakes = served
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    r = chat(client, response_format=fmt)
    assert r.status_code == 200, r.text
    assert chat(client, response_format={"type": "json_object"}).status_code == 200
    assert chat(client, response_format={"type": "text"}).status_code == 200
    first, second, third = fakes.opened["fake"].submitted
    assert first.params.json_schema == schema
    assert second.params.json_schema == {"type": "object"}
    assert third.params.json_schema is None
    r = chat(client, response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert_error(r, 400, param="response_format.json_schema.schema")


def test_chat_streaming_shape_with_usage(served) -> None:
    client, _ = served
    r = chat(client, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello, world!"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finish] == ["stop"]
    *body, last = chunks
    assert all(c["usage"] is None for c in body)
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5
    assert last["usage"]["total_tokens"] == sum(
        last["usage"][k] for k in ("prompt_tokens", "completion_tokens")
    )


def test_streaming_without_usage_has_no_usage_chunk(served) -> None:
    client, _ = served
    events = sse_events(chat(client, stream=True, n=2, max_tokens=3).text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in c and c["choices"] for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(ch["delta"].get("content", "") for ch in mine) == "Hello, world"
        assert mine[-1]["finish_reason"] == "length"


# -- completions and models ---------------------------------------------------------------------


def test_completions_plain_list_echo_and_stream(served) -> None:
    client, fakes = served
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "once upon"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "Hello, world!"
    assert fakes.opened["fake"].submitted[0].prompt == "once upon"
    assert fakes.opened["fake"].submitted[0].params.max_tokens == 16  # OpenAI's default

    payload = {"model": "fake", "prompt": ["a", "b c"], "n": 2, "echo": True, "max_tokens": 1}
    r = client.post("/v1/completions", json=payload)
    body = r.json()
    assert [c["text"] for c in body["choices"]] == ["aHello", "aHello", "b cHello", "b cHello"]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == 2 + 3  # each prompt once
    assert body["usage"]["completion_tokens"] == 4

    payload = {"model": "fake", "prompt": "x", "stream": True}
    r = client.post("/v1/completions", json={**payload, "stream_options": {"include_usage": True}})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and len({e["id"] for e in events[:-1]}) == 1
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "Hello, world!"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["prompt_tokens"] == 2


def test_models_list_and_get(served) -> None:
    client, _ = served
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    # the chat models, then the embedding model (served beside them, see test_serve_embeddings)
    assert [m["id"] for m in body["data"]] == ["fake", "other", "all-minilm-l6-v2"]
    assert all(m["object"] == "model" and "owned_by" in m for m in body["data"])
    r = client.get("/v1/models/other")
    assert r.status_code == 200 and r.json()["id"] == "other"
    assert_error(client.get("/v1/models/nope"), 404, param="model", code="model_not_found")


def test_models_come_from_the_store_by_default() -> None:
    settings = load_settings()
    registry = ModelRegistry(settings)
    assert registry.ids() == [] and not registry.exists("../etc") and not registry.exists("a:b")
    client = TestClient(create_app(settings, registry))
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["all-minilm-l6-v2"]  # no chat model stored
    assert_error(chat(client), 404, code="model_not_found")


def test_health_ready_metrics_need_no_key(tmp_path) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    keys.create("team")
    app, _ = make_app(keys=keys)
    client = TestClient(app)
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert_error(client.get("/v1/models"), 401)
    assert_error(client.get("/nowhere"), 404)


def test_ready_waits_for_preloaded_models() -> None:
    app, fakes = make_app(preload=["other"])
    with TestClient(app) as client:  # runs the lifespan, which preloads in the background
        for _ in range(500):
            r = client.get("/ready")
            if r.status_code == 200:
                break
            assert r.json()["status"] == "loading"
            time.sleep(0.01)
        assert r.status_code == 200 and r.json()["loaded"] == ["other"]
        assert client.get("/v1/models").json()["data"][0]["id"] == "other"
    assert fakes.opened["other"].closed  # shutdown closes the engines


def test_ready_reports_a_failed_preload() -> None:
    def broken(name: str) -> FakeEngine:
        raise ConfigError(f"cannot open {name}")

    settings = load_settings()
    registry = ModelRegistry(settings, opener=broken, names=lambda: ["x"], preload=["x"])
    with TestClient(create_app(settings, registry)) as client:
        for _ in range(500):
            r = client.get("/ready")
            if r.json()["status"] != "loading":
                break
            time.sleep(0.01)
        assert r.status_code == 503 and r.json() == {"status": "error", "error": "cannot open x"}
        error = assert_error(chat(client, model="x"), 500)
        assert "could not be loaded: cannot open x" in error["message"]


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": -3}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": 5}, "stop"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"logit_bias": {"5": 1}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f"}}] * 2}, "tools"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        (
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": "c"}]},
            "messages[0].tool_call_id",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": "x",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}],
                    }
                ]
            },
            "messages[0].tool_calls",
        ),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens"),
        ({"bogus": 1}, "bogus"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"model": None}, "model"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(served, body, param) -> None:
    client, fakes = served
    error = assert_error(chat(client, **body), 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert "fake" not in fakes.opened  # refused before any engine was loaded


def test_missing_field_and_broken_json_are_400(served) -> None:
    client, _ = served
    r = client.post("/v1/chat/completions", json={"model": "fake"})
    assert "messages" in assert_error(r, 400, param="messages")["message"]
    json_header = {"content-type": "application/json"}
    r = client.post("/v1/chat/completions", content=b"{not json", headers=json_header)
    assert "JSON" in assert_error(r, 400)["message"]
    assert_error(client.post("/v1/completions", json=[1, 2]), 400)
    r = client.post("/v1/completions", json={"model": "fake", "prompt": [1, 2, 3]})
    assert_error(r, 400, param="prompt")
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "x", "suffix": "y"})
    assert_error(r, 400, param="suffix")


def test_unknown_model_is_404(served) -> None:
    client, _ = served
    error = assert_error(chat(client, model="nope"), 404, param="model", code="model_not_found")
    assert "nope" in error["message"]


def test_context_length_exceeded(served) -> None:
    client, _ = served
    long = " ".join(["word"] * 80)
    r = chat(client, messages=[{"role": "user", "content": long}])
    assert_error(r, 400, param="messages", code="context_length_exceeded")
    r = chat(client, max_tokens=60)  # the prompt fits, prompt + completion does not
    error = assert_error(r, 400, param="messages", code="context_length_exceeded")
    assert "64" in error["message"]
    r = client.post("/v1/completions", json={"model": "fake", "prompt": long})
    assert_error(r, 400, param="prompt", code="context_length_exceeded")


def test_a_full_queue_is_503_and_slots_come_back() -> None:
    app, _ = make_app(max_queue=2)
    client = TestClient(app)
    r = chat(client, n=3)
    assert_error(r, 503, code="server_overloaded")
    assert r.headers["retry-after"]
    assert chat(client, n=2).status_code == 200
    assert app.state.cuvee.capacity.used == 0


def test_generation_errors_are_500_or_an_error_event() -> None:
    app, _ = make_app(Fakes(fail_after=2))
    client = TestClient(app)
    error = assert_error(chat(client), 500)
    assert "broke" in error["message"] and error["type"] == "server_error"
    events = sse_events(chat(client, stream=True).text)
    assert "broke" in events[-1]["error"]["message"] and "[DONE]" not in events
    app, _ = make_app(Fakes(shut_down=True))
    client = TestClient(app)
    assert "shutting down" in assert_error(chat(client), 500)["message"]
    events = sse_events(chat(client, stream=True).text)
    assert "shutting down" in events[-1]["error"]["message"]


# -- keys ---------------------------------------------------------------------------------------


def test_keys_are_required_once_one_exists(tmp_path) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    app, _ = make_app(keys=keys)
    client = TestClient(app)
    assert chat(client).status_code == 200  # no key configured: open
    _, secret = keys.create("team")
    assert_error(chat(client), 401, code="missing_api_key")
    assert_error(chat(client, {"Authorization": "Bearer cv-nope"}), 401, code="invalid_api_key")
    assert_error(chat(client, {"Authorization": f"Basic {secret}"}), 401)
    assert_error(chat(client, {"Authorization": f"Bearer {secret}x"}), 401)
    assert chat(client, {"Authorization": f"Bearer {secret}"}).status_code == 200
    # 401 comes before body validation
    r = client.post("/v1/chat/completions", content=b"{", headers={})
    assert_error(r, 401)
    keys.revoke("team")  # takes effect at once; with no key left the server is open again
    assert chat(client).status_code == 200
    _, other = keys.create("other")
    assert_error(chat(client, {"Authorization": f"Bearer {secret}"}), 401)
    assert chat(client, {"Authorization": f"Bearer {other}"}).status_code == 200


def test_a_key_limited_to_models_sees_only_those(tmp_path) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("narrow", models=["other"])
    app, _ = make_app(keys=keys)
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {secret}"}
    assert_error(chat(client, auth), 404, param="model", code="model_not_found")
    assert chat(client, auth, model="other").status_code == 200
    listed = client.get("/v1/models", headers=auth).json()["data"]
    assert [m["id"] for m in listed] == ["other"]
    assert_error(client.get("/v1/models/fake", headers=auth), 404)


def test_requests_per_minute_limit_is_429_with_retry_after(tmp_path) -> None:
    now = [1000.0]
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("slow", rpm=2)
    app, _ = make_app(keys=keys, clock=lambda: now[0])
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {secret}"}
    assert chat(client, auth).status_code == 200
    now[0] += 10
    assert chat(client, auth).status_code == 200
    r = chat(client, auth)
    error = assert_error(r, 429, code="rate_limit_exceeded")
    assert r.headers["retry-after"] == "50" and "RPM" in error["message"]
    assert_error(chat(client, auth, temperature=-1), 400)  # invalid requests cost no quota
    now[0] += 50
    assert chat(client, auth).status_code == 200


def test_tokens_per_minute_limit_is_429(tmp_path) -> None:
    now = [0.0]
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("thrifty", tpm=5)
    app, _ = make_app(keys=keys, clock=lambda: now[0])
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {secret}"}
    assert chat(client, auth).status_code == 200  # uses more than 5 tokens
    now[0] += 1
    r = chat(client, auth)
    assert "TPM" in assert_error(r, 429)["message"]
    assert r.headers["retry-after"] == "59"
    now[0] += 59
    assert chat(client, auth).status_code == 200


def test_keys_store_only_hashes(tmp_path) -> None:
    path = tmp_path / "keys.sqlite"
    keys = KeyStore(path)
    record, secret = keys.create("ci", rpm=10, tpm=1000, models=["a", "b"])
    assert secret.startswith("cv-") and len(secret) > 40
    keys.close()
    raw = path.read_bytes()
    assert secret.encode() not in raw and secret.split("-", 2)[2].encode() not in raw
    assert digest(secret).encode() in raw
    assert path.stat().st_mode & 0o077 == 0
    row = sqlite3.connect(path).execute("SELECT * FROM keys").fetchone()
    assert secret not in json.dumps(row)
    again = KeyStore(path)
    assert again.verify(secret) == record
    assert again.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert again.verify("") is None and again.verify("cv-") is None
    (listed,) = again.list()
    assert listed.models == ("a", "b") and listed.rpm == 10 and listed.tpm == 1000
    with pytest.raises(ConfigError, match="already exists"):
        again.create("ci")
    with pytest.raises(ConfigError, match="invalid key name"):
        again.create("no spaces")
    again.revoke("ci")
    assert again.verify(secret) is None and not again.has_active()
    with pytest.raises(ConfigError, match="no active key"):
        again.revoke("ci")
    again.create("ci")  # the name is free again


def test_a_running_server_sees_the_first_key_made_and_the_last_one_revoked(tmp_path) -> None:
    path = tmp_path / "keys.sqlite"
    app, _ = make_app(keys=KeyStore(path))
    body = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}]}
    with TestClient(app) as client:
        for _ in range(2):  # no key yet: open (the answer is cached while the file is as it was)
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        cli_store = KeyStore(path)  # the CLI, another process in real use
        _, secret = cli_store.create("ops")
        assert_error(client.post("/v1/chat/completions", json=body), 401)
        auth = {"Authorization": f"Bearer {secret}"}
        assert client.post("/v1/chat/completions", json=body, headers=auth).status_code == 200
        cli_store.revoke("ops")
        assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_keys_cli_create_list_revoke(tmp_path) -> None:
    from cuvee.cli.keys import keys

    settings = load_settings()
    runner = CliRunner()
    args = ["create", "--name", "bot", "--rpm", "5", "--models", "a,b"]
    result = runner.invoke(keys, args, obj=settings)
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith("cv-") and "shown only now" in result.stderr
    assert "note: no model 'a'" in result.stderr
    assert secret.encode() not in (settings.home / "keys.sqlite").read_bytes()

    listed = runner.invoke(keys, ["list"], obj=settings)
    assert "bot" in listed.stdout and "a,b" in listed.stdout and secret not in listed.output
    as_json = json.loads(runner.invoke(keys, ["list", "--json"], obj=settings).stdout)
    assert as_json[0]["name"] == "bot" and as_json[0]["rpm"] == 5
    assert secret.startswith(as_json[0]["id"]) and "key" not in as_json[0]

    made = json.loads(runner.invoke(keys, ["create", "--name", "j", "--json"], obj=settings).stdout)
    assert made["key"].startswith("cv-")

    revoked = runner.invoke(keys, ["revoke", "bot"], obj=settings)
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    assert "bot" not in runner.invoke(keys, ["list"], obj=settings).stdout
    assert "REVOKED" in runner.invoke(keys, ["list", "--all"], obj=settings).stdout
    again = runner.invoke(keys, ["revoke", "bot"], obj=settings)
    assert isinstance(again.exception, ConfigError)


def test_serve_refuses_an_exposed_host_without_keys(tmp_path) -> None:
    from cuvee.cli.serve import check_exposure, is_loopback, serve

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert not is_loopback("myhost.lan")
    assert check_exposure("127.0.0.1", False, False) is None
    assert check_exposure("0.0.0.0", True, False) is None
    assert "insecure" in check_exposure("0.0.0.0", False, True)
    with pytest.raises(ConfigError, match="without API keys"):
        check_exposure("0.0.0.0", False, False)
    result = CliRunner().invoke(serve, ["--host", "0.0.0.0"], obj=load_settings())
    assert isinstance(result.exception, ConfigError)
    result = CliRunner().invoke(serve, ["--model", "missing"], obj=load_settings())
    assert "missing" in str(result.exception)


# -- engines, disconnects, concurrency ----------------------------------------------------------


def test_registry_unloads_the_least_recently_used_idle_engine() -> None:
    fakes = Fakes()
    registry = ModelRegistry(None, opener=fakes.open, names=lambda: ["a", "b", "c"], max_loaded=2)
    a = registry.acquire("a")
    registry.release("a")
    b = registry.acquire("b")
    registry.release("b")
    assert registry.acquire("a") is a  # reused, and now the most recent
    registry.release("a")
    registry.acquire("c")  # b is the least recently used: closed
    assert b.closed and not a.closed and sorted(registry.loaded()) == ["a", "c"]
    # an engine in use is never closed under its request: the limit waits for a release
    registry.acquire("a")
    registry.acquire("b")
    assert sorted(registry.loaded()) == ["a", "b", "c"]
    registry.release("c")
    assert sorted(registry.loaded()) == ["a", "b"]
    fakes.opened["c"].closed_event.wait(timeout=10)  # closed off the event loop
    assert fakes.opened["c"].closed
    registry.close()
    assert fakes.opened["a"].closed and fakes.opened["b"].closed


def _asgi_scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }


async def _disconnect_after_first_chunk(app, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Drive the app as a server would, the client hanging up once the first body chunk
    arrives (at once for a non-streaming request)."""
    sent: list[dict[str, Any]] = []
    first_chunk = asyncio.Event()
    if not payload.get("stream"):
        first_chunk.set()
    body = json.dumps(payload).encode()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await first_chunk.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_chunk.set()

    await asyncio.wait_for(app(_asgi_scope("/v1/chat/completions"), receive, send), 20)
    return sent


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_disconnect_cancels_the_engine_handle(stream: bool) -> None:
    app, fakes = make_app(Fakes(endless=True, context=100_000))
    payload = {"model": "fake", "messages": [{"role": "user", "content": "go"}], "stream": stream}
    payload["max_tokens"] = 50_000  # minutes of tokens: only the cancel ends it
    asyncio.run(_disconnect_after_first_chunk(app, payload))
    engine = fakes.opened["fake"]
    engine.join()
    (handle,) = engine.handles
    assert handle.cancelled and [f.reason for f in engine.finishes] == ["cancelled"]
    state = app.state.cuvee
    assert state.capacity.used == 0
    assert state.metrics.value("cuvee_active_sequences", {"model": "fake"}) == 0
    assert state.metrics.value("cuvee_cancelled_sequences_total", {"model": "fake"}) == 1
    # the engine was given back, so it can be unloaded
    assert state.registry._slots["fake"].users == 0


def test_concurrent_streams_all_progress() -> None:
    """Each request's tokens wait until all three requests are submitted: if consuming one
    stream blocked the event loop, the others would never be submitted."""
    barrier = threading.Barrier(3, timeout=20)
    app, _ = make_app(Fakes(barrier=barrier))

    async def three() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            payload = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
            return await asyncio.gather(
                client.post("/v1/chat/completions", json={**payload, "stream": True}),
                client.post("/v1/chat/completions", json={**payload, "stream": True}),
                client.post("/v1/chat/completions", json=payload),
            )

    first, second, third = asyncio.run(three())
    for r in (first, second):
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
        assert text == "Hello, world!"
    assert third.json()["choices"][0]["message"]["content"] == "Hello, world!"


def test_metrics_count_requests_tokens_and_latency(served) -> None:
    client, _ = served
    app_metrics = client.app.state.cuvee.metrics
    chat(client)
    chat(client, stream=True)
    chat(client, temperature=-1)
    client.get("/v1/models/fake")
    route = {"route": "/v1/chat/completions"}
    assert app_metrics.value("cuvee_requests_total", {**route, "status": "200"}) == 2
    assert app_metrics.value("cuvee_requests_total", {**route, "status": "400"}) == 1
    model_route = {"route": "/v1/models/{model_id}", "status": "200"}
    assert app_metrics.value("cuvee_requests_total", model_route) == 1
    assert app_metrics.value("cuvee_completion_tokens_total", {"model": "fake"}) == 10
    assert app_metrics.value("cuvee_prompt_tokens_total", {"model": "fake"}) > 0
    assert app_metrics.value("cuvee_time_to_first_token_seconds_count", {"model": "fake"}) == 2
    assert app_metrics.value("cuvee_request_duration_seconds_count", route) == 3
    assert app_metrics.value("cuvee_active_sequences", {"model": "fake"}) == 0
    text = client.get("/metrics").text
    assert 'cuvee_requests_total{route="/v1/chat/completions",status="200"} 2.0' in text
    assert "cuvee_loaded_models 1.0" in text


def test_many_apps_keep_separate_state(tmp_path: Path) -> None:
    first, _ = make_app()
    second, _ = make_app()
    chat(TestClient(first))
    assert (
        second.state.cuvee.metrics.value(
            "cuvee_requests_total", {"route": "/v1/chat/completions", "status": "200"}
        )
        == 0
    )
