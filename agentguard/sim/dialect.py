"""What every wire API the sim speaks shares: the order a request is handled in.

A :class:`Dialect` turns its own request into a chat request for the simulated model, and the
model's :class:`~agentguard.sim.payloads.Completion` back into its own answer, stream and
errors. :func:`serve_dialect` runs the steps every endpoint runs, in the chat endpoint's order:
the gateway's key check, the next injected fault, validation, the gateway's budget, the
scripted reply, the answer, and the charge at the same prices the chat endpoint uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentguard.sim.faults import CutStream, Garbage, HTTPError, Timeout
from agentguard.sim.gateway import Rejection
from agentguard.sim.payloads import Completion
from agentguard.sim.script import ModelError

if TYPE_CHECKING:
    from agentguard.sim.server import SimServer, _Handler

__all__ = ["Answer", "Dialect", "DialectError", "ErrorAnswer", "Turn", "serve_dialect"]

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
_END_OF_CHUNKS = b"0\r\n\r\n"

Event = tuple[str, dict[str, Any]]
"""One server-sent event: its ``event:`` name and its JSON data."""


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """An error in a dialect's own shape (``body`` is raw text when a fault gave it so)."""

    status: int
    body: dict[str, Any] | str
    headers: dict[str, str] = field(default_factory=dict)


class DialectError(Exception):
    """A request the provider would refuse; ``answer`` is its error in the dialect's shape."""

    def __init__(self, answer: ErrorAnswer) -> None:
        super().__init__(answer.body if isinstance(answer.body, str) else json.dumps(answer.body))
        self.answer = answer


@dataclass(slots=True)
class Turn:
    """One request, as the simulated model sees it.

    Attributes:
        chat: the equivalent chat completion request (model, messages, tools, output cap).
        stream: whether the client asked for a stream.
        context: what the dialect needs again when it shapes the answer.
    """

    chat: dict[str, Any]
    stream: bool = False
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Answer:
    """A generated answer in a dialect's shape, with what it bills.

    Attributes:
        body: the non-streamed answer.
        events: the streamed answer, in order.
        prompt_tokens: input tokens billed, cached ones included.
        cached_tokens: input tokens read from the cache.
        completion_tokens: output tokens billed, reasoning included.
        cache_write_tokens: input tokens written to the cache (billed above the input price).
        cache_write_1h_tokens: of those, the ones written for an hour.
    """

    body: dict[str, Any]
    events: list[Event]
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0


class Dialect(ABC):
    """One wire API: its requests, answers and errors."""

    name: str = ""

    def api_key(self, headers: Mapping[str, str], bearer: str | None) -> str | None:
        """The API key the request carries (``Authorization: Bearer`` by default)."""
        return bearer

    @abstractmethod
    def error(
        self, status: int, message: str | None = None, type_: str | None = None
    ) -> ErrorAnswer:
        """The provider's error for a status (its usual message and type when None)."""

    @abstractmethod
    def prepare(self, body: Any) -> Turn:
        """Check a request body and translate it; raises :class:`DialectError`."""

    @abstractmethod
    def answer(self, turn: Turn, completion: Completion, partition: bytes) -> Answer:
        """Shape a completion as the dialect's answer."""

    def fault(self, fault: HTTPError, model: str) -> ErrorAnswer:
        """An injected HTTP error, in the dialect's shape unless its body was given."""
        if fault.body is not None:
            body = fault.body
            if isinstance(body, Mapping):
                return ErrorAnswer(fault.status, dict(body), dict(fault.headers))
            text = body if isinstance(body, str) else body.decode("utf-8", "replace")
            return ErrorAnswer(fault.status, text, dict(fault.headers))
        answer = self.error(fault.status)
        answer.headers.update(fault.headers)
        return answer

    def rejection(self, rejection: Rejection) -> ErrorAnswer:
        """A budget-gateway refusal in the dialect's shape (OpenAI's shape by default)."""
        return ErrorAnswer(rejection.status, rejection.body, dict(rejection.headers))

    def model_error(self, error: ModelError) -> ErrorAnswer:
        """A scripted step's error in the dialect's shape."""
        answer = self.error(error.status, error.message, error.type)
        answer.headers.update(error.headers or {})
        return answer

    def remember(self, turn: Turn, answer: Answer) -> None:
        """Called once an answer is generated (to keep it for later requests, say)."""
        return None


def serve_dialect(
    sim: SimServer,
    handler: _Handler,
    dialect: Dialect,
    body: Any,
    headers: Mapping[str, str],
    bearer: str | None,
    started: float,
) -> None:
    """Answer one request to a dialect's endpoint, as the chat endpoint answers its own."""
    api_key = dialect.api_key(headers, bearer)
    gateway = sim.gateway
    if gateway is not None:
        refused = gateway.authorize(api_key)
        if refused is not None:
            _send_error(sim, handler, dialect.rejection(refused), started)
            return
    model = body.get("model", "") if isinstance(body, dict) else ""
    cut: CutStream | None = None
    fault = sim._model_fault(model) or sim._faults.pop()
    if isinstance(fault, HTTPError):
        _send_error(sim, handler, dialect.fault(fault, str(model)), started)
        return
    if isinstance(fault, Garbage):
        sim._send(handler, 200, fault.body, fault.content_type, started)
        return
    # A held answer is generated and billed first, then sent late (the client's timeout fires).
    delay = fault.seconds if isinstance(fault, Timeout) else 0.0
    if isinstance(fault, CutStream):
        cut = fault

    try:
        turn = dialect.prepare(body)
    except DialectError as invalid:
        _send_error(sim, handler, invalid.answer, started)
        return
    if gateway is not None and api_key is not None:
        refused = gateway.admit(api_key)
        if refused is not None:
            _send_error(sim, handler, dialect.rejection(refused), started)
            return

    reply = sim.script.reply_for(turn.chat)
    if reply.model_error is not None:
        _send_error(sim, handler, dialect.model_error(reply.model_error), started)
        return
    partition = hashlib.blake2b(api_key.encode(), digest_size=16).digest() if api_key else b""
    completion = sim.engine.complete(turn.chat, reply, sim.script, partition)
    answer = dialect.answer(turn, completion, partition)
    dialect.remember(turn, answer)
    # The provider's own bill, kept whether or not the client reads the answer.
    sim._charge_tokens(
        api_key,
        turn.chat["model"],
        answer.prompt_tokens,
        answer.completion_tokens,
        cached_tokens=answer.cached_tokens,
        cache_write_tokens=answer.cache_write_tokens,
        cache_write_1h_tokens=answer.cache_write_1h_tokens,
    )
    if delay:
        sim._stopping.wait(delay)

    extra: dict[str, str] = {}
    if gateway is not None and api_key is not None:
        cost = gateway.cost(
            turn.chat["model"],
            answer.prompt_tokens,
            answer.cached_tokens,
            answer.completion_tokens,
            cache_write_tokens=answer.cache_write_tokens,
            cache_write_1h_tokens=answer.cache_write_1h_tokens,
        )
        spent = gateway.charge(api_key, cost)
        if gateway.style == "litellm":
            extra["x-litellm-response-cost"] = str(float(cost))
            extra["x-litellm-key-spend"] = str(float(spent))
    handler.sim_note = (
        f"{dialect.name} model={turn.chat['model']} prompt={answer.prompt_tokens} "
        f"completion={answer.completion_tokens}"
    )
    if turn.stream:
        send_events(sim, handler, answer.events, started, extra, cut)
    else:
        sim._send_json(handler, 200, answer.body, started, extra, cut)


def _send_error(sim: SimServer, handler: _Handler, answer: ErrorAnswer, started: float) -> None:
    sim._send_json(handler, answer.status, answer.body, started, answer.headers)


def send_events(
    sim: SimServer,
    handler: _Handler,
    events: Iterable[Event],
    started: float,
    headers: Mapping[str, str],
    cut: CutStream | None,
) -> None:
    """Write named server-sent events (``event:`` and ``data:`` lines), chunked; no ``[DONE]``.

    A ``cut`` drops the connection after its number of events.
    """
    frames = [
        sim._head(
            handler,
            200,
            SSE_CONTENT_TYPE,
            started,
            headers,
            "transfer-encoding: chunked",
            "cache-control: no-cache",
        )
    ]
    chosen = list(events)
    if cut is not None:
        chosen = chosen[: max(0, min(cut.after_chunks, len(chosen)))]
    for name, data in chosen:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        frame = f"event: {name}\ndata: {text}\n\n".encode()
        frames.append(b"%x\r\n%s\r\n" % (len(frame), frame))
        if sim.chunk_delay_s > 0:
            handler.wfile.write(b"".join(frames))
            frames.clear()
            if sim._stopping.wait(sim.chunk_delay_s):
                break
    if cut is None:
        frames.append(_END_OF_CHUNKS)
    handler.wfile.write(b"".join(frames))
    if cut is not None:
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)
    sim._log(handler, 200, started)
