"""Serving under load: `cuvee serve` against llama-cpp-python's own server on the same GGUF.

1, 4, 8 and 16 concurrent clients each stream completions (/v1/completions, the same raw prompt
and max_tokens, greedy) from each server in turn; reported per level: aggregate tokens/s,
time to first token p50 and p95, and errors (a failed request, or a stream cut before its
finish_reason). The HTTP layer's cost is cuvee serve's single-stream tokens/s against the bare
engine's on the same file and threads.

Needs llama-cpp-python's server extra (`pip install 'llama-cpp-python[server]'`).

    python bench/serve_load.py [--quick] [--model gemma3-270m] [--threads 2]

The last line printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}): {url}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server did not come up: {url}")


async def _one(client, url: str, model: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    tokens = 0
    finished = False
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                return {"error": f"HTTP {resp.status_code}"}
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        tokens += 1
                        if first is None:
                            first = time.perf_counter() - started
                    if choice.get("finish_reason"):
                        finished = True
    except Exception as exc:  # any transport failure counts as an error
        return {"error": repr(exc)}
    if not finished:
        return {"error": "stream ended without a finish_reason"}
    return {"tokens": tokens, "ttft": first, "end": time.perf_counter()}


async def _level(url: str, model: str, clients: int, rounds: int, max_tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker():
            return [await _one(client, url, model, max_tokens) for _ in range(rounds)]

        started = time.perf_counter()
        results = [
            r for batch in await asyncio.gather(*[worker() for _ in range(clients)]) for r in batch
        ]
        wall = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    return {
        "clients": clients,
        "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p95_s": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))] if ttfts else None,
        "errors": len(results) - len(ok),
        "error_examples": sorted({r["error"] for r in results if "error" in r})[:3],
    }


def _bare_engine(path: Path, threads: int, max_tokens: int, rounds: int) -> float:
    from cuvee.engine.base import Request, SamplingParams, open_engine

    engine = open_engine("llamacpp", path, n_threads=threads)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        engine.submit(Request(prompt=PROMPT, params=params)).collect()  # warm-up
        started, tokens = time.perf_counter(), 0
        for _ in range(rounds):
            tokens += (
                engine.submit(Request(prompt=PROMPT, params=params))
                .collect()
                .finished.completion_tokens
            )
        return tokens / (time.perf_counter() - started)
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", default="1,4,8,16")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    rounds, max_tokens = (1, 48) if args.quick else (2, 96)

    from cuvee.config import load_settings
    from cuvee.engine.select import choose_target
    from cuvee.progress import SilentReporter

    settings = load_settings()
    target = choose_target(settings, args.model, "llamacpp", SilentReporter())
    print(
        f"model {args.model}: {target.path.name}, {args.threads} threads, "
        f"{max_tokens} tokens x {rounds} per client",
        flush=True,
    )
    env = {**os.environ, "CUVEE_HOME": str(settings.home)}
    servers = {}
    port = _free_port()
    servers["cuvee"] = (
        [
            sys.executable,
            "-m",
            "cuvee",
            "serve",
            "--model",
            args.model,
            "--port",
            str(port),
            "--threads",
            str(args.threads),
        ],
        f"http://127.0.0.1:{port}",
        args.model,
    )
    port2 = _free_port()
    servers["llama_cpp_server"] = (
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(target.path),
            "--port",
            str(port2),
            "--n_threads",
            str(args.threads),
            "--n_ctx",
            "4096",
        ],
        f"http://127.0.0.1:{port2}",
        target.path.stem,
    )
    results: dict[str, list[dict]] = {}
    for name, (cmd, url, model) in servers.items():
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(url, proc)
            asyncio.run(_level(url, model, 1, 1, 8))  # warm-up: the model loads on first use
            results[name] = []
            for n in levels:
                r = asyncio.run(_level(url, model, n, rounds, max_tokens))
                results[name].append(r)
                p50 = f"{r['ttft_p50_s']:.2f}" if r["ttft_p50_s"] is not None else "-"
                p95 = f"{r['ttft_p95_s']:.2f}" if r["ttft_p95_s"] is not None else "-"
                print(
                    f"{name:17s} {n:2d} clients: {r['tokens_per_s']:6.1f} tok/s, TTFT p50 "
                    f"{p50} s, p95 {p95} s, errors {r['errors']} {r['error_examples']}",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    bare = _bare_engine(target.path, args.threads, max_tokens, 2 if args.quick else 3)
    served_single = results["cuvee"][0]["tokens_per_s"] if levels[0] == 1 else None
    overhead = 1 - served_single / bare if served_single else None
    print(
        f"bare engine single stream {bare:.1f} tok/s; via HTTP {served_single:.1f}: "
        f"overhead {overhead:.1%}"
        if overhead is not None
        else f"bare engine {bare:.1f}"
    )
    top = levels[-1]
    ours = results["cuvee"][-1]["tokens_per_s"]
    theirs = results["llama_cpp_server"][-1]["tokens_per_s"]
    print(
        json.dumps(
            {
                f"ratio_vs_llama_cpp_server_{top}": round(ours / theirs, 3) if theirs else None,
                "http_overhead": round(overhead, 4) if overhead is not None else None,
                "errors": sum(r["errors"] for r in results["cuvee"]),
                "llama_cpp_server_errors": sum(r["errors"] for r in results["llama_cpp_server"]),
                "bare_engine_single_tok_s": round(bare, 1),
                "levels": results,
                "gguf": str(target.path),
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
