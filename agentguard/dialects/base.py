"""What the pipeline asks of a wire API: the :class:`Dialect` protocol.

The pipeline knows no wire format. Everything that differs between ``/chat/completions``,
``/responses`` and Anthropic's ``/v1/messages`` — where the input is, how to count it, which
field caps the output, how usage is reported, how a stream is read, where tool calls are — is
asked of the call's dialect, one module per API in this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agentguard.limits import ToolCall
    from agentguard.pricing import Pricer, Usage
    from agentguard.pricing.worst_case import Bound
    from agentguard.tokens import TokenCounter
    from agentguard.trimming.view import HistoryView

__all__ = ["Answer", "Dialect", "StreamTap"]


@dataclass(slots=True)
class Answer:
    """What a finished response said, read by its dialect.

    Attributes:
        text: the generated text (all text parts joined).
        tool_calls: the tool calls the model asked for, in order.
        usage: the reported usage, or ``None`` when the response reports none.
        service_tier: the tier the response says it was served at (OpenAI), else ``None``.
        response_id: the provider's id of the response (``resp_...``), when it has one.
        refusal: the model's refusal, when the response says it declined (a refusal part, or
            a ``refusal`` stop reason), else ``None``.
        filtered: the provider's content filter stopped the answer.
    """

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    service_tier: object = None
    response_id: str | None = None
    refusal: str | None = None
    filtered: bool = False


class StreamTap(Protocol):
    """Reads a streamed response's server-sent events as they pass, I/O-free.

    ``feed`` takes bytes from the wire and returns the bytes to hand on (whole events only; a
    tap may drop an event the guard itself asked for, such as a usage-only chunk the caller did
    not want). ``done`` turns true at the stream's last event, before it is handed on, so the
    engine can settle before the caller's SDK stops reading.
    """

    done: bool

    def feed(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    def answer(self) -> Answer:
        """What the stream said so far (usage ``None`` if the stream did not report it)."""
        ...


class Dialect(Protocol):
    """One wire API, as the pipeline needs to know it.

    Attributes:
        name: ``openai_chat``, ``openai_responses``, ``anthropic_messages`` ...
        endpoint: the path suffix it serves (``/chat/completions``), for errors and records.
        cap_field: the request field that caps the output (``max_tokens``,
            ``max_output_tokens``), for messages that tell the caller what to set.
    """

    name: str
    endpoint: str
    cap_field: str

    def matches(self, method: str, path: str) -> bool:
        """Whether an HTTP request is a call in this dialect."""
        ...

    @property
    def trim_view(self) -> HistoryView:
        """How trimming reads the request's history and writes the trimmed one back."""
        ...

    def messages(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The conversation as chat-completions-shaped messages (``role``/``content``, tool
        calls and tool results included), read-only: what routing reads. The system prompt
        or instructions come first when the API keeps them apart."""
        ...

    def count_input(self, body: Mapping[str, Any], model: str, counter: TokenCounter) -> int:
        """The input tokens of the request (messages, system prompt, tool definitions)."""
        ...

    def output_cap(self, body: Mapping[str, Any]) -> int | None:
        """The request's own cap on generated tokens, or ``None`` when it sets none."""
        ...

    def set_output_cap(self, body: dict[str, Any], tokens: int, model: str) -> None:
        """Put a cap on the request (for calls that set none, so the reservation bounds them)."""
        ...

    def ask_stream_usage(self, body: dict[str, Any]) -> bool:
        """Make a streamed request report its usage; return whether the usage the guard asked
        for must be removed from the stream the caller sees."""
        ...

    def streaming(self, body: Mapping[str, Any]) -> bool:
        """Whether the request asks for a stream."""
        ...

    def stored_by_provider(self, body: Mapping[str, Any]) -> bool:
        """Whether the provider keeps this call's response for a later call to continue (and
        bill again): the engine then remembers its size for :meth:`previous_response`."""
        ...

    def previous_response(self, body: Mapping[str, Any]) -> str | None:
        """The id of the earlier response the request continues (whose conversation the
        provider bills again), or ``None``."""
        ...

    def bound(
        self,
        body: Mapping[str, Any],
        model: str,
        *,
        counted_input: int,
        max_output_tokens: int,
        output_capped: bool,
        pricer: Pricer,
        counter: TokenCounter,
        budgeted: bool,
    ) -> Bound:
        """The request's worst-case cost.

        Raises:
            UnmeteredRequest: under a budget, a part of the request cannot be bounded.
            PricingError: the model has no price.
        """
        ...

    def refuse_unbounded(self, body: Mapping[str, Any], *, output_capped: bool) -> None:
        """Refuse, before anything else happens, a request whose cost cannot be bounded.

        Raises:
            UnmeteredRequest: a part of the request cannot be bounded.
        """
        ...

    def answer(self, payload: Mapping[str, Any]) -> Answer:
        """Read a whole (non-streamed) response body."""
        ...

    def tap(self, *, strip_usage: bool) -> StreamTap:
        """A new reader for one streamed response."""
        ...

    def error_message(self, payload: object) -> str | None:
        """The human message of an error body (decoded JSON), or ``None`` if it has none."""
        ...

    def replay(self, client: Any, request: Mapping[str, Any]) -> Any:
        """Send a parked request again through a wrapped client of this API (the ``replay``
        resumer); return the client's response."""
        ...
