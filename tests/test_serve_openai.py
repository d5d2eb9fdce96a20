"""The official `openai` client against a real uvicorn server (in-process, port 0) serving a tiny
random Gemma 3 exported to GGUF and run by the llama.cpp engine: chat, streaming with usage,
completions, models, and errors raised as the SDK's own exception classes."""

from __future__ import annotations

import json
import shutil
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
    # the shared tiny model with a longer context: a tool block alone is ~700 of its tokens
    model_dir = tmp_path_factory.mktemp("tg-long") / "tg"
    shutil.copytree(tiny_spm_gemma_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = 2048
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as mp:  # the module's own home, not a test's
        mp.setenv("CUVEE_HOME", str(home))
        settings, store = store_tiny(model_dir, name="tg")
        export(settings, store, "tg", "gguf", quant="f32", reporter=SilentReporter())
    keys = KeyStore(home / "keys.sqlite")
    secrets = {name: keys.create(name)[1] for name in ("main", "other")}
    secrets["limited"] = keys.create("limited", rpm=1)[1]
    secrets["narrow"] = keys.create("narrow", models=["somewhere-else"])[1]
    registry = ModelRegistry(
        settings,
        max_loaded=1,
        preload=["tg"],
        engine_options={"n_ctx": 4 * 2048, "n_seq_max": 4, "n_threads": 1},
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


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["paris", "rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["utc", "cet"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


def test_logprobs_through_the_sdk(server) -> None:
    client = client_for(server)
    kwargs = dict(model="tg", messages=HELLO, max_tokens=6, temperature=0)
    r = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: argmax
        assert entry.top_logprobs[0].token == entry.token
    chunks = list(client.chat.completions.create(**kwargs, logprobs=True, stream=True))
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=21)
    assert bad.value.param == "top_logprobs"
    legacy = client.completions.create(
        model="tg", prompt="hello world", max_tokens=4, temperature=0, logprobs=2
    )
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) >= 1
    assert all(len(top) <= 2 for top in lp.top_logprobs)


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "get_time"}}],
    ids=["required", "named"],
)
def test_constrained_tool_calls_parse_in_the_sdk(server, choice) -> None:
    """A random model follows no format of its own: the grammar alone makes its answer a call
    the SDK parses, to a given function with arguments its schema allows."""
    client = client_for(server)
    r = client.chat.completions.create(
        model="tg",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER, CLOCK],
        tool_choice=choice,
        parallel_tool_calls=False,
        max_tokens=300,
        temperature=0,
    )
    (out,) = r.choices
    assert out.finish_reason == "tool_calls" and out.message.content is None
    (call,) = out.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    arguments = json.loads(call.function.arguments)
    if isinstance(choice, dict):
        assert call.function.name == "get_time" and arguments["zone"] in ("utc", "cet")
    else:
        assert call.function.name in ("get_weather", "get_time")
        assert set(arguments) in ({"city"}, {"zone"})

    # the same call streamed, as the SDK's stream helper accumulates it
    with client.chat.completions.stream(
        model="tg",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER, CLOCK],
        tool_choice=choice,
        parallel_tool_calls=False,
        max_tokens=300,
        temperature=0,
    ) as stream:
        final = stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert (streamed.function.name, streamed.function.arguments) == (
        call.function.name,
        call.function.arguments,
    )

    # the call and its result sent back: the model answers (the history renders)
    follow = client.chat.completions.create(
        model="tg",
        messages=[
            {"role": "user", "content": "weather?"},
            out.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=[WEATHER, CLOCK],
        tool_choice="none",
        max_tokens=4,
    )
    assert follow.choices[0].finish_reason in ("stop", "length")
    assert isinstance(follow.choices[0].message.content, str)


def test_unknown_tool_choice_is_a_bad_request(server) -> None:
    client = client_for(server)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="tg",
            messages=HELLO,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert bad.value.param == "tool_choice"
