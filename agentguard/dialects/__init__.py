"""The wire APIs the guard speaks, one module each, behind one :class:`Dialect` protocol.

``openai_chat`` (``/chat/completions``) is the reference, ``openai_responses`` (``/responses``)
the second; :func:`dialect_for` matches an HTTP request to the dialect that guards it.
"""

from __future__ import annotations

from agentguard.dialects.base import Answer, Dialect, StreamTap
from agentguard.dialects.openai_chat import OPENAI_CHAT
from agentguard.dialects.openai_responses import OPENAI_RESPONSES

__all__ = ["DIALECTS", "Answer", "Dialect", "StreamTap", "dialect_for"]

DIALECTS: tuple[Dialect, ...] = (OPENAI_CHAT, OPENAI_RESPONSES)
"""Every dialect the transports guard, in the order requests are matched."""


def dialect_for(method: str, path: str) -> Dialect | None:
    """The dialect of an HTTP request, or ``None`` when no dialect guards it."""
    for dialect in DIALECTS:
        if dialect.matches(method, path):
            return dialect
    return None
