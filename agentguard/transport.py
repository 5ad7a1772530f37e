"""The sync and async drivers of the pipeline, as httpx transports.

An httpx transport sees every endpoint and every HTTP attempt of the client it is given to,
survives ``with_options()``/``copy()``, and is how LangChain's ``ChatOpenAI(http_client=...)``
and CrewAI's native OpenAI provider take a guard too. A request one of the dialects speaks
(:mod:`agentguard.dialects`: ``/chat/completions``, ``/responses``, Anthropic's ``/v1/messages``)
goes through the pipeline. Under a dollar budget the legacy ``/completions`` and
``/embeddings`` are metered (:mod:`agentguard.dialects.openai_legacy`), and every other ``POST`` (files,
images...) is refused with :class:`~agentguard.UnmeteredRequest` before it is sent, unless
``limits.unmetered`` names its endpoint or no provider bills it (token counts, cancellations);
so is a model call whose body is not a JSON object. Without a budget they pass through
untouched.

openai 2.x speaks ``httpx``; openai 3.x speaks ``httpx2``, a fork with the same API. The
transport classes are built for whichever of the two the client uses.
"""

from __future__ import annotations

import asyncio
import importlib
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from agentguard.dialects import dialect_for, free_endpoint
from agentguard.dialects.openai_legacy import legacy_endpoint, run_legacy
from agentguard.engine.actions import Outcome, Reply, TransportFailure
from agentguard.engine.drivers import Effects, drive_async, drive_sync
from agentguard.engine.wire import encode_body, json_object
from agentguard.errors import AgentGuardError, UnmeteredRequest
from agentguard.log import logger
from agentguard.parking.handler import request_url
from agentguard.session import Session

if TYPE_CHECKING:
    from contextvars import ContextVar

    from agentguard.config import GuardConfig
    from agentguard.engine.pipeline import Pipeline
    from agentguard.pricing import Pricer
    from agentguard.routing.providers import Upstream
    from agentguard.store import Store
    from agentguard.tokens import TokenCounter

__all__ = ["TransportHost", "flavour_for_client", "flavour_of_openai", "transports"]


class TransportHost(Protocol):
    """What a transport asks of the guard it serves (:class:`~agentguard.Guard` is one): the
    engine and what it prices with, the config and the store, and its sessions."""

    config: GuardConfig
    store: Store
    pipeline: Pipeline
    pricer: Pricer
    counter: TokenCounter
    default_budget_key: str
    current_session_var: ContextVar[Session | None]

    def session(
        self, session_id: str | None = None, *, budget_key: str | None = None
    ) -> Session: ...


_HOP_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})


# Methods that only read or delete: no provider bills them.
_FREE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def _budget_of(session: Session) -> str | None:
    """The session's limited budgets, described for an error (``None`` when it has none)."""
    limited = [line for line in session.budget_lines() if line.limit_usd is not None]
    if not limited:
        return None
    return ", ".join(f"{line.key!r} (${line.limit_usd})" for line in limited)


def _allowed_unmetered(guard: TransportHost, path: str) -> bool:
    trimmed = path.rstrip("/")
    return any(trimmed.endswith(allowed.rstrip("/")) for allowed in guard.config.limits.unmetered)


def _refuse_unmetered(
    guard: TransportHost, method: str, path: str, reason: str | None = None
) -> None:
    """Raise :class:`UnmeteredRequest` for a request the guard cannot meter, when a budget
    applies and ``limits.unmetered`` does not allow the endpoint; otherwise return."""
    if reason is None and (method.upper() in _FREE_METHODS or free_endpoint(path)):
        return
    if _allowed_unmetered(guard, path):
        return
    budget = _budget_of(_session_for(guard))
    if budget is None:
        return
    endpoint = path.rstrip("/") or "/"
    if reason is None:
        reason = f"{method} {endpoint} is not metered by agentguard"
        metered = (
            "client.messages.create"
            if "/messages/" in endpoint
            else "client.chat.completions or client.responses"
        )
        fix = (
            f"use {metered}, or let this endpoint through unmetered with "
            f'limits.unmetered = ["{endpoint}"] in the config'
        )
    else:
        fix = f'fix the request, or let this endpoint through unmetered with limits.unmetered = ["{endpoint}"]'
    raise UnmeteredRequest(
        f"refused before sending: {reason}, and the session runs under the budget {budget}, "
        f"which every request must be priced against; {fix}",
        endpoint=endpoint,
        reason=reason,
        field="limits.unmetered",
    )


def _legacy_route(guard: TransportHost, method: str, path: str) -> tuple[Session, str, str] | None:
    """(session, kind, endpoint) for a legacy request to meter: a ``POST`` to
    ``/completions`` or ``/embeddings`` under a budget, not let through by
    ``limits.unmetered``."""
    kind = legacy_endpoint(method, path)
    if kind is None or _allowed_unmetered(guard, path):
        return None
    session = _session_for(guard)
    if _budget_of(session) is None:
        return None
    return session, kind, path.rstrip("/")


def _response_headers(headers: Any, extra: dict[str, str]) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in headers.multi_items() if k.lower() not in _HOP_HEADERS]
    kept.extend(extra.items())
    return kept


def _session_for(guard: TransportHost) -> Session:
    session = guard.current_session_var.get()
    if session is not None:
        return session
    # No session of this guard is bound: the call is a session of its own (budgets apply;
    # per-session limits need a session around the agent's calls).
    return guard.session(budget_key=guard.default_budget_key)


def _decoded_once(response: Any, payload: dict[str, Any]) -> Callable[..., Any]:
    """``response.json`` that hands the SDK the answer the engine decoded already (the SDKs
    read a response's JSON once), then decodes as usual: the body is not parsed twice."""
    decode = response.json
    handed: list[dict[str, Any]] = [payload]

    def json(**kwargs: Any) -> Any:
        if handed and not kwargs:
            return handed.pop()
        return decode(**kwargs)

    return json


_UNPARSABLE = "the request's body is not a JSON object, so its cost cannot be bounded"


def _build(httpx: ModuleType) -> SimpleNamespace:
    """Transport classes for one httpx flavour (``httpx`` or ``httpx2``)."""

    def with_body(request: Any, body: dict[str, Any] | None, original: bytes) -> Any:
        """The request carrying ``body``, or the caller's own bytes when ``body`` is ``None``
        (an attempt after a rewritten one, say an escalation back to the caller's model, must
        not resend the rewrite)."""
        content = original if body is None else encode_body(body)
        if request._content is content:
            return request
        # Re-using the request object (new body, new length) costs a fraction of building a
        # new one, and keeps its extensions (timeouts) as the SDK set them.
        request.headers["content-length"] = str(len(content))
        request._content = content
        request.stream = httpx.ByteStream(content)
        return request

    def upstream_request(request: Any, body: dict[str, Any], upstream: Upstream) -> Any:
        """The request for another provider's API (a fallback that crossed providers): its
        own endpoint and key, the caller's timeouts."""
        headers = upstream.headers()
        if headers is None:
            missing = RuntimeError(
                f"the environment variable {upstream.api_key_env} (routing.providers."
                f"{upstream.provider}.api_key_env) is not set"
            )
            raise TransportFailure("connection", missing, sent=False)
        return httpx.Request(
            "POST",
            upstream.url,
            headers=headers,
            content=encode_body(body),
            extensions=dict(request.extensions),
        )

    # Failures that prove the request never left: nothing can have been billed.
    not_sent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

    def failure_of(exc: Exception) -> TransportFailure | None:
        sent = not isinstance(exc, not_sent)
        if isinstance(exc, httpx.TimeoutException):
            return TransportFailure("timeout", exc, sent=sent)
        if isinstance(exc, httpx.TransportError):
            return TransportFailure("connection", exc, sent=sent)
        return None

    def reply_of(response: Any, body: bytes | None) -> Reply:
        # httpx headers are a case-insensitive mapping already.
        return Reply(response.status_code, response.headers, body)

    class TapStream(httpx.SyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, response: Any, outcome: Outcome, effects: Effects) -> None:
            self.response = response
            self.outcome = outcome
            self.effects = effects
            self.finished = False

        def __iter__(self) -> Iterator[bytes]:
            tap = self.outcome.tap
            assert tap is not None
            try:
                for chunk in self.response.iter_bytes():
                    out = tap.feed(chunk)
                    if tap.done:
                        # Settle before handing on [DONE]: the SDK stops reading there, and a
                        # limit the answer tripped (a loop, too many tool calls) must reach
                        # the caller as an error, not be lost in close().
                        self._finish()
                    if out:
                        yield out
                rest = tap.flush()
                if rest:
                    yield rest
            finally:
                self.response.close()
            self._finish()

        def _finish(self) -> None:
            if self.finished:
                return
            self.finished = True
            assert self.outcome.finish is not None and self.outcome.tap is not None
            drive_sync(self.outcome.finish(self.outcome.tap), None, self.effects)

        def close(self) -> None:
            self.response.close()
            if not self.finished:
                # The caller stopped reading early: settle what was generated so far.
                try:
                    self._finish()
                except Exception as exc:
                    logger.warning("settle_failed", error=str(exc))

    class AsyncTapStream(httpx.AsyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(
            self, response: Any, outcome: Outcome, effects: Effects, offload: bool
        ) -> None:
            self.response = response
            self.outcome = outcome
            self.effects = effects
            self.offload = offload
            self.finished = False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            tap = self.outcome.tap
            assert tap is not None
            try:
                async for chunk in self.response.aiter_bytes():
                    out = tap.feed(chunk)
                    if tap.done:
                        await self._finish()
                    if out:
                        yield out
                rest = tap.flush()
                if rest:
                    yield rest
            finally:
                await self.response.aclose()
            await self._finish()

        async def _finish(self) -> None:
            if self.finished:
                return
            self.finished = True
            assert self.outcome.finish is not None and self.outcome.tap is not None
            await drive_async(
                self.outcome.finish(self.outcome.tap), None, self.effects, offload=self.offload
            )

        async def aclose(self) -> None:
            await self.response.aclose()
            if not self.finished:
                try:
                    await self._finish()
                except Exception as exc:
                    logger.warning("settle_failed", error=str(exc))

    def build_response(request: Any, outcome: Outcome, response: Any, stream: Any) -> Any:
        if outcome.translated:
            # Answered in another provider's API and translated: the caller's SDK reads this.
            reply = outcome.reply
            return httpx.Response(
                reply.status, headers=dict(reply.headers), content=reply.body, request=request
            )
        if stream is None:
            # The body was read (and decoded) already; the response object can go back as is.
            for name, value in outcome.extra_headers.items():
                response.headers[name] = value
            if outcome.payload is not None:
                response.json = _decoded_once(response, outcome.payload)
            return response
        headers = _response_headers(response.headers, outcome.extra_headers)
        return httpx.Response(outcome.reply.status, headers=headers, stream=stream, request=request)

    class GuardTransport(httpx.BaseTransport):  # type: ignore[misc,name-defined]
        """A sync transport that runs chat completions through the guard's pipeline."""

        def __init__(
            self,
            guard: TransportHost,
            inner: Any,
            *,
            owns_inner: bool,
            raise_as: Callable[[BaseException], BaseException] | None = None,
        ) -> None:
            self.guard = guard
            self.inner = inner
            self.owns_inner = owns_inner
            self._sends_via_client = isinstance(inner, httpx.Client)
            # How the guard's errors must look for the client's SDK to hand them on unchanged.
            self.raise_as = raise_as

        def _send_raw(self, request: Any) -> Any:
            if self._sends_via_client:
                # The inner client's transport for this URL (its proxy mounts included); its
                # auth, redirect and hook machinery already ran in the outer client.
                transport = self.inner._transport_for_url(request.url)
                response = transport.handle_request(request)
                response.request = request
                return response
            return self.inner.handle_request(request)

        def handle_request(self, request: Any) -> Any:
            if self.raise_as is None:
                return self._handle(request)
            try:
                return self._handle(request)
            except AgentGuardError as exc:
                raise self.raise_as(exc)  # noqa: B904 (the same error, retyped)

        def _handle(self, request: Any) -> Any:
            dialect = dialect_for(request.method, request.url.path)
            if dialect is None:
                legacy = _legacy_route(self.guard, request.method, request.url.path)
                if legacy is not None:
                    return self._handle_legacy(request, *legacy)
                _refuse_unmetered(self.guard, request.method, request.url.path)
                return self._send_raw(request)
            original = request.read()
            body = json_object(original)
            if body is None:
                _refuse_unmetered(self.guard, request.method, request.url.path, _UNPARSABLE)
                return self._send_raw(request)
            last: dict[str, Any] = {}

            def send(
                new_body: dict[str, Any], modified: bool, upstream: Upstream | None = None
            ) -> Reply:
                try:
                    if upstream is not None:
                        outgoing = upstream_request(request, new_body, upstream)
                    else:
                        outgoing = with_body(request, new_body if modified else None, original)
                    response = self._send_raw(outgoing)
                except Exception as exc:
                    failure = failure_of(exc)
                    if failure is None:
                        raise
                    raise failure from exc
                last["response"] = response
                if response.status_code < 400 and new_body.get("stream"):
                    return reply_of(response, None)
                try:
                    content = response.read()
                except Exception as exc:
                    response.close()
                    failure = failure_of(exc)
                    if failure is None:
                        raise
                    raise failure from exc
                response.close()
                return reply_of(response, content)

            session = _session_for(self.guard)
            url_marker = request_url.set(request.url)
            try:
                pipeline = self.guard.pipeline
                outcome = drive_sync(pipeline.run(session, body, dialect), send, pipeline.effects)
            finally:
                request_url.reset(url_marker)
            response = last["response"]
            effects = self.guard.pipeline.effects
            stream = TapStream(response, outcome, effects) if outcome.tap is not None else None
            return build_response(request, outcome, response, stream)

        def _handle_legacy(self, request: Any, session: Session, kind: str, endpoint: str) -> Any:
            raw = request.read()
            last: dict[str, Any] = {}

            def send(_body: dict[str, Any], _modified: bool) -> Reply:
                try:
                    response = self._send_raw(request)
                    last["response"] = response
                    content = response.read()
                except Exception as exc:
                    if "response" in last:
                        last["response"].close()
                    failure = failure_of(exc)
                    if failure is None:
                        raise
                    raise failure from exc
                response.close()
                return reply_of(response, content)

            try:
                engine = run_legacy(
                    self.guard.pricer, self.guard.counter, session, kind, endpoint, raw
                )
                outcome = drive_sync(engine, send, self.guard.pipeline.effects)
            except TransportFailure as failure:
                # The SDK sees the transport's own error, and retries it as usual (each
                # attempt is metered again).
                raise failure.error from None
            return build_response(request, outcome, last["response"], None)

        def close(self) -> None:
            if self.owns_inner:
                self.inner.close()

    class AsyncGuardTransport(httpx.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        """An async transport that runs chat completions through the guard's pipeline."""

        def __init__(
            self,
            guard: TransportHost,
            inner: Any,
            *,
            owns_inner: bool,
            inner_factory: Callable[[], Any] | None = None,
            raise_as: Callable[[BaseException], BaseException] | None = None,
        ) -> None:
            self.guard = guard
            self.inner = inner
            self.owns_inner = owns_inner
            self._sends_via_client = isinstance(inner, httpx.AsyncClient)
            self.raise_as = raise_as
            self.offload = not guard.store.is_sqlite
            # Connections belong to the event loop that opened them: an owned inner transport
            # is made once per loop, so the client works across asyncio.run() calls.
            self._inner_factory = inner_factory
            self._per_loop: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
            self._adopted = False

        def _inner(self) -> Any:
            if self._inner_factory is None:
                return self.inner
            loop = asyncio.get_running_loop()
            inner = self._per_loop.get(loop)
            if inner is None:
                # The first loop gets the transport made up front; later loops get their own.
                inner = self.inner if not self._adopted else self._inner_factory()
                self._adopted = True
                self._per_loop[loop] = inner
            return inner

        async def _send_raw(self, request: Any) -> Any:
            if self._inner_factory is not None:
                inner = self._inner()
                if isinstance(inner, httpx.AsyncClient):
                    transport = inner._transport_for_url(request.url)
                    response = await transport.handle_async_request(request)
                    response.request = request
                    return response
                return await inner.handle_async_request(request)
            if self._sends_via_client:
                transport = self.inner._transport_for_url(request.url)
                response = await transport.handle_async_request(request)
                response.request = request
                return response
            return await self.inner.handle_async_request(request)

        async def handle_async_request(self, request: Any) -> Any:
            if self.raise_as is None:
                return await self._handle(request)
            try:
                return await self._handle(request)
            except AgentGuardError as exc:
                raise self.raise_as(exc)  # noqa: B904 (the same error, retyped)

        async def _handle(self, request: Any) -> Any:
            dialect = dialect_for(request.method, request.url.path)
            if dialect is None:
                legacy = _legacy_route(self.guard, request.method, request.url.path)
                if legacy is not None:
                    return await self._handle_legacy(request, *legacy)
                _refuse_unmetered(self.guard, request.method, request.url.path)
                return await self._send_raw(request)
            original = await request.aread()
            body = json_object(original)
            if body is None:
                _refuse_unmetered(self.guard, request.method, request.url.path, _UNPARSABLE)
                return await self._send_raw(request)
            last: dict[str, Any] = {}

            async def send(
                new_body: dict[str, Any], modified: bool, upstream: Upstream | None = None
            ) -> Reply:
                try:
                    if upstream is not None:
                        outgoing = upstream_request(request, new_body, upstream)
                    else:
                        outgoing = with_body(request, new_body if modified else None, original)
                    response = await self._send_raw(outgoing)
                except Exception as exc:
                    failure = failure_of(exc)
                    if failure is None:
                        raise
                    raise failure from exc
                last["response"] = response
                if response.status_code < 400 and new_body.get("stream"):
                    return reply_of(response, None)
                try:
                    content = await response.aread()
                except Exception as exc:
                    await response.aclose()
                    failure = failure_of(exc)
                    if failure is None:
                        raise
                    raise failure from exc
                await response.aclose()
                return reply_of(response, content)

            session = _session_for(self.guard)
            url_marker = request_url.set(request.url)
            try:
                pipeline = self.guard.pipeline
                outcome = await drive_async(
                    pipeline.run(session, body, dialect),
                    send,
                    pipeline.effects,
                    offload=self.offload,
                )
            finally:
                request_url.reset(url_marker)
            response = last["response"]
            effects = self.guard.pipeline.effects
            stream = (
                AsyncTapStream(response, outcome, effects, self.offload)
                if outcome.tap is not None
                else None
            )
            return build_response(request, outcome, response, stream)

        async def _handle_legacy(
            self, request: Any, session: Session, kind: str, endpoint: str
        ) -> Any:
            raw = await request.aread()
            last: dict[str, Any] = {}

            async def send(_body: dict[str, Any], _modified: bool) -> Reply:
                try:
                    response = await self._send_raw(request)
                    last["response"] = response
                    content = await response.aread()
                except Exception as exc:
                    if "response" in last:
                        await last["response"].aclose()
                    failure = failure_of(exc)
                    if failure is None:
                        raise
                    raise failure from exc
                await response.aclose()
                return reply_of(response, content)

            engine = run_legacy(self.guard.pricer, self.guard.counter, session, kind, endpoint, raw)
            try:
                outcome = await drive_async(
                    engine, send, self.guard.pipeline.effects, offload=self.offload
                )
            except TransportFailure as failure:
                raise failure.error from None
            return build_response(request, outcome, last["response"], None)

        async def aclose(self) -> None:
            if not self.owns_inner:
                return
            if self._inner_factory is not None:
                try:
                    inner = self._per_loop.get(asyncio.get_running_loop())
                except RuntimeError:
                    inner = None
                if inner is not None:
                    await inner.aclose()
                return
            await self.inner.aclose()

    return SimpleNamespace(
        module=httpx,
        GuardTransport=GuardTransport,
        AsyncGuardTransport=AsyncGuardTransport,
    )


_flavours: dict[str, SimpleNamespace] = {}


def transports(flavour: str) -> SimpleNamespace:
    """The transport classes for ``httpx`` or ``httpx2``."""
    built = _flavours.get(flavour)
    if built is None:
        built = _flavours[flavour] = _build(importlib.import_module(flavour))
    return built


def flavour_for_client(http_client: Any) -> str:
    """``httpx`` or ``httpx2``: the library an HTTP client object belongs to."""
    for cls in type(http_client).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if root in ("httpx", "httpx2"):
            return root
    raise TypeError(f"{type(http_client).__name__} is not an httpx or httpx2 client")


def flavour_of_openai() -> str:
    """The httpx flavour the installed openai SDK speaks."""
    import openai._base_client as base

    return "httpx2" if hasattr(base, "httpx2") else "httpx"
