"""Sessions: one agent run's counters and budget, found by wrapped clients through a contextvar.

``with guard.session("task-42", budget_key="research") as s:`` binds ``s`` for every call made
in the block (threads started inside it copy the context explicitly, as usual for contextvars;
asyncio tasks inherit it). A child session (``parent=``) draws on its root session's budget.
"""

from __future__ import annotations

import secrets
import threading
from contextvars import ContextVar, Token
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from agentguard.parking.record import validate_session_id

if TYPE_CHECKING:
    from agentguard.ledger import BudgetLine
    from agentguard.ledger.budgets import Budgets
    from agentguard.parking.record import ParkedSession

__all__ = ["Session", "SessionState", "current_session"]


_current: ContextVar[Session | None] = ContextVar("agentguard_session", default=None)
_Binding = tuple["Session", Token["Session | None"], Token["Session | None"]]
_bindings: ContextVar[tuple[_Binding, ...]] = ContextVar("agentguard_bindings", default=())
"""The ``with session:`` blocks open in this context, innermost last. Kept per context, not
per session: concurrent tasks may enter one session object at once, each in its own
context."""


def current_session() -> Session | None:
    """The session bound in this context, if any."""
    return _current.get()


class SessionState(BaseModel):
    """The counters of a session; serialisable, so a parked session resumes with them."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = 0
    """Model calls made."""
    tool_calls: int = 0
    """Tool calls the model asked for."""
    consecutive_failures: int = 0
    retries: int = 0
    """Retries of failed attempts, over the whole session."""
    fallbacks: int = 0
    """Calls moved to another model of their fallback chain (a model failed, was overloaded
    or gone, or was cooling down), over the whole session."""
    spent_usd: Decimal = Decimal(0)
    """Settled spend of this session and its children."""
    input_tokens: int = 0
    output_tokens: int = 0
    tool_signatures: dict[str, int] = Field(default_factory=dict)
    """How often each tool call (name + arguments) was asked for, for loop detection."""
    last_outcome: str | None = None
    """``ok``, ``failed`` or ``escalated``: the previous step's outcome, for routing."""
    trim_state: dict[str, Any] | None = None
    """The trimmer's memory of its last cut, so the kept prefix stays stable."""


class Session:
    """One agent run: its id, budget key, counters and parent.

    Use :meth:`agentguard.Guard.session` to make one. A session is given the budgets its calls
    draw on and the context variable its guard's clients look it up in; it holds no guard.
    """

    def __init__(
        self,
        budgets: Budgets,
        binding: ContextVar[Session | None],
        session_id: str | None = None,
        *,
        budget_key: str | None = None,
        parent: Session | None = None,
        resumer: str = "replay",
        force_model: str | None = None,
        framework: str = "openai",
        state: SessionState | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
    ) -> None:
        if session_id is not None:
            validate_session_id(session_id)
        if budget_key is not None:
            budgets.check_key(budget_key)
        self.budgets = budgets
        self.binding = binding
        """Where the guard that made this session looks up its current session: bound to this
        session inside ``with session:``."""
        self.id = session_id or f"s-{secrets.token_hex(8)}"
        self.parent: Session | None = parent
        self.parent_id = parent.id if parent is not None else parent_id
        """The parent's id (kept when a child session is restored without its parent)."""
        self._root_id = root_id
        self.budget_key: str = budget_key or (parent.budget_key if parent else "default")
        self.resumer = resumer
        self.force_model = force_model
        self.framework = framework
        self.state = state or SessionState()
        self.parked_record: ParkedSession | None = None
        """Set when this session parks: further calls through it raise ``SessionParked`` at
        once, without an HTTP attempt, so a framework's retry loop cannot hammer the limit.
        The resume runs in a session restored from the record."""
        self.metadata: dict[str, Any] = {}
        """Free-form, JSON-serialisable data that integrations keep with a parked session."""
        self.lock = threading.RLock()
        self._budget_lines: tuple[BudgetLine, ...] | None = None
        self._budgeted: bool | None = None

    # -- what callers read -------------------------------------------------------------------

    @property
    def root_id(self) -> str:
        """The id of the session whose own budget this one draws on."""
        if self.parent is not None:
            return self.parent.root_id
        return self._root_id or self.id

    @property
    def iterations(self) -> int:
        """Model calls made in this session."""
        return self.state.iterations

    @property
    def tool_calls(self) -> int:
        return self.state.tool_calls

    @property
    def fallbacks(self) -> int:
        """Calls of this session moved to another model of their fallback chain."""
        return self.state.fallbacks

    @property
    def spent_usd(self) -> Decimal:
        """Dollars this session (and its children) spent."""
        return self.state.spent_usd

    @property
    def remaining_usd(self) -> Decimal | None:
        """Dollars this session can spend now: the least over its budgets of what nobody holds
        plus this process's own idle lease slice (``None`` when no budget limits it). Spend,
        holds of calls in flight and other processes' slices are in
        :meth:`~agentguard.Guard.budget_status`."""
        remaining: Decimal | None = None
        for status in self.budgets.statuses(self.budget_lines()):
            if status.remaining_usd is not None:
                remaining = (
                    status.remaining_usd
                    if remaining is None
                    else min(remaining, status.remaining_usd)
                )
        return remaining

    def budget_lines(self) -> tuple[BudgetLine, ...]:
        """The ledger lines a call in this session draws on."""
        if self._budget_lines is None:
            self._budget_lines = self.budgets.lines_for(self.budget_key, self.root_id)
        return self._budget_lines

    def budgeted(self) -> bool:
        """Whether a dollar limit applies to this session's calls."""
        if self._budgeted is None:
            self._budgeted = any(line.limit_usd is not None for line in self.budget_lines())
        return self._budgeted

    # -- bookkeeping the pipeline does -------------------------------------------------------

    def add_spend(self, amount: Decimal, input_tokens: int, output_tokens: int) -> None:
        session: Session | None = self
        while session is not None:
            with session.lock:
                session.state.spent_usd += amount
                session.state.input_tokens += input_tokens
                session.state.output_tokens += output_tokens
            session = session.parent

    # -- binding -----------------------------------------------------------------------------

    def __enter__(self) -> Session:
        # Bound twice: as "the current session" and as this guard's current session, so calls
        # through another guard's clients inside the block are not charged to this one.
        binding = (self, _current.set(self), self.binding.set(self))
        _bindings.set((*_bindings.get(), binding))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        bindings = _bindings.get()
        for index in range(len(bindings) - 1, -1, -1):
            if bindings[index][0] is self:
                break
        else:
            return  # not entered in this context
        _, current, own = bindings[index]
        _bindings.set(bindings[:index] + bindings[index + 1 :])
        _restore(self.binding, own)
        _restore(_current, current)

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __repr__(self) -> str:
        return (
            f"Session(id={self.id!r}, budget_key={self.budget_key!r}, "
            f"iterations={self.state.iterations}, spent_usd={self.state.spent_usd})"
        )


def _restore(variable: ContextVar[Session | None], token: Token[Session | None]) -> None:
    """Put back what ``variable`` held before ``token``'s binding, even when the binding was
    made in another context (a task that copied it) or was undone already."""
    try:
        variable.reset(token)
    except (ValueError, RuntimeError):
        previous = token.old_value
        variable.set(None if previous is Token.MISSING else previous)
