"""The engines on a tiny random Gemma 3 exported to GGUF: llama.cpp's greedy tokens equal
transformers', batching changes no request's tokens, cancel frees a slot, stop strings, lengths,
context errors, the embedded chat template, chunked prefill, LoRA per request, grammars."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import torch

from cuvee.engine import open_engine
from cuvee.engine.base import (
    ContextLengthError,
    Finished,
    Request,
    SamplingParams,
    StopFilter,
    TokenEvent,
)
from cuvee.errors import ConfigError

PROMPTS = [
    "the answer to the question",
    "hello world",
    "a model of the world and the user",
    "question: what is the answer?",
    "the the the a",
    "world, hello.",
]


def greedy(max_tokens: int = 12, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def sampled(seed: int, max_tokens: int = 12) -> SamplingParams:
    return SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed,
                          max_tokens=max_tokens, ignore_eos=True)  # fmt: skip


@pytest.fixture(scope="module")
def hf_model(tiny_spm_gemma_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_spm_gemma_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_spm_gemma_dir: Path, hf_model, tmp_path_factory) -> Path:
    from cuvee.chat_template import get_template
    from cuvee.export.to_gguf import write_gguf

    out = tmp_path_factory.mktemp("engine-gguf") / "tiny.gguf"
    write_gguf(
        out,
        config=json.loads((tiny_spm_gemma_dir / "config.json").read_text()),
        tensors=iter(hf_model.state_dict().items()),
        tokenizer_dir=tiny_spm_gemma_dir,
        template=get_template("gemma"),
        bos_token="<bos>",
        eos_token="<eos>",
        name="tiny",
        licence="MIT",
        out_type="f32",
    )
    return out


@pytest.fixture(scope="module")
def engine(tiny_gguf: Path):
    eng = open_engine("llamacpp", tiny_gguf, n_seq_max=4, n_ctx=1024, n_threads=2)
    yield eng
    eng.close()


def run(eng, prompt: str, params: SamplingParams, **kw):
    return eng.submit(Request(prompt=prompt, params=params, **kw)).collect()


def hf_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, eos_token_id=None
        )
    return out[0, len(prompt_ids) :].tolist()


def test_greedy_tokens_equal_transformers_generate(engine, hf_model) -> None:
    for prompt in PROMPTS[:3]:
        ids = engine.prompt_tokens(Request(prompt=prompt))
        assert ids[0] == 2  # <bos>, added once
        result = run(engine, prompt, greedy(16))
        assert result.token_ids == hf_greedy(hf_model, ids, 16)
        assert result.finished == Finished("length", len(ids), 16)


def test_concurrent_requests_each_get_their_tokens_alone(engine) -> None:
    """Six requests (greedy and seeded sampling) over four slots, half submitted while the
    others decode: each gets exactly the tokens it gets alone."""
    params = [greedy(20) if i % 2 == 0 else sampled(seed=100 + i, max_tokens=20) for i in range(6)]
    alone = [run(engine, p, sp).token_ids for p, sp in zip(PROMPTS, params, strict=True)]
    handles = [engine.submit(Request(prompt=PROMPTS[i], params=params[i])) for i in range(3)]
    first = next(iter(handles[0]))
    assert isinstance(first, TokenEvent)  # the first three are decoding now
    handles += [engine.submit(Request(prompt=PROMPTS[i], params=params[i])) for i in range(3, 6)]
    together = [h.collect() for h in handles]
    assert [first.token_id, *together[0].token_ids] == alone[0]
    assert [c.token_ids for c in together[1:]] == alone[1:]
    assert all(c.finished.reason == "length" for c in together)


def test_a_full_cache_preempts_the_newest_without_changing_any_output(tiny_gguf) -> None:
    """Four requests need twice the cells there are: the newest are preempted, re-read their
    prompt and output later and go on; every request still gets exactly its tokens alone."""
    params = [greedy(100) if i % 2 == 0 else sampled(seed=i, max_tokens=100) for i in range(4)]
    with open_engine(
        "llamacpp", tiny_gguf, n_seq_max=4, n_ctx=256, n_threads=2, kv_unified=True
    ) as eng:
        assert eng.n_ctx == eng.context_length == 256
        alone = [run(eng, PROMPTS[i], params[i]).token_ids for i in range(4)]
        handles = [eng.submit(Request(prompt=PROMPTS[i], params=params[i])) for i in range(4)]
        together = [h.collect() for h in handles]
        assert eng.stats["preemptions"] > 0
        n_prompt = [len(eng.prompt_tokens(Request(prompt=PROMPTS[i]))) for i in range(4)]
    assert [c.token_ids for c in together] == alone
    assert [c.finished.prompt_tokens for c in together] == n_prompt


def _hold_scheduler(eng) -> threading.Event:
    """Make the engine's scheduler wait until the returned event is set before it takes its
    next requests, so requests submitted meanwhile all arrive in one step."""
    gate = threading.Event()

    class Gated(queue.Queue):
        def get(self, block=True, timeout=None):
            gate.wait()
            return super().get(block, timeout)

    old, eng._inbox = eng._inbox, Gated()
    old.put(object())  # wakes the scheduler from the old queue; its next read waits at the gate
    return gate


@pytest.mark.parametrize("unified", [False, True])
def test_prompts_read_in_one_step_are_padded_without_changing_any_output(
    tiny_gguf, unified
) -> None:
    """Four prompts of different lengths read in one step: with a KV stream per sequence their
    chunks are right-padded to one length (fewer, larger llama.cpp ubatches), and every request
    still gets exactly its tokens alone; a unified cache needs no padding and gets none."""
    prompts = ["hello", "the answer to", "a model of the world", "world, hello. the"]
    params = [greedy(12) if i % 2 == 0 else sampled(seed=40 + i) for i in range(4)]
    with open_engine(
        "llamacpp", tiny_gguf, n_seq_max=4, n_ctx=1024, n_threads=2, kv_unified=unified
    ) as eng:
        alone = [run(eng, p, sp).token_ids for p, sp in zip(prompts, params, strict=True)]
        lengths = {len(eng.prompt_tokens(Request(prompt=p))) for p in prompts}
        assert len(lengths) > 1
        before = dict(eng.stats)
        gate = _hold_scheduler(eng)
        handles = [
            eng.submit(Request(prompt=p, params=sp)) for p, sp in zip(prompts, params, strict=True)
        ]
        gate.set()
        together = [h.collect() for h in handles]
        padded = eng.stats["pad_tokens"] - before["pad_tokens"]
        first_steps = eng.stats["steps"] - before["steps"]
    assert [c.token_ids for c in together] == alone
    assert first_steps == 12  # the four prompts were read in one step, then 11 decode steps
    assert (padded > 0) != unified


def test_a_burst_counted_as_arriving_is_read_in_one_step(tiny_gguf) -> None:
    """With the server counting requests on their way, the scheduler woken by the first waits
    for the second and reads both prompts in its first step; with nothing counted, it starts
    on the first alone."""
    with open_engine("llamacpp", tiny_gguf, n_seq_max=4, n_ctx=1024, n_threads=2) as eng:
        eng.gather_s = 60.0  # bounded by the count here, not by time
        on_the_way = [0]
        eng.set_arrivals(lambda: on_the_way[0])
        for counted in (True, False):
            before = eng.stats["steps"]
            on_the_way[0] = 2 if counted else 0
            first = eng.submit(Request(prompt="hello", params=greedy(3)))
            on_the_way[0] -= 1 if counted else 0
            if not counted:
                assert isinstance(next(iter(first)), TokenEvent)  # it started alone
            second = eng.submit(Request(prompt="the answer to", params=greedy(3)))
            on_the_way[0] = 0
            assert [first.collect().finished.reason, second.collect().finished.reason] == [
                "length"
            ] * 2
            steps = eng.stats["steps"] - before
            # together: one step reads both prompts, then 2 decode steps; apart: at least 4
            assert steps == 3 if counted else steps >= 4


def test_same_seed_same_text_other_seed_other_text(engine) -> None:
    a = run(engine, "hello world", sampled(seed=7, max_tokens=24))
    b = run(engine, "hello world", sampled(seed=7, max_tokens=24))
    c = run(engine, "hello world", sampled(seed=8, max_tokens=24))
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids


def test_cancel_frees_the_slot(tiny_gguf: Path) -> None:
    with open_engine("llamacpp", tiny_gguf, n_seq_max=2, n_ctx=512, n_threads=2) as eng:
        long = greedy(200)
        a = eng.submit(Request(prompt="hello", params=long))
        b = eng.submit(Request(prompt="world", params=long))
        waiting = eng.submit(Request(prompt="the", params=long))  # no slot: it waits
        assert isinstance(next(iter(a)), TokenEvent)
        waiting.cancel()
        a.cancel()
        assert a.collect().finished.reason == "cancelled"
        n_the = len(eng.prompt_tokens(Request(prompt="the")))
        assert waiting.collect().finished == Finished("cancelled", n_the, 0)
        # a's slot is free: a new request runs while b still holds the other one
        assert run(eng, "a model", greedy(5)).finished.reason == "length"
        b.cancel()
        assert b.collect().finished.reason == "cancelled"
        done = [run(eng, p, greedy(3)).finished.reason for p in PROMPTS]  # > n_seq_max in all
        assert done == ["length"] * len(PROMPTS)


def test_stop_strings_cut_the_text(engine) -> None:
    full = run(engine, "the answer", greedy(24))
    assert len(full.text) > 12
    stop = full.text[6:10]
    cut = full.text[: full.text.index(stop)]
    handle = engine.submit(Request(prompt="the answer", params=greedy(24, stop=["zzzz", stop])))
    events = list(handle)
    text = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert text == cut
    assert events[-1].reason == "stop"


def test_stop_filter_holds_back_partial_stops() -> None:
    f = StopFilter(["aab", "END"])
    assert f.feed("xa") == ("x", False)
    assert f.feed("a") == ("", False)
    assert f.feed("a") == ("a", False)  # "aaa": only the last "aa" can still start "aab"
    assert f.feed("EN") == ("aa", False)
    assert f.feed("d") == ("ENd", False)
    assert f.feed("xaab tail") == ("x", True)
    g = StopFilter(["END"])
    assert g.feed("fin E") == ("fin ", False)
    assert g.flush() == "E"


def test_max_tokens_ends_with_length(engine) -> None:
    result = run(engine, "hello", greedy(5))
    assert result.finished.reason == "length"
    assert result.finished.completion_tokens == len(result.token_ids) == 5


def test_prompt_longer_than_the_context_is_refused_and_serving_goes_on(engine) -> None:
    assert engine.context_length == 256  # the model's training context caps the cache's
    long_prompt = " ".join(["hello"] * 300)
    n = len(engine.prompt_tokens(Request(prompt=long_prompt)))
    assert n > 256
    with pytest.raises(ContextLengthError, match=rf"{n} tokens.*256 tokens per sequence"):
        engine.submit(Request(prompt=long_prompt, params=greedy(4)))
    assert run(engine, "hello", greedy(4)).finished.reason == "length"


def test_messages_use_the_embedded_chat_template(engine) -> None:
    from cuvee.chat_template import get_template

    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "hello world, the question?"},
    ]
    expected = get_template("gemma").render(messages, add_generation_prompt=True, bos_token="<bos>")
    assert engine.render_messages(messages) == expected
    ids = engine.prompt_tokens(Request(messages=messages))
    assert ids == engine.tokenize(expected)
    assert ids.count(2) == 1 and ids[0] == 2  # the template's <bos>, not a second one
    chat = engine.submit(Request(messages=messages, params=greedy(6))).collect()
    raw = run(engine, expected, greedy(6))
    assert chat.token_ids == raw.token_ids


def test_an_assistant_message_last_is_continued_not_answered(engine) -> None:
    from cuvee.chat_template import get_template

    asked = [{"role": "user", "content": "hello world, the question?"}]
    partial = [*asked, {"role": "assistant", "content": "hello world the "}]
    rendered = engine.render_messages(partial)
    # the prompt ends with the answer so far as written (the template trims it; the trailing
    # space is put back): no end of its turn, no new turn opened
    opened = get_template("gemma").render(asked, add_generation_prompt=True, bos_token="<bos>")
    assert rendered == opened + "hello world the "
    # leading whitespace too, and a line break last
    spaced = engine.render_messages([*asked, {"role": "assistant", "content": " Blue,\n\n"}])
    assert spaced == opened + " Blue,\n\n"
    # going on from the first tokens of a greedy answer gives the rest of that same answer
    whole = engine.submit(Request(messages=asked, params=greedy(8))).collect()
    head = engine.submit(Request(messages=asked, params=greedy(3))).collect()
    assert head.text.strip(), "the tiny model wrote nothing to go on from"
    cont = [*asked, {"role": "assistant", "content": head.text}]
    rest = engine.submit(Request(messages=cont, params=greedy(5))).collect()
    assert (head.text + rest.text).split() == whole.text.split()


def test_long_prompt_is_prefilled_in_chunks_with_the_same_result(engine, tiny_gguf) -> None:
    prompt = " ".join(PROMPTS * 3)
    n = len(engine.prompt_tokens(Request(prompt=prompt)))
    one_shot = run(engine, prompt, greedy(10))
    with open_engine(
        "llamacpp", tiny_gguf, n_seq_max=2, n_ctx=512, n_threads=2, prefill_chunk=7, n_batch=1
    ) as eng:
        assert n > 3 * eng.n_batch
        streaming = eng.submit(Request(prompt="hello", params=greedy(40)))
        assert isinstance(next(iter(streaming)), TokenEvent)
        chunked = run(eng, prompt, greedy(10))
        assert eng.stats["prefill_chunks"] >= n // eng.n_batch
        assert streaming.collect().finished.reason == "length"
    assert chunked.token_ids == one_shot.token_ids


def test_split_utf8_characters_are_never_garbled(engine) -> None:
    """'é' exists only as two byte tokens in this vocabulary: the first releases no text."""
    handle = engine.submit(
        Request(prompt="hello", params=SamplingParams(temperature=0, grammar='root ::= "ééé"'))
    )
    events = list(handle)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert "".join(e.text for e in tokens) == "ééé"
    assert [e.text for e in tokens] == ["", "é"] * 3
    assert events[-1].reason == "stop"  # the grammar is complete: only end-of-text is left


def test_json_schema_becomes_a_grammar(engine) -> None:
    params = SamplingParams(temperature=0, max_tokens=40, json_schema={"enum": ["hello", "world"]})
    assert "root" in (params.gbnf() or "")
    result = engine.submit(Request(prompt="the", params=params)).collect()
    assert json.loads(result.text) in ("hello", "world")
    with pytest.raises(ConfigError, match="not both"):
        SamplingParams(grammar='root ::= "a"', json_schema={"type": "string"}).validate()


def test_plain_greedy_takes_the_argmax_and_agrees_with_the_greedy_sampler(
    engine, monkeypatch
) -> None:
    plain = engine._make_sampler(Request(prompt="x", params=greedy()))
    penalised = engine._make_sampler(Request(prompt="x", params=greedy(repeat_penalty=1.3)))
    shaped = engine._make_sampler(
        Request(prompt="x", params=greedy(json_schema={"type": "string"}))
    )
    flags = [plain[1], penalised[1], shaped[1]]
    for chain, _ in (plain, penalised, shaped):
        llama_cpp.llama_sampler_free(chain)
    assert flags == [True, False, False]  # only the bare greedy chain is bypassed
    fast = [run(engine, prompt, greedy(16)).token_ids for prompt in PROMPTS]
    original = engine._make_sampler
    monkeypatch.setattr(engine, "_make_sampler", lambda request: (original(request)[0], False))
    assert [run(engine, prompt, greedy(16)).token_ids for prompt in PROMPTS] == fast


def test_sampling_respects_top_k_one_as_greedy(engine) -> None:
    top1 = SamplingParams(temperature=1.5, top_k=1, seed=3, max_tokens=10, ignore_eos=True)
    assert (
        run(engine, "hello world", top1).token_ids
        == run(engine, "hello world", greedy(10)).token_ids
    )


def _write_lora(path: Path, hf_model, rank: int = 4, alpha: float = 8.0) -> dict[str, torch.Tensor]:
    """A LoRA on every layer's q and v projections, as GGUF; returns the merged weights."""
    import gguf

    rng = np.random.default_rng(0)
    config = hf_model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    state = hf_model.state_dict()
    merged = {}
    for i in range(config.num_hidden_layers):
        for proj in ("q_proj", "v_proj"):
            hf_name = f"model.layers.{i}.self_attn.{proj}.weight"
            w = state[hf_name]
            a = rng.normal(0, 0.5, (rank, w.shape[1])).astype(np.float32)
            b = rng.normal(0, 0.5, (w.shape[0], rank)).astype(np.float32)
            name = names.get_name(hf_name, try_suffixes=(".weight",))
            writer.add_tensor(f"{name}.lora_a", a)
            writer.add_tensor(f"{name}.lora_b", b)
            merged[hf_name] = w + (alpha / rank) * torch.from_numpy(b @ a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return merged


def test_lora_adapters_apply_per_request(tiny_gguf, tiny_spm_gemma_dir, tmp_path) -> None:
    """A request with the adapter gets the merged model's greedy tokens, one without gets the
    base's, also when both run at the same time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_spm_gemma_dir, dtype=torch.float32).eval()
    merged = _write_lora(tmp_path / "lora.gguf", model)
    with open_engine(
        "llamacpp", tiny_gguf, n_seq_max=4, n_ctx=1024, n_threads=2,
        loras={"style": tmp_path / "lora.gguf"},
    ) as eng:  # fmt: skip
        assert eng.adapters == ["style"]
        ids = eng.prompt_tokens(Request(prompt="hello world"))
        base_model_tokens = hf_greedy(model, ids, 10)
        with torch.no_grad():
            for name, w in merged.items():
                model.get_parameter(name).copy_(w)
        lora_tokens = hf_greedy(model, ids, 10)
        assert lora_tokens != base_model_tokens
        handles = [
            eng.submit(Request(prompt="hello world", params=greedy(10), lora=lora))
            for lora in ("style", None, "style", None)
        ]
        got = [h.collect().token_ids for h in handles]
        assert got == [lora_tokens, base_model_tokens, lora_tokens, base_model_tokens]
        with pytest.raises(ConfigError, match="no LoRA adapter 'other'"):
            eng.submit(Request(prompt="hello", lora="other"))


def test_an_adapter_loaded_while_serving_applies_to_its_requests(
    tiny_gguf, tiny_spm_gemma_dir, tmp_path
) -> None:
    """load_adapter on a running engine, while a base request decodes: later requests naming
    it get the same tokens as with the adapter given at opening; the base's are unchanged."""
    from transformers import AutoModelForCausalLM

    from cuvee.errors import ModelFileError

    model = AutoModelForCausalLM.from_pretrained(tiny_spm_gemma_dir, dtype=torch.float32).eval()
    _write_lora(tmp_path / "lora.gguf", model)
    options = dict(n_seq_max=4, n_ctx=1024, n_threads=2)
    with open_engine(
        "llamacpp", tiny_gguf, loras={"style": tmp_path / "lora.gguf"}, **options
    ) as eng:
        expected = run(eng, "hello world", greedy(10), lora="style").token_ids
        base = run(eng, "hello world", greedy(10)).token_ids
    with open_engine("llamacpp", tiny_gguf, **options) as eng:
        assert eng.adapters == []
        running = eng.submit(Request(prompt="hello world", params=greedy(60)))
        assert isinstance(next(iter(running)), TokenEvent)  # decoding while the adapter loads
        eng.load_adapter("style", tmp_path / "lora.gguf")
        assert eng.adapters == ["style"]
        got = [
            eng.submit(Request(prompt="hello world", params=greedy(10), lora=lora))
            for lora in ("style", None)
        ]
        assert [h.collect().token_ids for h in got] == [expected, base]
        assert running.collect().finished.reason == "length"
        with pytest.raises(ConfigError, match="already loaded"):
            eng.load_adapter("style", tmp_path / "lora.gguf")
        (tmp_path / "broken.gguf").write_bytes(b"not a gguf")
        with pytest.raises(ModelFileError, match="cannot load LoRA adapter 'bad'"):
            eng.load_adapter("bad", tmp_path / "broken.gguf")
        assert eng.adapters == ["style"]


def test_hf_engine_gives_the_llamacpp_engine_tokens(engine, tiny_spm_gemma_dir) -> None:
    with open_engine("hf", tiny_spm_gemma_dir) as hf:
        for prompt in ("<bos>hello world", "<bos>the answer to the question"):
            request = Request(prompt=prompt, params=greedy(12))
            assert hf.prompt_tokens(request) == engine.prompt_tokens(request)
            ours, theirs = hf.submit(request).collect(), engine.submit(request).collect()
            assert ours.token_ids == theirs.token_ids
            if "\ufffd" not in theirs.text:  # invalid UTF-8 is replaced differently
                assert ours.text == theirs.text
            assert ours.finished == theirs.finished
        penalized = Request(prompt="<bos>the the the a", params=greedy(16, repeat_penalty=3.0))
        plain = Request(prompt="<bos>the the the a", params=greedy(16))
        ours = hf.submit(penalized).collect().token_ids
        assert ours == engine.submit(penalized).collect().token_ids
        assert ours != engine.submit(plain).collect().token_ids
        # OpenAI's additive penalties, counted over the whole completion, the same in both
        for kw in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
            additive = Request(prompt="<bos>the the the a", params=greedy(24, **kw))
            ours = hf.submit(additive).collect().token_ids
            assert ours == engine.submit(additive).collect().token_ids
            assert ours != engine.submit(plain).collect().token_ids
        # stop strings, seeds and cancel behave the same way
        question = Request(prompt="<bos>question: what is the answer?", params=greedy(20))
        full = hf.submit(question).collect().text
        question.params.stop = [" he"]
        cut = hf.submit(question).collect()
        assert cut.text == full[: full.index(" he")] and cut.finished.reason == "stop"
        s1 = hf.submit(Request(prompt="<bos>hello", params=sampled(5, 16))).collect()
        s2 = hf.submit(Request(prompt="<bos>hello", params=sampled(5, 16))).collect()
        assert s1.token_ids == s2.token_ids
        handle = hf.submit(Request(prompt="<bos>hello", params=greedy(200)))
        assert isinstance(next(iter(handle)), TokenEvent)
        handle.cancel()
        assert handle.collect().finished.reason == "cancelled"


def test_open_engine_names_unknown_engines_and_options(tiny_gguf) -> None:
    with pytest.raises(ConfigError, match="unknown engine 'vllm'"):
        open_engine("vllm", tiny_gguf)
    with pytest.raises(ConfigError, match="no option n_gpus"):
        open_engine("llamacpp", tiny_gguf, n_gpus=2)


def test_bad_requests_are_refused_before_running(engine) -> None:
    with pytest.raises(ConfigError, match="exactly one of prompt or messages"):
        engine.submit(Request())
    with pytest.raises(ConfigError, match="top_p"):
        engine.submit(Request(prompt="hi", params=SamplingParams(top_p=0)))
    with pytest.raises(ConfigError, match="max_tokens 0"):
        engine.submit(Request(prompt="hi", params=greedy(0)))


def test_llama_cpp_writes_nothing_to_the_terminal(tiny_gguf, capfd) -> None:
    with open_engine("llamacpp", tiny_gguf, n_seq_max=2, n_ctx=512, n_threads=2) as eng:
        run(eng, "hello", greedy(4))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_subscriber_gets_every_event_in_order_without_a_reader_thread() -> None:
    """Events emitted before and after subscribe reach the listener once each, in order; the
    engine's thread is never hurt by a listener that raises."""
    from cuvee.engine.base import Finished, Handle, TokenEvent

    handle = Handle()
    handle.emit(TokenEvent("a", 1))
    handle.emit(TokenEvent("b", 2))
    got = []
    handle.subscribe(got.append)
    handle.emit(TokenEvent("c", 3))
    handle.emit(Finished("stop", 4, 3))
    assert [getattr(e, "text", None) for e in got] == ["a", "b", "c", None]
    assert handle.finished is not None and handle.finished.reason == "stop"

    def broken(event):
        raise RuntimeError("consumer bug")

    other = Handle()
    other.subscribe(broken)
    other.emit(TokenEvent("x", 1))  # does not raise into the engine
    other.emit(Finished("stop", 1, 1))
    assert other.finished is not None


def test_iterating_a_finished_handle_again_returns_at_once() -> None:
    from cuvee.engine.base import Finished, Handle, TokenEvent

    handle = Handle()
    handle.emit(TokenEvent("a", 1))
    handle.emit(Finished("length", 1, 1))
    assert len(list(handle)) == 2
    assert list(handle) == []


def _events(handle) -> list[TokenEvent]:
    return [e for e in handle if isinstance(e, TokenEvent) and e.token_id is not None]


def test_logprobs_are_the_models_log_softmax_only_when_asked(engine, hf_model) -> None:
    """Each sampled token's logprob and its top alternatives equal a log-softmax of
    transformers' logits at that position, before penalties (a penalised request reports the
    same numbers for the same tokens); a request that does not ask gets none."""
    prompt = "the answer to the question"
    ids = engine.prompt_tokens(Request(prompt=prompt))
    events = _events(engine.submit(Request(prompt=prompt, params=greedy(8, logprobs=3))))
    tokens = [e.token_id for e in events]
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids + tokens])).logits[0].double()
    ref = torch.log_softmax(logits, -1)[len(ids) - 1 : -1]
    for step, event in enumerate(events):
        lp = event.logprob
        assert lp is not None and len(lp.top) == 3
        assert lp.logprob == pytest.approx(float(ref[step, event.token_id]), abs=2e-3)
        expected = torch.topk(ref[step], 3).indices.tolist()
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
        assert [t.logprob for t in lp.top] == pytest.approx(
            [float(ref[step, i]) for i in expected], abs=2e-3
        )
        assert lp.top[0].logprob == pytest.approx(lp.logprob)  # greedy took the argmax
        assert bytes(lp.bytes).decode("utf-8", "replace") == lp.token or lp.token.startswith(
            "bytes:"
        )
    plain = _events(engine.submit(Request(prompt=prompt, params=greedy(8))))
    assert [e.token_id for e in plain] == tokens and all(e.logprob is None for e in plain)
    # only the sampled token, no alternatives; penalties change the choice, not the numbers
    penalised = greedy(8, logprobs=0, repeat_penalty=5.0)
    got = _events(engine.submit(Request(prompt=prompt, params=penalised)))
    assert all(e.logprob is not None and e.logprob.top == [] for e in got)
    got_ids = [e.token_id for e in got]
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids + got_ids])).logits[0].double()
    ref = torch.log_softmax(logits, -1)[len(ids) - 1 : -1]
    assert [e.logprob.logprob for e in got] == pytest.approx(
        [float(ref[i, t]) for i, t in enumerate(got_ids)], abs=2e-3
    )


def test_hf_engine_reports_the_same_logprobs(engine, tiny_spm_gemma_dir) -> None:
    request = Request(prompt="<bos>hello world", params=greedy(6, logprobs=2))
    with open_engine("hf", tiny_spm_gemma_dir) as hf:
        ours = _events(hf.submit(request))
    theirs = _events(engine.submit(request))
    assert [e.token_id for e in ours] == [e.token_id for e in theirs]
    assert [e.logprob.logprob for e in ours] == pytest.approx(
        [e.logprob.logprob for e in theirs], abs=2e-3
    )
    assert [t.logprob for e in ours for t in e.logprob.top] == pytest.approx(
        [t.logprob for e in theirs for t in e.logprob.top], abs=2e-3
    )


def test_token_text_of_partial_utf8_is_written_as_bytes() -> None:
    from cuvee.engine.base import token_text

    assert token_text(" é".encode()) == " é"
    assert token_text(b"\xe2\x80") == "bytes:\\xe2\\x80"
    with pytest.raises(ConfigError, match="logprobs 21"):
        SamplingParams(logprobs=21).validate()
