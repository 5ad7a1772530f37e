"""What the engine asks its driver to do, as data.

The pipeline is a generator: it yields one of these actions, and the driver performs it and
sends back the result (or throws its exception in). Nothing in the pipeline does I/O, so a
test can drive it with a fake driver and see exactly what it asked for.

=====================  ===============================================  ========================
action                 asks for                                         answered with
=====================  ===============================================  ========================
:class:`Send`          one HTTP attempt with this body                  :class:`Reply`, or
                                                                        :class:`TransportFailure`
:class:`Sleep`         a pause before the next attempt                  ``None``
:class:`Reserve`       a hold of the worst case on every budget line    a ``Reservation``, or
                                                                        ``BudgetExceeded``
:class:`Confirm`       a check that an old hold was not swept           ``bool`` (alive)
:class:`Settle`        the hold replaced by what the call cost          ``None``
:class:`Release`       the hold given back (the call was not billed)    ``None``
:class:`Park`          the session written down to resume later         the ``ParkedSession``
:class:`RecallContext` the billed size of an earlier response           ``int`` or ``None``
:class:`KeepContext`   the billed size of this response, for later      ``None``
:class:`ReadBudget`    the share of the session's budgets still free    ``float`` or ``None``
:class:`Prepare`       a stage that may make a nested model call (an    ``None``
                       LLM classifier, a summary) run on the call
:class:`ReportHealth`  a model's attempt failed, or its probe answered  ``None``
=====================  ===============================================  ========================
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agentguard.engine.call import Reply

if TYPE_CHECKING:
    from agentguard.dialects.base import StreamTap
    from agentguard.engine.call import CallContext, CallStage
    from agentguard.errors import BudgetExceeded
    from agentguard.ledger import BudgetLine, Reservation
    from agentguard.parking.classify import LimitVerdict
    from agentguard.routing.providers import Upstream

__all__ = [
    "Action",
    "Confirm",
    "KeepContext",
    "Outcome",
    "Park",
    "Prepare",
    "ReadBudget",
    "RecallContext",
    "Release",
    "Reply",
    "ReportHealth",
    "Reserve",
    "Send",
    "Settle",
    "Sleep",
    "TransportFailure",
]


@dataclass(slots=True)
class Send:
    """Make one HTTP attempt with this JSON body; answer with a :class:`Reply`, or throw a
    :class:`TransportFailure`."""

    body: dict[str, Any]
    modified: bool = True
    """Whether the body differs from the caller's request (if not, it is sent as it came)."""
    upstream: Upstream | None = None
    """Another provider's API to send the body to (a fallback that crossed providers), in
    place of the caller's own endpoint."""


@dataclass(slots=True)
class Sleep:
    """Wait this many seconds."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Reserve:
    """Hold ``amount_usd`` on every line (each budget the call draws on) before the call."""

    lines: tuple[BudgetLine, ...]
    amount_usd: Decimal
    session_id: str


@dataclass(frozen=True, slots=True)
class Confirm:
    """Renew an old hold in the store; ``False`` when a sweep charged it meanwhile."""

    reservation: Reservation


@dataclass(frozen=True, slots=True)
class Settle:
    """Replace the hold by the call's cost (its worst case when the outcome is unknown)."""

    reservation: Reservation
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class Release:
    """Give the hold back: the call was never sent, or the provider says it failed unbilled."""

    reservation: Reservation


@dataclass(frozen=True, slots=True)
class Park:
    """Write the session down to resume later: after a provider's limit (``limit``) or an
    exhausted budget (``budget``); ``failed`` records it as failed instead (a quota)."""

    call: CallContext
    limit: LimitVerdict | None = None
    budget: BudgetExceeded | None = None
    failed: bool = False


@dataclass(frozen=True, slots=True)
class RecallContext:
    """The tokens a call continuing ``response_id`` is billed again, ``None`` if unknown."""

    response_id: str


@dataclass(frozen=True, slots=True)
class KeepContext:
    """Remember that continuing ``response_id`` bills ``tokens`` again."""

    response_id: str
    tokens: int


@dataclass(frozen=True, slots=True)
class ReadBudget:
    """The smallest share still free over these budget lines (``None``: none is limited),
    for routing under budget pressure."""

    lines: tuple[BudgetLine, ...]


@dataclass(frozen=True, slots=True)
class Prepare:
    """Run ``stage`` on ``call``: a stage whose work may include a nested model call (the
    ``llm`` classifier asking the small tier, a summary of dropped turns), which an async
    driver must not run on its event loop."""

    stage: CallStage
    call: CallContext


@dataclass(frozen=True, slots=True)
class ReportHealth:
    """Record that an attempt of ``model`` failed (``failed``), or that a model whose
    cooldown was being probed answered: kept in the store, so every process on it skips a
    model in cooldown."""

    model: str
    failed: bool


Action = (
    Send
    | Sleep
    | Reserve
    | Confirm
    | Settle
    | Release
    | Park
    | RecallContext
    | KeepContext
    | ReadBudget
    | Prepare
    | ReportHealth
)


class TransportFailure(Exception):
    """An attempt that got no HTTP response (``kind``: ``timeout`` or ``connection``).

    ``sent`` is ``False`` only when the request certainly never left (the connection was never
    made): any other failure may have been billed by the provider, so it is charged.
    """

    def __init__(self, kind: str, error: BaseException, *, sent: bool = True) -> None:
        super().__init__(f"{kind}: {error}")
        self.kind = kind
        self.error = error
        self.sent = sent


@dataclass(slots=True)
class Outcome:
    """What the driver hands back to the SDK."""

    reply: Reply
    extra_headers: dict[str, str] = field(default_factory=dict)
    tap: StreamTap | None = None
    """For a successful stream: the parser the stream's bytes flow through."""
    finish: Callable[[StreamTap], Generator[Action, Any, None]] | None = None
    """For a successful stream: the engine's settlement, driven when the stream ends."""
    translated: bool = False
    """The reply's body was translated from another provider's API: the response is built
    from it, not from the upstream's."""
    payload: dict[str, Any] | None = None
    """The answer's body as the engine decoded it (an answer, not an error): the engine is done
    with it, so the caller's SDK may have it instead of decoding the same bytes again."""
