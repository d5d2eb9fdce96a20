"""The gateway's plain HTTP/1.1 client against raw sockets that misbehave on purpose: every
way an upstream's connection can end, stall or lie, and what the client must make of it."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable

import pytest

from cuvee.serve.gateway.http import (
    ConnectError,
    HttpxClient,
    PlainClient,
    ReadTimeout,
    RemoteProtocolError,
    client_for,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    line, *rest = head.strip().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in rest)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return line, headers, body


class Server:
    """A loopback server whose ``handler(reader, writer, n)`` answers the n-th connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def __aenter__(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer, self.connections)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


def client(read_timeout: float = 5) -> PlainClient:
    return PlainClient(connect_timeout=2, read_timeout=read_timeout, max_idle=4)


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_requests_reuse_one_connection_and_bodies_arrive_whole() -> None:
    server: Server

    async def handler(reader, writer, n) -> None:
        while True:
            line, headers, body = await read_request(reader)
            server.requests.append((line, headers, body))
            if line.startswith("GET"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n"
                    + chunked(b'{"a":', b"[1,2]}")
                )
            await writer.drain()

    async def main() -> None:
        nonlocal server
        server = Server(handler)
        async with server as url:
            c = client()
            r = await c.request("POST", url + "/v1/x?v=1", body=b'{"q":1}', headers={"A": "b"})
            assert r.status_code == 200 and r.json() == {"a": [1, 2]}
            assert r.headers["x-up"] == "1"
            r = await c.request("GET", url + "/v1/models")
            assert r.text == "ok"
            await c.aclose()
        assert server.connections == 1
        (line, headers, body), (line2, _, _) = server.requests
        assert line == "POST /v1/x?v=1 HTTP/1.1" and line2 == "GET /v1/models HTTP/1.1"
        assert headers["a"] == "b" and headers["content-type"] == "application/json"
        assert headers["host"].startswith("127.0.0.1:") and body == b'{"q":1}'

    asyncio.run(main())


def test_a_kept_alive_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async def handler(reader, writer, n) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)
        await writer.drain()
        if n == 1:
            # the race: the server drops its idle connection just as the next request
            # arrives, which is read by nobody and answered never
            await read_request(reader)

    async def main() -> None:
        server = Server(handler)
        async with server as url:
            c = client()
            answers = [(await c.request("POST", url + "/x", body=b"{}")).text]
            answers.append((await c.request("POST", url + "/x", body=b"{}")).text)
            await asyncio.sleep(0.05)  # now the close of connection 2 has arrived
            answers.append((await c.request("POST", url + "/x", body=b"{}")).text)
            assert answers == ["1", "2", "3"] and server.connections == 3
            await c.aclose()

    asyncio.run(main())


def test_a_connection_reset_mid_body_is_an_error_never_a_short_success() -> None:
    async def handler(reader, writer, n) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"5\r\ndata:\r\n")
        await writer.drain()
        writer.transport.abort()

    async def main() -> None:
        async with Server(handler) as url:
            c = client()
            r = await c.request("POST", url + "/x", body=b"{}", stream=True)
            got = []
            with pytest.raises(RemoteProtocolError, match="mid-response"):
                async for text in r.aiter_text():
                    got.append(text)
            assert got == ["data:"]
            with pytest.raises(RemoteProtocolError):
                await c.request("POST", url + "/x", body=b"{}")  # whole: same failure

    asyncio.run(main())


def test_silence_between_chunks_is_a_read_timeout_and_the_connection_is_dropped() -> None:
    async def handler(reader, writer, n) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"2\r\nhi\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        server = Server(handler)
        async with server as url:
            c = client(read_timeout=0.2)
            r = await c.request("POST", url + "/x", body=b"{}", stream=True)
            chunks = r.aiter_bytes()
            assert await chunks.__anext__() == b"hi"
            with pytest.raises(ReadTimeout):
                await chunks.__anext__()
            assert c._idle.get(r._conn.key, []) == []  # never reused

    asyncio.run(main())


def test_a_refused_connection_is_a_connect_error() -> None:
    async def main() -> None:
        async with Server(lambda *a: asyncio.sleep(0)) as url:
            pass  # closed: nothing listens on its port now
        with pytest.raises(ConnectError):
            await client().request("POST", url + "/x", body=b"{}")

    asyncio.run(main())


def test_a_response_that_is_not_http_is_a_protocol_error() -> None:
    async def handler(reader, writer, n) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def main() -> None:
        async with Server(handler) as url:
            with pytest.raises(RemoteProtocolError, match="not a valid HTTP response"):
                await client().request("POST", url + "/x", body=b"{}")

    asyncio.run(main())


def test_text_split_inside_a_character_close_delimited_and_gzip_bodies_decode() -> None:
    word = "déjà vu, 東京".encode()
    zipped = gzip.compress(json.dumps({"w": "naïve"}).encode())

    async def handler(reader, writer, n) -> None:
        line, _, _ = await read_request(reader)
        if "split" in line:
            # the two bytes of "é" in two chunks, then a body that ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + word[:2])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(word[2:])
            await writer.drain()
            writer.close()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(zipped)
            + zipped
        )
        await writer.drain()

    async def main() -> None:
        async with Server(handler) as url:
            c = client()
            r = await c.request("GET", url + "/split", stream=True)
            assert "".join([t async for t in r.aiter_text()]) == word.decode()
            r = await c.request("GET", url + "/gzip")
            assert r.json() == {"w": "naïve"}

    asyncio.run(main())


def test_a_body_larger_than_the_buffer_arrives_whole_through_back_pressure() -> None:
    blob = bytes(range(256)) * (3 * 4096 * 4)  # 12 MiB, over the 1 MiB high-water mark

    async def handler(reader, writer, n) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(blob))
        for i in range(0, len(blob), 65536):
            writer.write(blob[i : i + 65536])
            await writer.drain()

    async def main() -> None:
        async with Server(handler) as url:
            c = client()
            r = await c.request("GET", url + "/big", stream=True)
            got = bytearray()
            async for data in r.aiter_bytes():
                got += data
                if len(got) < 2 << 20:
                    await asyncio.sleep(0.01)  # a slow reader at first
            assert bytes(got) == blob

    asyncio.run(main())


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="line break"):
            await client().request(
                "GET", "http://127.0.0.1:9/x", headers={"Authorization": "Bearer a\r\nX: y"}
            )

    asyncio.run(main())


def test_the_plain_client_is_for_http_without_a_proxy(monkeypatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    kw = {"connect_timeout": 1, "read_timeout": 1, "max_connections": 2}
    assert isinstance(client_for("http://10.0.0.5:8000/v1", **kw), PlainClient)
    assert isinstance(client_for("https://api.example.com/v1", **kw), HttpxClient)
    monkeypatch.setenv("http_proxy", "http://proxy.corp:3128")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    assert isinstance(client_for("http://10.0.0.5:8000/v1", **kw), HttpxClient)
    assert isinstance(client_for("http://127.0.0.1:8000/v1", **kw), PlainClient)


def test_a_settled_stream_gives_its_connection_back_when_the_body_ends_and_not_before() -> None:
    async def handler(reader, writer, n) -> None:
        while True:
            line, _, _ = await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"e\r\ndata: [DONE]\n\n\r\n")
            await writer.drain()
            if "never" in line:
                await asyncio.sleep(10)  # the body never ends
            await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def main() -> None:
        server = Server(handler)
        async with server as url:
            c = client()
            r = await c.request("POST", url + "/late", body=b"{}", stream=True)
            assert await r.aiter_bytes().__anext__() == b"data: [DONE]\n\n"
            await r.settle(5)
            await r.aclose()
            assert not r.complete  # settling did not wait for the body's end
            await asyncio.sleep(0.2)
            await c.request("POST", url + "/late", body=b"{}")
            assert server.connections == 1  # the first connection was reused
            r = await c.request("POST", url + "/never", body=b"{}", stream=True)
            await r.settle(5)
            await r.aclose()
            await asyncio.sleep(0.4)  # past the settling time
            assert not r._conn.usable
            await (await c.request("POST", url + "/late", body=b"{}")).aclose()
            assert server.connections == 2

    asyncio.run(main())


def _httpx(read_timeout: float = 5) -> HttpxClient:
    return HttpxClient(connect_timeout=2, read_timeout=read_timeout, max_connections=4)


@pytest.mark.parametrize("make", [client, _httpx], ids=["plain", "httpx"])
def test_the_read_timeout_counts_between_chunks_not_before_the_first(make) -> None:
    """A long wait for the first token (a prefill) is the caller's first-token deadline to
    judge, not a stall; silence after the body has started is."""

    async def handler(reader, writer, n) -> None:
        await read_request(reader)
        await asyncio.sleep(0.5)  # headers and first chunk late: over the read timeout
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"2\r\nhi\r\n")
        await writer.drain()
        await asyncio.sleep(5)  # then silence

    async def main() -> None:
        async with Server(handler) as url:
            c = make(read_timeout=0.2)
            r = await c.request("POST", url + "/x", body=b"{}", stream=True)
            texts = r.aiter_text()
            assert await texts.__anext__() == "hi"
            with pytest.raises(ReadTimeout):
                await texts.__anext__()
            await r.aclose()
            await c.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("make", [client, _httpx], ids=["plain", "httpx"])
def test_both_clients_answer_the_same_and_fail_the_same(make) -> None:
    async def handler(reader, writer, n) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 9\r\n\r\n")
        writer.write(b'{"e": 42}')
        await writer.drain()

    async def main() -> None:
        async with Server(handler) as url:
            c = make()
            r = await c.request("POST", url + "/x", body=b"{}")
            assert (r.status_code, r.headers["retry-after"], r.json()) == (429, "7", {"e": 42})
            await c.aclose()
        with pytest.raises(ConnectError):
            await make().request("POST", url + "/x", body=b"{}")

    asyncio.run(main())
