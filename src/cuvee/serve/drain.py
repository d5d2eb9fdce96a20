"""Graceful shutdown: on SIGTERM or Ctrl-C the server drains before it exits.

uvicorn on its own closes the listening socket at once and waits for open responses, so a
client arriving meanwhile gets "connection refused" and a load balancer learns of the shutdown
from failures. Draining instead keeps the socket open: new generation and embedding requests
get a 503 ``server_shutting_down`` (with Retry-After) and ``/ready`` turns 503, while every
stream already running finishes normally. Once no sequence is left (or ``drain_timeout`` has
passed) uvicorn's own shutdown runs: it waits for the last responses to be sent, then the
lifespan closes the engines. A second signal skips the wait. SIGHUP, or an edit of the file,
reloads the gateway's config (``cuvee serve --config``) without dropping anything running."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from cuvee.serve.state import ServerState


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        state: ServerState,
        drain_timeout: float = 30.0,
        on_hangup: Callable[[], None] | None = None,
        changed: Callable[[], bool] | None = None,
    ):
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self._drain_started: float | None = None
        # SIGHUP asks for ``on_hangup`` (the gateway's config reload), run on the next tick of
        # the server's loop, not in the signal handler
        self.on_hangup = on_hangup
        self.changed = changed  # polled about once a second: the config file was edited
        self._hangup = False
        if on_hangup is not None:
            signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_hangup", True))

    def drain(self) -> None:
        """Stop taking new work; exit once the running sequences are done."""
        if self._drain_started is None:
            self._drain_started = time.monotonic()
        self.state.draining = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining or self.drain_timeout <= 0:
            super().handle_exit(sig, frame)  # a second signal: uvicorn's own shutdown now
        else:
            self.drain()

    def drained(self) -> bool:
        if self._drain_started is None:
            return False
        idle = self.state.capacity.used == 0
        return idle or time.monotonic() - self._drain_started >= self.drain_timeout

    async def on_tick(self, counter: int) -> bool:
        if self.changed is not None and counter % 10 == 0 and self.changed():
            self._hangup = True
        if self._hangup and self.on_hangup is not None:
            self._hangup = False
            self.on_hangup()
        if not self.should_exit and self.drained():
            self.should_exit = True
        return await super().on_tick(counter)
