"""Telling limit errors apart: each kind needs a different wait.

- ``rate_limit``: a short provider limit (requests or tokens per minute). Wait ``retry-after``
  in-process when short, else park until it resets.
- ``budget_window``: a dollar budget window is spent (a gateway's key or model budget). Park
  until the window resets.
- ``quota_exhausted``: the account is out of credit (OpenAI's ``insufficient_quota``). Waiting
  does not help; a person must act. Recorded as ``failed``, never retried.

Gateways do not all answer 429: LiteLLM's proxy answers a key budget with 422 (400 or 429 in
other versions) and ``type: "budget_exceeded"``, so the rules look at the body as well as the
status. Rules are tried in order, configured rules first; the first match wins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from agentguard.config import LimitRule
from agentguard.retrying import parse_retry_after

__all__ = [
    "BUILTIN_RULES",
    "Decision",
    "LimitKind",
    "LimitVerdict",
    "classify_limit_error",
    "reset_after",
]

LimitKind = Literal["rate_limit", "budget_window", "quota_exhausted"]

BUILTIN_RULES: tuple[LimitRule, ...] = (
    LimitRule(kind="quota_exhausted", error_code="insufficient_quota"),
    LimitRule(kind="quota_exhausted", error_type="insufficient_quota"),
    LimitRule(kind="budget_window", error_type="budget_exceeded"),
    LimitRule(kind="budget_window", error_code="budget_exceeded"),
    LimitRule(
        kind="budget_window",
        status=[429],
        message_pattern=r"crossed budget|budget (has been )?exceeded|exceeded budget|out of budget",
    ),
    LimitRule(
        kind="budget_window",
        status=[400, 402, 403, 422],
        message_pattern=r"budget (has been )?exceeded|exceeded budget|crossed budget",
    ),
    LimitRule(
        kind="quota_exhausted",
        status=[429, 402],
        message_pattern=r"exceeded your current quota|check your plan and billing",
    ),
    # OpenRouter's per-key credit caps: a daily/weekly/monthly cap resets at midnight UTC, a
    # total cap never does.
    LimitRule(
        kind="budget_window",
        status=[403, 429],
        message_pattern=r"key limit exceeded \((daily|weekly|monthly) limit\)",
    ),
    LimitRule(kind="quota_exhausted", status=[403, 429], message_pattern=r"key limit exceeded"),
    # 402 Payment Required: out of credit (OpenRouter's balance, Anthropic's billing_error).
    LimitRule(kind="quota_exhausted", status=[402]),
    LimitRule(kind="rate_limit", status=[429]),
)

# The headers a parked record keeps as evidence: never authorization or cookies.
EVIDENCE_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "llm_provider-retry-after",
    "reset_at",
    "rate_limit_type",
    "x-litellm-key-spend",
    "x-litellm-key-max-budget",
    "x-ratelimit-reset",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
)

# Anthropic's limits, each with ``-remaining`` and ``-reset`` (RFC 3339) headers.
_ANTHROPIC_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one limit error."""

    action: str
    """``wait`` (sleep ``wait_s`` and retry), ``park``, ``fail`` (record as failed, hand the
    error back) or ``hand_back`` (parking is off: the caller gets the provider's error)."""
    wait_s: float = 0.0


def decide_limit(
    verdict: LimitVerdict,
    *,
    retries_done: int,
    max_retries: int,
    wait_inline_max_s: float,
    parking: bool,
    records: bool,
) -> Decision:
    """The one rule for a limit error: a reset within ``wait_inline_max_s`` (while retries
    are left) is waited for in-process; otherwise the session parks, or, with parking off,
    the caller gets the provider's error. An exhausted quota never resets by waiting: with
    ``records`` (a parking store is wired) it is recorded as failed.

    Args:
        verdict: what the limit error is.
        retries_done: retries of this call so far.
        max_retries: the retry policy's cap.
        wait_inline_max_s: the longest reset waited for in-process.
        parking: parking is on (``parking.enabled``).
        records: a parking store is wired, so a failed record can be written.
    """
    if verdict.kind == "quota_exhausted" and records:
        return Decision("fail")
    wait = verdict.wait_s
    if wait is not None and wait <= wait_inline_max_s and retries_done < max_retries:
        return Decision("wait", wait)
    return Decision("park" if parking and records else "hand_back")


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """What a limit error is and when it should be tried again."""

    kind: LimitKind
    status: int
    error_type: str | None
    error_code: str | None
    message: str
    wait_s: float | None
    """Seconds until the limit resets, if the response said; ``None`` if it did not."""
    reset_source: str | None
    """Which header (or body field) said when it resets."""
    headers: dict[str, str]
    """The response headers that mattered (see ``EVIDENCE_HEADERS``)."""


def _error_fields(body: Any) -> tuple[str | None, str | None, str]:
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except ValueError:
            return None, None, body[:300].decode("utf-8", "replace")
    if not isinstance(body, Mapping):
        return None, None, str(body or "")[:300]
    error = body.get("error", body)
    if isinstance(error, str):
        return None, None, error[:500]
    if not isinstance(error, Mapping):
        return None, None, ""
    error_type = error.get("type") or body.get("errorType")
    error_code = error.get("code") or body.get("errorCode")
    message = error.get("message") or body.get("errorMessage") or ""
    return (
        str(error_type) if error_type is not None else None,
        str(error_code) if error_code is not None else None,
        str(message)[:500],
    )


def _matches(
    rule: LimitRule, status: int, error_type: str | None, error_code: str | None, message: str
) -> bool:
    if rule.status is not None and status not in rule.status:
        return False
    if rule.error_type is not None and rule.error_type != error_type:
        return False
    if rule.error_code is not None and rule.error_code != error_code:
        return False
    return not (
        rule.message_pattern is not None
        and not re.search(rule.message_pattern, message, re.IGNORECASE)
    )


_RESET_IN_MESSAGE = re.compile(
    r"(?:resets at|reset_at)[:\s]+(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})(?:\s*UTC|Z)?", re.I
)
_TRY_AGAIN_IN = re.compile(
    r"(?:try again in|retry after) (\d+(?:\.\d+)?)\s*(ms|s|seconds?|m|minutes?)\b", re.I
)


def _parse_instant(text: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 time (``Z`` or an offset; UTC when it has neither)."""
    try:
        when = datetime.fromisoformat(text.strip().replace(" ", "T"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _anthropic_reset(headers: Mapping[str, str], now: datetime) -> tuple[float, str] | None:
    """Anthropic's ``anthropic-ratelimit-*-reset``: the exhausted limit's reset (``-remaining``
    of 0), else the latest of them."""
    found: list[tuple[bool, float, str]] = []
    for limit in _ANTHROPIC_LIMITS:
        name = f"anthropic-ratelimit-{limit}-reset"
        when = _parse_instant(headers.get(name) or "")
        if when is None:
            continue
        exhausted = (headers.get(f"anthropic-ratelimit-{limit}-remaining") or "").strip() == "0"
        found.append((exhausted, max(0.0, (when - now).total_seconds()), name))
    if not found:
        return None
    exhausted_only = [item for item in found if item[0]] or found
    _, seconds, name = max(exhausted_only, key=lambda item: item[1])
    return seconds, name


def _epoch_reset(value: str, now: datetime) -> float | None:
    """OpenRouter's ``x-ratelimit-reset``: an epoch in milliseconds (or seconds)."""
    try:
        number = float(value)
    except ValueError:
        return None
    if number > 1e11:
        number /= 1000
    if number < 1e9:
        return max(0.0, number)  # a plain number of seconds
    return max(0.0, number - now.timestamp())


def _body_resets_at(body: Any) -> str | None:
    """A ``resets_at`` field of an error body (``error.metadata``, ``error`` or the top)."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    places: list[Any] = [body]
    if isinstance(error, Mapping):
        places[:0] = [error.get("metadata"), error]
    for place in places:
        if isinstance(place, Mapping) and isinstance(place.get("resets_at"), str):
            return str(place["resets_at"])
    return None


def reset_after(
    headers: Mapping[str, str],
    message: str = "",
    *,
    now: datetime | None = None,
    resets_at: str | None = None,
) -> tuple[float, str] | None:
    """Seconds until a provider limit resets and the source that said so, from (in order)
    ``retry-after-ms``, ``retry-after``, ``x-ratelimit-reset-*``, Anthropic's
    ``anthropic-ratelimit-*-reset``, OpenRouter's ``x-ratelimit-reset``, non-standard gateway
    headers, the body's ``resets_at``, then the message."""
    current = now or datetime.now(UTC)
    found = parse_retry_after(headers, now=current)
    if found is not None:
        return found
    found = _anthropic_reset(headers, current)
    if found is not None:
        return found
    epoch = _epoch_reset(headers.get("x-ratelimit-reset") or "", current)
    if epoch is not None:
        return epoch, "x-ratelimit-reset"
    value = headers.get("llm_provider-retry-after")
    if value:
        try:
            return max(0.0, float(value)), "llm_provider-retry-after"
        except ValueError:
            pass
    when = _parse_instant(resets_at) if resets_at else None
    if when is not None:
        return max(0.0, (when - current).total_seconds()), "resets_at"
    for text, source in ((headers.get("reset_at", ""), "reset_at"), (message, "message")):
        match = _RESET_IN_MESSAGE.search(f"resets at {text}" if source == "reset_at" else text)
        if match:
            when = datetime.fromisoformat(match.group(1).replace(" ", "T")).replace(tzinfo=UTC)
            return max(0.0, (when - current).total_seconds()), source
    match = _TRY_AGAIN_IN.search(message)
    if match:
        value_s = float(match.group(1))
        unit = match.group(2).lower()
        seconds = value_s / 1000 if unit == "ms" else value_s * (60 if unit.startswith("m") else 1)
        return seconds, "message"
    return None


def classify_limit_error(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    rules: Iterable[LimitRule] = (),
    *,
    now: datetime | None = None,
) -> LimitVerdict | None:
    """Classify an error response; ``None`` if it is not a limit error.

    Args:
        status: the HTTP status.
        headers: the response headers (a case-insensitive mapping, or lower-cased names).
        body: the response body (bytes, text or parsed JSON).
        rules: configured rules, tried before the built-in ones.
    """
    error_type, error_code, message = _error_fields(body)
    for rule in (*rules, *BUILTIN_RULES):
        if _matches(rule, status, error_type, error_code, message):
            found = reset_after(headers, message, now=now, resets_at=_body_resets_at(body))
            evidence = {name: headers[name] for name in EVIDENCE_HEADERS if headers.get(name)}
            return LimitVerdict(
                kind=rule.kind,
                status=status,
                error_type=error_type,
                error_code=error_code,
                message=message,
                wait_s=found[0] if found else None,
                reset_source=found[1] if found else None,
                headers=evidence,
            )
    return None


def resume_time(
    verdict: LimitVerdict, *, window_hours: float, max_wait_s: float, now: datetime
) -> tuple[datetime, str]:
    """When to resume after ``verdict``: its reset, capped at ``max_wait_s``, else
    ``window_hours`` from now."""
    if verdict.wait_s is not None:
        wait = min(verdict.wait_s, max_wait_s)
        source = verdict.reset_source or "response"
        if wait < verdict.wait_s:
            source += f" (capped at {max_wait_s:g}s)"
        return now + timedelta(seconds=wait), source
    return now + timedelta(hours=window_hours), "parking.window_hours"
