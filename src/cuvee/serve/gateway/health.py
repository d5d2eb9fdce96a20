"""Which upstreams are in use: a circuit breaker per upstream.

An upstream that fails ``cooldown.failures`` times within ``cooldown.window`` seconds is cooled
down: routes try it last (after every other target), and a health check asks its ``/models``
every ``cooldown.seconds`` until it answers, which puts it back in use. A success clears its
count. ``/metrics`` shows the state (``cuvee_gateway_target_up``, and the failures counted)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cuvee.serve.gateway.config import Upstream


@dataclass
class Breaker:
    upstream: Upstream
    clock: Callable[[], float] = time.monotonic
    failures: collections.deque[float] = field(default_factory=collections.deque)
    cooled: bool = False
    probe: asyncio.Task | None = None

    def failed(self) -> bool:
        """Count a failure; True when it cools the upstream down."""
        now = self.clock()
        self.failures.append(now)
        window = self.upstream.cooldown.window
        while self.failures and self.failures[0] < now - window:
            self.failures.popleft()
        if not self.cooled and len(self.failures) >= self.upstream.cooldown.failures:
            self.cooled = True
            return True
        return False

    def succeeded(self) -> None:
        self.failures.clear()
        self.cooled = False


@dataclass
class Health:
    """The breakers of a gateway's upstreams; ``report(name, up)`` tells /metrics."""

    upstreams: dict[str, Upstream]
    report: Callable[[str, bool], None] = lambda name, up: None
    check: Callable[[Upstream], object] | None = None  # async: True when it answers
    breakers: dict[str, Breaker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.breakers = {name: Breaker(u) for name, u in self.upstreams.items()}
        for name in self.breakers:
            self.report(name, True)

    def cooled(self, name: str) -> bool:
        breaker = self.breakers.get(name)
        return breaker is not None and breaker.cooled

    def failed(self, name: str) -> None:
        breaker = self.breakers.get(name)
        if breaker is None or not breaker.failed():
            return
        self.report(name, False)
        if self.check is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next request decides
                breaker.probe = asyncio.get_running_loop().create_task(self._probe(name))

    def succeeded(self, name: str) -> None:
        breaker = self.breakers.get(name)
        if breaker is not None and (breaker.cooled or breaker.failures):
            was_cooled = breaker.cooled
            breaker.succeeded()
            if was_cooled:
                self.report(name, True)

    async def _probe(self, name: str) -> None:
        breaker = self.breakers[name]
        assert self.check is not None
        while breaker.cooled:
            await asyncio.sleep(breaker.upstream.cooldown.seconds)
            try:
                ok = await self.check(breaker.upstream)
            except Exception:
                ok = False
            if ok:
                self.succeeded(name)

    def close(self) -> None:
        for breaker in self.breakers.values():
            if breaker.probe is not None:
                breaker.probe.cancel()
