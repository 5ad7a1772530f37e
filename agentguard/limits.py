"""Per-session limits: model calls, tool calls, failures in a row, runaway loops.

Each limit is a tiny policy object (``__slots__``, configured in ``__init__``) with up to three
hooks the pipeline calls: ``before_call(session)``, ``after_response(session, tool_calls)`` and
``after_failure(session, error)``. Limits compose with ``|`` into a :class:`Limits` set, in the
manner of tenacity's stop conditions; any callable ``fn(session)`` is accepted as a
``before_call`` check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agentguard.errors import IterationLimitExceeded, LoopDetected, RetryLimitExceeded

if TYPE_CHECKING:
    from agentguard.config import LimitsConfig
    from agentguard.session import Session

__all__ = [
    "ConsecutiveFailureLimit",
    "IterationLimit",
    "Limit",
    "Limits",
    "LoopDetector",
    "ToolCall",
    "ToolCallLimit",
    "tool_call_signature",
]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model asked for."""

    name: str
    arguments: str


def tool_call_signature(call: ToolCall) -> str:
    """A stable fingerprint of a tool call: its name and its arguments, JSON key order ignored."""
    try:
        arguments = json.dumps(json.loads(call.arguments), sort_keys=True, separators=(",", ":"))
    except (ValueError, TypeError):
        arguments = call.arguments.strip()
    digest = hashlib.sha256(arguments.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{call.name}:{digest}"


class Limit(Protocol):
    """What a limit may implement; every hook is optional."""

    def before_call(self, session: Session) -> None: ...


class _Composable:
    __slots__ = ()

    def __or__(self, other: Any) -> Limits:
        return Limits([self, other])


class IterationLimit(_Composable):
    """At most ``max_iterations`` model calls per session."""

    __slots__ = ("max_iterations",)

    def __init__(self, max_iterations: int) -> None:
        self.max_iterations = max_iterations

    def before_call(self, session: Session) -> None:
        if session.state.iterations >= self.max_iterations:
            raise IterationLimitExceeded(
                f"session {session.id!r} reached max_iterations={self.max_iterations}: "
                f"{session.state.iterations} model calls already made",
                session_id=session.id,
                limit="max_iterations",
                value=self.max_iterations,
                observed=session.state.iterations,
            )


class ToolCallLimit(_Composable):
    """At most ``max_tool_calls`` tool calls asked for per session."""

    __slots__ = ("max_tool_calls",)

    def __init__(self, max_tool_calls: int) -> None:
        self.max_tool_calls = max_tool_calls

    def before_call(self, session: Session) -> None:
        if session.state.tool_calls >= self.max_tool_calls:
            self._raise(session)

    def after_response(self, session: Session, tool_calls: Sequence[ToolCall]) -> None:
        if tool_calls and session.state.tool_calls > self.max_tool_calls:
            self._raise(session)

    def _raise(self, session: Session) -> None:
        raise IterationLimitExceeded(
            f"session {session.id!r} reached max_tool_calls={self.max_tool_calls}: "
            f"the model asked for {session.state.tool_calls} tool calls",
            session_id=session.id,
            limit="max_tool_calls",
            value=self.max_tool_calls,
            observed=session.state.tool_calls,
        )


class LoopDetector(_Composable):
    """The same tool call with the same arguments ``threshold`` times in a session is a loop."""

    __slots__ = ("threshold",)

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def after_response(self, session: Session, tool_calls: Sequence[ToolCall]) -> None:
        for call in tool_calls:
            count = session.state.tool_signatures.get(tool_call_signature(call), 0)
            if count >= self.threshold:
                raise LoopDetected(
                    f"session {session.id!r} is looping: tool {call.name!r} was called "
                    f"{count} times with the same arguments (loop_threshold={self.threshold})",
                    tool_name=call.name,
                    session_id=session.id,
                    limit="loop_threshold",
                    value=self.threshold,
                    observed=count,
                )


class ConsecutiveFailureLimit(_Composable):
    """At most ``max_failures`` calls in a row may fail before the session is stopped."""

    __slots__ = ("max_failures",)

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures

    def before_call(self, session: Session) -> None:
        if session.state.consecutive_failures >= self.max_failures:
            self._raise(session, None)

    def after_failure(self, session: Session, error: BaseException) -> None:
        if session.state.consecutive_failures >= self.max_failures:
            self._raise(session, error)

    def _raise(self, session: Session, error: BaseException | None) -> None:
        detail = f"; last error: {error}" if error is not None else ""
        raise RetryLimitExceeded(
            f"session {session.id!r} reached max_consecutive_failures={self.max_failures}: "
            f"{session.state.consecutive_failures} calls in a row failed{detail}",
            last_error=error,
            session_id=session.id,
            limit="max_consecutive_failures",
            value=self.max_failures,
            observed=session.state.consecutive_failures,
        )


class _FunctionLimit(_Composable):
    __slots__ = ("function",)

    def __init__(self, function: Callable[[Session], None]) -> None:
        self.function = function

    def before_call(self, session: Session) -> None:
        self.function(session)


class Limits(_Composable):
    """A set of limits applied together, in order."""

    __slots__ = ("_after_failure", "_after_response", "_before_call", "limits")

    def __init__(self, limits: Iterable[Any]) -> None:
        flat: list[Any] = []
        for limit in limits:
            if isinstance(limit, Limits):
                flat.extend(limit.limits)  # type: ignore[has-type]
            elif (
                hasattr(limit, "before_call")
                or hasattr(limit, "after_response")
                or hasattr(limit, "after_failure")
            ):
                flat.append(limit)
            elif callable(limit):
                flat.append(_FunctionLimit(limit))
            else:
                raise TypeError(f"not a limit: {limit!r}")
        self.limits: tuple[Any, ...] = tuple(flat)
        self._before_call = [x.before_call for x in flat if hasattr(x, "before_call")]
        self._after_response = [x.after_response for x in flat if hasattr(x, "after_response")]
        self._after_failure = [x.after_failure for x in flat if hasattr(x, "after_failure")]

    @classmethod
    def from_config(cls, config: LimitsConfig) -> Limits:
        """The limits a :class:`~agentguard.config.LimitsConfig` turns on."""
        limits: list[Any] = []
        if config.max_iterations is not None:
            limits.append(IterationLimit(config.max_iterations))
        if config.max_tool_calls is not None:
            limits.append(ToolCallLimit(config.max_tool_calls))
        if config.loop_threshold is not None:
            limits.append(LoopDetector(config.loop_threshold))
        if config.max_consecutive_failures is not None:
            limits.append(ConsecutiveFailureLimit(config.max_consecutive_failures))
        return cls(limits)

    def before_call(self, session: Session) -> None:
        for check in self._before_call:
            check(session)

    def after_response(self, session: Session, tool_calls: Sequence[ToolCall]) -> None:
        for check in self._after_response:
            check(session, tool_calls)

    def after_failure(self, session: Session, error: BaseException) -> None:
        for check in self._after_failure:
            check(session, error)

    def __or__(self, other: Any) -> Limits:
        return Limits([self, other])
