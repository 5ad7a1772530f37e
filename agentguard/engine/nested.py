"""Nested model calls: a call the guard itself makes for a stage (the LLM classifier asking the
small tier, a trimming summary) runs through the same pipeline, so it is priced and counted,
but must not be routed, classified or trimmed again."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

__all__ = ["in_nested_call", "nested_call"]

_nested: ContextVar[bool] = ContextVar("agentguard_nested_call", default=False)


def in_nested_call() -> bool:
    """Whether the current call is one a stage made (stages then leave it as it is)."""
    return _nested.get()


def nested_call(
    ask: Callable[[list[dict[str, Any]]], str],
) -> Callable[[list[dict[str, Any]]], str]:
    """``ask``, marked so that the calls it makes are not routed or trimmed themselves."""

    def marked(messages: list[dict[str, Any]]) -> str:
        token = _nested.set(True)
        try:
            return ask(messages)
        finally:
            _nested.reset(token)

    return marked
