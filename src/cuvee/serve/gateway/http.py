"""The gateway's HTTP client for upstreams: one interface, two transports.

- ``PlainClient``: HTTP/1.1 over plain TCP, for the team's own servers (vLLM, llama-server,
  Ollama, another cuvee) on the machine or the network. An asyncio protocol with httptools'
  parser (the C parser uvicorn uses): a request is one socket write, body chunks are handed over
  as they arrive, and a connection goes back to its pool the moment its response is complete.
  httpx spent about as much CPU per relayed request as all of cuvee's own work did.
- ``HttpxClient``: httpx, for TLS (hosted providers) and for hosts reached through a proxy
  (``HTTP_PROXY`` and the like, which httpx honours).

``client_for(url, ...)`` picks one. Both raise the same errors: ``ConnectError`` (no
connection), ``ReadTimeout`` (no byte for ``read_timeout`` seconds), ``RemoteProtocolError``
(the connection ended mid-response, or the response is not HTTP)."""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import json
import urllib.request
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httptools
import httpx


class TransportError(Exception):
    """Anything that went wrong below HTTP: the request may be tried elsewhere."""


class ConnectError(TransportError):
    pass


class ReadTimeout(TransportError):
    pass


class RemoteProtocolError(TransportError):
    pass


class Response(Protocol):
    status_code: int
    headers: Mapping[str, str]  # lower-case names

    async def aread(self) -> bytes: ...
    def json(self) -> Any: ...
    @property
    def text(self) -> str: ...
    def aiter_text(self) -> AsyncIterator[str]: ...
    async def settle(self, timeout: float) -> None:
        """The payload is over (a stream's ``[DONE]``), only the body's end is to come: give
        it up to ``timeout`` seconds (at most ``SETTLE_S``) to arrive, so that the
        connection can be reused, instead of closing it."""
        ...

    async def aclose(self) -> None: ...


class Client(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> Response:
        """Send a request; its status and headers, with the body read whole unless ``stream``
        (then the caller reads it and must ``aclose`` the response)."""
        ...

    async def aclose(self) -> None: ...


def client_for(
    base_url: str, *, connect_timeout: float, read_timeout: float, max_connections: int
) -> Client:
    """The plain client for ``http://`` upstreams not behind a proxy, httpx otherwise."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    proxies = urllib.request.getproxies()
    proxied = bool(proxies.get("http") or proxies.get("all")) and not urllib.request.proxy_bypass(
        host
    )
    if parts.scheme == "http" and host and not proxied:
        return PlainClient(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_idle=max_connections,
        )
    return HttpxClient(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_connections=max_connections,
    )


# How long the end of a body is awaited after its payload: an upstream that ends its body at once
# takes a millisecond; one that keeps the stream open has its connection closed instead.
SETTLE_S = 0.25

# A response's body held in memory before the socket stops being read (a slow reader of a fast
# upstream): reading resumes once the reader has taken it below half of this.
_HIGH_WATER = 1 << 20


class PlainResponse:
    """A response read from one connection. Body chunks are queued as they arrive; the
    connection is handed back (or closed) by ``_Connection`` once the response is complete."""

    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.got_bytes = False  # any byte of the answer: a request that got none may be retried
        self.body_started = False  # the read timeout runs from the first body byte on
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Any = None  # zlib decompressor for a gzip or deflate body
        self._content: bytes | None = None
        self._settling: asyncio.TimerHandle | None = None

    # called by the connection, from the parser's callbacks

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _headers_complete(self, status: int) -> None:
        self.status_code = status
        self.headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in self._raw_headers
        }
        encoding = self.headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        self.headers_done = True
        self._wake()

    def _feed(self, data: bytes) -> None:
        self.body_started = True
        if self._settling is not None:
            return  # nobody reads it any more
        if self._decoder is not None:
            data = self._decoder.decompress(data)
            if not data:
                return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._settling is not None:
            self._settling.cancel()
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self.complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self.complete and self._error is None:
            self._error = error
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(error)

    # used by the caller

    @property
    def close_delimited(self) -> bool:
        """A body without a length or chunks: it ends when the connection does."""
        return (
            "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
        )

    async def _wait(self) -> None:
        """Until something arrives; once the body has started, a ReadTimeout (and the
        connection closed) after ``read_timeout`` seconds of nothing. Before it (the headers,
        the first token) the caller's deadline rules: a long prefill is no stall."""
        if self._error is not None:
            raise self._error
        loop = self._conn.loop
        self._waiter = loop.create_future()
        timer = (
            loop.call_later(self._read_timeout, self._timed_out)
            if self._read_timeout is not None and self.body_started
            else None
        )
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _timed_out(self) -> None:
        self._fail(ReadTimeout(f"no answer for {self._read_timeout:g} s"))
        self._conn.abort()

    async def _headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._buffered < _HIGH_WATER // 2:
                    self._conn.resume()
                yield data
            elif self.complete:
                return
            else:
                await self._wait()

    async def aiter_text(self) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for data in self.aiter_bytes():
            text = decoder.decode(data)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    async def aread(self) -> bytes:
        if self._content is None:
            self._content = b"".join([data async for data in self.aiter_bytes()])
        return self._content

    @property
    def text(self) -> str:
        assert self._content is not None, "aread() first"
        return self._content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        assert self._content is not None, "aread() first"
        return json.loads(self._content)

    async def settle(self, timeout: float) -> None:
        """Returns at once: the connection goes back to its pool when the body's end arrives,
        or is closed if it has not within the time."""
        if self.complete or self._settling is not None:
            return
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume()
        self._settling = self._conn.loop.call_later(min(timeout, SETTLE_S), self._give_up)

    def _give_up(self) -> None:
        if not self.complete:
            self._fail(RemoteProtocolError("the body did not end"))
            self._conn.abort()

    async def aclose(self) -> None:
        """Done with the response: a connection still reading it cannot be reused (unless
        the response is settling)."""
        if not self.complete and self._settling is None:
            self._fail(RemoteProtocolError("closed before the end of the response"))
            self._conn.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one response at a time."""

    def __init__(self, pool: PlainClient, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: PlainResponse | None = None
        self.closed = False
        self.paused = False

    # asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # asyncio's or uvloop's TCP transport

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.abort()  # bytes nobody asked for: the connection is out of step
            return
        self.response.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.response._fail(RemoteProtocolError(f"not a valid HTTP response: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response, self.response = self.response, None
        if response is None or response.complete:
            return
        if response.headers_done and response.close_delimited and exc is None:
            response._finish()
        elif response.headers_done:
            response._fail(RemoteProtocolError("the connection ended mid-response"))
        else:
            response._fail(RemoteProtocolError("the connection closed without an answer"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response._headers_complete(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(bytes(body))

    def on_message_complete(self) -> None:
        response, self.response = self.response, None
        assert response is not None
        response._finish()
        if self.paused:
            self.resume()
        if self.parser.should_keep_alive() and not self.closed:
            self.pool._release(self)
        else:
            self.abort()

    # used by the pool and the response

    def send(self, response: PlainResponse, data: bytes) -> None:
        assert self.transport is not None
        self.response = response
        self.transport.write(data)

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()


class PlainClient:
    """HTTP/1.1 keep-alive connections per host, newest idle one first. How many requests run
    at once is the caller's to cap (the upstream's ``max_concurrency``); at most ``max_idle``
    connections per host wait for the next."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, max_idle: int) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    def _release(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.abort()

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self, key), *key)
        except TimeoutError:
            raise ConnectError(f"no connection to {key[0]}:{key[1]} within "
                               f"{self.connect_timeout:g} s") from None  # fmt: skip
        except OSError as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from None
        return conn

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> PlainResponse:
        parts = urlsplit(url)
        host = parts.hostname or ""
        key = (host, parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = host if parts.port in (None, 80) else f"{host}:{parts.port}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {netloc}"]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable:
                break
        else:
            conn = None
        if conn is not None:
            # a kept-alive connection the server closed meanwhile fails before any byte of
            # an answer: the request was never read, so it goes again on a new connection
            response = PlainResponse(conn, self.read_timeout)
            conn.send(response, data)
            try:
                await response._headers()
            except RemoteProtocolError:
                if response.got_bytes:
                    raise
                conn = None
            except BaseException:
                await response.aclose()
                raise
        if conn is None:
            conn = await self._connect(key)
            response = PlainResponse(conn, self.read_timeout)
            conn.send(response, data)
            await self._await_headers(response)
        if not stream:
            await self._read_all(response)
        return response

    @staticmethod
    async def _await_headers(response: PlainResponse) -> None:
        try:
            await response._headers()
        except BaseException:
            await response.aclose()
            raise

    @staticmethod
    async def _read_all(response: PlainResponse) -> None:
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()


class HttpxResponse:
    """An httpx response behind the same interface, its errors mapped to this module's."""

    def __init__(
        self, response: httpx.Response, context: Any = None, read_timeout: float | None = None
    ) -> None:
        self._response = response
        self._context = context
        self._read_timeout = read_timeout
        self.status_code = response.status_code
        self.headers = response.headers
        self._texts: AsyncIterator[str] | None = None

    async def aread(self) -> bytes:
        with _mapped():
            return await self._response.aread()

    @property
    def text(self) -> str:
        return self._response.text

    def json(self) -> Any:
        return self._response.json()

    def aiter_text(self) -> AsyncIterator[str]:
        """One iterator over the body: httpx reads a stream once."""
        if self._texts is None:
            self._texts = self._text_of()
        return self._texts

    async def _text_of(self) -> AsyncIterator[str]:
        texts = self._response.aiter_text()
        started = False
        while True:
            try:
                with _mapped():
                    if started and self._read_timeout is not None:
                        async with asyncio.timeout(self._read_timeout):
                            text = await anext(texts)
                    else:
                        text = await anext(texts)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ReadTimeout(f"no answer for {self._read_timeout:g} s") from None
            started = True
            yield text

    async def settle(self, timeout: float) -> None:
        """Reads the body to its end, for at most the time (httpx reuses a connection only
        when its body was read)."""
        with contextlib.suppress(TimeoutError, TransportError):
            async with asyncio.timeout(min(timeout, SETTLE_S)):
                async for _ in self.aiter_text():
                    pass

    async def aclose(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            await context.__aexit__(None, None, None)


class _mapped:
    """httpx's transport errors as this module's."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            raise ConnectError(str(exc) or type(exc).__name__) from None
        if isinstance(exc, httpx.TimeoutException):
            raise ReadTimeout(str(exc) or type(exc).__name__) from None
        if isinstance(exc, httpx.TransportError | httpx.StreamError):
            raise RemoteProtocolError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None


class HttpxClient:
    def __init__(
        self, *, connect_timeout: float, read_timeout: float, max_connections: int
    ) -> None:
        # httpx's read timeout would count from the request on; the time between chunks is
        # kept by the responses instead, once the body has started
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30, pool=30),
            limits=httpx.Limits(max_connections=max_connections),
        )
        self._read_timeout = read_timeout

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> HttpxResponse:
        sent = dict(headers or {})
        if body is not None:
            sent["content-type"] = "application/json"
        with _mapped():
            if not stream:
                return HttpxResponse(
                    await self._client.request(method, url, content=body, headers=sent)
                )
            context = self._client.stream(method, url, content=body, headers=sent)
            return HttpxResponse(await context.__aenter__(), context, self._read_timeout)

    async def aclose(self) -> None:
        await self._client.aclose()
