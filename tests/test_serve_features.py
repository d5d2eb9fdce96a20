"""Logprobs and tool calling through the real app with the scripted fake engine of test_serve:
the OpenAI shapes (whole and streamed), what reaches the engine (the logprobs count, the tool
block in the prompt, the grammar's schema, history turns) and how answers are parsed."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from test_serve import Fakes, assert_error, chat, make_app, sse_events

CALL = ('{"tool_calls": [', '{"name": "get_weather", ', '"arguments": {"city": "paris"}}', "]}")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["paris", "rome"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time."}}


def client_with(script=None) -> tuple[TestClient, Fakes]:
    fakes = Fakes(script=script, context=4096) if script else Fakes(context=4096)
    app, fakes = make_app(fakes)
    return TestClient(app), fakes


# -- logprobs -----------------------------------------------------------------------------------


def test_chat_logprobs_have_openai_shape_and_reach_the_engine() -> None:
    client, fakes = client_with()
    r = chat(client, logprobs=True, top_logprobs=2)
    assert r.status_code == 200, r.text
    logprobs = r.json()["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    content = logprobs["content"]
    assert [e["token"] for e in content] == ["Hello", ",", " world", "!"]
    assert [e["logprob"] for e in content] == [-0.1, -0.2, -0.3, -0.4]
    assert content[2]["bytes"] == list(b" world")
    assert content[0]["top_logprobs"] == [
        {"token": "alt0", "logprob": -1.1, "bytes": list(b"alt0")},
        {"token": "alt1", "logprob": -2.1, "bytes": list(b"alt1")},
    ]
    assert (
        chat(client, logprobs=True).json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        == []
    )
    assert chat(client).json()["choices"][0]["logprobs"] is None
    asked = [r.params.logprobs for r in fakes.opened["fake"].submitted]
    assert asked == [2, 0, None]  # nothing is computed for a request that does not ask


def test_streamed_chat_logprobs_go_with_their_text() -> None:
    client, _ = client_with()
    events = sse_events(chat(client, stream=True, logprobs=True, top_logprobs=1, stop="d!").text)
    chunks = [e["choices"][0] for e in events[:-1] if e["choices"]]
    entries, text = [], ""
    for choice in chunks:
        piece = choice["delta"].get("content", "")
        got = (choice["logprobs"] or {}).get("content", [])
        if got:  # the tokens a chunk reports make up the text it carries (held text included)
            assert "".join(e["token"] for e in got).startswith(piece) or piece == ""
        entries += got
        text += piece
    assert text == "Hello, worl"  # the stop string "d!" cut the text, not the logprobs
    assert [e["token"] for e in entries] == ["Hello", ",", " world", "!"]
    assert all(len(e["top_logprobs"]) == 1 for e in entries)
    plain = sse_events(chat(client, stream=True).text)
    assert all(e["choices"][0]["logprobs"] is None for e in plain[:-1])


def test_completion_logprobs_have_the_legacy_shape() -> None:
    client, fakes = client_with()
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "x", "logprobs": 2})
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["Hello", ",", " world", "!"]
    assert lp["token_logprobs"] == [-0.1, -0.2, -0.3, -0.4]
    assert lp["top_logprobs"][0] == {"alt0": -1.1, "alt1": -2.1}
    assert lp["text_offset"] == [0, 5, 6, 12]
    payload = {"model": "fake", "prompt": "x", "logprobs": 0, "stream": True}
    events = sse_events(client.post("/v1/completions", json=payload).text)
    streamed = [e["choices"][0]["logprobs"] for e in events[:-1]]
    assert [t for s in streamed if s for t in s["tokens"]] == lp["tokens"]
    assert [o for s in streamed if s for o in s["text_offset"]] == lp["text_offset"]
    assert fakes.opened["fake"].submitted[1].params.logprobs == 0
    bad = {"model": "fake", "prompt": "x", "logprobs": 6}
    assert_error(client.post("/v1/completions", json=bad), 400, param="logprobs")
    echo = {"model": "fake", "prompt": "x", "logprobs": 1, "echo": True}
    assert_error(client.post("/v1/completions", json=echo), 400, param="logprobs")


# -- tools --------------------------------------------------------------------------------------


def test_auto_tool_call_is_parsed_into_tool_calls() -> None:
    client, fakes = client_with(CALL)
    r = chat(client, tools=[WEATHER, TIME])
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None and message["role"] == "assistant"
    (call,) = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "paris"}
    (request,) = fakes.opened["fake"].submitted
    system = request.messages[0]
    assert system["role"] == "system" and "get_weather" in system["content"]
    assert "The time." in system["content"] and '"enum": ["paris", "rome"]' in system["content"]
    assert request.params.json_schema is None  # auto is not constrained
    assert request.messages[1] == {"role": "user", "content": "hi there"}


def test_auto_plain_answer_stays_content_and_streams() -> None:
    client, _ = client_with()
    r = chat(client, tools=[WEATHER], tool_choice="auto")
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "Hello, world!" and choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]
    events = sse_events(chat(client, tools=[WEATHER], stream=True).text)
    deltas = [e["choices"][0]["delta"].get("content") for e in events[1:-1]]
    assert deltas[:3] == ["Hello", ",", " world"]  # streamed as it comes, not held to the end


def test_a_streamed_tool_call_has_openai_deltas() -> None:
    client, _ = client_with(CALL)
    events = sse_events(chat(client, tools=[WEATHER], stream=True).text)
    assert events[-1] == "[DONE]"
    choices = [e["choices"][0] for e in events[:-1]]
    assert all(not c["delta"].get("content") for c in choices)  # no JSON leaks as content
    calls = [c["delta"]["tool_calls"][0] for c in choices if "tool_calls" in c["delta"]]
    first, second = calls
    assert first["index"] == 0 and first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads(second["function"]["arguments"]) == {"city": "paris"}
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["tool_calls"]


def test_required_and_named_choices_constrain_with_a_schema() -> None:
    client, fakes = client_with(CALL)
    r = chat(client, tools=[WEATHER, TIME], tool_choice="required")
    assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
    named = {"type": "function", "function": {"name": "get_weather"}}
    chat(client, tools=[WEATHER, TIME], tool_choice=named)
    chat(client, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    required, by_name, single = (r.params.json_schema for r in fakes.opened["fake"].submitted)
    items = required["properties"]["tool_calls"]
    assert required["required"] == ["tool_calls"] and items["minItems"] == 1
    assert "maxItems" not in items
    names = [c["properties"]["name"] for c in items["items"]["anyOf"]]
    assert names == [{"const": "get_weather"}, {"const": "get_time"}]
    assert (
        items["items"]["anyOf"][0]["properties"]["arguments"] == WEATHER["function"]["parameters"]
    )
    assert items["items"]["anyOf"][1]["properties"]["arguments"] == {"type": "object"}
    named_items = by_name["properties"]["tool_calls"]
    assert named_items["maxItems"] == 1
    assert [c["properties"]["name"] for c in named_items["items"]["anyOf"]] == [
        {"const": "get_weather"}
    ]
    assert single["properties"]["tool_calls"]["maxItems"] == 1
    prompt = fakes.opened["fake"].submitted[1].messages[0]["content"]
    assert "You must call the function get_weather" in prompt


def test_none_renders_no_tools_and_a_response_format_combines_with_auto() -> None:
    client, fakes = client_with()
    chat(client, tools=[WEATHER], tool_choice="none")
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    chat(client, tools=[WEATHER], response_format=fmt)
    none, auto = fakes.opened["fake"].submitted
    assert none.messages == [{"role": "user", "content": "hi there"}]
    assert none.params.json_schema is None
    schema = auto.params.json_schema
    assert schema["anyOf"][1] == {"type": "object"}
    assert schema["anyOf"][0]["required"] == ["tool_calls"]


def test_a_call_cut_by_max_tokens_is_content_with_length() -> None:
    client, _ = client_with(CALL)
    choice = chat(client, tools=[WEATHER], tool_choice="required", max_tokens=2).json()
    choice = choice["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "".join(CALL[:2])


def test_calls_and_results_in_the_history_become_text_turns() -> None:
    client, fakes = client_with()
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "rome"}'},
    }
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather in rome?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "and so?"},
    ]
    r = chat(client, messages=messages, tools=[WEATHER])
    assert r.status_code == 200, r.text
    (request,) = fakes.opened["fake"].submitted
    roles = [m["role"] for m in request.messages]
    assert roles == ["system", "user", "assistant", "user"]  # alternating, as templates require
    assert request.messages[0]["content"].startswith("Be brief.\n\nYou can call these functions")
    answer = json.loads(request.messages[2]["content"])
    assert answer == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "rome"}}]}
    result = request.messages[3]["content"]
    assert result.startswith("Tool result (get_weather, call_1):\nsunny") and "and so?" in result


# -- BASE:ADAPTER ids ---------------------------------------------------------------------------


def test_adapters_share_their_base_engine() -> None:
    exported: list[str] = []

    def adapter_file(name: str) -> str:
        exported.append(name)
        return f"/adapters/{name}-lora.gguf"

    pairs = [("fake", "style"), ("fake", "tone"), ("other", "terse")]
    app, fakes = make_app(adapters=lambda: pairs, adapter_file=adapter_file)
    client = TestClient(app)
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert {"fake:style", "fake:tone", "other:terse"} <= set(listed)
    style = listed["fake:style"]
    assert (style["kind"], style["parent"], style["adapter"], style["loaded"]) == (
        "adapter",
        "fake",
        "style",
        False,
    )
    for model in ("fake:style", "fake", "fake:tone", "fake:style"):
        r = chat(client, model=model)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model
    assert fakes.count == 1  # one engine for the base and both adapters
    engine = fakes.opened["fake"]
    assert [r.lora for r in engine.submitted] == ["style", None, "tone", "style"]
    assert engine.adapters == ["style", "tone"] and exported == ["style", "tone"]  # once each
    assert engine.adapter_files == ["/adapters/style-lora.gguf", "/adapters/tone-lora.gguf"]
    assert client.get("/v1/models/fake:style").json()["loaded"] is True
    assert app.state.cuvee.registry._slots["fake"].users == 0  # the adapter released its base
    streamed = sse_events(chat(client, model="fake:tone", stream=True).text)
    assert streamed[-1] == "[DONE]" and streamed[0]["model"] == "fake:tone"


def test_unknown_adapters_are_404() -> None:
    app, fakes = make_app(adapters=lambda: [("fake", "style")], adapter_file=str)
    client = TestClient(app)
    for model in ("fake:nope", "other:style", "nope:style", "fake:", ":style", "fake:style:x"):
        assert_error(chat(client, model=model), 404, param="model", code="model_not_found")
        assert_error(client.get(f"/v1/models/{model}"), 404)
    assert fakes.count == 0  # nothing loaded for them
