"""Inference throughput: cuvee's llama.cpp engine (continuous batching over the low-level API)
against llama-cpp-python's high-level ``Llama.create_completion`` on the same GGUF.

Measured in one run, on gemma3-270m Q4_K_M from the store by default, greedy decoding:

(a) single-stream decode tokens/s (median of interleaved runs), cuvee against
    ``create_completion`` (same file, prompt, threads and number of generated tokens: the
    baseline's own greedy run fixes that number);
(b) aggregate decode tokens/s with 1, 4, 8 and 16 concurrent streams (steady state: tokens
    produced while all streams are decoding, over that time; median of repeats);
(c) time to first token (p50) of a ~200-token prompt, on an idle engine and while 8 streams
    decode;
(d) the ceilings no scheduler can pass on this file and thread count: bare ``llama_decode``
    calls with nothing around them, timing a step of one token, of 16 sequences with one token
    each (so 16-stream aggregate over single stream can be at most their ratio), and of one
    sequence with k tokens all needing logits (what verifying k drafted tokens would cost in
    speculative decoding).

    python bench/engine_throughput.py [--quick] [--model PATH.gguf] [--threads 2]

Decode rates count from each stream's first token to its last, so prompt processing is not in
them; concurrent streams are read from one thread, as a server's event loop reads them.
The last line printed is one JSON object with the figures and the ratios."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from machine import describe

from cuvee.engine import open_engine
from cuvee.engine.base import Request, SamplingParams, TokenEvent
from cuvee.native import captured_stderr

SINGLE_PROMPT = "Here is a long story about a lighthouse keeper and the sea. Once upon a time"
STREAM_PROMPTS = [
    "Write a short essay about the history of bread.",
    "Explain how a bicycle works, step by step.",
    "The best way to learn a new language is",
    "List ten animals that live in the ocean and describe each one.",
    "Once upon a time in a small village by the mountains,",
    "A recipe for tomato soup: first,",
    "The three laws of thermodynamics are",
    "Dear diary, today I",
]
LONG_PROMPT = (
    "The following is a report on the state of the city's public libraries. "
    "It covers opening hours, the number of visitors, the collections, the staff, the budget, "
    "the buildings and the plans for the coming years. "
) * 6 + "Summary of the report:"


def default_model() -> Path:
    home = Path(os.environ.get("CUVEE_HOME", "~/.cuvee")).expanduser()
    return home / "models" / "gemma3-270m" / "gemma-3-270m-q4_k_m.gguf"


def decode_rate(times: list[float]) -> float:
    """Tokens per second between a stream's first and last token."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def timed_tokens(handle) -> list[float]:
    """Arrival time of every token of a request (text-only flush events excluded)."""
    times = []
    for event in handle:
        if isinstance(event, TokenEvent) and event.token_id is not None:
            times.append(time.perf_counter())
    return times


def single_streams(llm, engine, n_tokens: int, runs: int) -> tuple[list[float], list[float], int]:
    """Decode rates of create_completion and of cuvee, runs interleaved so that a slow spell
    of the machine hits both alike; and the number of tokens each generates."""
    greedy = {"temperature": 0.0, "max_tokens": n_tokens}
    generated = llm.create_completion(SINGLE_PROMPT, **greedy)["usage"]["completion_tokens"]
    params = SamplingParams(temperature=0, max_tokens=generated, ignore_eos=True)
    baseline, ours = [], []

    def run_baseline() -> None:
        chunks = llm.create_completion(SINGLE_PROMPT, stream=True, **greedy)
        times = [time.perf_counter() for _ in chunks]
        # streamed chunks are tokens, except that text held back (an unfinished UTF-8
        # character) merges chunks: the token count comes from the non-streamed run
        baseline.append((generated - 1) / (times[-1] - times[0]))

    def run_ours() -> None:
        handle = engine.submit(Request(prompt=SINGLE_PROMPT, params=params))
        ours.append(decode_rate(timed_tokens(handle)))

    for i in range(runs):  # alternate which goes first, so order favours neither
        for run in (run_baseline, run_ours) if i % 2 == 0 else (run_ours, run_baseline):
            run()
    return baseline, ours, generated


def drain_together(handles: list, on_token=None) -> list[list[float]]:
    """Read all streams from one thread, round-robin, as a server's event loop would: a thread
    per stream competes with llama.cpp's threads for the cores (about 12% of the aggregate
    rate on 2 cores with 16 streams)."""
    streams = [iter(h) for h in handles]
    times: list[list[float]] = [[] for _ in handles]
    live = list(range(len(handles)))
    while live:
        for i in list(live):
            event = next(streams[i])
            if not isinstance(event, TokenEvent):
                live.remove(i)
            elif event.token_id is not None:
                times[i].append(time.perf_counter())
                if on_token is not None:
                    on_token(i)
    return times


def aggregate(engine, n_streams: int, n_tokens: int) -> float:
    """Tokens/s over all streams while every stream is decoding."""
    handles = []
    for i in range(n_streams):
        params = SamplingParams(temperature=0, max_tokens=n_tokens, ignore_eos=True)
        prompt = STREAM_PROMPTS[i % len(STREAM_PROMPTS)] + f" ({i})"
        handles.append(engine.submit(Request(prompt=prompt, params=params)))
    results = drain_together(handles)
    start = max(times[0] for times in results)  # every stream has its first token
    end = min(times[-1] for times in results)  # and none has finished yet
    inside = sum(sum(1 for t in times if start < t <= end) for times in results)
    return inside / (end - start)


def ttft(engine, samples: int) -> list[float]:
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        handle = engine.submit(Request(prompt=LONG_PROMPT, params=params))
        for event in handle:
            if isinstance(event, TokenEvent):
                out.append(time.perf_counter() - t0)
                break
        handle.collect()
    return out


def ttft_loaded(engine, samples: int, n_streams: int = 8) -> list[float]:
    params = SamplingParams(temperature=0, max_tokens=100_000, ignore_eos=True)
    streams = [
        engine.submit(Request(prompt=STREAM_PROMPTS[i % len(STREAM_PROMPTS)], params=params))
        for i in range(n_streams)
    ]
    decoding = [threading.Event() for _ in streams]
    drain = threading.Thread(
        target=drain_together, args=(streams, lambda i: decoding[i].set()), daemon=True
    )
    drain.start()
    for started in decoding:  # every stream is decoding
        started.wait()
    try:
        return ttft(engine, samples)
    finally:
        for h in streams:
            h.cancel()
        drain.join()


def bare_decode_ms(model: Path, threads: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of bare llama_decode steps (see (d) above), over sequences that
    already hold 100 prompt tokens each."""
    import llama_cpp as llama

    with captured_stderr():
        lm = llama.llama_model_load_from_file(
            str(model).encode(), llama.llama_model_default_params()
        )
        cparams = llama.llama_context_default_params()
        cparams.n_ctx, cparams.n_seq_max = 16 * 1024, 16
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_threads = cparams.n_threads_batch = threads
        ctx = llama.llama_init_from_model(lm, cparams)
    memory = llama.llama_get_memory(ctx)
    batch = llama.llama_batch_init(512, 0, 1)
    prompt = 100

    def step(items: list[tuple[int, int, int, bool]]) -> float:
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(items)
        started = time.perf_counter()
        if llama.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    def timed(items: list[tuple[int, int, int, bool]]) -> float:
        times = []
        for _ in range(repeats):
            times.append(step(items))
            for seq in {item[2] for item in items}:  # back to the prompt alone
                llama.llama_memory_seq_rm(memory, seq, prompt, -1)
        return round(statistics.median(times) * 1000, 2)

    try:
        for seq in range(16):
            step([(1000 + 7 * j + seq, j, seq, j == prompt - 1) for j in range(prompt)])
        out = {
            "1_token": timed([(2000, prompt, 0, True)]),
            "16_sequences": timed([(2000 + s, prompt, s, True) for s in range(16)]),
        }
        for k in (2, 4, 8):
            out[f"1_sequence_{k}_tokens"] = timed(
                [(2000 + j, prompt + j, 0, True) for j in range(k)]
            )
        return out
    finally:
        llama.llama_batch_free(batch)
        llama.llama_free(ctx)
        llama.llama_model_free(lm)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="a GGUF file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer tokens and samples (~2 min)")
    ap.add_argument("--prefill-chunk", type=int, default=128)
    ap.add_argument("--kv-unified", action="store_true", help="one KV cache shared by all")
    args = ap.parse_args(argv)
    model = args.model or default_model()
    if not model.is_file():
        sys.exit(f"{model}: no such file (cuvee models pull gemma3-270m, or --model)")
    n_single, runs = (64, 5) if args.quick else (128, 9)
    n_stream, repeats = (48, 3) if args.quick else (128, 5)
    samples = 9 if args.quick else 21
    machine = describe()
    print(f"model {model.name}, {args.threads} threads, {'quick' if args.quick else 'full'}")

    from llama_cpp import Llama

    with captured_stderr():  # llama-cpp-python prints a line even with verbose=False
        llm = Llama(
            str(model),
            n_ctx=2048,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            verbose=False,
        )
    engine = open_engine(
        "llamacpp",
        model,
        n_ctx=16384,
        n_seq_max=16,
        n_threads=args.threads,
        prefill_chunk=args.prefill_chunk,
        kv_unified=args.kv_unified,
    )
    try:
        base_rates, our_rates, generated = single_streams(llm, engine, n_single, runs)
        del llm
        base_rate, ours = statistics.median(base_rates), statistics.median(our_rates)
        print(f"(a) single stream, {generated} tokens, median of {runs} (best):")
        print(f"    create_completion {base_rate:.1f} tok/s ({max(base_rates):.1f})")
        print(f"    cuvee             {ours:.1f} tok/s ({max(our_rates):.1f})")
        agg = {}
        for n in (1, 4, 8, 16):
            agg[n] = statistics.median(aggregate(engine, n, n_stream) for _ in range(repeats))
            print(f"(b) cuvee aggregate, {n:2d} streams: {agg[n]:.1f} tok/s (median of {repeats})")
        n_long = len(engine.prompt_tokens(Request(prompt=LONG_PROMPT)))
        idle = ttft(engine, samples)
        loaded = ttft_loaded(engine, samples)
    finally:
        engine.close()
    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded)
    print(f"(c) TTFT p50, {n_long}-token prompt: idle {idle_p50 * 1000:.0f} ms, "
          f"8 streams decoding {loaded_p50 * 1000:.0f} ms")  # fmt: skip
    bare = bare_decode_ms(model, args.threads, 9 if args.quick else 21)
    ceiling = 16 * bare["1_token"] / bare["16_sequences"]
    print(f"(d) bare llama_decode: 1 token {bare['1_token']:.1f} ms "
          f"({1000 / bare['1_token']:.1f} tok/s); 16 sequences x 1 token "
          f"{bare['16_sequences']:.1f} ms ({16000 / bare['16_sequences']:.1f} tok/s): "
          f"16-stream ceiling {ceiling:.2f}x single")  # fmt: skip
    print("    1 sequence, k tokens with logits: " + ", ".join(
        f"k={k} {bare[f'1_sequence_{k}_tokens']:.1f} ms" for k in (2, 4, 8)))  # fmt: skip
    figures = {
        "model": str(model),
        "threads": args.threads,
        "quick": args.quick,
        "single_stream_tokens": generated,
        "create_completion_tok_s": round(base_rate, 2),
        "create_completion_runs_tok_s": [round(r, 2) for r in base_rates],
        "single_stream_runs_tok_s": [round(r, 2) for r in our_rates],
        "single_stream_tok_s": round(ours, 2),
        "single_stream_ratio": round(ours / base_rate, 3),
        "aggregate_tok_s": {str(n): round(v, 2) for n, v in agg.items()},
        "concurrency16_ratio": round(agg[16] / agg[1], 3),
        "ttft_prompt_tokens": n_long,
        "ttft_idle_p50_ms": round(idle_p50 * 1000, 1),
        "ttft_loaded_p50_ms": round(loaded_p50 * 1000, 1),
        "ttft_idle_ms": [round(t * 1000, 1) for t in idle],
        "ttft_loaded_ms": [round(t * 1000, 1) for t in loaded],
        "ttft_loaded_over_idle": round(loaded_p50 / idle_p50, 3),
        "bare_decode_ms": bare,
        "bare_single_tok_s": round(1000 / bare["1_token"], 2),
        "bare_concurrency16_ceiling": round(ceiling, 3),
        "goals": {
            "single_stream_ratio": 1.5,
            "concurrency16_ratio": 3.5,
            "ttft_loaded_over_idle": 2.0,
        },
        "machine": machine,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
