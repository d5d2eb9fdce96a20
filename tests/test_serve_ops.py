"""Operations: the structured request log (one JSON line per /v1 request, never a key or, unless
asked, a prompt) and graceful shutdown (open streams finish, new requests get 503) through a
real uvicorn server in a thread, with the scripted fake engine of test_serve."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import threading

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from cuvee.serve.drain import DrainingServer
from cuvee.serve.keys import KeyStore
from cuvee.serve.requestlog import RequestLog
from test_serve import Fakes, assert_error, chat, make_app, sse_events


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.fixture
def logged(tmp_path):
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("team")
    buffer = io.StringIO()
    app, _ = make_app(keys=keys, request_log=RequestLog(stream=buffer))
    return TestClient(app), {"Authorization": f"Bearer {secret}"}, buffer, secret


def test_one_line_per_request_without_key_or_text(logged) -> None:
    client, auth, buffer, secret = logged
    r = chat(client, auth)
    assert r.status_code == 200
    chat(client, auth, stream=True, n=2, max_tokens=2)
    client.get("/health")  # probes are not logged
    first, second = lines(buffer)
    assert first["request_id"] == r.headers["x-request-id"] and first["request_id"].startswith(
        "req_"
    )
    assert first["route"] == "/v1/chat/completions" and first["model"] == "fake"
    assert first["key"] == "team" and first["status"] == 200
    assert (
        first["completion_tokens"] == 5
        and first["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    )
    assert first["finish_reasons"] == ["stop"]
    assert first["ttft_s"] >= 0 and first["latency_s"] >= first["ttft_s"]
    assert second["finish_reasons"] == ["length", "length"] and second["completion_tokens"] == 4
    text = buffer.getvalue()
    assert secret not in text and secret[:12] not in text
    assert "hi there" not in text and "Hello" not in text  # no prompt, no output
    assert "prompt" not in first and "output" not in first


def test_refused_requests_are_logged_with_their_error(logged) -> None:
    client, auth, buffer, _ = logged
    assert_error(chat(client, auth, temperature=-3), 400)
    assert_error(chat(client, auth, model="nope"), 404)
    assert_error(chat(client, {"Authorization": "Bearer cv-wrong"}), 401)
    bad, missing, unauthorized = lines(buffer)
    assert bad["status"] == 400 and bad["error"] == {"code": None, "param": "temperature"}
    assert bad["key"] == "team" and bad["completion_tokens"] is None
    assert missing["status"] == 404 and missing["error"]["code"] == "model_not_found"
    assert missing["model"] == "nope"
    assert unauthorized["status"] == 401 and unauthorized["key"] is None
    assert unauthorized["error"]["code"] == "invalid_api_key"


def test_prompts_and_outputs_only_when_asked(tmp_path) -> None:
    path = tmp_path / "logs" / "requests.jsonl"
    log = RequestLog(path, log_prompts=True)
    tools = [{"type": "function", "function": {"name": "f"}}]
    script = ('{"tool_calls": [{"name": "f", "arguments": {}}]}',)
    app, _ = make_app(Fakes(script=script, context=4096), request_log=log)
    client = TestClient(app)
    chat(client, tools=tools, tool_choice="required")
    client.post("/v1/completions", json={"model": "fake", "prompt": "once upon"})
    log.close()
    call, completion = [json.loads(line) for line in path.read_text().splitlines()]
    assert call["prompt"] == [{"role": "user", "content": "hi there"}]
    assert call["output"] == [script[0]] and call["finish_reasons"] == ["tool_calls"]
    assert completion["route"] == "/v1/completions" and completion["prompt"] == "once upon"
    assert completion["output"] == [script[0]] and completion["key"] is None


# -- graceful shutdown --------------------------------------------------------------------------


@contextlib.contextmanager
def served(app, server_class=uvicorn.Server, **kw):
    """``app`` on a free port in a thread: (server, thread, root URL)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = server_class(config, **kw)
    thread = threading.Thread(target=server.run, name="uvicorn-drain-test", daemon=True)
    thread.start()
    for _ in range(600):
        if server.started or not thread.is_alive():
            break
        thread.join(timeout=0.05)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, thread, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class Reader(threading.Thread):
    """A streaming chat request read to its end; ``first`` is set once text has arrived."""

    def __init__(self, root: str) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.first = threading.Event()
        self.body = ""

    def run(self) -> None:
        payload = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream(
            "POST", f"{self.root}/v1/chat/completions", json=payload, timeout=60
        ) as r:
            for chunk in r.iter_text():
                self.body += chunk
                if '"Hello"' in self.body:
                    self.first.set()
        self.first.set()

    def text(self) -> str:
        events = sse_events(self.body)
        assert events[-1] == "[DONE]"
        return "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])


def test_sigterm_drains_open_streams_and_refuses_new_work() -> None:
    gate = threading.Event()
    app, fakes = make_app(Fakes(gate=gate))
    state = app.state.cuvee
    with served(app, DrainingServer, state=state, drain_timeout=120) as (server, thread, root):
        reader = Reader(root)
        reader.start()
        assert reader.first.wait(timeout=30)  # the stream is open, its engine waits on the gate
        server.handle_exit(signal.SIGTERM, None)
        refused = httpx.post(
            f"{root}/v1/chat/completions",
            json={"model": "fake", "messages": [{"role": "user", "content": "x"}]},
        )
        assert_error(refused, 503, code="server_shutting_down")
        assert refused.headers["retry-after"]
        assert httpx.get(f"{root}/ready").json() == {"status": "draining"}
        assert thread.is_alive() and not fakes.opened["fake"].closed  # still serving the stream
        gate.set()
        reader.join(timeout=30)
        assert reader.text() == "Hello, world!"  # the open stream finished whole
        thread.join(timeout=30)
        assert not thread.is_alive()  # and then the server exited by itself
        assert fakes.opened["fake"].closed


def test_uvicorn_should_exit_lets_an_open_stream_finish() -> None:
    gate = threading.Event()
    app, fakes = make_app(Fakes(gate=gate))
    with served(app) as (server, thread, root):
        reader = Reader(root)
        reader.start()
        assert reader.first.wait(timeout=30)
        server.should_exit = True
        for _ in range(600):  # until the listening socket is closed: shutdown has begun
            try:
                httpx.get(f"{root}/health", timeout=1)
            except httpx.TransportError:
                break
            thread.join(timeout=0.05)
        else:
            pytest.fail("the server kept accepting connections")
        assert not fakes.opened["fake"].closed
        gate.set()
        reader.join(timeout=30)
        assert reader.text() == "Hello, world!"
        thread.join(timeout=30)
        assert not thread.is_alive() and fakes.opened["fake"].closed
