"""The simulated OpenAI-compatible HTTP server.

A ``ThreadingHTTPServer`` on loopback, in a background daemon thread, speaking HTTP/1.1 with
keep-alive. Every answer is written with a single ``send`` on a ``TCP_NODELAY`` socket, so a call
through the official ``openai`` SDK costs about a millisecond, nearly all of it in the client.

Routes: ``POST /v1/chat/completions`` (plain and streamed), ``POST /v1/completions`` and
``POST /v1/embeddings`` (the legacy endpoints, plain only), ``POST /v1/responses`` (OpenAI's
Responses API, see :mod:`agentguard.sim.responses`), ``POST /v1/messages`` and
``POST /v1/messages/count_tokens`` (Anthropic's Messages API, see
:mod:`agentguard.sim.anthropic`), ``GET /v1/models``, ``GET /v1/models/{id}``; anything else is
a 404 with an OpenAI-shaped error body.

Chat completions honour ``n`` (that many choices, all billed), image parts (billed by OpenAI's
formula: :mod:`agentguard.pricing.images`) and ``service_tier`` (served, reported and billed at
``priority``, ``flex`` or ``scale``). The server keeps its own bill: every answer it generated,
at list price, whether or not the client read it (:meth:`SimServer.billed_usd`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http
import json
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from agentguard.sim.anthropic import AnthropicDialect, serve_count_tokens
from agentguard.sim.dialect import serve_dialect
from agentguard.sim.engine import ChatEngine, InvalidRequest, validate_chat_request
from agentguard.sim.faults import (
    CutStream,
    Fault,
    FaultQueue,
    Garbage,
    HTTPError,
    Timeout,
    rate_limit_fault,
)
from agentguard.sim.gateway import ModelPrice, Rejection, SimGateway, list_price
from agentguard.sim.payloads import Completion, completion_body, error_body, stream_events
from agentguard.sim.responses import ResponsesDialect
from agentguard.sim.script import Reply, ReplyFn, Script, as_script

__all__ = ["DEFAULT_MODELS", "RecordedRequest", "SimServer", "serve"]

DEFAULT_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o3",
    "o4-mini",
)
"""The models ``GET /v1/models`` lists (any model name is answered)."""

# Headers that carry credentials: never recorded, never logged.
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"}
)
_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_DONE_FRAME = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request the server received.

    Attributes:
        method: the HTTP method.
        path: the path, without the query string.
        headers: the headers, names lower-cased, credentials (``authorization`` and the like)
            removed.
        body: the JSON body when it was a JSON object, else None.
        time: when it arrived (seconds since the epoch).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    time: float


class SimServer:
    """A simulated OpenAI-compatible provider on loopback, for demos, tests and benchmarks.

    Args:
        host: the interface to listen on.
        port: the port; 0 picks a free one (kept across ``stop()`` and ``start()``).
        script: what the model answers: a :class:`Script`, a list of replies (``Reply`` or
            plain strings) for steps 0, 1, 2, ..., or a function from the request body to a
            ``Reply``. None answers ``Simulated answer to: ...`` at every step.
        latency_s: a fixed delay before every answer.
        gateway: enforce per-key dollar budgets (see :class:`SimGateway`).
        default_output_tokens: length, in tokens, of the default answer (unless ``script`` is
            a :class:`Script`, which sets its own).
        chunk_delay_s: a delay between streamed chunks (streams are written in one piece when
            zero).
        record_requests: keep every request in :attr:`requests` (turn off for long benchmarks).
        verbose: log one line per request to stderr (never any credentials).

    Example:
        >>> with SimServer() as sim:
        ...     client = OpenAI(base_url=sim.base_url, api_key="sk-test")
        ...     client.chat.completions.create(model="gpt-4o", messages=[...])
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        script: Script | Iterable[Reply | str] | ReplyFn | None = None,
        latency_s: float = 0.0,
        gateway: SimGateway | None = None,
        default_output_tokens: int = 32,
        chunk_delay_s: float = 0.0,
        record_requests: bool = True,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self._port = port
        self.script = as_script(script, default_output_tokens)
        self.latency_s = latency_s
        self.gateway = gateway
        self.chunk_delay_s = chunk_delay_s
        self.record_requests = record_requests
        self.verbose = verbose
        self.engine = ChatEngine()
        self.responses_api = ResponsesDialect()
        self.anthropic_api = AnthropicDialect(self.engine.counter)
        self.models: tuple[str, ...] = DEFAULT_MODELS
        self._faults = FaultQueue()
        self._model_faults: dict[str, list[Any]] = {}
        """Model name -> [the HTTP error its requests get, how many more (``None``: all)]."""
        self.model_latency_s: dict[str, float] = {}
        """A delay before every answer of one model, on top of ``latency_s`` (model name ->
        seconds): a slow model among fast ones."""
        self._answering = 0
        self._bill_lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._bill: list[tuple[str | None, Decimal]] = []
        self._list_prices: dict[tuple[str, str], ModelPrice] = {}
        self._stopping = threading.Event()
        self._stopping.set()  # set whenever the server is not running
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> SimServer:
        """Bind and start serving in a background thread; returns the server itself."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self._port), self)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"agentguard-sim:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and wake any delayed answers."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server is stopped (by another thread), or ``timeout`` passes.

        Returns:
            True when the server has stopped.
        """
        return self._stopping.wait(timeout)

    @property
    def running(self) -> bool:
        """True while the server is serving."""
        return self._httpd is not None

    @property
    def port(self) -> int:
        """The port (known once started, or when one was given)."""
        if self._port == 0:
            raise RuntimeError("the port is chosen when the server starts: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:43121``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:43121/v1``."""
        return f"{self.url}/v1"

    # -- recorded requests ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._requests_lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._requests_lock:
            self._requests.clear()

    # -- the provider's bill ----------------------------------------------------------------

    def billed_usd(self, key: str | None = None) -> Decimal:
        """Dollars billed at list price for every answer generated so far (for one API key, or
        all), including answers whose client timed out or stopped reading."""
        with self._requests_lock:
            return sum((cost for who, cost in self._bill if key is None or who == key), Decimal(0))

    def billed_calls(self, key: str | None = None) -> int:
        """How many answers were generated (and billed), for one API key or all."""
        with self._requests_lock:
            return sum(1 for who, _ in self._bill if key is None or who == key)

    def _charge(self, api_key: str | None, model: str, completion: Completion) -> Decimal:
        return self._charge_tokens(
            api_key,
            model,
            completion.prompt_tokens,
            completion.generated_tokens,
            cached_tokens=completion.cached_tokens,
            service_tier=completion.service_tier,
        )

    def _charge_tokens(
        self,
        api_key: str | None,
        model: str,
        prompt_tokens: int,
        output_tokens: int,
        *,
        cached_tokens: int = 0,
        service_tier: str = "default",
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> Decimal:
        price = self._list_price(model, service_tier)
        cost = price.cost(
            prompt_tokens,
            cached_tokens,
            output_tokens,
            cache_write_tokens=cache_write_tokens,
            cache_write_1h_tokens=cache_write_1h_tokens,
        )
        with self._requests_lock:
            self._bill.append((api_key, cost))
        return cost

    def _list_price(self, model: str, service_tier: str) -> ModelPrice:
        """Dollars per token from genai-prices at ``service_tier`` ($1/$4 per million tokens
        for a model it does not know)."""
        price = self._list_prices.get((model, service_tier))
        if price is None:
            price = self._list_prices[(model, service_tier)] = _genai_price(model, service_tier)
        return price

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no chat request is being answered (so the bill is final); ``True`` if it
        became idle within ``timeout`` seconds."""
        with self._bill_lock:
            return self._bill_lock.wait_for(lambda: self._answering == 0, timeout)

    # -- failure injection ------------------------------------------------------------------

    def inject(self, fault: Fault, n: int = 1) -> None:
        """Queue a fault for the next ``n`` model requests (chat completions, Responses or
        Messages), after those already queued."""
        self._faults.push(fault, n)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        body: Mapping[str, Any] | str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``n`` model requests with an HTTP error.

        Args:
            n: how many requests.
            status: the HTTP status.
            body: the body (a dict is sent as JSON); OpenAI's usual error for the status when
                None.
            headers: extra response headers.
        """
        self.inject(HTTPError(status, body, dict(headers or {})), n)

    def timeout_next(self, n: int = 1, seconds: float = 10.0) -> None:
        """Hold the next ``n`` answers for ``seconds`` (longer than the client's timeout)."""
        self.inject(Timeout(seconds), n)

    def garbage_next(
        self, n: int = 1, *, body: bytes | None = None, content_type: str = _JSON
    ) -> None:
        """Answer the next ``n`` requests with 200 and a body that is not JSON.

        Args:
            n: how many requests.
            body: the body; an HTML error page when None.
            content_type: the ``content-type`` it is labelled with.
        """
        fault = Garbage(content_type=content_type) if body is None else Garbage(body, content_type)
        self.inject(fault, n)

    def cut_stream_next(self, n: int = 1, after_chunks: int = 2) -> None:
        """Drop the connection mid-answer for the next ``n`` requests: after ``after_chunks``
        chunks of a stream, or half way through a plain answer's body."""
        self.inject(CutStream(after_chunks), n)

    def rate_limit_next(
        self,
        n: int = 1,
        *,
        retry_after: float | str | None = None,
        reset_requests: float | str | None = None,
        reset_tokens: float | str | None = None,
        body: Mapping[str, Any] | str | bytes | None = None,
    ) -> None:
        """Answer the next ``n`` requests with a 429 shaped like OpenAI's (on ``/v1/messages``,
        like Anthropic's: its error body and ``anthropic-ratelimit-*-reset`` headers).

        Args:
            n: how many requests.
            retry_after: the ``retry-after`` header: seconds, or the exact text.
            reset_requests: ``x-ratelimit-reset-requests``: seconds (sent as ``6m0s``,
                ``1s``, ``120ms``), or the exact text.
            reset_tokens: ``x-ratelimit-reset-tokens``, likewise.
            body: the body; OpenAI's ``rate_limit_exceeded`` error when None.
        """
        fault = rate_limit_fault(
            retry_after=retry_after,
            reset_requests=reset_requests,
            reset_tokens=reset_tokens,
            body=body,
        )
        self.inject(fault, n)

    def fail_model(
        self,
        model: str,
        *,
        status: int = 500,
        n: int | None = None,
        body: Mapping[str, Any] | str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer requests for one model with an HTTP error (on every API the sim speaks):
        a provider whose model is down (5xx), overloaded (529) or gone (404), while its other
        models answer. Checked before the queued faults, which it leaves alone.

        Args:
            model: the model name, as requests send it.
            status: the HTTP status.
            n: how many requests fail (``None``: every one until :meth:`heal_model`).
            body: the body; the API's usual error for the status when None.
            headers: extra response headers.
        """
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0 or None, not {n}")
        with self._requests_lock:
            self._model_faults[model] = [HTTPError(status, body, dict(headers or {})), n]

    def heal_model(self, model: str) -> None:
        """Let requests for ``model`` be answered again (undoes :meth:`fail_model`)."""
        with self._requests_lock:
            self._model_faults.pop(model, None)

    def _model_fault(self, model: object) -> HTTPError | None:
        """Wait out the model's own latency; its injected error, if it has one."""
        if not isinstance(model, str):
            return None
        delay = self.model_latency_s.get(model, 0.0)
        if delay > 0:
            self._stopping.wait(delay)
        if not self._model_faults:
            return None
        with self._requests_lock:
            entry = self._model_faults.get(model)
            if entry is None:
                return None
            fault, left = entry
            if left is not None:
                if left <= 1:
                    del self._model_faults[model]
                else:
                    entry[1] = left - 1
            return fault  # type: ignore[no-any-return]

    @property
    def pending_faults(self) -> int:
        """How many injected faults are still queued."""
        return len(self._faults)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._faults.clear()

    # -- request handling (called on the connection's thread) --------------------------------

    def _handle(self, handler: _Handler) -> None:
        with self._bill_lock:
            self._answering += 1
        try:
            self._answer(handler)
        finally:
            with self._bill_lock:
                self._answering -= 1
                self._bill_lock.notify_all()

    def _answer(self, handler: _Handler) -> None:
        started = time.perf_counter()
        method = handler.command
        path = handler.path.split("?", 1)[0]
        raw = _read_body(handler)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        api_key = _bearer_token(headers.get("authorization"))
        body: Any = None
        body_is_json = True
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body_is_json = False
        if self.record_requests:
            recorded = RecordedRequest(
                method=method,
                path=path,
                headers={k: v for k, v in headers.items() if k not in _SECRET_HEADERS},
                body=body if isinstance(body, dict) else None,
                time=time.time(),
            )
            with self._requests_lock:
                self._requests.append(recorded)
        if self.latency_s > 0:
            self._stopping.wait(self.latency_s)

        route = path.rstrip("/")
        if route == "/v1/chat/completions" and method == "POST":
            self._chat(handler, body if body_is_json else raw, api_key, started)
        elif route in ("/v1/completions", "/v1/embeddings") and method == "POST":
            self._legacy(handler, route, body, api_key, started)
        elif route == "/v1/responses" and method == "POST":
            dialect_body = body if body_is_json else raw
            serve_dialect(
                self, handler, self.responses_api, dialect_body, headers, api_key, started
            )
        elif route == "/v1/messages" and method == "POST":
            dialect_body = body if body_is_json else raw
            serve_dialect(
                self, handler, self.anthropic_api, dialect_body, headers, api_key, started
            )
        elif route == "/v1/messages/count_tokens" and method == "POST":
            dialect_body = body if body_is_json else raw
            serve_count_tokens(
                self, handler, self.anthropic_api, dialect_body, headers, api_key, started
            )
        elif route == "/v1/models" and method == "GET":
            data = [_model_object(model) for model in self.models]
            self._send_json(handler, 200, {"object": "list", "data": data}, started)
        elif route.startswith("/v1/models/") and method == "GET":
            self._send_json(handler, 200, _model_object(route.removeprefix("/v1/models/")), started)
        else:
            message = f"Invalid URL ({method} {path})"
            self._send_json(handler, 404, error_body(message, "invalid_request_error"), started)

    def _chat(self, handler: _Handler, body: Any, api_key: str | None, started: float) -> None:
        gateway = self.gateway
        if gateway is not None:
            rejection = gateway.authorize(api_key)
            if rejection is not None:
                self._send_rejection(handler, rejection, started)
                return
        model = body.get("model", "") if isinstance(body, dict) else ""
        cut: CutStream | None = None
        fault = self._model_fault(model) or self._faults.pop()
        if isinstance(fault, HTTPError):
            self._send_json(
                handler, fault.status, fault.body_for(str(model)), started, fault.headers
            )
            return
        if isinstance(fault, Garbage):
            self._send(handler, 200, fault.body, fault.content_type, started)
            return
        delay = fault.seconds if isinstance(fault, Timeout) else 0.0
        if isinstance(fault, CutStream):
            cut = fault

        try:
            request = validate_chat_request(body)
        except InvalidRequest as invalid:
            self._send_json(handler, invalid.status, invalid.body, started)
            return
        if gateway is not None and api_key is not None:
            rejection = gateway.admit(api_key)
            if rejection is not None:
                self._send_rejection(handler, rejection, started)
                return

        script = self.script
        reply = script.reply_for(request)
        if reply.model_error is not None:
            error = reply.model_error
            self._send_json(
                handler,
                error.status,
                error_body(error.message, error.type, error.param, error.code),
                started,
                error.headers,
            )
            return
        partition = hashlib.blake2b(api_key.encode(), digest_size=16).digest() if api_key else b""
        completion = self.engine.complete(request, reply, script, partition)
        completion.choices = _choices(request)
        completion.service_tier = _served_tier(request)
        # Billed once generated, as a real provider does, whether or not the client reads it.
        self._charge(api_key, request["model"], completion)
        if delay:
            self._stopping.wait(delay)  # answered late: the client's timeout fires first

        headers: dict[str, str] = {}
        if gateway is not None and api_key is not None:
            cost = gateway.cost(
                request["model"],
                completion.prompt_tokens,
                completion.cached_tokens,
                completion.generated_tokens,
            )
            spent = gateway.charge(api_key, cost)
            if gateway.style == "litellm":
                headers["x-litellm-response-cost"] = str(float(cost))
                headers["x-litellm-key-spend"] = str(float(spent))
        handler.sim_note = (
            f"model={request['model']} prompt={completion.prompt_tokens} "
            f"completion={completion.completion_tokens}"
        )

        completion_id = f"chatcmpl-{uuid.uuid4().hex[:29]}"
        created = int(time.time())
        if request.get("stream"):
            options = request.get("stream_options") or {}
            events = stream_events(
                completion_id,
                created,
                request["model"],
                completion,
                include_usage=bool(options.get("include_usage")),
            )
            self._send_stream(handler, events, started, headers, cut)
        else:
            payload = completion_body(completion_id, created, request["model"], completion)
            self._send_json(handler, 200, payload, started, headers, cut)

    def _legacy(
        self, handler: _Handler, route: str, body: Any, api_key: str | None, started: float
    ) -> None:
        """``/v1/completions`` (a filler answer of exactly ``max_tokens`` tokens, default 16,
        for each of ``max(n, best_of)`` candidates, ``n`` returned) and ``/v1/embeddings``
        (zero vectors); both billed. Injected timeouts and HTTP errors apply."""
        fault = self._faults.pop()
        if isinstance(fault, HTTPError):
            named = body.get("model", "") if isinstance(body, dict) else ""
            self._send_json(
                handler, fault.status, fault.body_for(str(named)), started, fault.headers
            )
            return
        # Billed once generated; a held answer is sent late (the client's timeout fires first).
        delay = fault.seconds if isinstance(fault, Timeout) else 0.0
        field = "prompt" if route.endswith("/completions") else "input"
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            self._send_json(
                handler,
                400,
                error_body("you must provide a model parameter", "invalid_request_error"),
                started,
            )
            return
        model: str = body["model"]
        texts = _legacy_inputs(body.get(field))
        if texts is None:
            message = f"Invalid type for '{field}'."
            self._send_json(
                handler, 400, error_body(message, "invalid_request_error", field), started
            )
            return
        counter = self.engine.counter
        prompt_tokens = sum(
            len(text) if isinstance(text, list) else counter.count(text, model) for text in texts
        )
        created = int(time.time())
        if field == "input":
            self._charge_tokens(api_key, model, prompt_tokens, 0)
            if delay:
                self._stopping.wait(delay)
            data = [
                {"object": "embedding", "index": index, "embedding": [0.0] * 8}
                for index in range(len(texts))
            ]
            usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
            embeddings = {"object": "list", "data": data, "model": model, "usage": usage}
            self._send_json(handler, 200, embeddings, started)
            return
        max_tokens = _positive(body.get("max_tokens"), 16)
        n = _positive(body.get("n"), 1)
        candidates = max(n, _positive(body.get("best_of"), 1))
        text, per_choice = counter.truncate("lorem " * (max_tokens + 8), max_tokens, model)
        output_tokens = per_choice * candidates
        self._charge_tokens(api_key, model, prompt_tokens, output_tokens)
        if delay:
            self._stopping.wait(delay)
        choices = [
            {"text": text, "index": index, "logprobs": None, "finish_reason": "length"}
            for index in range(n)
        ]
        payload: dict[str, Any] = {
            "id": f"cmpl-{uuid.uuid4().hex[:29]}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": prompt_tokens + output_tokens,
            },
        }
        self._send_json(handler, 200, payload, started)

    # -- writing answers --------------------------------------------------------------------

    def _send_rejection(self, handler: _Handler, rejection: Rejection, started: float) -> None:
        self._send_json(handler, rejection.status, rejection.body, started, rejection.headers)

    def _send_json(
        self,
        handler: _Handler,
        status: int,
        payload: Mapping[str, Any] | str | bytes,
        started: float,
        headers: Mapping[str, str] | None = None,
        cut: CutStream | None = None,
    ) -> None:
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        self._send(handler, status, data, _JSON, started, headers, cut)

    def _send(
        self,
        handler: _Handler,
        status: int,
        data: bytes,
        content_type: str,
        started: float,
        headers: Mapping[str, str] | None = None,
        cut: CutStream | None = None,
    ) -> None:
        head = self._head(
            handler, status, content_type, started, headers, f"content-length: {len(data)}"
        )
        if cut is None:
            handler.wfile.write(head + data)
        else:
            handler.wfile.write(head + data[: len(data) // 2])
            _drop_connection(handler)
        self._log(handler, status, started)

    def _send_stream(
        self,
        handler: _Handler,
        events: Iterable[dict[str, Any]],
        started: float,
        headers: Mapping[str, str],
        cut: CutStream | None,
    ) -> None:
        frames = [
            self._head(
                handler,
                200,
                _SSE,
                started,
                headers,
                "transfer-encoding: chunked",
                "cache-control: no-cache",
            )
        ]
        chunks = list(events)
        if cut is not None:
            chunks = chunks[: max(0, min(cut.after_chunks, len(chunks)))]
        for chunk in chunks:
            data = (
                b"data: "
                + json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode()
                + b"\n\n"
            )
            frames.append(b"%x\r\n%s\r\n" % (len(data), data))
            if self.chunk_delay_s > 0:
                handler.wfile.write(b"".join(frames))
                frames.clear()
                if self._stopping.wait(self.chunk_delay_s):
                    break
        if cut is None:
            frames.append(_DONE_FRAME)
        handler.wfile.write(b"".join(frames))
        if cut is not None:
            _drop_connection(handler)
        self._log(handler, 200, started)

    @staticmethod
    def _head(
        handler: _Handler,
        status: int,
        content_type: str,
        started: float,
        headers: Mapping[str, str] | None,
        *extra: str,
    ) -> bytes:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"content-type: {content_type}",
            *extra,
            f"x-request-id: req_{uuid.uuid4().hex}",
            "openai-version: 2020-10-01",
            f"openai-processing-ms: {int((time.perf_counter() - started) * 1000)}",
        ]
        if headers:
            lines.extend(f"{name}: {value}" for name, value in headers.items())
        if handler.close_connection:
            lines.append("connection: close")
        lines.append("\r\n")
        handler.sim_status = status
        return "\r\n".join(lines).encode("latin-1")

    def _log(self, handler: _Handler, status: int, started: float) -> None:
        if not self.verbose:
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        note = f" {handler.sim_note}" if handler.sim_note else ""
        sys.stderr.write(
            f'sim {handler.client_address[0]} "{handler.command} {handler.path.split("?")[0]}" '
            f"{status}{note} {elapsed_ms:.1f}ms\n"
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "agentguard-sim"
    sys_version = ""
    server: _HTTPServer
    sim_status: int = 0
    sim_note: str = ""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def _dispatch(self) -> None:
        self.sim_note = ""
        self.sim_status = 0
        started = time.perf_counter()
        try:
            self.server.sim._handle(self)
        except OSError:
            raise  # the client went away: nothing to answer
        except Exception as error:  # a bug, or a reply_fn that raised: answer it as a 500
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            if self.sim_status == 0:  # nothing sent yet
                message = f"The simulated provider failed: {type(error).__name__}: {error}"
                self.server.sim._send_json(self, 500, error_body(message, "server_error"), started)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the server logs its own lines, and only when verbose."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], sim: SimServer) -> None:
        self.sim = sim
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (a timeout test, a cut stream) is not an error.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    length = handler.headers.get("content-length")
    if length:
        return handler.rfile.read(int(length))
    if "chunked" in (handler.headers.get("transfer-encoding") or "").lower():
        parts: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    return b""


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _drop_connection(handler: BaseHTTPRequestHandler) -> None:
    handler.close_connection = True
    with contextlib.suppress(OSError):
        handler.connection.shutdown(socket.SHUT_RDWR)


def _positive(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


def _legacy_inputs(value: object) -> list[str | list[int]] | None:
    """A ``prompt``/``input`` as a list of texts and token-id lists, or ``None`` if invalid."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return None
    if value and all(isinstance(item, int) for item in value):
        return [list(value)]
    items: list[str | list[int]] = []
    for item in value:
        if isinstance(item, str):
            items.append(item)
        elif isinstance(item, list) and all(isinstance(token, int) for token in item):
            items.append(list(item))
        else:
            return None
    return items


def _choices(request: Mapping[str, Any]) -> int:
    n = request.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def _served_tier(request: Mapping[str, Any]) -> str:
    """The tier an answer is served at: the one asked for, else the standard one."""
    tier = request.get("service_tier")
    return tier if tier in ("priority", "flex", "scale") else "default"


_MILLION = Decimal(1_000_000)
_UNKNOWN_MODEL_PRICE = ModelPrice(
    Decimal(1) / _MILLION, Decimal(1) / _MILLION, Decimal(4) / _MILLION
)


def _genai_price(model: str, service_tier: str) -> ModelPrice:
    return list_price(model, service_tier) or _UNKNOWN_MODEL_PRICE


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "agentguard-sim"}


def serve(
    host: str = "127.0.0.1",
    port: int = 8700,
    *,
    script: Script | Iterable[Reply | str] | ReplyFn | None = None,
    gateway: SimGateway | None = None,
    latency_s: float = 0.0,
    verbose: bool = False,
    on_ready: Callable[[SimServer], None] | None = None,
) -> None:
    """Run the simulated provider in the foreground until interrupted (Ctrl-C).

    Args:
        host: the interface to listen on.
        port: the port (0 picks a free one).
        script: what the model answers (see :class:`SimServer`).
        gateway: per-key dollar budgets (see :class:`SimGateway`).
        latency_s: a fixed delay before every answer.
        verbose: log one line per request to stderr.
        on_ready: called with the running server once it listens (to print its URL, say).
    """
    sim = SimServer(
        host=host, port=port, script=script, gateway=gateway, latency_s=latency_s, verbose=verbose
    )
    sim.start()
    try:
        if on_ready is not None:
            on_ready(sim)
        elif verbose:
            sys.stderr.write(f"agentguard sim: OpenAI-compatible API at {sim.base_url}\n")
        while not sim.wait(0.5):  # short waits keep Ctrl-C responsive
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
