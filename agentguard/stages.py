"""The request-rewriting stages of the pipeline: routing, then trimming.

Each adapts a pure policy (:mod:`agentguard.routing`, :mod:`agentguard.trimming`) to the
pipeline's :class:`~agentguard.pipeline.CallContext`: it reads the call and the session,
replaces top-level keys of the request body (never mutating the caller's objects), and leaves
what it decided in ``call.notes`` for logs and the demo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentguard.log import logger

if TYPE_CHECKING:
    from agentguard.config import TrimmingConfig
    from agentguard.pipeline import CallContext
    from agentguard.pricing import Pricer
    from agentguard.tokens import TokenCounter

__all__ = ["TrimStage"]


class TrimStage:
    """Fits the call's messages into the context budget, cache-stably across a session.

    The room is ``trimming.max_context_tokens`` (or 90% of the model's context window when
    the price data knows it) minus the output the call may generate.
    """

    __slots__ = ("config", "counter", "pricer", "trimmer")

    def __init__(self, config: TrimmingConfig, counter: TokenCounter, pricer: Pricer) -> None:
        from agentguard.trimming import Trimmer

        self.config = config
        self.counter = counter
        self.pricer = pricer
        self.trimmer = Trimmer(config, counter)

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
        requested = call.body.get("max_completion_tokens") or call.body.get("max_tokens")
        output = requested if isinstance(requested, int) and requested > 0 else 0
        return max(1, limit - output)

    def prepare(self, call: CallContext) -> None:
        if not self.config.enabled or not call.messages:
            return
        room = self._room(call)
        if room is None:
            return
        session = call.session
        from agentguard.trimming import TrimState

        state = (
            TrimState.model_validate(session.state.trim_state) if session.state.trim_state else None
        )
        if state is None and self.counter.count_messages(call.messages, call.model) <= room:
            return  # fits and nothing was cut before: nothing to keep stable yet
        result = self.trimmer.fit(
            call.messages,
            model=call.model,
            max_tokens=room,
            state=state,
            tools=call.tools,
            session_id=session.id,
        )
        with session.lock:
            session.state.trim_state = result.state.model_dump(mode="json")
        call.notes["trim"] = result
        if result.elided_tool_outputs or result.dropped_messages:
            call.body["messages"] = result.messages
            if result.retrimmed or logger.enabled("debug"):
                logger.info(
                    "trim",
                    session_id=session.id,
                    model=call.model,
                    tokens_before=result.tokens_before,
                    tokens_after=result.tokens_after,
                    room=room,
                    elided_tool_outputs=result.elided_tool_outputs,
                    dropped_messages=result.dropped_messages,
                    retrimmed=result.retrimmed,
                    prefix_reused=result.prefix_reused,
                )
