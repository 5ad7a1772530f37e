"""One model call as the engine and its stages see it, and the interfaces of the stages that
plug into the engine (routing, trimming, parking)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from agentguard.dialects.openai_chat import OPENAI_CHAT

if TYPE_CHECKING:
    from agentguard.dialects.base import Answer, Dialect
    from agentguard.errors import BudgetExceeded
    from agentguard.ledger import Reservation
    from agentguard.parking.classify import Decision, LimitVerdict
    from agentguard.parking.record import ParkedSession
    from agentguard.pricing import ModelPrice
    from agentguard.pricing.worst_case import Bound
    from agentguard.session import Session

__all__ = ["CallContext", "CallStage", "Escalator", "Fallbacks", "LimitHandler", "Reply"]


@dataclass(slots=True)
class Reply:
    """An HTTP response as the engine sees it (what a ``Send`` action is answered with)."""

    status: int
    headers: Mapping[str, str]
    """Lower-cased names."""
    body: bytes | None
    """The whole body; ``None`` for a successful streaming response, which the driver keeps."""

    @property
    def streaming(self) -> bool:
        return self.body is None


# -- stages that later plug in --------------------------------------------------------------


class CallStage(Protocol):
    """A stage that may rewrite the request before it is priced (routing, trimming).

    Attributes:
        nested_calls: whether ``prepare`` may make a model call of its own (an LLM
            classifier, a summary): the engine then asks its driver to run it
            (:class:`~agentguard.engine.actions.Prepare`), off an async driver's loop.
        reads_budget: whether ``prepare`` weighs the budget left (``call.notes
            ["remaining_fraction"]``, read by the engine first).
    """

    nested_calls: bool
    reads_budget: bool

    def prepare(self, call: CallContext) -> None: ...


class Escalator(Protocol):
    """Routing's second half: re-send a failed cheap step one tier up, or find cheaper models."""

    def escalate(self, call: CallContext, payload: dict[str, Any], answer: Answer) -> str | None:
        """The model to re-send a checkably failed answer to, or ``None`` to keep it.

        ``payload`` is the response body in the call's dialect, ``answer`` what its dialect
        read from it. Asked only for a routed call (its ``notes`` hold a ``route``)."""
        ...

    def cheaper_models(self, call: CallContext) -> list[str]:
        """Models below the call's, cheapest last, to try when the budget cannot fit it."""
        ...


class Fallbacks(Protocol):
    """Where a call goes when its model fails, and what the engine tells of each attempt
    (the fallback stage)."""

    def switch_reason(self, reply: Reply) -> str | None:
        """Why an error answer moves the call to its next model at once (``overloaded``,
        ``model_not_found``, ``model_gone``), or ``None`` to retry as usual."""
        ...

    def next_model(self, call: CallContext) -> str | None:
        """The next model of the call's chain to try, or ``None`` when none is left."""
        ...

    def switched(self, call: CallContext, model: str, reason: str) -> None:
        """Put ``model`` on the call, counted and logged as a fallback."""
        ...

    def report(self, model: str, *, failed: bool) -> None:
        """An attempt of ``model`` failed in a way that counts toward a cooldown, or (not
        ``failed``) a model being probed answered (may write to the store)."""
        ...

    def on_probation(self, model: str) -> bool:
        """Whether an answer from ``model`` ends a cooldown (to be reported); in memory."""
        ...

    def observe(self, model: str, *, first_byte_s: float, total_s: float) -> None:
        """An answer of ``model`` took this long (to its first byte, to its end); in memory."""
        ...


class LimitHandler(Protocol):
    """Decides what limit errors and exhausted budgets do (the parking stage)."""

    def classify(self, reply: Reply) -> LimitVerdict | None: ...

    def decide(self, verdict: LimitVerdict, retries_done: int, max_retries: int) -> Decision: ...

    def park_limit(
        self, call: CallContext, verdict: LimitVerdict, *, failed: bool
    ) -> ParkedSession: ...

    def park_budget(self, call: CallContext, error: BudgetExceeded) -> ParkedSession: ...

    def parked_error(self, record: ParkedSession) -> Exception: ...


# -- per-call context --------------------------------------------------------------------------


@dataclass(slots=True)
class CallContext:
    """Everything the stages know about one model call."""

    session: Session
    body: dict[str, Any]
    requested_model: str
    dialect: Dialect = OPENAI_CHAT
    """The wire API the call speaks."""
    original_body: dict[str, Any] = field(default_factory=dict)
    """The caller's request as it came (stages replace top-level keys, never mutate it)."""
    started: float = field(default_factory=time.perf_counter)
    input_tokens: int = 0
    max_output_tokens: int = 0
    price: ModelPrice | None = None
    bound: Bound | None = None
    worst_case_usd: Decimal = Decimal(0)
    reservation: Reservation | None = None
    carried_tokens: int = 0
    """Input the provider bills again from an earlier response the call continues."""
    strip_usage_chunk: bool = False
    budgeted: bool = False
    """Whether a dollar limit applies to the session (read once per call)."""
    debug: bool = False
    """Whether debug events are written (read once per call: building their fields costs)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Stage results (route decision, trim result) for logs and the demo."""

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def caller_dialect(self) -> Dialect:
        """The API the caller speaks (``original_body``'s): :attr:`dialect` unless a fallback
        crossed to another provider's API."""
        home = self.notes.get("home")
        return home[0] if home is not None else self.dialect  # type: ignore[no-any-return]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation, chat-shaped (the dialect's view of its input)."""
        return self.dialect.messages(self.body)

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        tools = self.body.get("tools")
        return tools if isinstance(tools, list) and tools else None

    @property
    def chat(self) -> bool:
        """Whether the call is a chat completion (stages that rewrite messages need one)."""
        return self.dialect is OPENAI_CHAT
