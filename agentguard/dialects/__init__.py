"""The wire APIs the guard speaks, one module each, behind one :class:`Dialect` protocol.

``openai_chat`` (``/chat/completions``) is the reference, ``openai_responses`` (``/responses``)
the second; :func:`dialect_for` matches an HTTP request to the dialect that guards it.
"""

from __future__ import annotations

from agentguard.dialects.anthropic_messages import ANTHROPIC_MESSAGES
from agentguard.dialects.base import Answer, Dialect, StreamTap
from agentguard.dialects.openai_chat import OPENAI_CHAT
from agentguard.dialects.openai_responses import OPENAI_RESPONSES

__all__ = [
    "DIALECTS",
    "FREE_ENDPOINTS",
    "Answer",
    "Dialect",
    "StreamTap",
    "dialect_for",
    "dialect_named",
    "free_endpoint",
]

DIALECTS: tuple[Dialect, ...] = (OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC_MESSAGES)
"""Every dialect the transports guard, in the order requests are matched."""

FREE_ENDPOINTS: tuple[str, ...] = (
    "/v1/messages/count_tokens",
    "/responses/input_tokens",
    "/cancel",
)
"""``POST`` endpoints no provider bills (token counting, cancelling a background response):
let through under a budget."""


def dialect_for(method: str, path: str) -> Dialect | None:
    """The dialect of an HTTP request, or ``None`` when no dialect guards it."""
    key = (method, path)
    found = _BY_REQUEST.get(key, _UNSEEN)
    if found is not _UNSEEN:
        return found  # type: ignore[return-value]
    found = next((dialect for dialect in DIALECTS if dialect.matches(method, path)), None)
    if len(_BY_REQUEST) >= _BY_REQUEST_MAX:
        _BY_REQUEST.clear()  # an agent calls a handful of paths; this bounds a strange one
    _BY_REQUEST[key] = found
    return found


# Answers of dialect_for by (method, path): asked on every call.
_UNSEEN = object()
_BY_REQUEST: dict[tuple[str, str], Dialect | None] = {}
_BY_REQUEST_MAX = 256


def dialect_named(name: str) -> Dialect | None:
    """The dialect called ``name`` (``openai_chat``, ``anthropic_messages`` ...), or ``None``."""
    for dialect in DIALECTS:
        if dialect.name == name:
            return dialect
    return None


def free_endpoint(path: str) -> bool:
    """Whether a ``POST`` to ``path`` is free (never billed, so never metered)."""
    trimmed = path.rstrip("/")
    return any(trimmed.endswith(endpoint) for endpoint in FREE_ENDPOINTS)
