"""Faults the simulated provider injects, one per chat completion request, in queue order."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentguard.sim.payloads import default_error_body, error_body, format_reset_duration

__all__ = [
    "CutStream",
    "Fault",
    "FaultQueue",
    "Garbage",
    "HTTPError",
    "Timeout",
    "rate_limit_fault",
]


@dataclass(frozen=True, slots=True)
class HTTPError:
    """Answer an HTTP error instead of a completion.

    Attributes:
        status: the HTTP status.
        body: the JSON body (a dict), or raw text or bytes; OpenAI's usual error for the
            status when None.
        headers: extra response headers.
    """

    status: int = 500
    body: Mapping[str, Any] | str | bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def body_for(self, model: str) -> Mapping[str, Any] | str | bytes:
        """The body to send (``model`` is the requested model, for default messages)."""
        if self.body is not None:
            return self.body
        if self.status == 429:
            return error_body(
                f"Rate limit reached for {model or 'this model'} in organization org-sim on "
                "requests per min (RPM): Limit 500, Used 500, Requested 1. "
                "Please try again in 120ms.",
                "requests",
                None,
                "rate_limit_exceeded",
            )
        return default_error_body(self.status)


@dataclass(frozen=True, slots=True)
class Timeout:
    """Wait ``seconds`` before answering (normally), so that a client's timeout fires first."""

    seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class Garbage:
    """Answer 200 with a body that is not JSON, though labelled as JSON (as a misbehaving
    proxy does). The ``openai`` SDK then fails to decode it (``json.JSONDecodeError``)."""

    body: bytes = b"<html><body><h1>502 Bad Gateway</h1>upstream sent garbage</body></html>"
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class CutStream:
    """Drop the connection mid-answer: after ``after_chunks`` SSE events of a stream, or half
    way through the body of a non-streamed answer."""

    after_chunks: int = 2


Fault = HTTPError | Timeout | Garbage | CutStream
"""One injected fault."""


def rate_limit_fault(
    *,
    retry_after: float | str | None = None,
    reset_requests: float | str | None = None,
    reset_tokens: float | str | None = None,
    body: Mapping[str, Any] | str | bytes | None = None,
) -> HTTPError:
    """A 429 shaped like OpenAI's rate-limit answer.

    Args:
        retry_after: the ``retry-after`` header, seconds (a number) or the exact text.
        reset_requests: ``x-ratelimit-reset-requests``, seconds or the exact text (``"6m0s"``).
        reset_tokens: ``x-ratelimit-reset-tokens``, seconds or the exact text.
        body: the body; OpenAI's ``rate_limit_exceeded`` error when None.
    """
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = _seconds_text(retry_after)
    if reset_requests is not None:
        headers["x-ratelimit-limit-requests"] = "500"
        headers["x-ratelimit-remaining-requests"] = "0"
        headers["x-ratelimit-reset-requests"] = _duration_text(reset_requests)
    if reset_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = "30000"
        headers["x-ratelimit-remaining-tokens"] = "0"
        headers["x-ratelimit-reset-tokens"] = _duration_text(reset_tokens)
    return HTTPError(status=429, body=body, headers=headers)


def _seconds_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def _duration_text(value: float | str) -> str:
    return value if isinstance(value, str) else format_reset_duration(value)


class FaultQueue:
    """A thread-safe first-in, first-out queue of faults."""

    def __init__(self) -> None:
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()

    def push(self, fault: Fault, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests (after those already queued)."""
        if times < 0:
            raise ValueError(f"n must be >= 0, not {times}")
        with self._lock:
            self._faults.extend([fault] * times)

    def pop(self) -> Fault | None:
        """The next fault, or None when none is queued."""
        if not self._faults:  # the common case, without taking the lock
            return None
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def __len__(self) -> int:
        return len(self._faults)
