"""Training runs from the web UI: start `cuvee train` in a child process, follow its metrics as
server-sent events, stop it (the checkpoint is kept), list past runs. Admin only: an admin key
(``cuvee keys create --admin``), or a server with no keys asked from loopback.

``POST /v1/runs`` builds the recipe here, from a shipped recipe and the form's knobs (an
uploaded data file is saved under ``$CUVEE_HOME/uploads/``), and validates it before anything
starts: a bad knob is a 400 naming it. The child is the same `cuvee train` a terminal runs,
with its output kept in ``$CUVEE_HOME/uploads/NAME.train.log``; its run directory holds the
metrics (``log.jsonl``), which ``GET /v1/runs/{name}/events`` reads as they are written and
streams: one ``metrics`` event per line, a ``status`` event when the run ends (registered,
stopped with a checkpoint and the command that resumes it, or failed with the end of its
output). ``POST /v1/runs/{name}/stop`` sends the child SIGINT: it finishes its step and saves
a checkpoint, as Ctrl-C does in a terminal."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request as HTTPRequest

from cuvee.errors import CuveeError
from cuvee.serve import errors
from cuvee.serve.deps import upload_name
from cuvee.serve.generation import EventStreamResponse, sse
from cuvee.serve.keys import ApiKey, is_loopback
from cuvee.serve.schemas import RunRequest

if TYPE_CHECKING:
    from cuvee.config import Settings

POLL_S = 0.2  # how often a followed run's log is read for new lines


def require_admin(auth_has_keys: bool, key: ApiKey | None, http: HTTPRequest) -> None:
    """403 unless the caller may manage the server."""
    if key is not None:
        if key.admin:
            return
        raise errors.APIError(
            403,
            "This needs an admin key (cuvee keys create --admin).",
            type="permission_error",
            code="admin_required",
        )
    client = http.client.host if http.client else ""
    if not auth_has_keys and is_loopback(client):
        return
    raise errors.APIError(
        403,
        "Managing the server without a key is allowed from loopback only.",
        type="permission_error",
        code="admin_required",
    )


@dataclass
class Live:
    """A run started by this server: its child, when, and where its output goes."""

    name: str
    process: subprocess.Popen
    started: float
    output: Path
    stopping: bool = False
    run_dir: Path | None = None


@dataclass
class RunManager:
    settings: Settings
    live: dict[str, Live] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def uploads(self) -> Path:
        return Path(self.settings.home) / "uploads"

    def start(self, body: RunRequest) -> dict[str, Any]:
        from cuvee.store import ModelStore, check_name
        from cuvee.train.recipe import build_recipe, shipped_recipes

        try:
            check_name(body.name)
        except CuveeError as exc:
            raise errors.invalid_param(exc.message, "name") from None
        if ModelStore(self.settings.models_dir).exists(body.name):
            raise errors.invalid_param(
                f"A model named '{body.name}' is already in the store.", "name", code="name_taken"
            )
        if body.recipe is not None and body.recipe not in shipped_recipes():
            raise errors.invalid_param(
                f"No shipped recipe '{body.recipe}' (shipped: {', '.join(shipped_recipes())}).",
                "recipe",
            )
        with self.lock:
            running = self.live.get(body.name)
            if running is not None and running.process.poll() is None:
                raise errors.invalid_param(
                    f"A run of '{body.name}' is already going.", "name", code="run_exists"
                )
        self.uploads.mkdir(parents=True, exist_ok=True)
        data = list(body.data)
        if body.data_file is not None:
            safe = upload_name(body.data_file.name) or "data"
            path = self.uploads / f"{body.name}-{int(time.time())}-{safe}"
            path.write_text(body.data_file.content, encoding="utf-8")
            data.append(str(path))
        if not data:
            raise errors.invalid_param("Give training data: 'data' or 'data_file'.", "data")
        overrides = {
            **body.knobs,
            "base": body.base,
            "data": data,
            "name": body.name,
            "time_budget": body.time_budget,
            "max_steps": body.max_steps,
        }
        try:
            recipe = build_recipe(body.recipe, overrides)
        except CuveeError as exc:
            raise errors.invalid_param(exc.message, "knobs") from None
        import yaml

        recipe_path = self.uploads / f"{body.name}.recipe.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe.resolved()), encoding="utf-8")
        output = self.uploads / f"{body.name}.train.log"
        env = {**os.environ, "CUVEE_HOME": str(self.settings.home)}
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "cuvee", "train", str(recipe_path)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C of the server does not stop it half-way
            )
        with self.lock:
            self.live[body.name] = Live(body.name, process, time.time(), output)
        return {"object": "run", "id": body.name, "status": "starting"}

    def stop(self, name: str) -> dict[str, Any]:
        with self.lock:
            run = self.live.get(name)
        if run is None or run.process.poll() is not None:
            raise errors.APIError(
                404, f"No run of '{name}' is going on this server.", code="run_not_found"
            )
        run.stopping = True
        run.process.send_signal(signal.SIGINT)
        return {"object": "run", "id": name, "status": "stopping"}

    def run_dir(self, name: str, since: float = 0.0) -> Path | None:
        """The newest run directory of ``name`` made at or after ``since``."""
        root = self.settings.runs_dir
        if not root.is_dir():
            return None
        found = [
            p
            for p in root.iterdir()
            if p.is_dir()
            and (p.name == name or p.name.startswith(name + "-"))
            and p.stat().st_mtime >= since - 1
        ]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None

    def status(self, name: str) -> dict[str, Any]:
        """Where a run of ``name`` stands: running, completed, stopped or failed."""
        with self.lock:
            run = self.live.get(name)
        run_dir = self.run_dir(name, run.started if run else 0.0)
        out: dict[str, Any] = {
            "object": "run",
            "id": name,
            "run_dir": run_dir.name if run_dir else None,
        }
        code = run.process.poll() if run else None
        if run is not None and code is None:
            out["status"] = "stopping" if run.stopping else "running"
        elif run_dir is not None and (run_dir / "summary.json").is_file():
            out["status"] = "completed"
            out["model"] = name
        elif (
            run_dir is not None
            and (run_dir / "checkpoints").is_dir()
            and any((run_dir / "checkpoints").iterdir())
        ):
            out["status"] = "stopped"
            out["resume"] = f"cuvee train --resume {name}"
        else:
            out["status"] = "failed" if run is not None else "incomplete"
        if run is not None and code not in (None, 0) and out["status"] == "failed":
            tail = run.output.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            out["error"] = "\n".join(tail[-8:])
        return out

    def list(self) -> list[dict[str, Any]]:
        root = self.settings.runs_dir
        names = set(self.live)
        if root.is_dir():
            for p in root.iterdir():
                if (p / "recipe.yaml").is_file():
                    names.add(re.sub(r"-\d{8}-\d{6}(-\d+)?$", "", p.name))
        return [self.status(n) for n in sorted(names)]


async def events(manager: RunManager, name: str) -> EventStreamResponse:
    """The run's metrics as they are written, then its end."""
    with manager.lock:
        run = manager.live.get(name)
    if run is None and manager.run_dir(name) is None:
        raise errors.APIError(404, f"No run of '{name}'.", code="run_not_found")
    since = run.started if run else 0.0
    closed = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        position = 0
        pending = b""
        yield sse({"event": "status", **manager.status(name)})
        while not closed.is_set():
            run_dir = manager.run_dir(name, since)
            log = run_dir / "log.jsonl" if run_dir else None
            if log is not None and log.is_file():
                with log.open("rb") as fh:
                    fh.seek(position)
                    chunk = fh.read()
                position += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield sse({"event": "metrics", **json.loads(line)})
            state = manager.status(name)
            if state["status"] not in ("running", "stopping"):
                if log is not None and log.is_file() and log.stat().st_size > position:
                    continue  # read what the run wrote last before saying it ended
                yield sse({"event": "status", **state})
                yield sse("[DONE]")
                return
            await asyncio.sleep(POLL_S)

    return EventStreamResponse(body(), closed.set)
