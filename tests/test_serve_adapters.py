"""BASE:ADAPTER on the real store: a LoRA fine-tune of the tiny Gemma 3, trained without turn
tokens (what a llama.cpp LoRA file can carry), served over its base's engine through the
official openai client. Its first-token distribution equals the merged fine-tune's, served by
its own name; one engine serves base and adapter; a fine-tune that retrained its turn tokens is
named with the reason instead of served wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from cuvee.export.formats import export
from cuvee.progress import SilentReporter
from helpers import store_tiny, uvicorn_in_thread, write_data

pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def store_with_adapters(tiny_spm_gemma_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from cuvee.train.loop import train
    from cuvee.train.recipe import Recipe

    home = tmp_path_factory.mktemp("adapter-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUVEE_HOME", str(home))
        settings, store = store_tiny(tiny_spm_gemma_dir, name="tg")
        data = write_data(home / "d.jsonl", licence="CC-BY-4.0")
        for name, turn_tokens in (("plain", False), ("turns", True)):
            recipe = Recipe(
                base="tg", data=[str(data)], name=name, seq_len=48, batch_size=4, lr=0.05,
                max_steps=3, eval_split="none", precision="fp32", train_turn_tokens=turn_tokens,
            )  # fmt: skip
            train(settings, recipe)
        # f32 everywhere, so the adapter over the base and the merged model compare closely
        for name in ("tg", "plain"):
            export(settings, store, name, "gguf", quant="f32", reporter=SilentReporter())
        yield settings, store


@pytest.fixture(scope="module")
def client(store_with_adapters):
    from cuvee.serve.app import create_app
    from cuvee.serve.models import ModelRegistry

    settings, _ = store_with_adapters
    registry = ModelRegistry(
        settings,
        max_loaded=2,
        engine_options={"n_ctx": 2048, "n_seq_max": 4, "n_threads": 1},
    )
    app = create_app(settings, registry)
    with uvicorn_in_thread(app) as root:
        yield openai.OpenAI(base_url=f"{root}/v1", api_key="none", max_retries=0), app


def first_token_logprobs(client, model: str) -> dict[str, float]:
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello world"}],
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    return {t.token: t.logprob for t in r.choices[0].logprobs.content[0].top_logprobs}


def test_an_adapter_over_its_base_is_the_merged_fine_tune(client) -> None:
    sdk, app = client
    ids = [m.id for m in sdk.models.list()]
    assert "tg:plain" in ids and "tg:turns" not in ids
    adapter = first_token_logprobs(sdk, "tg:plain")
    merged = first_token_logprobs(sdk, "plain")
    base = first_token_logprobs(sdk, "tg")
    assert adapter.keys() == merged.keys()
    for token, logprob in merged.items():
        assert adapter[token] == pytest.approx(logprob, abs=1e-3)
    assert any(abs(base.get(t, -99.0) - lp) > 1e-2 for t, lp in merged.items())  # it is tuned
    registry = app.state.cuvee.registry
    assert sorted(registry.loaded()) == ["plain", "tg"]  # the adapter has no engine of its own
    assert registry._slots["tg"].engine.adapters == ["plain"]
    assert sdk.models.retrieve("tg:plain").model_dump()["loaded"] is True


def test_unservable_or_unknown_adapters_say_why(client) -> None:
    sdk, _ = client
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as turns:
        sdk.chat.completions.create(model="tg:turns", messages=hello, max_tokens=1)
    assert turns.value.code == "adapter_not_servable" and "turn tokens" in turns.value.message
    with pytest.raises(openai.BadRequestError) as wrong_base:
        sdk.chat.completions.create(model="plain:plain", messages=hello, max_tokens=1)
    assert "trained over 'tg'" in wrong_base.value.message
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="tg:nope", messages=hello, max_tokens=1)
