"""The engine contract: the same checks over every engine in ``cuvee.engine.ENGINES`` and over
the server tests' ``FakeEngine`` (so what the server is tested against behaves like what it
serves). An engine registered later is checked without a line added here; what an engine
legitimately does otherwise is listed, with the reason, in ``DIFFERS``.

Each engine runs a tiny random Gemma 3: the llama.cpp engine its GGUF (written by the project's
own exporter), the transformers engine its model directory (with the Gemma chat template beside
it), the fake its script. One engine of each is opened per module and shared."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import pytest

from cuvee.engine import ENGINES, EngineSpec, open_engine
from cuvee.engine.base import (
    Completion,
    ContextLengthError,
    EngineError,
    Event,
    Finished,
    Handle,
    Request,
    SamplingParams,
    TokenEvent,
)
from cuvee.errors import ConfigError

# The fake, registered for this module only, so it is opened (and refuses options) as engines are.
FAKE = EngineSpec("fake", "weights", "fakes", "FakeEngine", "scripted tokens (tests)")
NAMES = [*ENGINES, FAKE.name]

# How each engine is opened here: small contexts and two threads (the machine's cores).
OPTIONS: dict[str, dict] = {
    "llamacpp": {"n_seq_max": 2, "n_ctx": 512, "n_threads": 2},
}

# (check, engine) -> why that engine legitimately does not do what the check asks.
DIFFERS: dict[tuple[str, str], str] = {
    ("cancel", "fake"): "its default script (four tokens) is emitted at once, before a cancel "
    "can land; the server tests cancel endless fakes",
    ("close", "fake"): "close() only records that it was called (the server tests assert "
    "that); a request in flight runs to its end and later submits are accepted",
}

# (check, engine) -> a bug found by the check, reported to the engine's owner.
BUGS: dict[tuple[str, str], str] = {}

# Timeout for any one request to end: a hang fails a check instead of stalling the run.
WAIT_S = 60


CHECKS: set[str] = set()  # the checks parametrized by over_engines


def over_engines(check: str):
    """Parametrize a check over every engine, with the reasons an engine differs."""
    CHECKS.add(check)
    params = []
    for name in NAMES:
        marks = []
        if (check, name) in DIFFERS:
            continue  # not this engine's contract (the reason is in DIFFERS): no test, no skip
        if (reason := BUGS.get((check, name))) is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(pytest.param(name, marks=marks, id=name))
    return pytest.mark.parametrize("name", params)


def greedy(max_tokens: int = 8, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def seeded(seed: int, max_tokens: int = 8) -> SamplingParams:
    return SamplingParams(
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        seed=seed,
        max_tokens=max_tokens,
        ignore_eos=True,
    )


def events_of(handle: Handle, timeout: float = WAIT_S) -> list[Event]:
    """Every event of a request, failing (not hanging) when it does not end in time."""
    events: list[Event] = []
    reader = threading.Thread(target=lambda: events.extend(handle), daemon=True)
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive(), f"the request did not finish within {timeout} s"
    return events


def completion(events: list[Event]) -> Completion:
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    ids = [e.token_id for e in tokens if e.token_id is not None]
    return Completion("".join(e.text for e in tokens), ids, finished)


def run(engine, params: SamplingParams, prompt: str = "the answer to the question", **kw):
    return completion(events_of(engine.submit(Request(prompt=prompt, params=params, **kw))))


# -- the engines ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def fake_registered():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ENGINES, FAKE.name, FAKE)
        yield


@pytest.fixture(scope="module")
def models(tiny_spm_gemma_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What each kind of engine runs (``EngineSpec.runs``): the tiny model as a GGUF, and as a
    model directory with the same chat template the GGUF embeds."""
    import torch
    from transformers import AutoModelForCausalLM

    from cuvee.chat_template import get_template
    from cuvee.export.to_gguf import write_gguf

    root = tmp_path_factory.mktemp("contract-engines")
    weights = root / "tiny"
    shutil.copytree(tiny_spm_gemma_dir, weights)
    template = get_template("gemma")
    (weights / "chat_template.jinja").write_text(template.jinja, encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    gguf = root / "tiny.gguf"
    write_gguf(
        gguf,
        config=json.loads((weights / "config.json").read_text()),
        tensors=iter(model.state_dict().items()),
        tokenizer_dir=weights,
        template=template,
        bos_token="<bos>",
        eos_token="<eos>",
        name="tiny",
        licence="MIT",
        out_type="f32",
    )
    return {"gguf": gguf, "weights": weights}


def open_fresh(name: str, models: dict[str, Path], **options):
    return open_engine(name, models[ENGINES[name].runs], **{**OPTIONS.get(name, {}), **options})


@pytest.fixture(scope="module")
def opened(models):
    """Opens each engine once, on first use, and closes them all after the module."""
    engines: dict[str, object] = {}

    def get(name: str):
        if name not in engines:
            engines[name] = open_fresh(name, models)
        return engines[name]

    yield get
    for engine in engines.values():
        engine.close()


@pytest.fixture
def engine(name: str, opened):
    return opened(name)


# -- the checks -------------------------------------------------------------------------------


@over_engines("context")
def test_context_length_is_positive(engine) -> None:
    assert isinstance(engine.context_length, int) and engine.context_length > 0


@over_engines("determinism")
def test_greedy_and_seeded_generation_are_deterministic(engine) -> None:
    first, again = run(engine, greedy(8)), run(engine, greedy(8))
    assert first.token_ids and first.token_ids == again.token_ids
    assert (first.text, first.finished) == (again.text, again.finished)
    first, again = run(engine, seeded(7)), run(engine, seeded(7))
    assert first.token_ids == again.token_ids and first.text == again.text


@over_engines("length")
def test_max_tokens_is_honoured_with_reason_length(engine) -> None:
    for n in (1, 3):
        result = run(engine, greedy(n))
        assert result.finished.reason == "length"
        assert result.finished.completion_tokens == len(result.token_ids) == n


@over_engines("usage")
def test_usage_counts_match_the_stream_and_prompt_tokens(engine) -> None:
    """Finished comes once, last; its prompt count is ``prompt_tokens()``'s, its completion
    count every streamed token (plus an end-of-generation token, which streams no id); only
    the event just before it may carry no token id (held text released at the end)."""
    requests = [
        Request(prompt="hello world", params=greedy(4)),
        Request(messages=[{"role": "user", "content": "the question"}], params=greedy(3)),
        Request(prompt="a model", params=SamplingParams(seed=3, max_tokens=24)),  # may stop
    ]
    for request in requests:
        events = events_of(engine.submit(request))
        assert [isinstance(e, Finished) for e in events] == [False] * (len(events) - 1) + [True]
        assert all(e.token_id is not None for e in events[:-2] if isinstance(e, TokenEvent))
        result = completion(events)
        usage = result.finished
        assert usage.prompt_tokens == len(engine.prompt_tokens(request))
        assert usage.reason in ("length", "stop") and usage.error is None
        streamed = len(result.token_ids)
        if usage.reason == "length":
            assert usage.completion_tokens == streamed == request.params.max_tokens
        else:
            assert streamed <= usage.completion_tokens <= streamed + 1


@over_engines("stop")
def test_a_stop_string_ends_the_text_before_it(engine) -> None:
    full = run(engine, greedy(16)).text
    middle = len(full) // 2
    stop = full[middle : middle + 2]
    assert len(stop) == 2 and "\ufffd" not in stop, f"no stop string to pick in {full!r}"
    result = run(engine, greedy(16, stop=["zzzz", stop]))
    assert result.text == full[: full.index(stop)]
    assert result.finished.reason == "stop"
    assert result.finished.completion_tokens <= 16


@over_engines("context")
def test_a_prompt_beyond_the_context_is_a_context_length_error(engine) -> None:
    """``limit`` prompt tokens are refused, naming both numbers; ``limit - 1`` fit, and the
    engine serves on."""
    limit = engine.context_length

    def prompt(n: int) -> tuple[str, int]:
        text = " the" * n
        return text, len(engine.prompt_tokens(Request(prompt=text)))

    base = prompt(0)[1]
    assert prompt(10)[1] - prompt(9)[1] == 1, "' the' is not one token"
    text, n = prompt(limit + 10 - base)
    assert n == limit + 10
    with pytest.raises(ContextLengthError) as err:
        engine.submit(Request(prompt=text, params=greedy(4)))
    message = str(err.value)
    assert re.search(rf"\b{n}\b", message) and re.search(rf"\b{limit}\b", message), message
    text, n = prompt(limit - base)
    assert n == limit
    with pytest.raises(ContextLengthError):
        engine.submit(Request(prompt=text, params=greedy(4)))
    text, n = prompt(limit - 1 - base)
    assert n == limit - 1
    result = run(engine, greedy(4), prompt=text)
    assert result.finished.reason == "length" and 1 <= result.finished.completion_tokens <= 4
    assert result.finished.prompt_tokens == limit - 1


@over_engines("chat")
def test_messages_are_rendered_with_the_chat_template(engine) -> None:
    messages = [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "the answer"},
        {"role": "user", "content": "a question"},
    ]
    rendered = engine.render_messages(messages)
    assert isinstance(rendered, str)
    positions = [rendered.find(m["content"]) for m in messages]
    assert -1 not in positions and positions == sorted(positions), rendered
    chat = Request(messages=messages, params=greedy(3))
    raw = Request(prompt=rendered, params=greedy(3))
    assert engine.prompt_tokens(chat) == engine.prompt_tokens(raw)
    assert run(engine, greedy(3), messages=messages, prompt=None) == run(
        engine, greedy(3), prompt=rendered
    )


@over_engines("requests")
def test_bad_requests_are_refused_before_running(engine) -> None:
    for request in [
        Request(),
        Request(prompt="hello", messages=[{"role": "user", "content": "hello"}]),
        Request(prompt="hello", params=SamplingParams(temperature=-1)),
        Request(prompt="hello", params=SamplingParams(max_tokens=0)),
    ]:
        with pytest.raises(ConfigError):
            engine.submit(request)
    assert run(engine, greedy(2)).finished.reason == "length"


@over_engines("cancel")
def test_cancel_ends_the_request_with_reason_cancelled(engine) -> None:
    handle = engine.submit(Request(prompt="hello", params=greedy(200)))
    assert isinstance(next(iter(handle)), TokenEvent)
    handle.cancel()
    result = completion(events_of(handle))
    assert result.finished.reason == "cancelled"
    assert result.finished.completion_tokens < 200
    assert run(engine, greedy(2)).finished.reason == "length"  # serving goes on


@over_engines("options")
def test_an_unknown_option_is_a_config_error_naming_the_accepted_ones(name, models) -> None:
    with pytest.raises(ConfigError) as err:
        open_fresh(name, models, bogus_option=1)
    accepted = ENGINES[name].options()
    assert accepted and "bogus_option" in err.value.message
    assert all(option in (err.value.hint or "") for option in accepted), err.value.hint


@over_engines("close_twice")
def test_closing_twice_is_safe(name, models) -> None:
    engine = open_fresh(name, models)
    engine.close()
    engine.close()


@over_engines("close")
def test_close_cancels_requests_in_flight_and_refuses_new_ones(name, models) -> None:
    engine = open_fresh(name, models)
    try:
        handle = engine.submit(Request(prompt="hello", params=greedy(200)))
        assert isinstance(next(iter(handle)), TokenEvent)
    finally:
        engine.close()
    assert completion(events_of(handle)).finished.reason == "cancelled"
    with pytest.raises(EngineError):
        engine.submit(Request(prompt="hello", params=greedy(2)))


def test_every_exception_names_a_check_and_an_engine() -> None:
    """A DIFFERS or BUGS entry with a misspelt check or engine would quietly drop nothing."""
    for check, name in [*DIFFERS, *BUGS]:
        assert check in CHECKS and name in NAMES, (check, name)
