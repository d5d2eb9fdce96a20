"""Which targets serve a public model id, in which order, and what the client gets.

A request for a route tries its targets in order (``fallback``), or starting from the one with
the fewest requests in flight (``balance``: replicas of one model). A target that fails before
anything was sent to the client (see ``upstream.TargetFailed``) is skipped for the next; a local
target is the server's own engine, through the same code as any local request. Every answer
says who served it: the ``cuvee`` object of the JSON body (or of the stream's last chunk) holds
``served_by`` and the ``attempts`` before it, and the ``x-cuvee-served-by`` header the target.

A stream that breaks after tokens went out goes on, in a ``balance`` route, on a spare replica
that can continue an answer, asked for only what comes after the text sent (relay.py builds
that request and the chunks that close a stream). Without one it ends with a chunk whose
``finish_reason`` is ``"error"`` and which carries an OpenAI-shaped ``error`` object, then
``[DONE]``: never a normal-looking end of a cut answer. When no target can serve, the client
gets a 503 naming each attempt."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse, Response

from cuvee.serve import errors
from cuvee.serve.gateway import relay
from cuvee.serve.gateway.config import GatewayConfig, Upstream
from cuvee.serve.gateway.health import Health
from cuvee.serve.gateway.needs import lacking, prompt_size
from cuvee.serve.gateway.upstream import TargetFailed, UpstreamClient, UpstreamError
from cuvee.serve.generation import EventStreamResponse, sse
from cuvee.serve.metrics import Metrics

# How long /v1/models waits for the upstreams' own model lists (a slow one is shown later).
DISCOVER_WAIT_S = 1.0
# A local target's refusal of a model of the wrong kind for the path (a chat model asked for
# embeddings, the embedding model asked for a chat): the route's next target is asked
WRONG_KIND = frozenset({"model_not_embedding", "model_not_chat"})

# The local engine's answer for a local target: (model id, the body to answer instead of the
# client's, e.g. a continuation) -> Response, raising APIError.
Local = Callable[[str, dict[str, Any] | None], Awaitable[Response]]
# Told what an upstream target used: (target, prompt tokens, completion tokens, cost in USD).
OnUsage = Callable[["Target", int, int, float], None]


@dataclass
class Target:
    label: str  # as the config names it: UPSTREAM/MODEL, or a local model
    upstream: str | None
    model: str  # the id the target is asked for


@dataclass
class Gateway:
    config: GatewayConfig
    metrics: Metrics | None = None
    clients: dict[str, UpstreamClient] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    health: Health = field(init=False)

    def __post_init__(self) -> None:
        self.clients = {name: UpstreamClient(u) for name, u in self.config.upstreams.items()}
        self.health = Health(self.config.upstreams, self._report, self._check)

    def attach(self, metrics: Metrics) -> None:
        """Report to the server's /metrics (each upstream in use to begin with)."""
        self.metrics = metrics
        for name in self.config.upstreams:
            self._report(name, not self.health.cooled(name))

    def _report(self, name: str, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.target_up.labels(name).set(1 if up else 0)

    async def _check(self, upstream: Upstream) -> bool:
        return await self.clients[upstream.name].alive()

    # -- which ids ---------------------------------------------------------------------------

    def chain(self, model: str, headers: Mapping[str, str] | None = None) -> list[Target] | None:
        """The targets for public id ``model``, or None when it is not the gateway's. A
        balance route orders its replicas by requests in flight, or, for a request carrying
        the route's ``session_header``, by a hash of the session and each replica (rendezvous
        hashing: a session keeps its replica, and only the sessions of a replica that goes
        down move)."""
        route = self.config.routes.get(model)
        if route is not None:
            targets = [self._target(spec) for spec in route.targets]
            session = None
            if route.session_header and headers is not None:
                session = headers.get(route.session_header)
            if route.policy == "balance" and session:
                targets.sort(key=lambda t: _rendezvous(session, t.label), reverse=True)
            elif route.policy == "balance":
                targets.sort(key=lambda t: self.in_flight.get(t.label, 0))
            # a cooled-down upstream is tried last, after every target in use
            targets.sort(key=lambda t: t.upstream is not None and self.health.cooled(t.upstream))
            return targets
        name, sep, _ = model.partition("/")
        if sep and name in self.config.upstreams:
            return [self._target(model)]
        for upstream in self.config.upstreams.values():
            if (upstream.models != "*" and upstream.serves(model)) or model in upstream.rename:
                label = f"{upstream.name}/{model}"
                return [Target(label, upstream.name, upstream.upstream_id(model))]
        return None

    def replicas(self, model: str) -> bool:
        """Whether ``model`` is a route of replicas (``balance``): the same weights behind each
        target, so a broken stream may go on on another one."""
        route = self.config.routes.get(model)
        return route is not None and route.policy == "balance"

    def _target(self, spec: str) -> Target:
        upstream, model = self.config.target(spec)
        return Target(spec, upstream.name if upstream else None, model)

    async def discover(self, wait: float | None = None) -> None:
        """Ask each ``*`` upstream that is in use which models it serves (its ``/models``, at
        most once a minute), for ``model_objects``; wait up to ``wait`` seconds (default
        ``DISCOVER_WAIT_S``) for the answers (one that comes later is used from the next call
        on). An Azure upstream's ``/models`` lists base models, not the deployments requests
        name: not asked."""
        fetches = [
            c.list_models()
            for name, c in self.clients.items()
            if c.upstream.models == "*"
            and c.upstream.kind != "azure-openai"
            and not self.health.cooled(name)
        ]
        pending = [f for f in fetches if f is not None]
        if pending:
            await asyncio.wait(pending, timeout=DISCOVER_WAIT_S if wait is None else wait)

    def model_objects(self) -> list[dict[str, Any]]:
        """The gateway's public ids for /v1/models: routes, and upstream models named in the
        config or, for a ``*`` upstream (which serves ``NAME/MODEL`` for any MODEL), its
        renames and what its ``/models`` listed when last asked (``discover``)."""
        out = [
            {"id": name, "object": "model", "created": 0, "owned_by": "cuvee", "kind": "route",
             "targets": route.targets, "policy": route.policy}
            for name, route in self.config.routes.items()
        ]  # fmt: skip
        for upstream in self.config.upstreams.values():
            listed = []
            client = self.clients.get(upstream.name)
            if upstream.models == "*" and client is not None:
                listed = [f"{upstream.name}/{m}" for m in client.known_models]
            for model in dict.fromkeys([*upstream.public_ids(), *listed]):
                out.append(
                    {"id": model, "object": "model", "created": 0, "owned_by": upstream.name,
                     "kind": "upstream", "upstream": upstream.name}
                )  # fmt: skip
        return out

    # -- answering ---------------------------------------------------------------------------

    def prices(self, targets: list[Target]) -> list[tuple[float, float]]:
        """(input, output) USD per million tokens of each target (a local one costs 0)."""
        out = []
        for target in targets:
            upstream = self.config.upstreams.get(target.upstream or "")
            price = upstream.price_per_million if upstream is not None else None
            out.append((price.input, price.output) if price is not None else (0.0, 0.0))
        return out

    def context_length(self, targets: list[Target]) -> int | None:
        """The largest context among ``targets`` when every upstream one declares it."""
        sizes = []
        for target in targets:
            upstream = self.config.upstreams.get(target.upstream or "")
            if upstream is not None:
                if upstream.context_length is None:
                    return None
                sizes.append(upstream.context_length)
        return max(sizes, default=None)

    def _cost(self, target: Target, prompt: int, completion: int) -> float:
        upstream = self.config.upstreams.get(target.upstream or "")
        if upstream is None:
            return 0.0
        price = upstream.price_per_million
        return (prompt * price.input + completion * price.output) / 1e6

    async def answer(
        self,
        path: str,
        body: dict[str, Any],
        targets: list[Target],
        local: Local,
        on_usage: OnUsage | None = None,
    ) -> Response:
        """The response of the first target that serves ``body``; ``on_usage`` is told what
        each upstream target used (from its ``usage``, which a stream is asked to send)."""
        public = body.get("model")

        def used(target: Target, usage: Any, fallback: tuple[int, int]) -> None:
            if on_usage is None or target.upstream is None:
                return  # a local generation is counted by the server itself
            prompt, completion = fallback
            if isinstance(usage, dict):
                prompt = int(usage.get("prompt_tokens") or 0)
                completion = int(usage.get("completion_tokens") or 0)
            on_usage(target, prompt, completion, self._cost(target, prompt, completion))

        attempts: list[dict[str, Any]] = []
        for target in targets:
            started = time.perf_counter()
            self.in_flight[target.label] = self.in_flight.get(target.label, 0) + 1
            handed_over = False
            try:
                if target.upstream is None:
                    return _tagged(await local(target.model, None), target, attempts, public)
                client = self.clients[target.upstream]
                why_not = lacking(client.upstream, body)
                if why_not:
                    attempts.append(_attempt(target, f"skipped: {why_not}", started))
                    continue
                sent = {**body, "model": target.model}
                if body.get("stream"):
                    sent["stream_options"] = {**relay.options(body), "include_usage": True}
                    first, rest = await client.stream(path, sent)
                    self.health.succeeded(target.upstream)
                    handed_over = True
                    spare = [t for t in targets if t is not target] if self.replicas(public) else []
                    return self._stream(
                        public, target, first, rest, attempts, path, body, spare, used, local
                    )
                answer = await client.complete(path, sent)
                self.health.succeeded(target.upstream)
                if answer.status < 400 and isinstance(answer.body, dict):  # a refusal is free
                    used(target, answer.body.get("usage"), (prompt_size(body), 0))
                return self._whole(public, target, answer.status, answer.body, attempts)
            except TargetFailed as exc:
                attempts.append(_attempt(target, exc.reason, started, exc.retry_after))
                if exc.unhealthy:
                    self._failed(target)
            except UpstreamError as exc:
                return self._whole(public, target, exc.status, exc.body, attempts)
            except errors.APIError as exc:
                if exc.code in WRONG_KIND:  # passed over, as an upstream lacking what is asked
                    attempts.append(_attempt(target, f"skipped: {exc.message}", started))
                    continue
                if exc.status < 500 and exc.status != 429:
                    raise  # the request itself is wrong; another target would say the same
                attempts.append(_attempt(target, exc.message, started))
            finally:
                if not handed_over:
                    self.in_flight[target.label] -= 1
        tried = "; ".join(f"{a['target']}: {a['error']}" for a in attempts)
        if attempts and all(a["error"].startswith("skipped: ") for a in attempts):
            raise errors.invalid_param(  # not a failure: no target of the route can do this
                f"No target of '{public}' serves this request ({tried}).",
                "model",
                code="model_not_supported_here",
            )
        raise errors.APIError(
            503,
            f"No target could serve '{public}' ({tried}).",
            type="server_error",
            code="no_target_available",
        )

    def _whole(
        self, public: str, target: Target, status: int, body: Any, attempts: list[dict[str, Any]]
    ) -> Response:
        if isinstance(body, dict):
            if "model" in body:
                body["model"] = public
            body["cuvee"] = {"served_by": target.label, "attempts": attempts}
        return JSONResponse(body, status_code=status, headers={"x-cuvee-served-by": target.label})

    def _stream(
        self,
        public: str,
        target: Target,
        first: list[str],
        rest: AsyncIterator[list[str]],
        attempts: list[dict[str, Any]],
        path: str,
        request: dict[str, Any],
        spare: list[Target],
        used: Callable[[Target, Any, tuple[int, int]], None],
        local: Local,
    ) -> Response:
        """Pass the stream on, relabelled. If it breaks after tokens went out and ``spare``
        holds replicas, the next one is asked to go on from the text already sent (an
        assistant prefill, or the prompt plus that text), and only its new tokens follow: no
        gap, no repeat. Otherwise the stream ends as an error. Each target's usage chunk is
        reported to ``used`` (and passed on only when the client asked for usage); a part
        that ended without one counts its chunks, and the prompt at 4 bytes a token."""
        client_usage = bool(relay.options(request).get("include_usage"))

        async def events_of(
            head: list[str], tail: AsyncIterator[list[str]]
        ) -> AsyncIterator[list[str]]:
            yield head
            async for batch in tail:
                yield batch

        async def body() -> AsyncIterator[bytes]:
            current = target
            events = events_of(first, rest)
            last: dict | None = None
            text, tokens, resumed = "", 0, False
            owed = ""  # whitespace sent already that a resumed replica may write again
            part_usage, part_tokens = None, 0

            def part_done() -> None:
                nonlocal part_usage, part_tokens
                used(current, part_usage, (prompt_size(request) + len(text) // 4, part_tokens))
                part_usage, part_tokens = None, 0

            try:
                while True:
                    try:
                        async for batch in events:
                            # what arrived in one read goes out in one write
                            out: list[bytes] = []
                            for payload in batch:
                                if payload.startswith(":"):  # an SSE comment, passed on as is
                                    out.append(f"{payload}\n\n".encode())
                                    continue
                                if payload == "[DONE]":
                                    part_done()
                                    out.append(
                                        sse(
                                            relay.served(
                                                last or {}, current.label, attempts, public
                                            )
                                        )
                                    )
                                    out.append(sse("[DONE]"))
                                    yield b"".join(out)
                                    return
                                try:
                                    chunk = json.loads(payload)
                                except json.JSONDecodeError:
                                    chunk = None
                                if not isinstance(chunk, dict) or not isinstance(
                                    chunk.get("choices", []), list
                                ):
                                    # not a chunk a client could read: the stream is broken here
                                    if out:
                                        yield b"".join(out)
                                    raise TargetFailed(f"a malformed chunk: {payload[:80]!r}")
                                piece = relay.piece_of(chunk)
                                if isinstance(chunk.get("usage"), dict):
                                    part_usage = chunk["usage"]
                                    if not client_usage and not chunk.get("choices"):
                                        continue  # asked for the budget, not by the client
                                part_tokens += bool(piece)
                                trimmed = False
                                if owed and piece:
                                    piece, owed = relay.unowed(chunk, piece, owed)
                                    trimmed = True
                                if (
                                    resumed
                                    and not piece
                                    and not relay.ends(chunk)
                                    and not chunk.get("usage")
                                ):
                                    continue  # the replica's opening (role) chunk: sent already
                                text, tokens = text + piece, tokens + bool(piece)
                                last = chunk
                                ends = relay.ends(chunk)
                                if not (ends or trimmed) and chunk.get("model", public) == public:
                                    # nothing to change: the upstream's own bytes go on
                                    out.append(f"data: {payload}\n\n".encode())
                                    continue
                                if "model" in chunk:
                                    chunk["model"] = public
                                if ends:
                                    served = {"served_by": current.label, "attempts": attempts}
                                    chunk["cuvee"] = served
                                out.append(sse(chunk))
                            if out:
                                yield b"".join(out)
                        raise TargetFailed("the stream ended without [DONE]")
                    except TargetFailed as exc:
                        part_done()
                        self._failed(current)
                        broke = f"broke after {tokens} tokens: {exc.reason}"
                        attempts.append({"target": current.label, "error": broke})
                        following = await self._resume(
                            path, request, spare, text, tokens, attempts, local
                        )
                        if following is None:
                            yield sse(
                                relay.broken(
                                    last or {}, public, current.label, exc.reason, attempts
                                )
                            )
                            yield sse("[DONE]")
                            return
                        self.in_flight[current.label] -= 1
                        current, head, tail = following
                        self.in_flight[current.label] = self.in_flight.get(current.label, 0) + 1
                        events, resumed = events_of(head, tail), True
                        # a chat template trims the answer it is asked to go on with: whitespace
                        # sent last may come again, and is not passed on twice
                        owed = text[len(text.rstrip()) :] if self._trims(current) else ""
            finally:
                if part_usage is not None or part_tokens:  # the client left part-way
                    part_done()
                self.in_flight[current.label] -= 1

        return EventStreamResponse(body(), lambda: None)

    def _trims(self, target: Target) -> bool:
        """Does the replica lose the trailing whitespace of an answer it goes on with? cuvee's
        engines go on after its last character; a chat template elsewhere trims it."""
        if target.upstream is None:
            return False
        return self.clients[target.upstream].upstream.kind != "cuvee"

    async def _resume(
        self,
        path: str,
        request: dict[str, Any],
        spare: list[Target],
        text: str,
        tokens: int,
        attempts: list[dict[str, Any]],
        local: Local,
    ) -> tuple[Target, list[str], AsyncIterator[list[str]]] | None:
        """The first spare replica that takes up the answer where it broke, with its first
        events; None when none does. A local replica continues the answer as an assistant
        message it is given (the engine goes on from a final assistant message)."""
        while spare:
            target = spare.pop(0)
            if target.upstream is None:
                body = relay.continuation(request, target.model, text, tokens, "cuvee", path)
                try:
                    events = _payloads(await local(target.model, body))
                    head = await anext(events)
                except (errors.APIError, StopAsyncIteration) as exc:
                    reason = getattr(exc, "message", None) or "no answer"
                    attempts.append({"target": target.label, "error": f"resume failed: {reason}"})
                    continue
                return target, head, events
            client = self.clients[target.upstream]
            if path.endswith("/chat/completions") and not client.upstream.can_continue():
                reason = (
                    f"resume skipped: kind {client.upstream.kind} starts a new answer instead of "
                    "going on with the one sent (declare continues: true if it does go on)"
                )
                attempts.append({"target": target.label, "error": reason})
                continue
            body = relay.continuation(
                request, target.model, text, tokens, client.upstream.kind, path
            )
            try:
                head, tail = await client.stream(path, body)
            except (TargetFailed, UpstreamError) as exc:
                attempts.append({"target": target.label, "error": f"resume failed: {exc}"})
                self._failed(target)
                continue
            self.health.succeeded(target.upstream)
            return target, head, tail
        return None

    def reload(self, config: GatewayConfig) -> list[str]:
        """Take a new config (a SIGHUP of `cuvee serve --config`): routes and upstreams are
        replaced for the requests that start from now on. A stream already running keeps the
        connection it has; an upstream whose settings did not change keeps its pool and its
        breaker's state. Returns what changed, for the log."""
        changes = []
        clients: dict[str, UpstreamClient] = {}
        for name, upstream in config.upstreams.items():
            old = self.clients.get(name)
            if old is not None and old.upstream == upstream:
                clients[name] = old
            else:
                clients[name] = UpstreamClient(upstream)
                changes.append(f"upstream {name} {'changed' if old else 'added'}")
        changes += [f"upstream {name} removed" for name in self.clients if name not in clients]
        for name in set(config.routes) | set(self.config.routes):
            if config.routes.get(name) != self.config.routes.get(name):
                changes.append(f"route {name} {'removed' if name not in config.routes else 'set'}")
        kept = {
            n: b for n, b in self.health.breakers.items() if clients.get(n) is self.clients.get(n)
        }
        self.health.close()
        self.health = Health(config.upstreams, self._report, self._check)
        self.health.breakers.update(kept)
        self.config, self.clients = config, clients
        return changes

    def _failed(self, target: Target) -> None:
        if target.upstream is None:
            return
        if self.metrics is not None:
            self.metrics.target_failures.labels(target.upstream).inc()
        self.health.failed(target.upstream)

    async def close(self) -> None:
        self.health.close()
        for client in self.clients.values():
            await client.close()


def _tagged(response: Response, target: Target, attempts: list, public: str) -> Response:
    """The local engine's answer, saying who served it: in the JSON body, or in a chunk just
    before a stream's [DONE]."""
    response.headers["x-cuvee-served-by"] = target.label
    if isinstance(response, JSONResponse):
        body = json.loads(bytes(response.body))
        if isinstance(body, dict):
            body["cuvee"] = {"served_by": target.label, "attempts": attempts}
            headers = {k: v for k, v in response.headers.items() if k != "content-length"}
            return JSONResponse(body, status_code=response.status_code, headers=headers)
        return response
    original = getattr(response, "body_iterator", None)
    if original is None:
        return response

    async def tagged() -> AsyncIterator[bytes]:
        async for piece in original:
            data = piece if isinstance(piece, bytes) else piece.encode()
            if data.startswith(b"data: [DONE]"):
                yield sse(relay.served({}, target.label, attempts, public))
            yield piece

    response.body_iterator = tagged()
    return response


def _attempt(
    target: Target, error: str, started: float, retry_after: float | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "target": target.label,
        "error": error,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if retry_after is not None:
        out["retry_after"] = retry_after
    return out


async def _payloads(response: Response) -> AsyncIterator[list[str]]:
    """The ``data:`` payloads of a local streamed response, a list per piece of its body (a
    whole JSON answer, as a local error would be, yields nothing)."""
    iterator = getattr(response, "body_iterator", None)
    if iterator is None:
        return
    buffer = b""
    async for piece in iterator:
        buffer += piece if isinstance(piece, bytes) else piece.encode()
        batch = []
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    batch.append(line[6:].decode())
        if batch:
            yield batch


def _rendezvous(session: str, label: str) -> int:
    digest = hashlib.blake2b(f"{session}\0{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
