"""Serving under load: `cuvee serve` against llama.cpp's C++ `llama-server` and llama-cpp-python's
server, side by side on the same GGUF, threads and context per sequence.

The peers, each in its strongest configuration for this load:

- `llama-server -np 16 -c 16x2048 -t T -tb T --cont-batching -fa auto` (llama.cpp's own server:
  16 slots, continuous batching, each slot its own 2048-cell KV stream as cuvee's engine has,
  prompt caching on as by default). The main peer. Built from the llama.cpp sources inside the
  pinned llama-cpp-python sdist (constraints.in), with the CPU options the project's own
  binding gets, outside the repository:

      pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp
      tar -xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp
      cd /tmp/lcp/llama_cpp_python-0.3.36
      cmake -S vendor/llama.cpp -B /tmp/llama-server-build -DCMAKE_BUILD_TYPE=Release \\
          -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \\
          -DLLAMA_BUILD_TESTS=OFF $(python3 scripts/llama_cpp_wheel.py --print-args)
      cmake --build /tmp/llama-server-build --target llama-server -j2

  (run the `scripts/llama_cpp_wheel.py` of this repository: the path above is relative to it.)
- `python -m llama_cpp.server --interrupt_requests False --flash_attn True` (one sequence at a
  time; requests queue instead of cutting the running one; flash attention as llama.cpp's
  "auto" resolves on a CPU). It needs llama-cpp-python's server extras, which are in the
  project's dev dependencies (the gateway's tests run it as an upstream), so `make setup`'s venv
  runs it. Elsewhere: `pip install --target DIR --no-deps pydantic-settings sse-starlette
  'starlette-context<0.4' ...` and `--llama-cpp-server-path DIR` puts DIR on that server's
  PYTHONPATH only (or install them into the interpreter named by `--llama-cpp-server-python`).

The load: /v1/completions, streamed with `stream_options.include_usage`, greedy (temperature
0, repeat penalty 1.0), max_tokens 128, 16 different prompts; once from 1 client (one request
after another) and once from 16 concurrent clients. Tokens are counted from each stream's
`usage` (a server that sends none: 128 when it stopped for length, else its text chunks);
time to first token is the time to the first chunk with text. Every request's prompt starts
with a serial number that no other request has, so no server answers from its prompt cache.
The servers take turns, level by level, in an order that rotates each run (A B C, B C A, ...),
and the figures are medians over the runs, because the machine is shared: interleaving makes
a slow spell hit each server alike, and the ratios fairer than the absolute figures.

The HTTP layer's cost is cuvee serve's 1-client tokens/s against the bare engine's on the same
file, threads and prompts.

    python bench/serve_load.py --llama-server /tmp/llama-server-build/bin/llama-server \\
        [--runs 3] [--model gemma3-270m] [--threads 2] [--llama-cpp-server-path DIR] [--quick]

The last line printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from machine import describe
from procs import free_port

PARALLEL = 16  # sequences served at once (cuvee's engine default, llama-server's -np)
CTX_PER_SEQ = 2048  # KV cells per sequence: cuvee's engine default (16 x 2048)
DEFAULT_LLAMA_SERVER = "/tmp/llama-server-build/bin/llama-server"
PROMPTS = [
    "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper",
    "Write a short essay about the history of bread.",
    "Explain how a bicycle works, step by step.",
    "The best way to learn a new language is",
    "List ten animals that live in the ocean and describe each one.",
    "A recipe for tomato soup: first,",
    "The three laws of thermodynamics are",
    "Dear diary, today I",
    "The city council met on Tuesday to discuss the new railway station, and",
    "Here is a letter to a friend who has just moved to another country:",
    "The main differences between a violin and a viola are",
    "In the year 2150, the first colony on Mars",
    "A beginner's guide to growing tomatoes on a balcony:",
    "The story of how the printing press changed Europe begins",
    "Five tips for writing clear emails at work:",
    "The old map showed a path through the forest that nobody had walked for a hundred years.",
]


@dataclass
class Server:
    name: str
    cmd: list[str]
    port: int
    model: str  # the model id requests name
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    runs: dict[int, list[dict]] = field(default_factory=dict)  # clients -> per-run figures

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with its children
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"{self.name} exited early ({code}):\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not come up in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


async def one_request(client, server: Server, prompt: str, max_tokens: int) -> dict:
    """Stream one completion; its token count, time to first token, and end time."""
    body = {
        "model": server.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "repeat_penalty": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    finish = None
    try:
        async with client.stream("POST", server.url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return {"error": f"HTTP {resp.status_code}: {resp.text[:120]}"}
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    if choice.get("text"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - started
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
    except Exception as exc:  # any transport failure counts as an error
        return {"error": repr(exc)[:160]}
    if finish is None:
        return {"error": "stream ended without a finish_reason"}
    if usage and usage.get("completion_tokens") is not None:
        tokens, source = int(usage["completion_tokens"]), "usage"
    elif finish == "length":
        tokens, source = max_tokens, "length"
    else:
        tokens, source = chunks, "chunks"
    return {"tokens": tokens, "source": source, "ttft": first, "end": time.perf_counter()}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by nearest rank (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))  # ceil, clamped
    return ordered[int(rank) - 1]


async def level(server: Server, prompts: list[str], clients: int, max_tokens: int) -> dict:
    """All prompts through `clients` concurrent clients, each taking the next prompt left."""
    import httpx

    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    results: list[dict] = []
    # A fresh connection per request: llama-server closes a kept-alive connection after a few
    # requests, and a client that reuses it just then gets "Server disconnected" (2 of 16
    # requests at 1 client); a loopback connect costs well under a millisecond.
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                results.append(await one_request(client, server, queue.get_nowait(), max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        wall = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {
        "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "tokens": sum(r["tokens"] for r in ok),
        "wall_s": wall,
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p95_s": percentile(ttfts, 95) if ttfts else None,
        "errors": len(results) - len(ok),
        "error_examples": sorted({r["error"] for r in results if "error" in r})[:3],
        "token_sources": sorted({r["source"] for r in ok}),
    }


def bare_engine(path: Path, threads: int, prompts: list[str], max_tokens: int) -> float:
    """Tokens/s of cuvee's engine in-process, the prompts one after another (as 1 client)."""
    from cuvee.engine import open_engine
    from cuvee.engine.base import Request, SamplingParams

    engine = open_engine("llamacpp", path, n_threads=threads)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, repeat_penalty=1.0)
        engine.submit(Request(prompt=prompts[0], params=params)).collect()  # warm-up
        started, tokens = time.perf_counter(), 0
        for prompt in prompts:
            done = engine.submit(Request(prompt=prompt, params=params)).collect()
            tokens += done.finished.completion_tokens
        return tokens / (time.perf_counter() - started)
    finally:
        engine.close()


def llama_server_version(binary: str) -> str | None:
    try:
        proc = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    found = [ln for ln in lines if ln.startswith("version")]
    return (found or lines or [None])[0]


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if ours is not None and theirs else None


def build_servers(args, target_path: Path, settings, workdir: Path) -> list[Server]:
    threads = str(args.threads)
    servers = []
    base_env = {**os.environ, "CUVEE_HOME": str(settings.home)}
    if "cuvee" in args.servers:
        port = free_port()
        cmd = [sys.executable, "-m", "cuvee", "serve", "--model", args.model]
        cmd += ["--port", str(port), "--threads", threads, "--host", "127.0.0.1"]
        servers.append(Server("cuvee", cmd, port, args.model, base_env, workdir / "cuvee.log"))
    if "llama_server" in args.servers:
        port = free_port()
        cmd = [args.llama_server, "-m", str(target_path), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "-np", str(PARALLEL), "-c", str(PARALLEL * CTX_PER_SEQ)]
        cmd += ["-t", threads, "-tb", threads, "--cont-batching", "-fa", "auto"]
        cmd += ["--no-webui", "-a", args.model]
        servers.append(
            Server("llama_server", cmd, port, args.model, base_env, workdir / "llama-server.log")
        )
    if "llama_cpp_server" in args.servers:
        port = free_port()
        env = dict(base_env)
        if args.llama_cpp_server_path:
            extra = str(Path(args.llama_cpp_server_path).resolve())
            env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH", "")) if p)
        cmd = [args.llama_cpp_server_python, "-m", "llama_cpp.server", "--model", str(target_path)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_threads", threads]
        cmd += ["--n_threads_batch", threads, "--n_ctx", str(CTX_PER_SEQ)]
        cmd += ["--flash_attn", "True", "--interrupt_requests", "False"]
        cmd += ["--model_alias", args.model, "--verbose", "False"]
        servers.append(
            Server("llama_cpp_server", cmd, port, args.model, env, workdir / "llama-cpp-server.log")
        )
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (medians)")
    parser.add_argument("--levels", default=f"1,{PARALLEL}", help="concurrent clients")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--single-requests",
        type=int,
        default=len(PROMPTS),
        help="requests (the first N prompts) at the 1-client level; fewer on a busy machine",
    )
    parser.add_argument(
        "--llama-server",
        default=os.environ.get("LLAMA_SERVER", DEFAULT_LLAMA_SERVER),
        help="llama.cpp's llama-server binary (see above for how to build it)",
    )
    parser.add_argument(
        "--llama-cpp-server-python",
        default=sys.executable,
        help="the interpreter that runs `-m llama_cpp.server`",
    )
    parser.add_argument(
        "--llama-cpp-server-path",
        default=None,
        help="a folder holding llama-cpp-python's server extras, put on that server's PYTHONPATH",
    )
    parser.add_argument(
        "--servers",
        default="cuvee,llama_server,llama_cpp_server",
        help="which to run, comma-separated (cuvee, llama_server, llama_cpp_server)",
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="start no further run that the last run's duration says would end past this",
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-engine figure")
    parser.add_argument("--quick", action="store_true", help="1 run, 64 tokens")
    args = parser.parse_args()
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.quick:
        args.runs, args.max_tokens = 1, 64
    levels = [int(x) for x in args.levels.split(",")]
    if "llama_server" in args.servers and not (
        shutil.which(args.llama_server) or Path(args.llama_server).is_file()
    ):
        sys.exit(
            f"llama-server not found at {args.llama_server}: build it as this script's "
            "docstring says and pass --llama-server PATH (or --servers without llama_server)"
        )

    machine = describe()
    from cuvee.config import load_settings
    from cuvee.progress import SilentReporter
    from cuvee.resolve import target as resolve_target

    settings = load_settings()
    target = resolve_target(settings, args.model, "llamacpp", SilentReporter())
    version = llama_server_version(args.llama_server) if "llama_server" in args.servers else None
    print(
        f"model {args.model}: {target.path}, {args.threads} threads, {CTX_PER_SEQ} cells per "
        f"sequence; {len(PROMPTS)} prompts x {args.max_tokens} tokens at {levels} clients, "
        f"{args.runs} interleaved runs; llama-server {version}",
        flush=True,
    )

    # SIGTERM (a CI timeout, a kill) unwinds like Ctrl-C, so the servers are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    servers = build_servers(args, target.path, settings, workdir)
    serial = completed = 0
    try:
        for server in servers:  # one after another, so loading does not compete
            print(f"starting {server.name}: {' '.join(server.cmd)}", flush=True)
            server.start()
            server.wait_ready()
            # warm-up: the model loads on first use in cuvee; then a short concurrent burst
            warm = [f"#{i} Warm-up {p}" for i, p in enumerate(PROMPTS)]
            asyncio.run(level(server, warm[:1], 1, 8))
            asyncio.run(level(server, warm, PARALLEL, 8))
            server.runs = {n: [] for n in levels}
        began, last = time.perf_counter(), 0.0
        for run in range(args.runs):
            elapsed = time.perf_counter() - began
            if run and args.budget_min and elapsed + last > args.budget_min * 60:
                print(f"stopping after {run} runs: another would pass --budget-min", flush=True)
                break
            shift = run % len(servers)
            order = servers[shift:] + servers[:shift]
            for n in levels:
                # the same texts for every server; a serial no other request had leads each
                count = args.single_requests if n == 1 else len(PROMPTS)
                prompts = [f"#{serial + i} {p}" for i, p in enumerate(PROMPTS[:count])]
                serial += len(PROMPTS)
                for server in order:
                    r = asyncio.run(level(server, prompts, n, args.max_tokens))
                    server.runs[n].append(r)
                    p50 = f"{r['ttft_p50_s']:.3f}" if r["ttft_p50_s"] is not None else "-"
                    p95 = f"{r['ttft_p95_s']:.3f}" if r["ttft_p95_s"] is not None else "-"
                    errors = f", errors {r['errors']} {r['error_examples']}" if r["errors"] else ""
                    print(
                        f"run {run + 1}/{args.runs} {n:2d} clients {server.name:16s} "
                        f"{r['tokens_per_s']:6.1f} tok/s ({r['tokens']} tokens in "
                        f"{r['wall_s']:.1f} s), TTFT p50 {p50} s p95 {p95} s{errors}",
                        flush=True,
                    )
            completed = run + 1
            last = time.perf_counter() - began - elapsed
    finally:
        for server in servers:
            server.stop()

    summary: dict[str, dict] = {}
    for server in servers:
        summary[server.name] = {}
        for n in levels:
            runs = server.runs.get(n, [])
            summary[server.name][str(n)] = {
                "tokens_per_s": rnd(med([r["tokens_per_s"] for r in runs]), 1),
                "ttft_p50_s": rnd(med([r["ttft_p50_s"] for r in runs])),
                "ttft_p95_s": rnd(med([r["ttft_p95_s"] for r in runs])),
                "errors": sum(r["errors"] for r in runs),
                "runs_tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs],
                "token_sources": sorted({s for r in runs for s in r["token_sources"]}),
            }
    print(f"\nmedians of {completed} runs:")
    for name, by_level in summary.items():
        for n, s in by_level.items():
            print(
                f"  {name:16s} {int(n):2d} clients: {s['tokens_per_s']} tok/s, TTFT p50 "
                f"{s['ttft_p50_s']} s, p95 {s['ttft_p95_s']} s, errors {s['errors']}"
            )

    bare = overhead = None
    one = str(levels[0])
    if not args.no_bare and "cuvee" in summary and levels[0] == 1:
        prompts = PROMPTS[: args.single_requests]
        bare = bare_engine(target.path, args.threads, prompts, args.max_tokens)
        served = summary["cuvee"][one]["tokens_per_s"]
        overhead = 1 - served / bare if served else None
        shown = f"{overhead:.1%}" if overhead is not None else "-"
        print(f"bare engine, prompts one after another: {bare:.1f} tok/s; via HTTP {served}: "
              f"HTTP overhead {shown}")  # fmt: skip

    def figure(name: str, n: int, key: str = "tokens_per_s") -> float | None:
        return summary.get(name, {}).get(str(n), {}).get(key)

    top = levels[-1]
    figures = {
        f"ratio_vs_llama_server_{top}": ratio(figure("cuvee", top), figure("llama_server", top)),
        "ratio_vs_llama_server_1": ratio(figure("cuvee", 1), figure("llama_server", 1)),
        f"ttft_p95_vs_llama_server_{top}": ratio(
            figure("cuvee", top, "ttft_p95_s"), figure("llama_server", top, "ttft_p95_s")
        ),
        f"ratio_vs_llama_cpp_server_{top}": ratio(
            figure("cuvee", top), figure("llama_cpp_server", top)
        ),
        "ratio_vs_llama_cpp_server_1": ratio(figure("cuvee", 1), figure("llama_cpp_server", 1)),
        "http_overhead": rnd(overhead, 4),
        "bare_engine_single_tok_s": rnd(bare, 1),
        "errors": sum(s["errors"] for s in summary.get("cuvee", {}).values()),
        "llama_server_errors": sum(s["errors"] for s in summary.get("llama_server", {}).values()),
        "llama_cpp_server_errors": sum(
            s["errors"] for s in summary.get("llama_cpp_server", {}).values()
        ),
        "servers": summary,
        "commands": {s.name: s.cmd for s in servers},
        "llama_server_version": version,
        "gguf": str(target.path),
        "threads": args.threads,
        "ctx_per_seq": CTX_PER_SEQ,
        "max_tokens": args.max_tokens,
        "prompts": len(PROMPTS),
        "single_requests": args.single_requests,
        "runs": completed,
        "machine": machine,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
