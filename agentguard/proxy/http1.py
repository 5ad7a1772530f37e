"""A lean HTTP/1.1 client for the proxy's upstream calls: pooled keep-alive connections, each
request written in one piece, responses parsed by ``httptools`` as the bytes arrive.

Each connection is an ``asyncio`` protocol rather than a stream pair: what arrives goes straight
to the parser, and the waiting coroutine is woken by a future with a timer, not a task per read
(``asyncio.wait_for``); that took the client's CPU per call from 0.15 to 0.11 ms with 8
concurrent calls on this machine.

It does what the proxy needs and no more (no redirects, cookies, proxies or decompression: the
proxy asks for identity encoding). Against a local upstream it spent a fifth of the CPU per call
that ``aiohttp`` did (0.04 ms against 0.20 ms; README, "Proxy").
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

from agentguard.engine.actions import TransportFailure

__all__ = ["HOP_HEADERS", "Http1Client", "Http1Response"]

# Headers that belong to one hop, or that the proxy sets itself.
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "accept-encoding",
    }
)

_Origin = tuple[str, str, int]
MAX_IDLE_PER_ORIGIN = 64
"""Idle keep-alive connections kept per upstream origin."""
MAX_IDLE_S = 4.0
"""An idle connection is not reused after this long: servers close idle keep-alive connections
(uvicorn after 5 s), and a request sent on one the server is closing fails after it may have
left, which the engine must then charge."""
MAX_BUFFERED = 1 << 20
"""Bytes of a streamed body held for a reader slower than the upstream before the connection
stops reading (memory per connection stays bounded)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: an ``asyncio`` protocol that feeds what arrives straight to
    the current response's parser (no stream buffer, no task per read) and wakes the one
    coroutine waiting on it."""

    __slots__ = (
        "closed",
        "error",
        "idle_since",
        "loop",
        "origin",
        "parser",
        "paused",
        "reading",
        "transport",
        "waiter",
    )

    def __init__(self, origin: _Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reading: _Reading | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.paused = False
        self.idle_since = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport here

    def data_received(self, data: bytes) -> None:
        reading, parser = self.reading, self.parser
        if reading is None or parser is None:
            # Bytes nobody asked for (on an idle connection): it cannot be trusted again.
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = exc
            self.close()
        if reading.buffered > MAX_BUFFERED and not self.paused and self.transport is not None:
            # A reader slower than the upstream: stop reading until it catches up.
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.error is None:
            self.error = exc
        self._wake()

    # -- used by the client --------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Wait until something arrives or the connection ends.

        Raises:
            TimeoutError: nothing happened within ``timeout_s``.
        """
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.waiter = waiter
        timer = self.loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def start(self, reading: _Reading) -> httptools.HttpResponseParser:
        """Make ``reading`` the response this connection's bytes belong to."""
        parser = httptools.HttpResponseParser(reading)
        reading.parser = parser
        self.reading = reading
        self.parser = parser
        return parser

    def taken(self) -> None:
        """The reader took the buffered chunks: read on if reading was paused."""
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    @property
    def usable(self) -> bool:
        """Whether an idle connection can take another request (the server has not closed it,
        and it has not idled long enough that the server may be closing it)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        return time.monotonic() - self.idle_since < MAX_IDLE_S

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Reading:
    """The ``httptools`` callbacks of one response."""

    __slots__ = (
        "buffered",
        "chunks",
        "complete",
        "headers",
        "headers_complete",
        "keep_alive",
        "parser",
    )

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.headers_complete = False
        self.keep_alive = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.headers_complete = True
        # Read here: the parser forgets it once the message is complete.
        assert self.parser is not None
        self.keep_alive = bool(self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True


class Http1Response:
    """An upstream answer whose body is read (``body``) or still streaming (``chunks()``).

    Attributes:
        status: the HTTP status.
        headers: the headers, names lower-cased (repeated ones joined with ``", "``).
        header_list: the headers as received, names lower-cased, repeats kept.
        body: the whole body, or ``None`` while it streams.
    """

    __slots__ = (
        "_client",
        "_connection",
        "_parser",
        "_reading",
        "_reusable",
        "body",
        "header_list",
        "headers",
        "status",
    )

    def __init__(
        self,
        client: Http1Client,
        connection: _Connection,
        parser: httptools.HttpResponseParser,
        reading: _Reading,
    ) -> None:
        self._client = client
        self._connection: _Connection | None = connection
        self._parser = parser
        self._reading = reading
        self._reusable = reading.keep_alive
        self.status: int = parser.get_status_code()
        self.header_list = reading.headers
        headers: dict[str, str] = {}
        for name, value in reading.headers:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        self.body: bytes | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives.

        Raises:
            TransportFailure: the upstream went silent past the read timeout or cut the body.
        """
        reading = self._reading
        while True:
            if reading.chunks:
                ready = b"".join(reading.chunks)
                reading.chunks.clear()
                reading.buffered = 0
                if self._connection is not None:
                    self._connection.taken()
                yield ready
            if reading.complete:
                self._release()
                return
            await self._feed()

    async def read(self) -> bytes:
        """The whole body (kept in :attr:`body`)."""
        parts = [chunk async for chunk in self.chunks()]
        self.body = b"".join(parts)
        return self.body

    async def _feed(self) -> None:
        connection = self._connection
        assert connection is not None, "the response was closed"
        if not connection.closed:
            try:
                await connection.wait(self._client.read_timeout_s)
            except TimeoutError as exc:
                self.close()
                raise TransportFailure("timeout", exc) from exc
        if self._reading.chunks or self._reading.complete:
            return
        if connection.closed:
            self.close()
            error = connection.error
            if isinstance(error, httptools.HttpParserError):
                raise TransportFailure("connection", error) from error
            if error is None and self._reading.headers_complete and self._until_close():
                self._reading.complete = True  # a body delimited by the connection's end
                return
            if error is None:
                error = ConnectionResetError("the upstream closed the connection mid-response")
            raise TransportFailure("connection", error)

    def _until_close(self) -> bool:
        return "content-length" not in self.headers and "transfer-encoding" not in self.headers

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._reusable:
            self._client.give_back(connection)
        else:
            connection.close()

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived (what :meth:`chunks` has yet to hand on is the
        rest of it)."""
        return self._reading.complete

    def forwarded_headers(self) -> list[tuple[str, str]]:
        """The response headers to hand the client (hop-by-hop headers left out)."""
        return [(k, v) for k, v in self.header_list if k not in HOP_HEADERS]

    def close(self) -> None:
        """Drop the connection unless the response was read to its end."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class Http1Client:
    """Sends HTTP/1.1 requests over pooled keep-alive connections (one event loop).

    Args:
        connect_timeout_s: seconds to open a connection (TLS included).
        read_timeout_s: seconds the upstream may stay silent.
        tls: the TLS settings of ``https`` origins (default: the system's trusted roots).
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._tls = tls

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        stream: bool,
    ) -> Http1Response:
        """One request. A successful ``stream`` keeps its body unread; anything else is read.

        Raises:
            TransportFailure: no HTTP response (``sent`` is false only when no connection was
                made).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, host, port)
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        host_header = parts.netloc.rsplit("@", 1)[-1]
        lines = [f"{method} {target} HTTP/1.1", f"host: {host_header}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        payload = body or b""
        if payload or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(payload)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        connection = await self._connection(origin)
        reading = _Reading()
        parser = connection.start(reading)
        try:
            assert connection.transport is not None
            connection.transport.write(head + payload)
            while not reading.headers_complete:
                if connection.closed:
                    raise connection.error or ConnectionResetError(
                        "the upstream closed the connection"
                    )
                await connection.wait(self.read_timeout_s)
        except TimeoutError as exc:
            connection.close()
            raise TransportFailure("timeout", exc) from exc
        except (OSError, httptools.HttpParserError) as exc:
            connection.close()
            raise TransportFailure("connection", exc) from exc
        response = Http1Response(self, connection, parser, reading)
        if method == "HEAD" or response.status in (204, 304):
            reading.complete = True
        if not (stream and response.status < 400):
            await response.read()
        return response

    async def _connection(self, origin: _Origin) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.usable:
                return connection
            connection.close()
        scheme, host, port = origin
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
                self._tls.set_alpn_protocols(["http/1.1"])
            tls = self._tls
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(origin, loop),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                ),
                self.connect_timeout_s,
            )
        except TimeoutError as exc:
            raise TransportFailure("timeout", exc, sent=False) from exc
        except OSError as exc:
            raise TransportFailure("connection", exc, sent=False) from exc
        return connection

    def give_back(self, connection: _Connection) -> None:
        """Keep a connection whose response was read whole, for the next request."""
        idle = self._idle.setdefault(connection.origin, [])
        connection.reading = connection.parser = None
        connection.taken()
        connection.idle_since = time.monotonic()
        if len(idle) >= MAX_IDLE_PER_ORIGIN or not connection.usable:
            connection.close()
            return
        idle.append(connection)

    async def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
