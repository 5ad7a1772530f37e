"""The proxy as an ASGI application: the guard's engine behind an HTTP front.

The proxy is the engine's third driver. A request in a dialect the guard speaks
(``/v1/chat/completions``, ``/v1/responses``, ``/v1/messages``) runs through
:meth:`Pipeline.run <agentguard.engine.Pipeline.run>` under :func:`drive_async`, whose ``Send``
forwards the (possibly rewritten) body upstream; the legacy ``/v1/completions`` and
``/v1/embeddings`` are metered by :func:`~agentguard.dialects.openai_legacy.run_legacy` under a budget. A
stream is handed on chunk by chunk as it arrives, through the dialect's tap, and settled when
it ends.

Other paths:

* ``/healthz`` and ``/metrics`` are the proxy's own.
* Under ``/v1/``: reads (``GET``, ``HEAD``, ``DELETE``), posts no provider bills (token
  counting) and endpoints ``limits.unmetered`` names pass through. Any other ``POST`` passes
  through only when no dollar limit applies to its budget; under one it is refused (403),
  because nothing unmetered may spend a budget.
* Anything else is answered 404.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agentguard.dialects import Dialect, dialect_for, free_endpoint
from agentguard.dialects.openai_legacy import legacy_endpoint, run_legacy
from agentguard.engine import CallContext
from agentguard.engine.actions import Outcome, Park, Reply, TransportFailure
from agentguard.engine.drivers import drive_async
from agentguard.engine.wire import encode_body, json_object
from agentguard.errors import AgentGuardError, BudgetExceeded, ConfigError, UnmeteredRequest
from agentguard.log import logger
from agentguard.parking.handler import request_url
from agentguard.proxy.keys import Caller, KeyTable, client_key, derived_session_id, key_hash
from agentguard.proxy.metrics import Metrics
from agentguard.proxy.replies import ErrorReply, error_reply, refusal
from agentguard.proxy.upstream import HOP_HEADERS, Upstream, UpstreamResponse

if TYPE_CHECKING:
    from agentguard.guard import Guard
    from agentguard.parking.record import ParkedSession
    from agentguard.routing.providers import Upstream as ProviderUpstream
    from agentguard.session import Session

__all__ = ["ProxyApp"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
SendASGI = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_SESSION_HEADER = "x-agentguard-session"
_BUDGET_HEADER = "x-agentguard-budget-key"
_PARENT_HEADER = "x-agentguard-parent"


class _Request:
    """One incoming request, as the proxy reads it."""

    __slots__ = ("anthropic", "headers", "method", "path", "query", "receive")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        query: bytes = scope.get("query_string") or b""
        self.query = query.decode("latin-1")
        # ASGI servers hand header names lower-cased already.
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.receive = receive
        self.anthropic = self.path.startswith("/v1/messages") or "anthropic-version" in self.headers
        """Whether the client speaks Anthropic's API (its errors take Anthropic's shape)."""

    async def body(self, limit: int) -> bytes:
        """The whole body.

        Raises:
            RequestTooLarge: it is longer than ``limit`` bytes.
            ConnectionResetError: the client went away first.
        """
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(limit)
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ConnectionResetError("the client went away before sending its body")
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise RequestTooLarge(limit)
            parts.append(part)
            if not message.get("more_body"):
                return b"".join(parts)


class _Refused(Exception):
    """A request the proxy answers with an error of its own, before any engine work."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RequestTooLarge(_Refused):
    """A request body over ``proxy.max_request_bytes``."""

    def __init__(self, limit: int) -> None:
        message = f"the request body is larger than proxy.max_request_bytes ({limit})"
        super().__init__(413, message, "request_too_large")


class ProxyApp:
    """The ASGI application of ``agentguard proxy``.

    Args:
        guard: the guard whose engine, store and config serve the requests (its
            ``[proxy]`` section says where requests go).
        env: where ``[[proxy.keys]]`` upstream keys are read (default: ``os.environ``).

    Raises:
        ConfigError: a virtual key's ``upstream_key_env`` is not set.
    """

    def __init__(self, guard: Guard, *, env: MutableMapping[str, str] | None = None) -> None:
        self.guard = guard
        self.config = guard.config.proxy
        self.keys = KeyTable(self.config, env)
        self.upstream = Upstream(
            connect_timeout_s=self.config.connect_timeout_s,
            read_timeout_s=self.config.read_timeout_s,
        )
        self.metrics = Metrics()
        guard.observers.append(self.metrics.observe)
        # A network database never blocks the event loop; a local SQLite file answers in
        # microseconds and is written in place.
        self.offload = not guard.store.is_sqlite
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: SendASGI) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = _Request(scope, receive)
        started = time.perf_counter()
        status = await self._serve(request, send)
        if logger.enabled("debug"):
            # The path and status only: never a header, a key or a body.
            logger.debug(
                "proxy_request",
                method=request.method,
                path=request.path,
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )

    async def _lifespan(self, receive: Receive, send: SendASGI) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _serve(self, request: _Request, send: SendASGI) -> int:
        path = request.path
        if path == "/healthz":
            return await _answer(
                send, 200, b'{"status":"ok"}', [("content-type", "application/json")]
            )
        if path == "/metrics":
            text = self.metrics.render().encode()
            return await _answer(send, 200, text, [("content-type", "text/plain; version=0.0.4")])
        if not path.startswith("/v1/"):
            message = f"{request.method} {path} is not served by agentguard proxy"
            return await _error(send, refusal(404, message, anthropic=False, code="not_found"))
        try:
            return await self._route(request, send)
        except AgentGuardError as exc:
            return await _error(send, error_reply(exc, anthropic=request.anthropic))
        except ConnectionResetError:
            return 499
        except _Refused as exc:
            reply = refusal(exc.status, str(exc), anthropic=request.anthropic, code=exc.code)
            return await _error(send, reply)
        except TransportFailure as exc:
            message = f"the upstream could not be reached or did not answer ({exc.kind})"
            reply = refusal(502, message, anthropic=request.anthropic, code="upstream_error")
            return await _error(send, reply)

    async def _route(self, request: _Request, send: SendASGI) -> int:
        found = client_key(request.headers)
        caller = self.keys.caller(found[0] if found else None)
        if caller is None:
            message = "the API key is not one of this proxy's keys ([[proxy.keys]])"
            raise _Refused(401, message, "invalid_api_key")
        budget_key = self._budget_key(request, caller)
        headers = Upstream.request_headers(request.headers)
        if caller.upstream_key is not None and found is not None:
            if found[1] == "x-api-key":
                headers["x-api-key"] = caller.upstream_key
            else:
                headers["authorization"] = f"Bearer {caller.upstream_key}"
        url = self._url(request)
        dialect = dialect_for(request.method, request.path)
        if dialect is not None:
            return await self._guarded(request, send, dialect, caller, budget_key, headers, url)
        kind = legacy_endpoint(request.method, request.path)
        if kind is not None and self._metered(budget_key, request.path):
            return await self._legacy(request, send, kind, caller, budget_key, headers, url)
        if not self._passes(request, budget_key):
            endpoint = request.path.rstrip("/")
            reason = f"{request.method} {endpoint} is not metered by agentguard"
            raise UnmeteredRequest(
                f"refused: {reason}, and budget {budget_key!r} has a dollar limit that every "
                f'request must be priced against; let it through with limits.unmetered = ["'
                f'{endpoint}"] in the config if it is free',
                endpoint=endpoint,
                reason=reason,
                field="limits.unmetered",
            )
        return await self._pass_through(request, send, headers, url)

    # -- who, where, what ----------------------------------------------------------------------

    def _budget_key(self, request: _Request, caller: Caller) -> str:
        named = request.headers.get(_BUDGET_HEADER)
        if caller.budget_key is not None:
            if named is not None and named != caller.budget_key:
                message = (
                    f"{_BUDGET_HEADER}: {named!r} names another budget than the key's own "
                    f"({caller.budget_key!r})"
                )
                raise _Refused(403, message, "budget_key_not_allowed")
            return caller.budget_key
        key = named or self.config.budget_key
        self.guard.check_budget_key(key)
        return key

    def _url(self, request: _Request) -> str:
        if request.anthropic:
            base = self.config.anthropic_base_url + request.path
        else:
            base = self.config.openai_base_url + request.path.removeprefix("/v1")
        return f"{base}?{request.query}" if request.query else base

    def _budgeted(self, budget_key: str) -> bool:
        if self.guard.config.limits.max_session_usd is not None:
            return True
        return self.guard.budget_line(budget_key).limit_usd is not None

    def _allowed_unmetered(self, path: str) -> bool:
        trimmed = path.rstrip("/")
        unmetered = self.guard.config.limits.unmetered
        return any(trimmed.endswith(allowed.rstrip("/")) for allowed in unmetered)

    def _metered(self, budget_key: str, path: str) -> bool:
        return self._budgeted(budget_key) and not self._allowed_unmetered(path)

    def _passes(self, request: _Request, budget_key: str) -> bool:
        """Whether a request no dialect guards may pass through unmetered."""
        if request.method in _READ_METHODS or free_endpoint(request.path):
            return True
        return self._allowed_unmetered(request.path) or not self._budgeted(budget_key)

    # -- sessions ------------------------------------------------------------------------------

    async def _session(self, session_id: str, budget_key: str, parent_id: str | None) -> Session:
        session = self._sessions.get(session_id)
        if session is not None:
            self._sessions.move_to_end(session_id)
            if session.budget_key != budget_key:
                raise ConfigError(
                    f"session {session_id!r} runs under budget {session.budget_key!r}, not "
                    f"{budget_key!r}: a session keeps the budget it started with",
                    field=_BUDGET_HEADER,
                )
        else:
            parent = None
            if parent_id is not None and parent_id != session_id:
                parent = await self._session(parent_id, budget_key, None)
            try:
                session = self.guard.session(
                    session_id,
                    budget_key=budget_key,
                    parent=parent,
                    resumer="proxy",
                    framework="proxy",
                )
            except ValueError as exc:
                raise ConfigError(f"{_SESSION_HEADER}: {exc}", field=_SESSION_HEADER) from None
            # A session parked before this process knew it (a restart) stays parked.
            session.parked_record = await self._store(self._waiting_record, session_id)
            # Another request of the same new session may have made it meanwhile: one
            # session object per id, so its counters are not split.
            session = self._sessions.setdefault(session_id, session)
            while len(self._sessions) > self.config.max_sessions:
                self._sessions.popitem(last=False)
        record = session.parked_record
        resume_at = record.resume_at if record is not None else None
        if resume_at is not None and resume_at <= datetime.now(UTC):
            # The client called again after the reset: the session goes on.
            session.parked_record = None
            await self._store(self._mark_resumed, session_id)
        return session

    async def _store(self, work: Callable[[str], Any], session_id: str) -> Any:
        if self.offload:
            return await asyncio.to_thread(work, session_id)
        return work(session_id)

    def _waiting_record(self, session_id: str) -> ParkedSession | None:
        record = self.guard.parked.store.find(session_id)
        if record is None or record.state != "parked" or record.resumer != "proxy":
            return None
        return record

    def _mark_resumed(self, session_id: str) -> None:
        def change(current: ParkedSession | None) -> ParkedSession | None:
            if current is None or current.state != "parked":
                return None
            current.resume_at = None
            current.transition("resumed", "the client called again through the proxy")
            return current

        self.guard.parked.store.update(session_id, change)

    def _session_id(
        self, request: _Request, caller: Caller, budget_key: str, dialect: Dialect, body: Any
    ) -> str:
        named = request.headers.get(_SESSION_HEADER)
        if named:
            return named
        return derived_session_id(caller, budget_key, dialect, body)

    # -- the guarded dialects ------------------------------------------------------------------

    async def _guarded(
        self,
        request: _Request,
        send: SendASGI,
        dialect: Dialect,
        caller: Caller,
        budget_key: str,
        headers: dict[str, str],
        url: str,
    ) -> int:
        raw = await request.body(self.config.max_request_bytes)
        body = json_object(raw)
        if body is None:
            if self._metered(budget_key, request.path):
                raise UnmeteredRequest(
                    "refused: the request's body is not a JSON object, so its cost cannot be "
                    f"bounded, and budget {budget_key!r} has a dollar limit",
                    endpoint=dialect.endpoint,
                    reason="body not a JSON object",
                    field="body",
                )
            return await self._pass_through(request, send, headers, url, raw)
        session_id = self._session_id(request, caller, budget_key, dialect, body)
        session = await self._session(
            session_id, budget_key, request.headers.get(_PARENT_HEADER) or None
        )
        model = str(body.get("model", ""))
        last: dict[str, UpstreamResponse] = {}

        async def send_attempt(
            new_body: dict[str, Any], modified: bool, crossing: ProviderUpstream | None = None
        ) -> Reply:
            data = encode_body(new_body) if modified else raw
            stream = dialect.streaming(new_body)
            if crossing is not None:
                # A fallback to another provider's model: its own endpoint and key.
                found = crossing.headers()
                if found is None:
                    missing = RuntimeError(f"{crossing.api_key_env} is not set")
                    raise TransportFailure("connection", missing, sent=False)
                response = await self.upstream.send(
                    "POST", crossing.url, found, data, stream=stream
                )
                last["response"] = response
                return Reply(response.status, response.headers, response.body)
            response = await self.upstream.send("POST", url, headers, data, stream=stream)
            last["response"] = response
            return Reply(response.status, response.headers, response.body)

        pipeline = self.guard.pipeline
        held_s = 0.0
        marker = request_url.set(url)
        try:
            while True:
                try:
                    outcome = await drive_async(
                        pipeline.run(session, body, dialect),
                        send_attempt,
                        pipeline.effects,
                        offload=self.offload,
                    )
                    break
                except BudgetExceeded as exc:
                    wait_s = self._hold_for(exc, held_s)
                    if wait_s is None:
                        # The request as the client sent it (the engine rewrote ``body``).
                        await self._park_budget(session, json_object(raw) or body, dialect, exc)
                        reply = error_reply(exc, anthropic=request.anthropic)
                        self.metrics.refused(budget_key, model, reply.kind)
                        return await _error(send, reply)
                    # A short wait: held here, then tried again in a fresh window.
                    await asyncio.sleep(wait_s)
                    held_s += wait_s
                    body = json_object(raw) or body
        except AgentGuardError as exc:
            reply = error_reply(exc, anthropic=request.anthropic)
            self.metrics.refused(budget_key, model, reply.kind)
            return await _error(send, reply)
        finally:
            request_url.reset(marker)
        if outcome.tap is None:
            return await _answer(
                send, outcome.reply.status, outcome.reply.body or b"", _reply_headers(outcome)
            )
        return await self._stream(send, outcome, last["response"])

    def _hold_for(self, exc: BudgetExceeded, held_s: float) -> float | None:
        """Seconds to hold a request refused by an exhausted budget before trying it again,
        or ``None`` to answer 429: the reset must come within ``parking.wait_inline_max_s``
        (counted over every wait of the request)."""
        if exc.resets_at is None or not exc.fits_empty_window:
            return None
        # A hair past the reset, so the new window has begun when the request is tried again.
        wait_s = max((exc.resets_at - datetime.now(UTC)).total_seconds(), 0.0) + 0.005
        if held_s + wait_s > self.guard.config.parking.wait_inline_max_s:
            return None
        return wait_s

    async def _park_budget(
        self, session: Session, body: dict[str, Any], dialect: Dialect, exc: BudgetExceeded
    ) -> None:
        """Record a session refused by an exhausted budget as parked until the reset (the
        engine parks it itself when the budget says ``on_exhausted = "park"``)."""
        if (
            session.parked_record is not None
            or not self.guard.config.parking.enabled
            or exc.resets_at is None
            or not exc.fits_empty_window
        ):
            return
        call = CallContext(
            session=session,
            body=body,
            requested_model=str(body.get("model", "")),
            dialect=dialect,
            original_body=dict(body),
        )
        action = Park(call, budget=exc)
        effects = self.guard.pipeline.effects
        if self.offload:
            record = await asyncio.to_thread(effects.perform, action)
        else:
            record = effects.perform(action)
        session.parked_record = record

    async def _stream(self, send: SendASGI, outcome: Outcome, response: UpstreamResponse) -> int:
        """Hand a stream on as it arrives; settle it when it ends, is cut, or the client goes."""
        tap = outcome.tap
        assert tap is not None and outcome.finish is not None
        finished = False

        async def finish() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            assert tap is not None and outcome.finish is not None
            try:
                await drive_async(
                    outcome.finish(tap), None, self.guard.pipeline.effects, offload=self.offload
                )
            except AgentGuardError as exc:
                # A limit the answer tripped (a loop): the stream is on its way already; the
                # session's next call is refused by it.
                logger.warning("stream_limit", error=str(exc))

        headers = response.forwarded_headers() + list(outcome.extra_headers.items())
        client_gone = False
        # The last piece, held when the upstream's answer is whole, goes out with the end of
        # the response: one write to the client instead of two.
        last = b""
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": outcome.reply.status,
                    "headers": _raw_headers(headers),
                }
            )
            async for chunk in response.chunks():
                out = tap.feed(chunk)
                if tap.done:
                    await finish()
                if response.complete:
                    last += out
                elif out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            last += tap.flush()
        except OSError:
            client_gone = True
        except TransportFailure as exc:
            # The upstream cut the stream (or went silent): what it generated is settled below
            # (at the worst case when unknown), and the client's stream is cut too, so its SDK
            # sees the failure as it would from the provider.
            logger.warning("stream_cut", error=str(exc)[:200])
            client_gone = True
        finally:
            response.close()
            await finish()
        if not client_gone:
            await send({"type": "http.response.body", "body": last, "more_body": False})
        return outcome.reply.status

    # -- legacy and pass-through ---------------------------------------------------------------

    async def _legacy(
        self,
        request: _Request,
        send: SendASGI,
        kind: str,
        caller: Caller,
        budget_key: str,
        headers: dict[str, str],
        url: str,
    ) -> int:
        raw = await request.body(self.config.max_request_bytes)
        session_id = request.headers.get(_SESSION_HEADER) or (
            "proxy-" + key_hash(f"{caller.key_hash}\n{budget_key}\n{kind}")[:24]
        )
        session = await self._session(session_id, budget_key, None)

        async def send_attempt(_body: dict[str, Any], _modified: bool) -> Reply:
            response = await self.upstream.send("POST", url, headers, raw, stream=False)
            return Reply(response.status, response.headers, response.body)

        guard = self.guard
        endpoint = request.path.rstrip("/")
        engine = run_legacy(guard.pricer, guard.counter, session, kind, endpoint, raw)
        try:
            outcome = await drive_async(
                engine, send_attempt, self.guard.pipeline.effects, offload=self.offload
            )
        except AgentGuardError as exc:
            reply = error_reply(exc, anthropic=False)
            model = str((json_object(raw) or {}).get("model", ""))
            self.metrics.refused(budget_key, model, reply.kind)
            return await _error(send, reply)
        except TransportFailure as failure:
            raise failure.error from None
        return await _answer(
            send, outcome.reply.status, outcome.reply.body or b"", _reply_headers(outcome)
        )

    async def _pass_through(
        self,
        request: _Request,
        send: SendASGI,
        headers: dict[str, str],
        url: str,
        raw: bytes | None = None,
    ) -> int:
        if raw is None:
            raw = await request.body(self.config.max_request_bytes)
        response = await self.upstream.send(request.method, url, headers, raw or None, stream=True)
        if response.body is not None:
            return await _answer(send, response.status, response.body, response.forwarded_headers())
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": _raw_headers(response.forwarded_headers()),
            }
        )
        try:
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except TransportFailure as exc:
            # Cut upstream: the client's response is cut too (left incomplete, so the server
            # drops the connection), as the provider's would have been.
            logger.warning("stream_cut", error=str(exc)[:200])
            return response.status
        finally:
            response.close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return response.status


def _reply_headers(outcome: Outcome) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in outcome.reply.headers.items() if k not in HOP_HEADERS]
    headers.extend(outcome.extra_headers.items())
    return headers


def _raw_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _answer(send: SendASGI, status: int, body: bytes, headers: list[tuple[str, str]]) -> int:
    raw = _raw_headers(headers)
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
    return status


async def _error(send: SendASGI, reply: ErrorReply) -> int:
    return await _answer(send, reply.status, reply.body, reply.headers)
