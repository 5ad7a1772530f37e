"""Metering the legacy endpoints under a budget: ``/completions`` and ``/embeddings``.

These are not agent steps (no limits, routing, trimming or parking apply), but they cost money,
so under a budget each attempt is priced and reserved like a chat completion and settled from
the usage it reports:

* **Input**: the ``prompt``/``input`` counted offline (a string, a list of strings, token ids,
  or lists of token ids), plus the same margin as chat.
* **Output**: ``/completions`` generates up to ``max_tokens`` (OpenAI's default: 16) per
  candidate, and bills ``max(n, best_of)`` candidates; ``/embeddings`` generates nothing.

An attempt whose outcome is unknown (a timeout or a lost connection after the request left) is
charged at its worst case, never released; an error response is released (nothing was billed).
A streamed ``/completions`` request, or a body that cannot be read, is refused.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from agentguard.engine.actions import (
    Action,
    Outcome,
    Release,
    Reply,
    Reserve,
    Send,
    Settle,
    TransportFailure,
)
from agentguard.engine.wire import json_object
from agentguard.errors import UnmeteredRequest
from agentguard.log import logger
from agentguard.pricing import Usage

if TYPE_CHECKING:
    from agentguard.pricing import Pricer
    from agentguard.session import Session
    from agentguard.tokens import TokenCounter

__all__ = ["legacy_endpoint", "run_legacy"]

_COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for ``/completions``."""


def legacy_endpoint(method: str, path: str) -> str | None:
    """``completions`` or ``embeddings`` for a ``POST`` to a legacy endpoint, else ``None``."""
    if method.upper() != "POST":
        return None
    trimmed = path.rstrip("/")
    if trimmed.endswith("/chat/completions"):
        return None
    if trimmed.endswith("/completions"):
        return "completions"
    if trimmed.endswith("/embeddings"):
        return "embeddings"
    return None


def run_legacy(
    pricer: Pricer,
    counter: TokenCounter,
    session: Session,
    kind: str,
    endpoint: str,
    raw: bytes,
) -> Generator[Action, Any, Outcome]:
    """Price, reserve, send and settle one legacy request (see the module docstring).

    Raises:
        UnmeteredRequest: the request cannot be bounded.
        PricingError: the model has no price.
        BudgetExceeded: the worst case does not fit a budget.
    """
    body = json_object(raw)
    if body is None:
        raise _refusal(endpoint, "its body is not a JSON object")
    if kind == "completions" and body.get("stream"):
        raise _refusal(endpoint, "a streamed legacy completion is not metered")
    model = str(body.get("model") or "")
    field = "prompt" if kind == "completions" else "input"
    input_tokens = _input_tokens(counter, body.get(field), model)
    if input_tokens is None:
        raise _refusal(endpoint, f"its {field!r} is not text or token ids")
    price = pricer.price(model)
    candidates = 1
    output_tokens = 0
    if kind == "completions":
        candidates = max(_positive(body.get("n"), 1), _positive(body.get("best_of"), 1))
        output_tokens = (
            _positive(body.get("max_tokens"), _COMPLETIONS_DEFAULT_MAX_TOKENS) * candidates
        )
    billed_input = input_tokens + input_tokens // 20 + 16
    if price.provider != "openai":
        billed_input *= candidates
    worst = price.worst_case(billed_input, output_tokens)
    lines = session.budget_lines()
    if logger.enabled("debug"):
        logger.debug(
            "reserve",
            session_id=session.id,
            model=model,
            endpoint=endpoint,
            input_tokens=billed_input,
            max_output_tokens=output_tokens,
            amount_usd=worst,
        )
    reservation = yield Reserve(tuple(lines), worst, session.id)
    try:
        reply: Reply = yield Send(body, False)
    except TransportFailure:
        # The request left: the provider may have billed it. Charged, never released.
        yield Settle(reservation, worst)
        raise
    if reply.status >= 400:
        yield Release(reservation)
        return Outcome(reply)
    payload = json_object(reply.body or b"")
    usage = Usage.from_openai(payload.get("usage") if payload else None)
    if usage is None:
        # Billed, but by how much is not known: charged at the worst case.
        logger.warning("usage_missing", session_id=session.id, model=model, endpoint=endpoint)
        cost, input_used, output_used = worst, 0, 0
    else:
        cost, input_used, output_used = price.cost(usage), usage.input_tokens, usage.output_tokens
    yield Settle(reservation, cost)
    session.add_spend(cost, input_used, output_used)
    return Outcome(reply)


def _refusal(endpoint: str, reason: str) -> UnmeteredRequest:
    return UnmeteredRequest(
        f"refused before sending: POST {endpoint}: {reason}, so its cost cannot be bounded and "
        f"the session runs under a budget; fix the request, or let the endpoint through "
        f'unmetered with limits.unmetered = ["{endpoint}"]',
        endpoint=endpoint,
        reason=reason,
        field="limits.unmetered",
    )


def _positive(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


def _input_tokens(counter: TokenCounter, value: object, model: str) -> int | None:
    """Tokens of a ``prompt``/``input``: a string, a list of strings, token ids, or lists of
    token ids; ``None`` for anything else."""
    if isinstance(value, str):
        return counter.count_text(value, model)
    if not isinstance(value, list):
        return None
    if _token_ids(value):
        return len(value)
    total = 0
    for item in value:
        if isinstance(item, str):
            total += counter.count_text(item, model)
        elif isinstance(item, list) and _token_ids(item):
            total += len(item)
        else:
            return None
    return total


def _token_ids(items: list[Any]) -> bool:
    return all(isinstance(item, int) and not isinstance(item, bool) for item in items)
