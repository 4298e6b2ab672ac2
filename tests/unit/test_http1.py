"""Http1Connections: the direct model's HTTP/1.1 client, against a local server that writes
exact bytes (the framings servers use, and servers that misbehave)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conduit_workers.execution.http1 import Http1Connections

Reply = Callable[[int, bytes], list[bytes]]  # (request number, request) -> writes


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on asyncio's loop and on uvloop's (the executor's), whose transports are
    not asyncio's classes."""
    if request.param == "uvloop":
        import uvloop

        monkeypatch.setattr(asyncio, "run", uvloop.run)
    return str(request.param)


def _serve(reply: Reply, body: Callable[[str, dict[str, int]], Awaitable[Any]]) -> Any:
    """Run ``body(url, stats)`` against a server answering each request with ``reply``'s
    writes; a None write closes the connection. ``stats``: connections and requests seen."""
    stats = {"connections": 0, "requests": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                stats["requests"] += 1
                for chunk in reply(stats["requests"], request):
                    if chunk is None:
                        writer.close()
                        return
                    writer.write(chunk)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> Any:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await body(f"http://127.0.0.1:{port}/v1/chat/completions", stats)
        finally:
            server.close()

    return asyncio.run(main())


def _ok(body: bytes = b'{"ok": 1}', extra: bytes = b"") -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)]


async def _posts(url: str, n: int, timeout_s: float = 5.0) -> list[Any]:
    client = Http1Connections()
    target = client.target(url, {"Content-Type": "application/json", "Authorization": "Bearer k"})
    try:
        return [await target.post(b'{"q": %d}' % i, timeout_s) for i in range(n)]
    finally:
        await client.close()


def test_the_request_and_a_kept_alive_connection() -> None:
    seen: list[bytes] = []

    def reply(n: int, request: bytes) -> list[bytes]:
        seen.append(request)
        return _ok(b'{"n": %d}' % n, b"Retry-After: 3\r\nX-Two: a\r\nx-two: b\r\n")

    answers, stats = _serve(reply, lambda url, st: _both(_posts(url, 3), st))
    assert [a[0] for a in answers] == [200, 200, 200]
    assert [a[2] for a in answers] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert answers[0][1]["retry-after"] == "3" and answers[0][1]["x-two"] == "a, b"
    assert stats == {"connections": 1, "requests": 3}  # one connection, kept alive
    head, body = seen[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert b"Authorization: Bearer k" in lines and b"Content-Type: application/json" in lines
    assert body == b'{"q": 0}' and b"Content-Length: 8" in lines


async def _both(coro: Awaitable[Any], stats: dict[str, int]) -> tuple[Any, dict[str, int]]:
    return await coro, stats


def test_chunked_bodies_with_extensions_and_trailers() -> None:
    def reply(n: int, request: bytes) -> list[bytes]:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        if n == 1:  # split across writes, a chunk extension, no trailer
            return [head + b'4;x=y\r\n{"a"', b"\r\n3\r\n: 1\r\n1\r\n}\r\n", b"0\r\n\r\n"]
        return [head + b"2\r\n{}\r\n0\r\nX-Trailer: t\r\n\r\n"]

    answers = _serve(reply, lambda url, st: _posts(url, 2))
    assert [a[2] for a in answers] == [b'{"a": 1}', b"{}"]


def test_connection_close_and_bodies_to_the_end_of_the_connection() -> None:
    def reply(n: int, request: bytes) -> list[bytes]:
        if n == 1:
            return [*_ok(b"{}", b"Connection: close\r\n"), None]
        return [b"HTTP/1.1 200 OK\r\n\r\n", b'{"until": "eof"}', None]

    answers, stats = _serve(reply, lambda url, st: _both(_posts(url, 3), st))
    assert [a[2] for a in answers] == [b"{}", b'{"until": "eof"}', b'{"until": "eof"}']
    assert stats["connections"] == 3


def test_an_interim_response_is_skipped_and_204_has_no_body() -> None:
    def reply(n: int, request: bytes) -> list[bytes]:
        if n == 1:
            return [b"HTTP/1.1 100 Continue\r\n\r\n", *_ok(b"[1]")]
        return [b"HTTP/1.1 204 No Content\r\n\r\n"]

    answers = _serve(reply, lambda url, st: _posts(url, 2))
    assert [(a[0], a[2]) for a in answers] == [(200, b"[1]"), (204, b"")]


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    def reply(n: int, request: bytes) -> list[bytes]:
        return [*_ok(), None]  # keep-alive announced, then closed anyway

    async def body(url: str, stats: dict[str, int]) -> Any:
        client = Http1Connections()
        target = client.target(url, {})
        try:
            first = await target.post(b"{}", 5)
            await asyncio.sleep(0.05)  # the close reaches the client while the connection idles
            second = await target.post(b"{}", 5)
            return first, second
        finally:
            await client.close()

    first, second = _serve(reply, body)
    assert first[0] == second[0] == 200


@pytest.mark.parametrize(
    "writes,message",
    [
        ([None], "before answering"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", None], "in the response's body"),
        ([b"HTTP/1.1 200 OK\r\nContent-", None], "in the response's headers"),
        ([b"SSH-2.0-OpenSSH\r\n\r\n"], "not HTTP/1.x"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], "chunked"),
    ],
)
def test_a_call_the_server_did_not_answer_is_a_connection_error(
    writes: list[bytes], message: str
) -> None:
    with pytest.raises(ConnectionError, match=message):
        _serve(lambda n, r: writes, lambda url, st: _posts(url, 1))


def test_a_call_that_timed_out_leaves_its_connection_closed() -> None:
    """Its answer may still come: the next call must not read it as its own."""

    def reply(n: int, request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", b"late"] if n == 1 else _ok()

    async def body(url: str, stats: dict[str, int]) -> Any:
        client = Http1Connections()
        target = client.target(url, {})
        try:
            with pytest.raises(TimeoutError):
                await target.post(b"{}", 0.2)
            return await target.post(b"{}", 5), stats
        finally:
            await client.close()

    answer, stats = _serve(reply, body)
    assert answer[2] == b'{"ok": 1}' and stats["connections"] == 2


def test_connections_per_origin_are_bounded() -> None:
    async def body(url: str, stats: dict[str, int]) -> Any:
        client = Http1Connections(max_connections=2)
        target = client.target(url, {})
        try:
            return await asyncio.gather(*(target.post(b"{}", 5) for _ in range(10))), stats
        finally:
            await client.close()

    answers, stats = _serve(lambda n, r: _ok(), body)
    assert len(answers) == 10 and stats["connections"] <= 2


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Http1Connections().target("ftp://example.com/x", {})


def _tls_server_files(tmp_path: Any) -> tuple[str, str]:
    import shutil
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def _serve_tls(cert: str, key: str, body: Callable[[str], Awaitable[Any]]) -> Any:
    import ssl

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(_ok(b'{"tls": true}')[0])
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> Any:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            return await body(f"https://127.0.0.1:{port}/v1/chat/completions")
        finally:
            server.close()

    return asyncio.run(main())


def test_https_checks_the_servers_certificate(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS with the system's trust store: a server it does not trust is refused (an
    ``OSError``, which the model reports as a connection error); trusted, it answers."""
    import ssl

    cert, key = _tls_server_files(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        _serve_tls(cert, key, lambda url: _posts(url, 1))
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the trust store now holds the server's cert
    answers = _serve_tls(cert, key, lambda url: _posts(url, 1))
    assert answers[0][0] == 200 and answers[0][2] == b'{"tls": true}'
