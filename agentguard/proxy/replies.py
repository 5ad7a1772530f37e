"""The proxy's own answers, in the error shape the client's SDK understands.

OpenAI's SDKs read ``{"error": {"message", "type", "param", "code"}}``; Anthropic's read
``{"type": "error", "error": {"type", "message"}}``. A refusal that lifts at a known time (an
exhausted budget, a parked session) is a 429 with ``retry-after`` (whole seconds, rounded up),
``retry-after-ms`` (exact) and ``x-agentguard-reset-at`` (RFC 3339); the SDKs' own short
retries cannot help before then, so ``x-should-retry: false`` tells them not to try.

=====================================  ======  =================================================
error                                  status  why
=====================================  ======  =================================================
``BudgetExceeded`` that fits a window   429     the budget is spent until ``resets_at``
``SessionParked``                       429     the session waits for its reset
``BudgetExceeded`` that never resets    403     a session's own budget is spent
``BudgetExceeded`` that can never fit   400     the call is larger than the whole limit
``UnmeteredRequest``                    403     under a budget, only metered calls pass
``ConfigError``, ``PricingError``,      400     the request names an unknown budget, model...
``ContextTooLarge``
``LimitExceeded`` (iterations, tools,   403     the session's own limit; it does not reset
loops)
``RetryLimitExceeded``                  502     the upstream kept failing
=====================================  ======  =================================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agentguard.dialects.anthropic_messages import anthropic_error_type
from agentguard.errors import (
    AgentGuardError,
    BudgetExceeded,
    ConfigError,
    ContextTooLarge,
    LimitExceeded,
    PricingError,
    RetryLimitExceeded,
    SessionParked,
    UnmeteredRequest,
)

__all__ = ["ErrorReply", "error_reply", "refusal"]


@dataclass(slots=True)
class ErrorReply:
    """An error answered by the proxy itself."""

    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    kind: str = "error"
    """What it was, for the metrics: ``refused``, ``parked``, ``limit`` or ``error``."""


def refusal(
    status: int,
    message: str,
    *,
    anthropic: bool,
    code: str,
    reset_at: datetime | None = None,
    kind: str = "refused",
) -> ErrorReply:
    """An error in the client's dialect; with ``reset_at``, the headers that say when to retry."""
    if anthropic:
        payload: dict[str, object] = {
            "type": "error",
            "error": {"type": anthropic_error_type(status), "message": message},
        }
    else:
        payload = {"error": {"message": message, "type": code, "param": None, "code": code}}
    headers = [("content-type", "application/json")]
    if reset_at is not None:
        wait_s = max((reset_at - datetime.now(UTC)).total_seconds(), 0.0)
        headers += [
            ("retry-after", str(max(math.ceil(wait_s), 1))),
            ("retry-after-ms", str(max(math.ceil(wait_s * 1000), 1))),
            ("x-agentguard-reset-at", reset_at.astimezone(UTC).isoformat(timespec="milliseconds")),
            ("x-should-retry", "false"),
        ]
    elif status in (400, 403, 404):
        headers.append(("x-should-retry", "false"))
    body = json.dumps(payload, separators=(",", ":")).encode()
    return ErrorReply(status, body, headers, kind)


def error_reply(error: AgentGuardError, *, anthropic: bool) -> ErrorReply:
    """The answer to a guard error raised while serving a request (see the module table)."""
    message = str(error)
    if isinstance(error, SessionParked):
        return refusal(
            429,
            message,
            anthropic=anthropic,
            code="session_parked",
            reset_at=error.resume_at,
            kind="parked",
        )
    if isinstance(error, BudgetExceeded):
        if error.resets_at is not None and error.fits_empty_window:
            return refusal(
                429,
                message,
                anthropic=anthropic,
                code="budget_exceeded",
                reset_at=error.resets_at,
                kind="parked",
            )
        # Spent for good (a session's own budget), or a call larger than the whole limit.
        status = 403 if error.fits_empty_window else 400
        return refusal(status, message, anthropic=anthropic, code="budget_exceeded")
    if isinstance(error, UnmeteredRequest):
        return refusal(403, message, anthropic=anthropic, code="unmetered_request")
    if isinstance(error, RetryLimitExceeded):
        return refusal(502, message, anthropic=anthropic, code="upstream_failed", kind="error")
    if isinstance(error, LimitExceeded):
        return refusal(
            403, message, anthropic=anthropic, code=f"{error.limit}_exceeded", kind="limit"
        )
    if isinstance(error, (ConfigError, PricingError, ContextTooLarge)):
        return refusal(400, message, anthropic=anthropic, code="invalid_request_error")
    return refusal(500, message, anthropic=anthropic, code="agentguard_error", kind="error")
