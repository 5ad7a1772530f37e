"""Trimming as a pipeline stage: fits the call's history into the context budget,
cache-stably across a session, through the dialect's history view.

It adapts the pure policy of :mod:`agentguard.trimming` to the pipeline's
:class:`~agentguard.engine.CallContext`: it replaces top-level keys of the request body (never
mutating the caller's objects) and leaves what it did in ``call.notes``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentguard.engine.nested import in_nested_call, nested_call
from agentguard.log import logger

if TYPE_CHECKING:
    from agentguard.config import TrimmingConfig
    from agentguard.engine.call import CallContext
    from agentguard.pricing import Pricer
    from agentguard.tokens import TokenCounter

__all__ = ["TrimStage"]


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
            config, counter, summarizer=nested_call(summarizer) if summarizer else None
        )

    def _room(self, call: CallContext, model: str) -> int | None:
        limit = self.config.max_context_tokens
        if limit is None:
            try:
                window = self.pricer.price(model).context_window
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
        if not self.config.enabled or in_nested_call():
            return
        view = call.dialect.trim_view
        entries = view.read(call.body)
        if not entries:
            return  # nothing the guard can trim (a continued response, say)
        model = call.model
        room = self._room(call, model)
        if room is None:
            return
        session = call.session
        saved = session.state.trim_state
        if saved:
            from agentguard.trimming import TrimState

            state: TrimState | None = TrimState.model_validate(saved)
        else:
            state = None
            tokens = sum(view.counts(entries, model, self.counter)) + view.overhead(
                model, self.counter, call.tools
            )
            if tokens <= room:
                # Fits and nothing was cut before: nothing to keep stable yet. The count is
                # kept so pricing does not count the same request again.
                call.notes["input_tokens"] = (model, entries, tokens)
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
