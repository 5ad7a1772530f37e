"""The request-rewriting stages of the pipeline: routing, then trimming.

Each adapts a pure policy (:mod:`agentguard.routing`, :mod:`agentguard.trimming`) to the
pipeline's :class:`~agentguard.engine.CallContext`: it reads the call and the session,
replaces top-level keys of the request body (never mutating the caller's objects), and leaves
what it decided in ``call.notes`` for logs and the demo.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from agentguard.log import logger

if TYPE_CHECKING:
    from agentguard.config import RoutingConfig, TrimmingConfig
    from agentguard.engine.call import CallContext
    from agentguard.pricing import Pricer
    from agentguard.routing import RouteDecision
    from agentguard.session import Session
    from agentguard.tokens import TokenCounter

__all__ = ["RouteStage", "TrimStage"]

_UNREAD = object()
"""The budget share left was not read by the caller."""

_classifying: ContextVar[bool] = ContextVar("agentguard_classifying", default=False)


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
        self.router = Router(config, ask=_guarded_ask(ask) if ask else None)
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
        if _classifying.get() or not (
            self.config.tiers or self.config.force_model or call.session.force_model
        ):
            return
        decision = self.decide(call)
        call.notes["route"] = decision
        if decision.model != call.model:
            call.body["model"] = decision.model
        logger.info("route", session_id=call.session.id, **decision.log_fields())

    def escalate(self, call: CallContext, payload: dict[str, Any]) -> str | None:
        from agentguard.routing import check_step_failure

        decision = call.notes.get("route")
        if decision is None or not self.config.escalate:
            return None
        failure = check_step_failure(payload, call.tools)
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


def _guarded_ask(
    ask: Callable[[list[dict[str, Any]]], str],
) -> Callable[[list[dict[str, Any]]], str]:
    """The classifier's own call must not be routed (or classified) itself."""

    def guarded(messages: list[dict[str, Any]]) -> str:
        token = _classifying.set(True)
        try:
            return ask(messages)
        finally:
            _classifying.reset(token)

    return guarded


class TrimStage:
    """Fits the call's history into the context budget, cache-stably across a session.

    The call's dialect says what its history is (:attr:`~agentguard.dialects.Dialect.
    trim_view`): chat messages, Responses ``input`` items, Anthropic messages; the trimmer
    plans the same way for each. The room is ``trimming.max_context_tokens`` (or 90% of the
    model's context window when the price data knows it) minus the output the call may
    generate.
    """

    __slots__ = ("config", "counter", "nested_calls", "pricer", "reads_budget", "trimmer")

    def __init__(
        self,
        config: TrimmingConfig,
        counter: TokenCounter,
        pricer: Pricer,
        summarizer: Callable[[list[dict[str, Any]]], str] | None = None,
    ) -> None:
        from agentguard.trimming import Trimmer

        self.config = config
        self.counter = counter
        self.pricer = pricer
        self.nested_calls = summarizer is not None
        self.reads_budget = False
        self.trimmer = Trimmer(
            config, counter, summarizer=_guarded_ask(summarizer) if summarizer else None
        )

    def _room(self, call: CallContext) -> int | None:
        limit = self.config.max_context_tokens
        if limit is None:
            try:
                window = self.pricer.price(call.model).context_window
            except Exception:
                return None
            if window is None:
                return None
            limit = int(window * 0.9)
        output = call.dialect.output_cap(call.body) or 0
        return max(1, limit - output)

    def _cached_input_ratio(self, model: str) -> float | None:
        if not self.config.cache_aware:
            return None
        try:
            price = self.pricer.price(model)
        except Exception:
            return None  # unpriced models are refused later, by pricing
        if price.input <= 0:
            return None
        return min(float(price.cached_input / price.input), 1.0)

    def prepare(self, call: CallContext) -> None:
        if not self.config.enabled or _classifying.get():
            return
        view = call.dialect.trim_view
        entries = view.read(call.body)
        if not entries:
            return  # nothing the guard can trim (a continued response, say)
        room = self._room(call)
        if room is None:
            return
        session = call.session
        from agentguard.trimming import TrimState

        state = (
            TrimState.model_validate(session.state.trim_state) if session.state.trim_state else None
        )
        model = call.model
        if state is None:
            overhead = self.counter.request_overhead(model)
            entry_tokens = sum(view.counts(entries, model, self.counter)) + overhead
            tokens = entry_tokens - overhead + view.overhead(model, self.counter, call.tools)
            if tokens <= room:
                # Fits and nothing was cut before: nothing to keep stable yet. The count is
                # kept so pricing does not count the same messages again.
                call.notes["message_tokens"] = (model, entries, entry_tokens)
                return
        cached = self._cached_input_ratio(model) if view.caches_prefix(call.body) else None
        result = self.trimmer.fit(
            entries,
            model=model,
            max_tokens=room,
            state=state,
            tools=call.tools,
            session_id=session.id,
            cached_input_ratio=cached,
            view=view,
        )
        with session.lock:
            session.state.trim_state = result.state.model_dump(mode="json")
        call.notes["trim"] = result
        if result.trimmed:
            view.write(call.body, result.messages, result.sources)
            if result.retrimmed or logger.enabled("debug"):
                logger.info(
                    "trim",
                    session_id=session.id,
                    model=call.model,
                    api=call.dialect.name,
                    tokens_before=result.tokens_before,
                    tokens_after=result.tokens_after,
                    room=room,
                    elided_tool_outputs=result.elided_tool_outputs,
                    dropped_messages=result.dropped_messages,
                    truncated_messages=result.truncated_messages,
                    retrimmed=result.retrimmed,
                    prefix_reused=result.prefix_reused,
                )
