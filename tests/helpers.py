"""Helpers shared by the test modules."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import openai
import structlog
from structlog.testing import capture_logs

from agentguard import SessionParked
from agentguard.guard import Guard
from agentguard.sim import Reply, ToolCall

PROMPT = [{"role": "user", "content": "Summarise the quarterly report in three bullet points."}]


def run_until_parked(
    guard: Guard,
    client: openai.OpenAI,
    session_id: str,
    *,
    metadata: dict[str, str] | None = None,
    calls: int = 40,
) -> SessionParked:
    """Make calls in a session (budget key ``team``) until the provider's budget parks it."""
    with guard.session(session_id, budget_key="team") as session:
        session.metadata.update(metadata or {})
        for step in range(calls):
            try:
                client.chat.completions.create(
                    model="gpt-4o",
                    messages=[*PROMPT, {"role": "user", "content": f"step {step}"}],
                    max_tokens=40,
                )
            except SessionParked as parked:
                return parked
    raise AssertionError(f"session {session_id} was never parked in {calls} calls")


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 60.0,
    describe: Callable[[], object] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something true (returned), or fail after
    ``timeout`` seconds: generous, since a loaded machine may be slow, and quick when it is
    not. ``describe`` says what the world looked like when it failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    seen = f": {describe()}" if describe is not None else ""
    raise AssertionError(f"condition not met in {timeout:g} s{seen}")


def wait_for_state(guard: Guard, session_id: str, state: str, timeout: float = 60.0) -> None:
    """Wait until the parked record of ``session_id`` is in ``state``."""
    wait_for(
        lambda: guard.parked.get(session_id).state == state,
        timeout,
        describe=lambda: guard.parked.get(session_id),
    )


def resume_by_daemon(guard: Guard, session_id: str) -> None:
    """Run a resume daemon (no inbox) until the parked session ``session_id`` is resumed."""
    from agentguard.scheduler import ResumeDaemon

    daemon = ResumeDaemon(guard, poll_interval_s=0.1, watch_inbox=False)
    daemon.start()
    try:
        wait_for_state(guard, session_id, "resumed")
    finally:
        daemon.stop()


def broken_json_from(small_model: str) -> Callable[[dict[str, Any]], Reply]:
    """A sim script: ``small_model`` answers a ``read_file`` call with broken JSON arguments,
    every other model with a well-formed one (a failure escalation can fix)."""

    def reply(body: dict[str, Any]) -> Reply:
        if body["model"] == small_model:
            return Reply(tool_calls=[ToolCall("read_file", '{"path": "a.py"')])
        return Reply(tool_calls=[ToolCall("read_file", {"path": "a.py"})])

    return reply


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """The events logged in the block. structlog counts as configured once anything
    configured it, and agentguard then logs through it: set it back to unconfigured after,
    so later tests' log handlers see agentguard's events again."""
    try:
        with capture_logs() as events:
            yield events
    finally:
        structlog.reset_defaults()
