"""Evaluations from the web UI (admin only, as training is: they take the server's CPU and may
name any OpenAI-compatible endpoint): ``POST /v1/evals`` starts `cuvee eval MODEL... --suite
S... --json --report` in a child process; ``GET /v1/evals/{id}/events`` streams its progress
lines, then its figures; ``GET /v1/evals`` lists past reports; ``GET /v1/evals/{id}/report`` is
the self-contained HTML report, served under a policy that lets no script run.

Everything lives in ``$CUVEE_HOME/eval/reports/``: ``ID.html`` (the report), ``ID.json`` (the
figures, the last line `cuvee eval --json` prints), ``ID.log`` (its progress and warnings)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from cuvee.serve import errors
from cuvee.serve.generation import EventStreamResponse, sse
from cuvee.serve.schemas import EvalRequest

if TYPE_CHECKING:
    from cuvee.config import Settings

REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_ID = re.compile(r"^eval-\d{8}-\d{6}(-\d+)?$")
POLL_S = 0.2


@dataclass
class EvalManager:
    settings: Settings
    live: dict[str, subprocess.Popen] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> Path:
        return Path(self.settings.home) / "eval" / "reports"

    def path(self, eval_id: str, suffix: str) -> Path:
        if not _ID.match(eval_id):
            raise errors.APIError(404, f"No evaluation '{eval_id}'.", code="eval_not_found")
        return self.root / f"{eval_id}{suffix}"

    def start(self, body: EvalRequest) -> dict[str, Any]:
        from cuvee.eval.suites import resolve_suite

        for suite in body.suites:
            try:
                resolve_suite(suite, self.settings)
            except Exception as exc:  # an unknown name or an unreadable file
                raise errors.invalid_param(f"suite {suite!r}: {exc}", "suites") from None
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        eval_id, n = f"eval-{stamp}", 1
        while self.path(eval_id, ".log").exists():
            n += 1
            eval_id = f"eval-{stamp}-{n}"
        cmd = [sys.executable, "-m", "cuvee", "eval", *body.models]
        for suite in body.suites:
            cmd += ["--suite", suite]
        if body.limit is not None:
            cmd += ["--limit", str(body.limit)]
        cmd += ["--json", "--report", str(self.path(eval_id, ".html"))]
        env = {**os.environ, "CUVEE_HOME": str(self.settings.home)}
        with (
            self.path(eval_id, ".log").open("wb") as log,
            self.path(eval_id, ".out").open("wb") as out,
        ):
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        with self.lock:
            self.live[eval_id] = process
        return {"object": "eval", "id": eval_id, "status": "running"}

    def status(self, eval_id: str) -> dict[str, Any]:
        log = self.path(eval_id, ".log")
        if not log.exists():
            raise errors.APIError(404, f"No evaluation '{eval_id}'.", code="eval_not_found")
        with self.lock:
            process = self.live.get(eval_id)
        code = process.poll() if process is not None else None
        out: dict[str, Any] = {"object": "eval", "id": eval_id}
        figures = self.path(eval_id, ".json")
        if process is not None and code is None:
            out["status"] = "running"
            return out
        if not figures.exists():
            self._collect(eval_id)
        if figures.exists():
            out["status"] = "done"
            document = json.loads(figures.read_text(encoding="utf-8"))
            out["models"] = list(document.get("results", {}))
            out["results"] = document.get("results", {})
            out["report"] = self.path(eval_id, ".html").exists()
        else:
            out["status"] = "failed"
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            out["error"] = "\n".join(tail[-8:])
        return out

    def _collect(self, eval_id: str) -> None:
        """Keep the figures the child printed last (its stdout's last line), if it did."""
        raw = self.path(eval_id, ".out")
        if not raw.exists():
            return
        lines = raw.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        try:
            document = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict):
            self.path(eval_id, ".json").write_text(json.dumps(document), encoding="utf-8")

    def list(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        ids = sorted((p.stem for p in self.root.glob("eval-*.log")), reverse=True)
        return [
            {k: v for k, v in self.status(i).items() if k != "results"} for i in ids if _ID.match(i)
        ]

    def report(self, eval_id: str) -> Response:
        path = self.path(eval_id, ".html")
        if not path.is_file():
            raise errors.APIError(404, f"No report for '{eval_id}'.", code="eval_not_found")
        return Response(
            path.read_bytes(),
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"},
        )


async def events(manager: EvalManager, eval_id: str) -> EventStreamResponse:
    """The evaluation's progress lines as it writes them, then its figures."""
    log = manager.path(eval_id, ".log")
    manager.status(eval_id)  # 404 for an unknown id
    closed = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        position = 0
        pending = b""
        while not closed.is_set():
            with log.open("rb") as fh:
                fh.seek(position)
                chunk = fh.read()
            position += len(chunk)
            # progress bars redraw with carriage returns: each redraw is a line here
            pending += chunk.replace(b"\r", b"\n")
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace").strip()
                if text:
                    yield sse({"event": "log", "line": text})
            state = manager.status(eval_id)
            if state["status"] != "running" and log.stat().st_size <= position:
                yield sse({"event": "status", **state})
                yield sse("[DONE]")
                return
            await asyncio.sleep(POLL_S)

    return EventStreamResponse(body(), closed.set)
