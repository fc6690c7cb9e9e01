"""The bench's HTTP/1.1 client: chunked, sized and close-delimited bodies, and a stream cut short."""

from __future__ import annotations

import asyncio

import pytest

from sgl.bench import http_stream


async def _serve_once(reply: bytes) -> tuple[asyncio.AbstractServer, str, list[bytes]]:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        seen.append(head + await reader.readexactly(length))
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/generate?x=1", seen


async def _post(reply: bytes) -> tuple[int, list[bytes], list[bytes]]:
    server, url, seen = await _serve_once(reply)
    async with server, http_stream.post(url, b'{"a": 1}', {"Authorization": "Bearer k"}) as resp:
        chunks = [c async for c in resp.chunks()]
    return resp.status, chunks, seen


def test_chunked_body_arrives_chunk_by_chunk_and_the_request_is_well_formed() -> None:
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"7\r\ndata: 1\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n")
    status, chunks, seen = asyncio.run(_post(reply))
    assert (status, chunks) == (200, [b"data: 1", b"abc"])
    assert seen[0].startswith(b"POST /generate?x=1 HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer k\r\n" in seen[0] and seen[0].endswith(b'\r\n\r\n{"a": 1}')


def test_sized_and_close_delimited_bodies_are_read_whole() -> None:
    _, chunks, _ = asyncio.run(_post(b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nhello"))
    assert b"".join(chunks) == b"hello"
    status, chunks, _ = asyncio.run(_post(b"HTTP/1.0 200 OK\r\n\r\nuntil the end"))
    assert (status, b"".join(chunks)) == (200, b"until the end")


def test_a_chunked_stream_cut_short_is_an_error_not_a_short_success() -> None:
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        asyncio.run(_post(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata"))
    with pytest.raises(ConnectionError):
        asyncio.run(_post(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"))
