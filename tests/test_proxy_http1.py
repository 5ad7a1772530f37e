"""The proxy's upstream client over real TLS on loopback: a self-signed certificate made with
``openssl``, a chunked and a streamed answer, and a connection kept alive between requests."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from agentguard.engine.actions import TransportFailure
from agentguard.proxy.http1 import Http1Client

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


async def _serve_chunked(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
) -> None:
    """Answer each request with a chunked body of three parts, keeping the connection."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        seen.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        for part in (b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def test_https_chunked_and_streamed_answers_on_one_kept_connection(tmp_path: Path) -> None:
    key, cert = _certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    seen: list[bytes] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await _serve_chunked(reader, writer, seen)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    client = Http1Client(connect_timeout_s=10, read_timeout_s=10, tls=client_tls)
    url = f"https://localhost:{port}/v1/chat/completions?beta=true"
    try:
        whole = await client.request("POST", url, {"x-test": "1"}, b'{"a":1}', stream=False)
        assert whole.status == 200 and whole.body == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
        streamed = await client.request("POST", url, {}, b"{}", stream=True)
        assert streamed.body is None
        parts = [chunk async for chunk in streamed.chunks()]
        assert b"".join(parts) == whole.body
        assert len(parts) >= 2  # handed on as it arrived, not at the end
        assert connections == 1
        assert seen[0].startswith(b"POST /v1/chat/completions?beta=true HTTP/1.1\r\n")
        assert b"host: localhost:" in seen[0] and b"content-length: 7\r\n" in seen[0]
        assert seen[0].endswith(b'{"a":1}')
        # An untrusted certificate is a failure to connect: nothing was sent.
        untrusted = Http1Client(connect_timeout_s=10, read_timeout_s=10)
        with pytest.raises(TransportFailure) as failed:
            await untrusted.request("POST", url, {}, b"{}", stream=False)
        assert failed.value.sent is False
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
