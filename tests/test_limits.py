"""The limits, one at a time and composed, on real sessions (no HTTP: these are the rules the
pipeline applies before each call and after each response)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agentguard.config import LimitsConfig
from agentguard.errors import IterationLimitExceeded, LoopDetected, RetryLimitExceeded
from agentguard.guard import Guard
from agentguard.limits import (
    ConsecutiveFailureLimit,
    IterationLimit,
    Limits,
    LoopDetector,
    ToolCall,
    ToolCallLimit,
    tool_call_signature,
)
from agentguard.session import Session


@pytest.fixture
def session(make_guard: Callable[..., Guard]) -> Session:
    return make_guard().session("limits")


def test_the_iteration_limit_allows_exactly_max_calls(session: Session) -> None:
    limit = IterationLimit(3)
    for made in range(3):
        session.state.iterations = made
        limit.before_call(session)
    session.state.iterations = 3
    with pytest.raises(IterationLimitExceeded) as caught:
        limit.before_call(session)
    error = caught.value
    assert (error.limit, error.value, error.observed) == ("max_iterations", 3, 3)
    assert "'limits'" in str(error) and "max_iterations=3" in str(error)


def test_the_tool_call_limit_stops_before_a_call_and_after_a_response(session: Session) -> None:
    limit = ToolCallLimit(2)
    session.state.tool_calls = 2
    limit.after_response(session, [ToolCall("read", "{}")])  # exactly at the limit: allowed
    with pytest.raises(IterationLimitExceeded, match="max_tool_calls=2"):
        limit.before_call(session)
    session.state.tool_calls = 3
    with pytest.raises(IterationLimitExceeded) as caught:
        limit.after_response(session, [ToolCall("read", "{}")])
    assert caught.value.observed == 3
    limit.after_response(session, [])  # a response without tool calls never trips it


def test_a_loop_is_the_same_call_with_the_same_arguments_in_any_key_order(
    session: Session,
) -> None:
    first = ToolCall("search", '{"q": "tax bug", "page": 1}')
    reordered = ToolCall("search", '{ "page": 1,"q":"tax bug"}')
    other_page = ToolCall("search", '{"q": "tax bug", "page": 2}')
    assert tool_call_signature(first) == tool_call_signature(reordered)
    assert tool_call_signature(first) != tool_call_signature(other_page)
    assert tool_call_signature(ToolCall("run", " ls -la ")) == tool_call_signature(
        ToolCall("run", "ls -la")
    )  # arguments that are not JSON are compared as trimmed text

    detector = LoopDetector(3)
    session.state.tool_signatures[tool_call_signature(first)] = 2
    detector.after_response(session, [reordered])
    session.state.tool_signatures[tool_call_signature(first)] = 3
    detector.after_response(session, [other_page])  # another call is not the loop
    with pytest.raises(LoopDetected) as caught:
        detector.after_response(session, [reordered])
    assert caught.value.tool_name == "search" and caught.value.observed == 3


def test_consecutive_failures_stop_the_session_naming_the_last_error(session: Session) -> None:
    limit = ConsecutiveFailureLimit(2)
    session.state.consecutive_failures = 1
    limit.before_call(session)
    limit.after_failure(session, RuntimeError("first"))
    session.state.consecutive_failures = 2
    with pytest.raises(RetryLimitExceeded) as caught:
        limit.after_failure(session, RuntimeError("upstream 503"))
    assert "upstream 503" in str(caught.value)
    assert isinstance(caught.value.last_error, RuntimeError)
    with pytest.raises(RetryLimitExceeded, match="max_consecutive_failures=2"):
        limit.before_call(session)


def test_limits_compose_flat_in_order_with_plain_functions(session: Session) -> None:
    seen: list[str] = []

    def budget_hours(checked: Session) -> None:
        seen.append(checked.id)

    composed = IterationLimit(5) | ToolCallLimit(5) | budget_hours
    assert isinstance(composed, Limits)
    assert [type(limit).__name__ for limit in composed.limits] == [
        "IterationLimit",
        "ToolCallLimit",
        "_FunctionLimit",
    ]
    composed.before_call(session)
    assert seen == ["limits"]
    session.state.iterations = 5
    with pytest.raises(IterationLimitExceeded):
        composed.before_call(session)
    assert seen == ["limits"]  # in order: the iteration limit stopped it first
    with pytest.raises(TypeError, match="not a limit"):
        Limits([42])


def test_from_config_turns_on_only_what_is_configured() -> None:
    none = Limits.from_config(
        LimitsConfig(
            max_iterations=None,
            max_tool_calls=None,
            loop_threshold=None,
            max_consecutive_failures=None,
        )
    )
    assert none.limits == ()
    some = Limits.from_config(
        LimitsConfig(
            max_iterations=7,
            max_tool_calls=None,
            loop_threshold=4,
            max_consecutive_failures=None,
        )
    )
    kinds = {type(limit).__name__: limit for limit in some.limits}
    assert set(kinds) == {"IterationLimit", "LoopDetector"}
    assert kinds["IterationLimit"].max_iterations == 7
    assert kinds["LoopDetector"].threshold == 4
