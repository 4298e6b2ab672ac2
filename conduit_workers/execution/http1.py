"""Keep-alive HTTP/1.1 connections for the executor's JSON POSTs, on asyncio's transports.

:class:`~conduit_workers.execution.openai_http.OpenAIHttpModel` posts one small JSON body per
call and reads one JSON answer. aiohttp's client spent ~0.2 ms of CPU on each such call (its
request and response objects, headers merged per call, timers, cookies, tracing hooks: the
largest single share of an executor's CPU per prompt, bench/README.md); this client does
only what that call needs, for ~0.05 ms: one request head rendered once per URL, one
``transport.write``, the status line, headers and body parsed from the connection's buffer.

What it speaks: HTTP/1.1 over TCP or TLS (the system's CA store, the host name checked), one
request at a time per connection, kept alive unless the server says ``Connection: close``;
bodies by ``Content-Length``, chunked, or up to the end of the connection; 1xx responses
skipped. No proxies (as the aiohttp session it replaces), no redirects (an API answers its
URL or fails), no compression (none is asked for).

Errors: a call that the server never answered (refused, reset, closed before or while it
answered, a response that cannot be parsed) raises :class:`ConnectionError`; the caller's
``asyncio.timeout`` bounds it. A connection whose call was cancelled or failed is closed,
never reused: its answer may still be on the way.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Mapping
from typing import cast

from conduit_workers.domain.catalog import http_url

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one response, at most
_NO_BODY = (204, 304)


class _Response:
    """What the parser has read of the current response."""

    __slots__ = ("status", "headers", "body_at", "length", "chunked", "keep_alive")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body_at = 0
        self.length: int | None = None
        self.chunked = False
        self.keep_alive = True


class _Connection(asyncio.Protocol):
    """One connection: a buffer, the call waiting on it, and the parser of its response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.response: _Response | None = None
        self.lost = False
        self.reusable = True

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self._parse(eof=True)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.reusable = False  # bytes nobody asked for: the connection is out of step
            return
        self.buf += data
        self._parse(eof=False)

    def eof_received(self) -> bool:
        if self.waiter is not None and not self.waiter.done():
            self._parse(eof=True)
        self.reusable = False
        return False  # close the transport

    # -- calls -------------------------------------------------------------------------------

    def usable(self) -> bool:
        t = self.transport
        return self.reusable and not self.lost and t is not None and not t.is_closing()

    def send(self, data: bytes) -> asyncio.Future[tuple[int, dict[str, str], bytes]]:
        assert self.transport is not None
        self.buf.clear()
        self.response = None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # -- the parser --------------------------------------------------------------------------

    def _fail(self, why: str) -> None:
        self.reusable = False
        assert self.waiter is not None
        self.waiter.set_exception(ConnectionError(why))

    def _parse(self, eof: bool) -> None:
        buf = self.buf
        r = self.response
        while r is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    return self._fail("the response's headers are too long")
                if eof:
                    return self._fail(
                        "the server closed the connection before answering"
                        if not buf
                        else "the server closed the connection in the response's headers"
                    )
                return
            r = self._head(bytes(buf[:end]))
            if r is None:
                return self._fail("the server's response is not HTTP/1.x")
            del buf[: end + 4]
            if 100 <= r.status < 200:
                r = None  # an interim response (100 Continue, 103 Early Hints): the next one
        self.response = r
        if r.status in _NO_BODY:
            return self._done(r, b"")
        if r.chunked:
            return self._chunked(r, eof)
        if r.length is not None:
            if len(buf) >= r.length:
                if len(buf) > r.length:
                    self.reusable = False  # more than the answer: out of step
                return self._done(r, bytes(buf[: r.length]))
            if eof:
                return self._fail("the server closed the connection in the response's body")
            return
        if eof:  # neither length nor chunks: the body runs to the end of the connection
            r.keep_alive = False
            return self._done(r, bytes(buf))

    def _head(self, raw: bytes) -> _Response | None:
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            return None
        r = _Response()
        r.status = int(parts[1])
        headers = r.headers
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                return None
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        conn = headers.get("connection", "").lower()
        r.keep_alive = "close" not in conn and (parts[0] == "HTTP/1.1" or "keep-alive" in conn)
        r.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        if length is not None and not r.chunked:
            if not length.isdigit():
                return None
            r.length = int(length)
        return r

    def _chunked(self, r: _Response, eof: bool) -> None:
        buf = self.buf
        body = bytearray()
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            try:
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                return self._fail("the server's chunked response cannot be read")
            if size == 0:
                # The last chunk, then trailer lines (if any), then an empty line.
                at = eol + 2
                if buf[at : at + 2] == b"\r\n":
                    end = at + 2
                else:
                    k = buf.find(b"\r\n\r\n", at)
                    if k < 0:
                        break
                    end = k + 4
                if end < len(buf):
                    self.reusable = False
                return self._done(r, bytes(body))
            if len(buf) < eol + 2 + size + 2:
                break
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
        if eof:
            self._fail("the server closed the connection in the response's body")

    def _done(self, r: _Response, body: bytes) -> None:
        if not r.keep_alive:
            self.reusable = False
        assert self.waiter is not None
        self.waiter.set_result((r.status, r.headers, body))


class _Origin:
    """Idle connections to one scheme, host and port, and how many are open."""

    def __init__(self, host: str, port: int, tls: bool, limit: int) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl.create_default_context() if tls else None
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(limit)

    async def call(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        async with self.slots:
            conn = None
            while self.idle:
                c = self.idle.pop()
                if c.usable():
                    conn = c
                    break
                c.close()
            if conn is None:
                _, conn = await asyncio.get_running_loop().create_connection(
                    _Connection,
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
            ok = False
            try:
                answer = await conn.send(data)
                ok = True
                return answer
            finally:
                conn.waiter = None
                if ok and conn.usable():
                    self.idle.append(conn)
                else:  # failed or cancelled: an answer may still come; never reuse it
                    conn.close()

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


class Http1Target:
    """POSTs to one URL with fixed headers: the request head is rendered once."""

    def __init__(self, origin: _Origin, head: bytes) -> None:
        self._origin = origin
        self._head = head

    async def post(self, body: bytes, timeout_s: float) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers with lowercase names, body) of one POST of ``body``; raises
        :class:`TimeoutError` after ``timeout_s`` (``math.inf``: no timer, the caller's bounds
        the call) and :class:`ConnectionError` (an :class:`OSError`, as are refused and reset
        connections) when no answer came."""
        data = b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)
        if math.isinf(timeout_s):  # the caller's timeout bounds it: no second timer
            return await self._origin.call(data)
        async with asyncio.timeout(timeout_s):
            return await self._origin.call(data)


class Http1Connections:
    """The connections of one process to every origin its models post to (one pool each, at
    most ``max_connections`` open per origin); made and used on one event loop."""

    def __init__(self, max_connections: int = 256) -> None:
        self.max_connections = max_connections
        self._origins: dict[tuple[str, str, int], _Origin] = {}

    def target(self, url: str, headers: Mapping[str, str]) -> Http1Target:
        u = http_url(url)
        if u is None or u.hostname is None:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = u.scheme == "https"
        port = u.port or (443 if tls else 80)
        key = (u.scheme, u.hostname, port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(u.hostname, port, tls, self.max_connections)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {u.netloc.rsplit('@', 1)[-1]}"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
        head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        return Http1Target(origin, head)

    async def close(self) -> None:
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()
