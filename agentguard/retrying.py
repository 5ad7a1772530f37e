"""Retrying transient failures: which failures, how long to wait, and reading reset headers.

The SDK's own retries are switched off for every response the guard hands back (it adds
``x-should-retry: false``), so every HTTP attempt is seen and counted here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = [
    "Failure",
    "RetryPolicy",
    "is_transient_status",
    "parse_reset_duration",
    "parse_retry_after",
]

_TRANSIENT_STATUS = frozenset({408, 409, 500, 502, 503, 504, 520, 522, 524, 529})
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def is_transient_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying in-process (timeouts, conflicts, 5xx)."""
    return status in _TRANSIENT_STATUS or status >= 500


def parse_reset_duration(text: str) -> float | None:
    """Parse OpenAI's reset durations (``6m0s``, ``1s``, ``120ms``, ``1h2m3.5s``) or plain
    seconds into seconds; ``None`` if unreadable."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        value = float(match.group(1))
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def parse_retry_after(
    headers: Mapping[str, str], *, now: datetime | None = None
) -> tuple[float, str] | None:
    """How long the response asks to wait, and which header said so.

    Reads, in order: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date),
    ``x-ratelimit-reset-requests`` and ``x-ratelimit-reset-tokens`` (the later of the two).
    Header names must be lower-case.
    """
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000), "retry-after-ms"
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        seconds = parse_reset_duration(value)
        if seconds is not None:
            return seconds, "retry-after"
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            current = now or datetime.now(UTC)
            return max(0.0, (when - current).total_seconds()), "retry-after"
    resets = []
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        raw = headers.get(name)
        seconds = parse_reset_duration(raw) if raw else None
        if seconds is not None:
            resets.append((seconds, name))
    if resets:
        return max(resets)
    return None


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed HTTP attempt, as the retry policy sees it."""

    kind: str
    """``timeout``, ``connection``, ``garbage`` (a 200 that is not JSON), ``status`` or
    ``rate_limit``."""
    status: int | None = None
    retry_after_s: float | None = None
    message: str = ""

    @property
    def transient(self) -> bool:
        if self.kind in ("timeout", "connection", "garbage"):
            return True
        return (
            self.kind == "status" and self.status is not None and is_transient_status(self.status)
        )


class RetryPolicy:
    """Jittered exponential backoff that honours ``retry-after``.

    Args:
        max_retries: retries after the first attempt.
        initial_s: the first delay; each retry doubles it.
        max_s: the longest computed delay.
        max_retry_after_s: a server's ``retry-after`` above this is capped.
        jitter: a random source (seeded in tests).
    """

    __slots__ = ("initial_s", "jitter", "max_retries", "max_retry_after_s", "max_s")

    def __init__(
        self,
        max_retries: int = 3,
        *,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        max_retry_after_s: float = 86400.0,
        jitter: random.Random | None = None,
    ) -> None:
        self.max_retries = max_retries
        self.initial_s = initial_s
        self.max_s = max_s
        self.max_retry_after_s = max_retry_after_s
        self.jitter = jitter or random.Random()

    def delay(self, retry_number: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based).

        A server's ``retry-after`` wins over the computed backoff (capped at
        ``max_retry_after_s``); otherwise full jitter over ``initial * 2**(n-1)``, at most
        ``max_s``, and never below a tenth of it so retries are not instant.
        """
        if retry_after_s is not None:
            return min(max(0.0, retry_after_s), self.max_retry_after_s)
        ceiling = min(self.max_s, self.initial_s * (2 ** (retry_number - 1)))
        return ceiling * (0.1 + 0.9 * self.jitter.random())

    def should_retry(self, failure: Failure, retries_done: int) -> bool:
        """Whether a transient failure gets another attempt."""
        return failure.transient and retries_done < self.max_retries
