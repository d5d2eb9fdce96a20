"""One request to one upstream, with the body passed through as the client sent it (only the
model id rewritten): fields cuvee does not know reach the upstream unchanged.

A failure that another target may fix is a ``TargetFailed``: no connection, a timeout before the
first token, 429 (with its Retry-After), 5xx. Any other answer, an error included (a 400 for a
bad request would be a 400 anywhere), goes back to the client as the upstream gave it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cuvee.serve.gateway.config import Upstream
from cuvee.serve.gateway.http import Client, Response, TransportError, client_for


class TargetFailed(Exception):
    """``unhealthy`` False: the upstream answered, it only cannot do this (a 501): another
    target may, and the upstream stays in use for the rest."""

    def __init__(
        self,
        reason: str,
        status: int | None = None,
        retry_after: float | None = None,
        unhealthy: bool = True,
    ):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.unhealthy = unhealthy


def _retry_after(response: Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _check(response: Response) -> None:
    if response.status_code == 429:
        raise TargetFailed("429 too many requests", 429, _retry_after(response))
    if response.status_code == 501:  # e.g. a llama-server started without --embeddings
        raise TargetFailed("HTTP 501 not implemented", 501, unhealthy=False)
    if response.status_code >= 500:
        raise TargetFailed(f"HTTP {response.status_code}", response.status_code)


def _failed(exc: BaseException) -> TargetFailed:
    return TargetFailed(f"{type(exc).__name__}: {exc}".rstrip(": "))


@dataclass
class Answer:
    """A whole (non-streamed) answer: the upstream's status and JSON body."""

    status: int
    body: Any


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


# How long the model list an upstream's /models gave is used before it is asked again.
MODELS_TTL_S = 60.0


class UpstreamClient:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._client: Client | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._models: list[str] = []
        self._models_at: float | None = None
        self._listing: asyncio.Task | None = None

    def _bind(self) -> None:
        """The connections and the concurrency cap belong to one event loop: made on first
        use in the server's (a test client may run several loops, one after another)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            t = self.upstream.timeouts
            self._client = client_for(
                self.upstream.base_url,
                connect_timeout=t.connect,
                read_timeout=t.between_chunks,
                max_connections=self.upstream.max_concurrency,
            )
            self._slots = asyncio.Semaphore(self.upstream.max_concurrency)
            self._loop = loop

    @property
    def client(self) -> Client:
        self._bind()
        assert self._client is not None
        return self._client

    @property
    def slots(self) -> asyncio.Semaphore:
        self._bind()
        assert self._slots is not None
        return self._slots

    def _headers(self) -> dict[str, str]:
        return self.upstream.auth_headers()

    async def complete(self, path: str, body: dict[str, Any]) -> Answer:
        url = self.upstream.url(path, body.get("model"))
        try:
            async with self.slots, asyncio.timeout(self.upstream.timeouts.first_token):
                response = await self.client.request(
                    "POST", url, body=_encode(body), headers=self._headers()
                )
        except (TransportError, TimeoutError) as exc:
            raise _failed(exc) from None
        _check(response)
        try:
            return Answer(response.status_code, response.json())
        except json.JSONDecodeError:
            if response.status_code >= 400:  # a refusal in plain text is still a refusal
                return Answer(response.status_code, _json_or_text(response))
            raise TargetFailed("the answer is not JSON", response.status_code) from None

    async def stream(
        self, path: str, body: dict[str, Any]
    ) -> tuple[list[str], AsyncIterator[list[str]]]:
        """Open a stream and read up to its first event: the events read so far and an
        iterator over the rest, a list of events per network read (data payloads without
        ``data: ``, and comment lines), so that what arrived together is passed on together.
        Everything that fails before the first event is a TargetFailed; after it, the
        iterator raises it."""
        url = self.upstream.url(path, body.get("model"))
        await self.slots.acquire()
        response: Response | None = None
        try:
            async with asyncio.timeout(self.upstream.timeouts.first_token):
                response = await self.client.request(
                    "POST", url, body=_encode(body), headers=self._headers(), stream=True
                )
                if response.status_code != 200:
                    await response.aread()
                    await response.aclose()
                    _check(response)
                    raise UpstreamError(response.status_code, _json_or_text(response))
                reader = _EventReader(response.aiter_text())
                head = await reader.first()
        except (TransportError, TimeoutError) as exc:
            self.slots.release()
            if response is not None:
                await response.aclose()
            raise _failed(exc) from None
        except BaseException:
            self.slots.release()
            if response is not None:
                await response.aclose()
            raise
        if not head:
            self.slots.release()
            await response.aclose()
            raise TargetFailed("the stream ended before its first event")
        opened = response

        async def rest() -> AsyncIterator[list[str]]:
            try:
                while True:
                    try:
                        batch = await reader.next()
                    except TransportError as exc:
                        raise TargetFailed(f"the stream broke: {type(exc).__name__}") from None
                    if batch is None:
                        return
                    if "[DONE]" in batch:
                        # the body's end is still to come: let it, so that the connection
                        # goes back to the pool instead of being closed
                        await opened.settle(self.upstream.timeouts.between_chunks)
                    yield batch
            finally:
                self.slots.release()
                await opened.aclose()

        return head, rest()

    async def alive(self) -> bool:
        """The health check: does the upstream answer its ``/models``?"""
        try:
            async with asyncio.timeout(5):
                response = await self.client.request(
                    "GET", self.upstream.url("/models"), headers=self._headers()
                )
        except (TransportError, TimeoutError):
            return False
        return response.status_code < 500

    @property
    def known_models(self) -> list[str]:
        """What the upstream's ``/models`` listed when last asked (nothing before)."""
        return self._models

    def list_models(self) -> asyncio.Task | None:
        """Ask the upstream's ``/models`` again when the last answer is ``MODELS_TTL_S`` old:
        the fetch in flight (shared by every caller), or None when the list is fresh. An
        upstream that does not answer with a list within 5 s keeps its last one."""
        if self._listing is not None and not self._listing.done():
            return self._listing
        now = time.monotonic()
        if self._models_at is not None and now - self._models_at < MODELS_TTL_S:
            return None
        self._models_at = now
        self._listing = asyncio.get_running_loop().create_task(self._fetch_models())
        return self._listing

    async def _fetch_models(self) -> None:
        try:
            async with asyncio.timeout(5):
                response = await self.client.request(
                    "GET", self.upstream.url("/models"), headers=self._headers()
                )
            data = response.json().get("data") if response.status_code < 400 else None
        except (TransportError, TimeoutError, ValueError, AttributeError):
            return
        if isinstance(data, list):
            ids = [m.get("id") for m in data if isinstance(m, dict)]
            self._models = [i for i in dict.fromkeys(ids) if isinstance(i, str) and i]

    async def close(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()


class UpstreamError(Exception):
    """An upstream's own answer that is not a failure to retry (a 400, a 404...)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def _json_or_text(response: Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"error": {"message": response.text[:500], "type": "upstream_error"}}


class _EventReader:
    """The events of a server-sent event stream, a list per network read: ``data:``
    payloads, and comment lines (``:`` first, passed on to the client as they came); other
    lines are skipped."""

    def __init__(self, texts: AsyncIterator[str]) -> None:
        self.texts = texts
        self.buffer = ""

    async def next(self) -> list[str] | None:
        """The events of the next read that has any; None at the stream's end."""
        async for text in self.texts:
            self.buffer += text
            if "\n" not in text:
                continue
            lines = self.buffer.split("\n")
            self.buffer = lines.pop()
            events = []
            for line in lines:
                line = line.rstrip("\r")
                if line.startswith("data:"):
                    events.append(line[5:].strip())
                elif line.startswith(":"):
                    events.append(line)
            if events:
                return events
        return None

    async def first(self) -> list[str]:
        """The events up to and with the first data payload (a comment is no first token:
        the first-token timeout waits for data); empty when the stream ends before it."""
        head: list[str] = []
        while True:
            batch = await self.next()
            if batch is None:
                return []
            head += batch
            if any(not event.startswith(":") for event in batch):
                return head
