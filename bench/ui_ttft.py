"""The web UI against the server's own figures, with the real model: the time to first token the
chat screen shows under each answer, next to the one `cuvee serve` records for the same request
(its request log's ``ttft_s``), over several chats; and the server's memory at idle before and
after the UI's files were served.

    python bench/ui_ttft.py [--model gemma3-270m] [--requests 8] [--threads 2]

Needs Debian's Chromium (/usr/bin/chromium) and playwright (the dev tools). The page's clock
starts before the request leaves and the server's once it is parsed, so the page's figure is the
server's plus the trip; the goal is a gap of at most 50 ms. The last line printed is one JSON
object with the figures."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from machine import describe
from procs import free_port, rss_mib

CHROMIUM = "/usr/bin/chromium"
PROMPTS = [
    "Name three colours.",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Count from one to five.",
    "Say hello in Spanish.",
    "What is two plus two?",
    "Name a fruit that is yellow.",
    "Give me a word that rhymes with cat.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    machine = describe()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="ui-ttft-")) / "requests.jsonl"
    cmd = [sys.executable, "-m", "cuvee", "serve", "--model", args.model, "--port", str(port)]
    cmd += ["--threads", str(args.threads), "--log-file", str(log)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        warm = {"model": args.model, "messages": [{"role": "user", "content": "Hi"}]}
        httpx.post(base + "/v1/chat/completions", json={**warm, "max_tokens": 4}, timeout=300)
        idle_api = rss_mib(server.pid)

        from playwright.sync_api import sync_playwright

        pairs = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
            page = browser.new_page()
            page.goto(base + "/ui/")
            page.wait_for_selector("body[data-ready=true]")
            page.wait_for_selector(f"#chat-model option[value='{args.model}']", state="attached")
            page.select_option("#chat-model", args.model)
            page.fill("#chat-temperature", "0")
            page.fill("#chat-max-tokens", "32")
            for prompt in PROMPTS[: args.requests]:
                page.click("#conv-new")
                before = len(log.read_text().splitlines()) if log.exists() else 0
                page.fill("#prompt", prompt)
                page.keyboard.press("Enter")
                shown = page.wait_for_selector(".message.assistant .stats", timeout=300_000)
                text = shown.inner_text()
                ui = float(text.split("TTFT ")[1].split(" s")[0])
                for _ in range(100):
                    lines = log.read_text().splitlines()
                    if len(lines) > before:
                        break
                    time.sleep(0.05)
                record = json.loads(lines[-1])
                pairs.append((ui, record["ttft_s"]))
                print(f"{prompt!r}: page {ui:.3f} s, server {record['ttft_s']:.3f} s", flush=True)
            browser.close()
        after_ui = rss_mib(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)

    gaps = [(ui - srv) * 1000 for ui, srv in pairs]
    print(
        f"page minus server, ms: median {statistics.median(gaps):.1f}, max {max(gaps):.1f} "
        f"over {len(gaps)} chats (goal: at most 50)"
    )
    print(
        f"server RSS: {idle_api:.1f} MiB idle after API calls, {after_ui:.1f} MiB after the UI "
        f"was served and used ({after_ui - idle_api:+.1f} MiB; goal: at most +5)"
    )
    print(
        json.dumps(
            {
                "ui_minus_server_ttft_ms_median": round(statistics.median(gaps), 1),
                "ui_minus_server_ttft_ms_max": round(max(gaps), 1),
                "chats": len(gaps),
                "rss_idle_mib": round(idle_api, 1),
                "rss_after_ui_mib": round(after_ui, 1),
                "model": args.model,
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
