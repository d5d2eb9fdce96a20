"""Oversized and malformed requests: each gets a 4xx in OpenAI's error shape before the server
does work it cannot finish (a 50 MB body never reaches the tokenizer), and the server keeps
answering afterwards. Cases found by the fuzzer (test_serve_fuzz) are kept here as small tests."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from fastapi.testclient import TestClient

from cuvee.config import load_settings
from cuvee.serve.app import create_app
from cuvee.serve.models import ModelRegistry
from helpers import uvicorn_in_thread
from test_serve import Fakes, assert_error, chat, make_app

MB = 1_000_000


@pytest.fixture
def served():
    app, fakes = make_app()
    client = TestClient(app)
    yield client, fakes
    assert chat(client).status_code == 200, "the server stopped answering"
    # refused or served, every request stopped counting as arriving (an engine gathering a
    # burst would otherwise wait its full delay before every first step)
    assert client.app.state.cuvee.arrivals.count("fake") == 0


def test_an_engine_is_told_of_requests_still_on_their_way() -> None:
    """The server counts each request from its arrival to its submission and hands engines
    that can gather a burst the count: a request being submitted counts itself."""
    app, fakes = make_app()
    client = TestClient(app)
    seen: list[int] = []
    counts = []

    assert chat(client).status_code == 200  # opens the engine
    engine = fakes.opened["fake"]
    submit = engine.submit

    def counting_submit(request):
        seen.append(counts[-1]())
        return submit(request)

    engine.submit = counting_submit
    engine.set_arrivals = counts.append
    assert chat(client).status_code == 200
    assert chat(client, n=2).status_code == 200
    assert seen[:1] == [1] and seen[1:] == [1, 1]
    assert app.state.cuvee.arrivals.count("fake") == 0


def big_chat_body(size: int) -> bytes:
    """A chat request of ``size`` bytes whose prompt is words (each a token to the fake)."""
    head = b'{"model": "fake", "messages": [{"role": "user", "content": "'
    tail = b'"}]}'
    words = b"word " * ((size - len(head) - len(tail)) // 5 + 1)
    return head + words[: size - len(head) - len(tail)] + tail


# -- the body size limit ----------------------------------------------------------------------


def test_a_50_mb_body_is_refused_before_it_is_parsed(served) -> None:
    client, fakes = served
    body = big_chat_body(50 * MB)
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "json"})
    error = assert_error(r, 413, code="request_too_large")
    assert "16 MB" in error["message"] and "CUVEE_SERVE_MAX_BODY_MB" in error["message"]
    assert r.headers["connection"] == "close"
    assert fakes.count == 0  # no engine opened, nothing tokenized


async def post_in_chunks(app, path: str, chunks: list[bytes]) -> tuple[int, dict, int]:
    """POST a body without Content-Length straight through ASGI (the test client would read
    the whole body first): the status, the JSON answer and how many chunks the app pulled."""
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        if pulled == len(chunks):
            return {"type": "http.disconnect"}
        pulled += 1
        return {
            "type": "http.request",
            "body": chunks[pulled - 1],
            "more_body": pulled < len(chunks),
        }

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    scope |= {"http_version": "1.1", "scheme": "http", "query_string": b"", "root_path": ""}
    scope |= {"server": ("test", 80), "client": ("test", 1234)}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def test_a_chunked_body_is_cut_off_once_past_the_limit(served) -> None:
    """No Content-Length to trust: the server counts what it reads and stops at the limit."""
    client, fakes = served
    head = b'{"model": "fake", "prompt": "'
    chunks = [head] + [b"word " * (MB // 5)] * 50 + [b'"}']
    status, body, pulled = asyncio.run(post_in_chunks(client.app, "/v1/completions", chunks))
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert pulled == 1 + 16  # the head and 16 chunks of 1 MB, just past 16 MB; no more
    assert fakes.count == 0
    # the same body within the limit goes through: the counting itself refuses nothing
    fitting = [head] + [b"word " * 2] * 50 + [b'"}']
    status, body, pulled = asyncio.run(post_in_chunks(client.app, "/v1/completions", fitting))
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert pulled == len(fitting)


def test_the_limit_is_the_serve_max_body_mb_setting(monkeypatch) -> None:
    monkeypatch.setenv("CUVEE_SERVE_MAX_BODY_MB", "0.001")  # 1000 bytes
    app, fakes = make_app()
    client = TestClient(app)
    assert chat(client).status_code == 200
    r = client.post("/v1/chat/completions", content=big_chat_body(1001))
    error = assert_error(r, 413, code="request_too_large")
    assert "0.001 MB" in error["message"]
    assert len(fakes.opened["fake"].submitted) == 1  # only the small request reached it
    for path in ("/v1/embeddings", "/v1/retrieve", "/v1/models"):  # every route, even a GET
        assert_error(client.post(path, content=b" " * 2000), 413)
    assert chat(client).status_code == 200
    counted = app.state.cuvee.metrics.value(
        "cuvee_requests_total", {"route": "unmatched", "status": "413"}
    )
    assert counted == 4  # the metrics see the refusals


def test_uvicorn_answers_413_without_waiting_for_the_body() -> None:
    """A client that announces 50 MB and sends none of it still gets its answer: the limit is
    checked on the header, before a byte of the body is read."""
    app, fakes = make_app()
    with uvicorn_in_thread(app) as root:
        host, port = root.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
                f"Content-Type: application/json\r\nContent-Length: {50 * MB}\r\n\r\n"
            )
            sock.sendall(head.encode())
            received = b""
            while chunk := sock.recv(65536):  # the server closes the connection after it
                received += chunk
        status, _, body = received.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 413"), received
        assert json.loads(body)["error"]["code"] == "request_too_large"
    assert fakes.count == 0


# -- malformed bodies -------------------------------------------------------------------------


def test_invalid_utf8_is_a_400(served) -> None:
    client, fakes = served
    body = b'{"model": "fake", "messages": [{"role": "user", "content": "caf\xe9 \xff"}]}'
    assert_error(client.post("/v1/chat/completions", content=body), 400)
    assert_error(client.post("/v1/completions", content=b"\xff\xfe{}"), 400)
    assert fakes.count == 0


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_a_400(served) -> None:
    client, fakes = served
    assert_error(client.post("/v1/chat/completions", content=nested(100_000)), 400)
    schema = '{"type": "object", "properties": {"a": ' + nested(100_000) + "}}"
    body = (
        '{"model": "fake", "messages": [{"role": "user", "content": "hi"}], "response_format": '
        '{"type": "json_schema", "json_schema": {"name": "x", "schema": ' + schema + "}}}"
    )
    assert_error(client.post("/v1/chat/completions", content=body), 400)
    body = '{"model": "fake", "input": ' + nested(100_000) + "}"
    assert_error(client.post("/v1/embeddings", content=body), 400)
    assert fakes.count == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"hello"',
        b"42",
        b"{",
        b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}]',
        b"model=fake&messages=hi",
    ],
)
def test_bodies_that_are_not_a_json_object_are_400s(served, body) -> None:
    client, _ = served
    assert_error(client.post("/v1/chat/completions", content=body), 400)


# -- values the server cannot honour ----------------------------------------------------------


def test_huge_max_tokens_is_a_400_naming_the_context(served) -> None:
    client, fakes = served
    for value in (10**9, 10**30):
        error = assert_error(chat(client, max_tokens=value), 400, code="context_length_exceeded")
        assert "maximum context length is 64 tokens" in error["message"]
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "x", "max_tokens": 10**9})
    assert_error(r, 400, param="prompt", code="context_length_exceeded")
    assert fakes.opened["fake"].submitted == []


def test_a_prompt_longer_than_the_context_is_a_400(served) -> None:
    client, fakes = served
    long = " ".join(["word"] * 500)
    r = chat(client, messages=[{"role": "user", "content": long}])
    assert_error(r, 400, param="messages", code="context_length_exceeded")
    r = client.post("/v1/completions", json={"model": "fake", "prompt": long})
    assert_error(r, 400, param="prompt", code="context_length_exceeded")
    assert fakes.opened["fake"].submitted == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": 5}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"temperature": "hot"}, "temperature"),
        ({"n": [1]}, "n"),
        ({"stream": {"yes": True}}, "stream"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"stop": [1, 2]}, "stop"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"top_k": 2**63}, "top_k"),
    ],
)
def test_wrong_types_are_400s_naming_the_parameter(served, body, param) -> None:
    client, fakes = served
    assert_error(chat(client, **body), 400, param=param)
    assert fakes.count == 0


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ("/v1/chat/completions", {"model": "fake"}, "messages"),
        ("/v1/chat/completions", {"model": "fake", "messages": [{"content": "hi"}]}, None),
        ("/v1/completions", {"model": "fake"}, "prompt"),
        ("/v1/completions", {"prompt": "hi"}, "model"),
        ("/v1/embeddings", {"model": "fake"}, "input"),
        ("/v1/retrieve", {"query": "hi"}, "collection"),
    ],
)
def test_missing_fields_are_400s_naming_the_parameter(served, path, body, param) -> None:
    client, fakes = served
    error = assert_error(client.post(path, json=body), 400, param=param)
    assert "Missing required parameter" in error["message"]
    assert fakes.count == 0


def test_an_unknown_model_is_a_404_on_every_route(served) -> None:
    client, fakes = served
    assert_error(chat(client, model="nope"), 404, param="model", code="model_not_found")
    r = client.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
    assert_error(r, 404, param="model", code="model_not_found")
    r = client.post("/v1/embeddings", json={"model": "nope", "input": "hi"})
    assert_error(r, 404, param="model", code="model_not_found")
    assert_error(client.get("/v1/models/nope"), 404, param="model", code="model_not_found")
    assert fakes.count == 0


def test_an_unexpected_failure_is_a_500_in_openai_shape_and_the_server_goes_on() -> None:
    """A bug (here an engine that cannot even be opened, failing with no cuvee error) still
    answers in OpenAI's shape, so clients raise their own error class."""
    fakes = Fakes()

    def opener(name: str):
        if name == "other":
            raise RuntimeError("a bug in the engine")
        return fakes.open(name)

    settings = load_settings()
    registry = ModelRegistry(settings, opener=opener, names=lambda: ["fake", "other"])
    client = TestClient(create_app(settings, registry), raise_server_exceptions=False)
    error = assert_error(chat(client, model="other"), 500)
    assert error["type"] == "server_error" and "a bug" not in error["message"]
    assert chat(client).status_code == 200
    assert client.app.state.cuvee.capacity.used == 0  # the failed request gave back its slot


def test_the_openapi_schema_documents_the_request_bodies(served) -> None:
    """The routes parse their bodies themselves, yet /docs (and the fuzzer) see their shapes."""
    client, _ = served
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, name in [
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/v1/embeddings", "EmbeddingRequest"),
        ("/v1/retrieve", "RetrieveRequest"),
    ]:
        body = spec["paths"][path]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"]["$ref"].endswith("/" + name)
        assert "model" in schemas[name]["properties"] or name == "RetrieveRequest"
    assert schemas["ChatMessage"]["properties"]["role"]["enum"][:3] == [
        "system",
        "developer",
        "user",
    ]
    assert schemas["ChatCompletionRequest"]["additionalProperties"] is False
