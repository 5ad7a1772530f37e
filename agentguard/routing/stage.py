"""Routing as a pipeline stage: picks each call's model by the step's complexity and the
budget's pressure, and escalates a checkably failed cheap answer.

It adapts the pure policy of :mod:`agentguard.routing` to the pipeline's
:class:`~agentguard.engine.CallContext`: it reads the call and the session, replaces top-level
keys of the request body (never mutating the caller's objects), and leaves what it decided in
``call.notes`` for logs and the demo.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentguard.engine.nested import in_nested_call, nested_call
from agentguard.log import logger

if TYPE_CHECKING:
    from agentguard.config import RoutingConfig
    from agentguard.dialects.base import Answer
    from agentguard.engine.call import CallContext
    from agentguard.routing import RouteDecision
    from agentguard.session import Session
    from agentguard.tokens import TokenCounter

__all__ = ["RouteStage", "new_input"]

_UNREAD = object()
"""The budget share left was not read by the caller."""


class RouteStage:
    """Picks each call's model by the step's complexity and the budget's pressure; escalates a
    checkably failed cheap step one tier up; offers cheaper models when the budget is short.

    Args:
        config: the routing section.
        counter: counts the input the classifier weighs.
        remaining_fraction: reads the session's remaining budget share (only asked when
            ``routing.pressure`` is configured: it reads the ledger).
        ask: sends a classification prompt to the small tier (for ``llm``/``cascade``).
    """

    __slots__ = (
        "config",
        "counter",
        "nested_calls",
        "reads_budget",
        "remaining_fraction",
        "router",
    )

    def __init__(
        self,
        config: RoutingConfig,
        counter: TokenCounter,
        remaining_fraction: Callable[[Session], float | None],
        ask: Callable[[list[dict[str, Any]]], str] | None = None,
    ) -> None:
        from agentguard.routing import Router

        self.config = config
        self.counter = counter
        self.remaining_fraction = remaining_fraction
        self.router = Router(config, ask=nested_call(ask) if ask else None)
        routes = bool(config.tiers or config.force_model)
        self.nested_calls = routes and ask is not None
        self.reads_budget = routes and bool(config.pressure)

    def decide(self, call: CallContext) -> RouteDecision:
        # The limits stage has already counted this call in the session's iterations; the
        # engine read the budget left before the stages ran.
        return self.decide_step(
            model=call.model,
            messages=call.messages,
            tools=call.tools,
            session=call.session,
            calls_before=call.session.state.iterations - 1,
            remaining_fraction=call.notes.get("remaining_fraction", _UNREAD),
        )

    def decide_step(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        session: Session | None,
        calls_before: int | None = None,
        remaining_fraction: float | object | None = _UNREAD,
    ) -> RouteDecision:
        """The decision for one step: the one code path of the pipeline and ``guard.route()``.

        Args:
            model: the model the caller asked for.
            messages: the step's messages.
            tools: the tools it offers.
            session: the session it belongs to (``None``: a step outside any session).
            calls_before: model calls the session made before this one (default: all its
                counted iterations, for a step not yet counted).
            remaining_fraction: the budget share left, when the caller read it already
                (otherwise it is read here, from the ledger, if ``routing.pressure`` is set).
        """
        if session is None:
            return self.router.decide(
                model=model,
                messages=messages,
                tools=tools,
                input_tokens=self.counter.count_messages(new_input(messages), model),
            )
        if calls_before is None:
            calls_before = session.state.iterations
        fraction: float | None = None
        if self.config.pressure:
            if remaining_fraction is _UNREAD:
                fraction = self.remaining_fraction(session)
            elif isinstance(remaining_fraction, float | int):
                fraction = float(remaining_fraction)
        return self.router.decide(
            model=model,
            messages=messages,
            tools=tools,
            input_tokens=self.counter.count_messages(new_input(messages), model),
            step_index=max(0, calls_before),
            previous_outcome=session.state.last_outcome,  # type: ignore[arg-type]
            remaining_fraction=fraction,
            force_model=session.force_model,
        )

    def prepare(self, call: CallContext) -> None:
        if (
            not (self.config.tiers or self.config.force_model or call.session.force_model)
            or in_nested_call()
        ):
            return
        decision = self.decide(call)
        call.notes["route"] = decision
        if decision.model != call.model:
            call.body["model"] = decision.model
        logger.info("route", session_id=call.session.id, **decision.log_fields())

    def escalate(self, call: CallContext, payload: dict[str, Any], answer: Answer) -> str | None:
        decision = call.notes.get("route")
        if decision is None or not self.config.escalate:
            return None
        from agentguard.routing import check_answer_failure, check_step_failure

        if call.chat:
            failure = check_step_failure(payload, call.tools)  # every choice, legacy calls too
        else:
            failure = check_answer_failure(answer, call.tools)
        if failure is None:
            return None
        higher = self.router.escalate(decision, failure)
        if higher is None:
            return None
        call.notes["route"] = higher
        logger.info("escalate", session_id=call.session.id, failure=failure, **higher.log_fields())
        return higher.model

    def cheaper_models(self, call: CallContext) -> list[str]:
        decision = call.notes.get("route")
        if decision is None:
            decision = self.decide(call)
        return [model for model in self.router.cheaper_tiers(decision) if model != call.model]


def new_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages a step has to digest: those after the last assistant message (the new
    tool results or user turn), or every non-system message on a first step.

    The system prompt and the history the model already answered are re-sent each step but
    are not what makes the step hard; sizing the step by them would send every step of a long
    session to the top tier.
    """
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "assistant":
            return messages[index + 1 :]
    return [m for m in messages if m.get("role") not in ("system", "developer")]
