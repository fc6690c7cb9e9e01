"""One streaming HTTP/1.1 POST on asyncio streams: the serving bench's client, one connection per request.

Why: the client must never be what limits a serving figure. Through httpx's async stack each SSE event passed
anyio's timeout scopes, sniffio's loop lookup, h11's event machine and a pause/resume of the socket reader: about
two thirds of the client's ~90 us per event on the demo model, so one client core topped out near 11k events/s,
below the issue's fastest offline figure (11,683 tok/s). Here an event costs a readline and a readexactly.
No proxies (a proxy must not sit between the bench and the server), no redirects, no compression; http and https.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

READ_SIZE = 1 << 16


@dataclass
class StreamedResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    reader: asyncio.StreamReader

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: chunked transfer decoded, else Content-Length bytes, else until EOF."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError("the server closed the stream inside a chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await self.reader.readline()).strip():  # NOTE: trailers, then the blank line
                        pass
                    return
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        length = self.headers.get("content-length")
        left = int(length) if length is not None else -1
        while left != 0:
            data = await self.reader.read(READ_SIZE if left < 0 else min(left, READ_SIZE))
            if not data:
                if left > 0:
                    raise ConnectionError(f"the server closed the stream {left} bytes before the body's end")
                return
            left -= len(data) if left > 0 else 0
            yield data

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])


@asynccontextmanager
async def post(url: str, body: bytes, headers: Mapping[str, str] | None = None) -> AsyncIterator[StreamedResponse]:
    """POSTs ``body`` (JSON) to ``url``; yields once the status line and headers are in, closes on the way out."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    reader, writer = await asyncio.open_connection(
        parts.hostname, port, ssl=ssl.create_default_context() if tls else None, limit=READ_SIZE
    )
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", "Accept: text/event-stream", "Connection: close",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status_line = await reader.readline()
        fields = status_line.split(None, 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/"):
            raise ConnectionError(f"not an HTTP response: {status_line[:80]!r}")
        got: dict[str, str] = {}
        while (line := await reader.readline()).strip():
            name, _, value = line.decode("latin-1").partition(":")
            got[name.strip().lower()] = value.strip()
        yield StreamedResponse(int(fields[1]), got, reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
