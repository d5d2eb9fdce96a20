"""`cuvee serve` as a gateway: the latency it adds over a direct call to an upstream that
answers at once, non-streamed and streamed, at fixed request rates, beside LiteLLM's proxy in
front of the same upstream; and the gateway's memory before and after.

    python bench/gateway.py --litellm /tmp/litellm-venv/bin/litellm [--rates 50,100]
        [--seconds 10] [--runs 3]

LiteLLM is the peer: install it into a throw-away virtual environment at an exact version whose
wheel's sha256 you checked against PyPI's (never 1.82.7 or 1.82.8, which were compromised), and
give it no provider key; it is pointed only at the local upstream. Without --litellm the bench
measures cuvee alone.

The upstream is a small ASGI app in its own process that answers every chat completion at once
(one short answer, or a stream of 8 chunks). The load is open-loop: requests leave at fixed
intervals whatever the answers do, from one client process with a connection pool; the three
paths (direct, cuvee, LiteLLM) take turns within each run, in a rotating order. Added latency
is each path's percentile minus the direct path's, in the same run; the figures are medians
over the runs. The last line is one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
from machine import describe
from procs import free_port, rss_mib

UPSTREAM = textwrap.dedent(
    """
    import json, sys
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

    async def chat(request):
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse(ANSWER)
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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(v for v in values if v == v)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--litellm", default=None, help="the litellm executable (its own venv)")
    parser.add_argument("--rates", default="50,100")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
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
                "rss_growth": round(rss_end / rss_start - 1, 4),
                "requests_through_cuvee": sent,
                "by_load": summary,
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
