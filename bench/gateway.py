"""`cuvee serve` as a gateway: the latency it adds over a direct call to an upstream that
answers at once, non-streamed and streamed, at fixed request rates, beside LiteLLM's proxy in
front of the same upstream; the gateway's memory over many requests; and a failover.

    python bench/gateway.py --litellm /tmp/litellm-venv/bin/litellm [--rates 50,100]
        [--seconds 10] [--runs 3] [--soak 100000] [--failover-seconds 12]

LiteLLM is the peer: install it into a throw-away virtual environment at an exact version whose
wheel's sha256 you checked against PyPI's (never 1.82.7 or 1.82.8, which were compromised), and
give it no provider key; it is pointed only at the local upstream. Without --litellm the bench
measures cuvee alone.

The upstream is a small ASGI app in its own process that answers every chat completion at once
(one short answer, or a stream of 8 chunks). The load is open-loop: requests leave at fixed
intervals whatever the answers do, from one client process with a connection pool; the three
paths (direct, cuvee, LiteLLM) take turns within each run, in a rotating order. Added latency
is each path's percentile minus the direct path's, in the same run; the figures are medians
over the runs.

Memory: ``--soak`` requests (half streamed, 32 at a time) through cuvee after the latency runs;
RSS once the first tenth has been answered and at the end (``rss_growth``), and the peak.

Failover: two replicas (slow fakes, 40 tokens 20 ms apart, that go on from a final assistant
message) behind a balance route, 16 clients streaming without pause, one replica killed with
SIGKILL a third of the way in: the requests that failed, the tokens missing or repeated, and
the longest wait between two tokens of a resumed stream (``resume_ms``), beside the survivor's
own time to first token. The last line is one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx
from machine import describe
from procs import free_port, rss_mib

UPSTREAM = textwrap.dedent(
    """
    import asyncio, json, sys
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
    import uvicorn

    ANSWER = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

    def chunk(delta, finish=None):
        body = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return "data: " + json.dumps(body) + "\\n\\n"

    SLOW = len(sys.argv) > 2 and sys.argv[2] == "slow"  # a replica for the failover run

    async def chat(request):
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse(ANSWER)
        if SLOW:
            # 40 tokens 20 ms apart, going on after a final assistant message's words
            messages = body.get("messages") or []
            start = 0
            if messages and messages[-1].get("role") == "assistant":
                start = len(messages[-1]["content"].split())
            async def slow():
                yield chunk({"role": "assistant", "content": ""})
                for i in range(start, 40):
                    await asyncio.sleep(0.02)
                    yield chunk({"content": f"w{i} "})
                yield chunk({}, "stop")
                yield "data: [DONE]\\n\\n"
            return StreamingResponse(slow(), media_type="text/event-stream")
        def events():
            yield chunk({"role": "assistant", "content": ""})
            for i in range(8):
                yield chunk({"content": f"w{i} "})
            yield chunk({}, "stop")
            yield "data: [DONE]\\n\\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/models", models)])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


def wait_up(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not come up")


async def load(url: str, rate: float, seconds: float, stream: bool) -> list[float]:
    """Open-loop: a request every 1/rate s for ``seconds``; each one's latency (to the end of
    the answer), in ms. Failures are counted as None."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    out: list[float] = []
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one() -> None:
            started = time.perf_counter()
            try:
                if stream:
                    async with client.stream("POST", url, json=body) as r:
                        async for _ in r.aiter_bytes():
                            pass
                        ok = r.status_code == 200
                else:
                    r = await client.post(url, json=body)
                    ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append((time.perf_counter() - started) * 1000 if ok else float("nan"))

        tasks = []
        begin = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return out


async def soak(url: str, total: int, concurrency: int, at: int) -> tuple[int, int]:
    """``total`` requests (every other one streamed), ``concurrency`` at a time, as fast as
    they are answered; sets SOAK_MARK once ``at`` have been. Returns (failed, done)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    failed = 0
    done = 0
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker(offset: int) -> None:
            nonlocal failed, done
            for i in range(offset, total, concurrency):
                try:
                    if i % 2:
                        async with client.stream("POST", url, json={**body, "stream": True}) as r:
                            async for _ in r.aiter_bytes():
                                pass
                    else:
                        r = await client.post(url, json=body)
                    if r.status_code != 200:
                        failed += 1
                        SOAK_ERRORS[f"HTTP {r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    failed += 1
                    SOAK_ERRORS[type(exc).__name__] += 1
                done += 1
                if done == at:
                    SOAK_MARK.set()

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return failed, done


SOAK_MARK = threading.Event()  # set when the soak's first tenth has been answered
SOAK_ERRORS: collections.Counter = collections.Counter()  # what the failed soak requests got


def hwm_mib(pid: int) -> float:
    """The peak resident set of process ``pid``, in MiB (Linux's VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _off_by(text: str) -> int:
    """Tokens missing, repeated or out of place in an answer that should be w0 ... w39."""
    words, expected = text.split(), [f"w{i}" for i in range(40)]
    if words == expected:
        return 0
    counts = collections.Counter(words)
    missing = sum(1 for w in expected if counts[w] == 0)
    extra = sum(n - 1 for n in counts.values() if n > 1) + sum(
        n for w, n in counts.items() if w not in expected
    )
    return (missing + extra) or 1  # nothing missing or extra: the order is wrong


async def failover_load(
    url: str, streams: int, seconds: float, kill, model: str = "pool"
) -> list[dict]:
    """``streams`` clients streaming one after another for ``seconds``; ``kill()`` runs at a
    third of the time. Each answer: its status, text, the largest gap between two tokens
    (ms), whether it was resumed, and its time to first token (ms)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_tokens": 100}  # fmt: skip
    out: list[dict] = []
    end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def client_loop() -> None:
            while time.perf_counter() < end:
                started = time.perf_counter()
                text, stamps, resumed, status, finish = "", [], False, 0, None
                try:
                    async with client.stream("POST", url, json=body) as r:
                        status = r.status_code
                        async for line in r.aiter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            chunk = json.loads(line[6:])
                            for choice in chunk.get("choices") or []:
                                piece = (choice.get("delta") or {}).get("content") or ""
                                if piece:
                                    text += piece
                                    stamps.append(time.perf_counter())
                                finish = choice.get("finish_reason") or finish
                            served = chunk.get("cuvee") or {}
                            resumed |= any(
                                "broke after" in a.get("error", "")
                                for a in served.get("attempts", [])
                            )
                except httpx.HTTPError:
                    status = 0
                gaps = [b - a for a, b in itertools.pairwise(stamps)]
                out.append({
                    "status": status, "text": text, "finish": finish, "resumed": resumed,
                    "gap_ms": max(gaps, default=0) * 1000,
                    "ttft_ms": (stamps[0] - started) * 1000 if stamps else None,
                })  # fmt: skip

        async def killer() -> None:
            await asyncio.sleep(seconds / 3)
            kill()

        await asyncio.gather(killer(), *(client_loop() for _ in range(streams)))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(v for v in values if v == v)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_failover(args, work: Path, start, script: Path) -> dict:
    """Two replicas (slow fakes: 40 tokens 20 ms apart) behind a balance route; streams run
    without pause while one replica is killed with SIGKILL. Counts the requests that failed
    (not 200, not a whole answer), the tokens missing or repeated, and how long the resumed
    streams waited between two tokens, beside the survivor's own time to first token."""
    ports = [free_port(), free_port()]
    replicas = [
        start([sys.executable, str(script), str(p), "slow"], f"replica{i}.log")
        for i, p in enumerate(ports)
    ]
    for proc, p in zip(replicas, ports, strict=True):
        wait_up(f"http://127.0.0.1:{p}/v1/models", proc, "a replica")
    cfg = work / "failover.yaml"
    cfg.write_text(
        "upstreams:\n"
        + "".join(
            f"  r{i}:\n    base_url: http://127.0.0.1:{p}/v1\n    models: [m]\n"
            for i, p in enumerate(ports)
        )
        + "routes:\n  pool:\n    policy: balance\n    targets: [r0/m, r1/m]\n"
    )
    port = free_port()
    gateway = start(
        [sys.executable, "-m", "cuvee", "serve", "--port", str(port), "--config", str(cfg)],
        "failover-cuvee.log",
        {"CUVEE_HOME": str(work / "home-failover")},
    )
    wait_up(f"http://127.0.0.1:{port}/health", gateway, "cuvee serve (failover)")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    asyncio.run(failover_load(url, 4, 1.0, lambda: None))  # warm-up
    killed = {}

    def kill() -> None:
        os.killpg(replicas[0].pid, signal.SIGKILL)
        killed["at"] = time.perf_counter()

    answers = asyncio.run(failover_load(url, 16, args.failover_seconds, kill))
    want = "".join(f"w{i} " for i in range(40))
    failed = [a for a in answers if a["status"] != 200 or a["finish"] != "stop"]
    wrong = [
        a for a in answers if a["status"] == 200 and a["finish"] == "stop" and a["text"] != want
    ]
    gap_or_repeat = sum(abs(len(a["text"].split()) - 40) for a in wrong) + len(
        [a for a in wrong if len(a["text"].split()) == 40]
    )
    resumed = [a for a in answers if a["resumed"]]
    survivor = f"http://127.0.0.1:{ports[1]}/v1/chat/completions"
    direct = asyncio.run(failover_load(survivor, 4, 2.0, lambda: None, model="m"))
    ttft = [a["ttft_ms"] for a in direct if a["ttft_ms"] is not None]
    out = {
        "requests": len(answers),
        "failed": len(failed),
        "gap_or_repeat": gap_or_repeat,
        "resumed_streams": len(resumed),
        "resume_ms_p50": round(statistics.median(a["gap_ms"] for a in resumed), 1)
        if resumed else None,
        "resume_ms_max": round(max(a["gap_ms"] for a in resumed), 1) if resumed else None,
        "survivor_ttft_ms_p50": round(statistics.median(ttft), 1) if ttft else None,
        "normal_token_gap_ms_p50": round(
            statistics.median(a["gap_ms"] for a in answers if not a["resumed"]), 1
        ),
    }  # fmt: skip
    print(
        f"failover: {out['requests']} streams, replica r0 killed (SIGKILL) at a third of "
        f"{args.failover_seconds:g} s: {out['failed']} failed, {out['gap_or_repeat']} tokens "
        f"missing or repeated; {out['resumed_streams']} resumed, their longest wait between two "
        f"tokens p50 {out['resume_ms_p50']} ms, max {out['resume_ms_max']} ms (the survivor's "
        f"own time to first token p50 {out['survivor_ttft_ms_p50']} ms; a normal stream's "
        f"longest gap p50 {out['normal_token_gap_ms_p50']} ms)",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--litellm", default=None, help="the litellm executable (its own venv)")
    parser.add_argument("--rates", default="50,100")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--soak", type=int, default=100_000, help="requests for the memory run (0: none)"
    )
    parser.add_argument("--failover-seconds", type=float, default=12)
    parser.add_argument(
        "--litellm-workers",
        type=int,
        default=2,
        help="LiteLLM's worker processes (its docs: one a core)",
    )
    args = parser.parse_args()
    machine = describe()
    rates = [float(r) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        with (work / log).open("w") as sink:
            proc = subprocess.Popen(
                cmd, stdout=sink, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )  # fmt: skip
        procs.append(proc)
        return proc

    try:
        up_port = free_port()
        script = work / "upstream.py"
        script.write_text(UPSTREAM)
        upstream = start([sys.executable, str(script), str(up_port)], "upstream.log")
        wait_up(f"http://127.0.0.1:{up_port}/v1/models", upstream, "the upstream")
        paths = {"direct": f"http://127.0.0.1:{up_port}/v1/chat/completions"}

        cfg = work / "serve.yaml"
        cfg.write_text(
            f"upstreams:\n  up:\n    base_url: http://127.0.0.1:{up_port}/v1\n    models: [m]\n"
        )
        cv_port = free_port()
        cuvee = start(
            [sys.executable, "-m", "cuvee", "serve", "--port", str(cv_port), "--config", str(cfg),
             "--log-file", str(work / "requests.jsonl")],
            "cuvee.log",
            {"CUVEE_HOME": str(work / "home")},
        )  # fmt: skip
        wait_up(f"http://127.0.0.1:{cv_port}/health", cuvee, "cuvee serve")
        paths["cuvee"] = f"http://127.0.0.1:{cv_port}/v1/chat/completions"
        if args.litellm:
            lcfg = work / "litellm.yaml"
            lcfg.write_text(
                "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n"
                f"      api_base: http://127.0.0.1:{up_port}/v1\n      api_key: none\n"
            )
            ll_port = free_port()
            litellm = start(
                [args.litellm, "--config", str(lcfg), "--port", str(ll_port), "--host",
                 "127.0.0.1", "--num_workers", str(args.litellm_workers)],
                "litellm.log",
                {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                 "OPENAI_API_KEY": "", "DISABLE_SCHEMA_UPDATE": "True"},
            )  # fmt: skip
            wait_up(f"http://127.0.0.1:{ll_port}/health/liveliness", litellm, "LiteLLM", 300)
            paths["litellm"] = f"http://127.0.0.1:{ll_port}/v1/chat/completions"
        for url in paths.values():  # warm-up
            asyncio.run(load(url, 20, 1, False))
            asyncio.run(load(url, 20, 1, True))
        rss_start = rss_mib(cuvee.pid)
        sent = 0
        figures: dict = {}
        names = list(paths)
        for run in range(args.runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            for rate in rates:
                for stream in (False, True):
                    key = f"{int(rate)}rps_{'stream' if stream else 'plain'}"
                    for name in order:
                        lat = asyncio.run(load(paths[name], rate, args.seconds, stream))
                        sent += len(lat) if name == "cuvee" else 0
                        row = figures.setdefault(key, {}).setdefault(name, [])
                        row.append(
                            {"p50": pct(lat, 50), "p99": pct(lat, 99),
                             "failed": sum(v != v for v in lat)}
                        )  # fmt: skip
                        print(
                            f"run {run + 1} {key:>14} {name:>8}: p50 {pct(lat, 50):7.2f} ms, "
                            f"p99 {pct(lat, 99):7.2f} ms, failed {sum(v != v for v in lat)}",
                            flush=True,
                        )
        rss_end = rss_mib(cuvee.pid)
        memory = {"rss_start_mib": round(rss_start, 1), "rss_end_mib": round(rss_end, 1)}
        if args.soak:
            # memory over many requests: RSS once the first tenth has gone (pools, caches
            # warm), at the end, and the peak
            SOAK_MARK.clear()
            marks: dict = {}

            def mark() -> None:
                SOAK_MARK.wait()
                marks["warm"] = rss_mib(cuvee.pid)

            watcher = threading.Thread(target=mark, daemon=True)
            watcher.start()
            began = time.perf_counter()
            soak_failed, soak_done = asyncio.run(
                soak(paths["cuvee"], args.soak, 32, max(1, args.soak // 10))
            )
            watcher.join(timeout=5)
            memory.update(
                soak_requests=soak_done,
                soak_failed=soak_failed,
                soak_errors=dict(SOAK_ERRORS),
                soak_seconds=round(time.perf_counter() - began, 1),
                rss_warm_mib=round(marks.get("warm", float("nan")), 1),
                rss_after_soak_mib=round(rss_mib(cuvee.pid), 1),
                peak_rss_mib=round(hwm_mib(cuvee.pid), 1),
            )
            memory["rss_growth"] = round(
                memory["rss_after_soak_mib"] / memory["rss_warm_mib"] - 1, 4
            )
            print(
                f"soak: {soak_done} requests ({soak_failed} failed: {dict(SOAK_ERRORS)}) in "
                f"{memory['soak_seconds']} s; RSS {memory['rss_warm_mib']} MiB after the first "
                f"tenth, {memory['rss_after_soak_mib']} MiB at the end (growth "
                f"{memory['rss_growth']:.2%}), peak {memory['peak_rss_mib']} MiB",
                flush=True,
            )
        failover = run_failover(args, work, start, script)
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass

    summary: dict = {}
    for key, by_path in figures.items():
        direct = by_path["direct"]
        for name in by_path:
            if name == "direct":
                continue
            added50 = statistics.median(
                r["p50"] - d["p50"] for r, d in zip(by_path[name], direct, strict=True)
            )
            added99 = statistics.median(
                r["p99"] - d["p99"] for r, d in zip(by_path[name], direct, strict=True)
            )
            failed = sum(r["failed"] for r in by_path[name])
            summary.setdefault(key, {})[name] = {
                "added_p50_ms": round(added50, 2),
                "added_p99_ms": round(added99, 2),
                "failed": failed,
            }
            print(f"{key:>14} {name:>8}: added p50 {added50:6.2f} ms, p99 {added99:6.2f} ms, "
                  f"failed {failed}")  # fmt: skip
    print(f"cuvee gateway RSS: {rss_start:.1f} -> {rss_end:.1f} MiB over {sent} requests")

    def worst(name: str, figure: str) -> float | None:
        values = [s[name][figure] for s in summary.values() if name in s]
        return max(values) if values else None

    print(
        json.dumps(
            {
                "added_p50_ms": worst("cuvee", "added_p50_ms"),
                "added_p99_ms": worst("cuvee", "added_p99_ms"),
                "litellm_added_p50_ms": worst("litellm", "added_p50_ms"),
                "litellm_added_p99_ms": worst("litellm", "added_p99_ms"),
                "rss_growth": memory.get("rss_growth", round(rss_end / rss_start - 1, 4)),
                "peak_rss_mib": memory.get("peak_rss_mib"),
                "failover_failed_requests": failover["failed"],
                "resume_gap_or_repeat_tokens": failover["gap_or_repeat"],
                "resume_ms": failover["resume_ms_max"],
                "requests_through_cuvee": sent,
                "memory": memory,
                "failover": failover,
                "by_load": summary,
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
