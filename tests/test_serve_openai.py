"""The official `openai` client against a real uvicorn server (in-process, port 0) serving a tiny
random Gemma 3 exported to GGUF and run by the llama.cpp engine: chat, streaming with usage,
completions, models, and errors raised as the SDK's own exception classes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from helpers import store_tiny, uvicorn_in_thread

pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tiny_spm_gemma_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from cuvee.export.formats import export
    from cuvee.progress import SilentReporter
    from cuvee.serve.app import create_app
    from cuvee.serve.keys import Authenticator, KeyStore
    from cuvee.serve.models import ModelRegistry

    home = tmp_path_factory.mktemp("serve-home")
    with pytest.MonkeyPatch.context() as mp:  # the module's own home, not a test's
        mp.setenv("CUVEE_HOME", str(home))
        settings, store = store_tiny(tiny_spm_gemma_dir, name="tg")
        export(settings, store, "tg", "gguf", quant="f32", reporter=SilentReporter())
    keys = KeyStore(home / "keys.sqlite")
    secrets = {name: keys.create(name)[1] for name in ("main", "other")}
    secrets["limited"] = keys.create("limited", rpm=1)[1]
    secrets["narrow"] = keys.create("narrow", models=["somewhere-else"])[1]
    registry = ModelRegistry(
        settings,
        max_loaded=1,
        preload=["tg"],
        engine_options={"n_ctx": 1024, "n_seq_max": 4, "n_threads": 1},
    )
    app = create_app(settings, registry, Authenticator(keys))
    with uvicorn_in_thread(app) as root:
        for _ in range(600):  # the preloaded model is opened in the background
            if httpx.get(f"{root}/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert httpx.get(f"{root}/ready").json()["status"] == "ready"
        yield SimpleNamespace(root=root, url=f"{root}/v1", keys=secrets, state=app.state.cuvee)


def client_for(server, key: str = "main") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=server.keys.get(key, key), max_retries=0)


HELLO = [{"role": "user", "content": "hello world"}]


def test_chat_completion(server) -> None:
    client = client_for(server)
    r = client.chat.completions.create(model="tg", messages=HELLO, max_tokens=8, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.model == "tg" and r.object == "chat.completion"
    (choice,) = r.choices
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 3 and 1 <= r.usage.completion_tokens <= 8
    again = client.chat.completions.create(model="tg", messages=HELLO, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # greedy is deterministic


def test_chat_streaming_with_usage_matches_the_whole_response(server) -> None:
    client = client_for(server)
    whole = client.chat.completions.create(model="tg", messages=HELLO, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tg",
            messages=HELLO,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens


def test_sampling_with_a_seed_and_several_choices(server) -> None:
    client = client_for(server)
    kwargs = dict(model="tg", messages=HELLO, max_tokens=6, temperature=1.0, seed=11, n=2)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]


def test_completions_plain_and_streamed(server) -> None:
    client = client_for(server)
    r = client.completions.create(model="tg", prompt="hello world", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 5
    stream = client.completions.create(
        model="tg", prompt="hello world", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == r.choices[0].text
    listed = client.completions.create(model="tg", prompt=["a", "the answer"], max_tokens=2)
    assert len(listed.choices) == 2


def test_json_object_response_format(server) -> None:
    client = client_for(server)
    r = client.chat.completions.create(
        model="tg",
        messages=HELLO,
        max_tokens=12,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert r.choices[0].message.content.lstrip().startswith("{")


def test_models(server) -> None:
    client = client_for(server)
    assert "tg" in [m.id for m in client.models.list()]
    assert client.models.retrieve("tg").id == "tg"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_errors_raise_the_sdk_exceptions(server) -> None:
    client = client_for(server)
    with pytest.raises(openai.AuthenticationError):
        client_for(server, "cv-wrong").models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=HELLO)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):  # a key limited to other models
        client_for(server, "narrow").chat.completions.create(model="tg", messages=HELLO)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tg", messages=HELLO, temperature=-3)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="tg", messages=HELLO, max_tokens=5000)
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as penalty:
        client.chat.completions.create(model="tg", messages=HELLO, presence_penalty=3)
    assert penalty.value.param == "presence_penalty"
    ok = client.chat.completions.create(
        model="tg", messages=HELLO, max_tokens=4, presence_penalty=1, frequency_penalty=0.5
    )
    assert ok.choices[0].finish_reason in ("stop", "length")
    limited = client_for(server, "limited")
    limited.chat.completions.create(model="tg", messages=HELLO, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limit:
        limited.chat.completions.create(model="tg", messages=HELLO, max_tokens=1)
    assert int(limit.value.response.headers["retry-after"]) >= 1


def test_concurrent_streams_and_a_dropped_client(server) -> None:
    results: dict[int, str] = {}

    def run(i: int) -> None:
        stream = client_for(server, "other").chat.completions.create(
            model="tg", messages=HELLO, max_tokens=10, temperature=0, stream=True
        )
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3 and len(set(results.values())) == 1  # batched, same greedy text

    # a client that hangs up mid-stream: its sequence is cancelled and its slot given back
    headers = {"Authorization": f"Bearer {server.keys['other']}"}
    body = {"model": "tg", "messages": HELLO, "max_tokens": 200, "stream": True}
    body["temperature"] = 1.0
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    for _ in range(400):
        if server.state.capacity.used == 0:
            break
        time.sleep(0.05)
    assert server.state.capacity.used == 0
    metrics = httpx.get(f"{server.root}/metrics").text
    assert 'cuvee_active_sequences{model="tg"} 0.0' in metrics
    assert 'route="/v1/chat/completions",status="200"' in metrics
