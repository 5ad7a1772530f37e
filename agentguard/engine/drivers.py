"""The only code that performs the engine's actions: a sync driver, an async one, and the
:class:`Effects` they perform the store's actions with.

The async driver never blocks the event loop: store actions run on a worker thread unless the
store is a local SQLite file (which answers in microseconds), and a stage that may make a
nested model call (:class:`~agentguard.engine.actions.Prepare`) always does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from agentguard.engine.actions import (
    Action,
    Confirm,
    KeepContext,
    Park,
    Prepare,
    ReadBudget,
    RecallContext,
    Release,
    Reply,
    ReportHealth,
    Reserve,
    Send,
    Settle,
    Sleep,
)

if TYPE_CHECKING:
    from agentguard.engine.call import Fallbacks, LimitHandler
    from agentguard.ledger import Ledger
    from agentguard.ledger.response_contexts import ResponseContexts

__all__ = ["Effects", "drive_async", "drive_sync"]

SendFn = Callable[..., Reply]
"""``send(body, modified)``, or ``send(body, modified, upstream)`` for another provider."""
AsyncSendFn = Callable[..., Awaitable[Reply]]


class Effects:
    """Performs the store's actions (reserve, settle, park...) on the parts that do them.

    Args:
        ledger: the budget ledger.
        parker: what parks sessions (``None``: parking is off, and nothing asks to park).
        contexts: the billed sizes of earlier responses (``None``: none are kept).
        fallbacks: the models' health record (``None``: nothing asks to report to it).
    """

    def __init__(
        self,
        ledger: Ledger,
        parker: LimitHandler | None = None,
        contexts: ResponseContexts | None = None,
        fallbacks: Fallbacks | None = None,
    ) -> None:
        self.ledger = ledger
        self.parker = parker
        self.contexts = contexts
        self.fallbacks = fallbacks

    def perform(self, action: Action) -> Any:
        """Do one store action and return its result (its exception propagates)."""
        if isinstance(action, Reserve):
            return self.ledger.reserve(
                action.lines, action.amount_usd, session_id=action.session_id, lease=True
            )
        if isinstance(action, Settle):
            # Written with the next store write (or within a fraction of a second): the hold
            # already covers the call, so the settlement need not wait for a disk.
            return self.ledger.settle(action.reservation, action.cost_usd, defer=True)
        if isinstance(action, Release):
            return self.ledger.release(action.reservation)
        if isinstance(action, Confirm):
            return self.ledger.confirm(action.reservation)
        if isinstance(action, Park):
            return self._park(action)
        if isinstance(action, RecallContext):
            return None if self.contexts is None else self.contexts.tokens(action.response_id)
        if isinstance(action, ReadBudget):
            fractions = [
                status.remaining_fraction
                for status in (self.ledger.status(line) for line in action.lines)
                if status.remaining_fraction is not None
            ]
            return min(fractions) if fractions else None
        if isinstance(action, Prepare):
            action.stage.prepare(action.call)
            return None
        if isinstance(action, ReportHealth):
            if self.fallbacks is not None:
                self.fallbacks.report(action.model, failed=action.failed)
            return None
        if isinstance(action, KeepContext):
            if self.contexts is not None:
                self.contexts.remember(action.response_id, action.tokens)
            return None
        raise TypeError(f"not a store action: {action!r}")

    def _park(self, action: Park) -> Any:
        if self.parker is None:
            raise RuntimeError("parking is off, yet the engine asked to park")
        if action.budget is not None:
            return self.parker.park_budget(action.call, action.budget)
        assert action.limit is not None
        return self.parker.park_limit(action.call, action.limit, failed=action.failed)


def drive_sync(
    engine: Generator[Action, Any, Any], send: SendFn | None, effects: Effects | None
) -> Any:
    """Run the engine to its end, performing each action in this thread."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            action = engine.throw(error) if error is not None else engine.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            if isinstance(action, Send):
                assert send is not None, "a finished stream's settlement sends nothing"
                if action.upstream is None:
                    value = send(action.body, action.modified)
                else:
                    value = send(action.body, action.modified, action.upstream)
            elif isinstance(action, Sleep):
                time.sleep(action.seconds)
            else:
                assert effects is not None
                value = effects.perform(action)
        except Exception as exc:
            error = exc


async def drive_async(
    engine: Generator[Action, Any, Any],
    send: AsyncSendFn | None,
    effects: Effects | None,
    *,
    offload: bool,
) -> Any:
    """Run the engine to its end on the event loop; with ``offload``, store actions run on a
    worker thread so a network database never blocks the loop."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            action = engine.throw(error) if error is not None else engine.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            if isinstance(action, Send):
                assert send is not None, "a finished stream's settlement sends nothing"
                if action.upstream is None:
                    value = await send(action.body, action.modified)
                else:
                    value = await send(action.body, action.modified, action.upstream)
            elif isinstance(action, Sleep):
                await asyncio.sleep(action.seconds)
            else:
                assert effects is not None
                if offload or isinstance(action, Prepare):
                    # A network database, or a nested model call: off the event loop.
                    value = await asyncio.to_thread(effects.perform, action)
                else:
                    value = effects.perform(action)
        except Exception as exc:
            error = exc
