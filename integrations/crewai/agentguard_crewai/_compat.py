"""Where CrewAI's own recovery would fight the guard, and how a guarded crew turns it off.

Unguarded, one provider 429 costs up to 27 HTTP attempts in CrewAI 1.x: the openai SDK's
retries, times the rate-limit wrapper around every ``BaseLLM.call``/``acall`` (3 attempts, its
own backoff, ``retry-after`` unread), times the task re-runs of ``Agent.execute_task``
(``max_retry_limit``). Under a guard, the guard decides: it waits out a short limit (once,
as long as ``retry-after`` says) or parks the session, and the ``SessionParked`` it raises
must reach the caller of ``kickoff()`` untouched. Two things stand in the way:

1. **Task re-runs.** ``Agent.execute_task`` re-runs a task that raised, except for the
   deliberate stops listed in ``crewai.agent.core._passthrough_exceptions`` (``HookAborted``,
   ``ToolExecutionFailedError``). Every agentguard error is a deliberate stop (a limit, a
   parked session), so :func:`let_guard_errors_through` adds ``AgentGuardError`` to that list.
   It does so once per process; it changes nothing for crews that never meet a guard.
2. **The rate-limit wrapper** classifies errors by status and message text, and a
   ``SessionParked`` message quotes the provider's ("Rate limit reached..."). The wrapper does
   not retry when a retry scope is already open (``crewai.llms.retry``'s
   ``_active_llm_rate_limit_retry``); :func:`guard_owns_retries` opens it for a guarded
   kickoff, because there the guard is the retry scope.

Both names are CrewAI internals, checked here against the installed version: if one is gone,
a warning says so, and a parked session may then cost a few more attempts before it reaches
the caller.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

from agentguard import AgentGuardError
from agentguard.log import logger

__all__ = ["crewai_version", "guard_owns_retries", "let_guard_errors_through"]

_lock = threading.Lock()
_passthrough_done = False


def crewai_version() -> str:
    """The installed CrewAI version (``"unknown"`` if its metadata is missing)."""
    try:
        return version("crewai")
    except PackageNotFoundError:
        return "unknown"


def let_guard_errors_through() -> bool:
    """Make ``Agent.execute_task`` hand agentguard errors straight to the caller instead of
    re-running the task. Returns whether CrewAI offered the hook for it."""
    global _passthrough_done
    with _lock:
        if _passthrough_done:
            return True
        try:
            import crewai.agent.core as agent_core

            current = agent_core._passthrough_exceptions
        except (ImportError, AttributeError):
            logger.warning(
                "crewai_task_reruns_not_disabled",
                crewai_version=crewai_version(),
                effect="a guard error may re-run the task up to the agent's max_retry_limit",
            )
            return False
        if not any(issubclass(AgentGuardError, kind) for kind in current):
            agent_core._passthrough_exceptions = (*current, AgentGuardError)
        _passthrough_done = True
        return True


def _retry_scope() -> contextvars.ContextVar[bool] | None:
    try:
        from crewai.llms import retry
    except ImportError:
        return None
    scope = getattr(retry, "_active_llm_rate_limit_retry", None)
    return scope if isinstance(scope, contextvars.ContextVar) else None


_warned_no_scope = False


@contextmanager
def guard_owns_retries() -> Iterator[None]:
    """Within this block, CrewAI's rate-limit wrapper makes one attempt per call and leaves
    limits to the guard (context-local: threads and tasks started inside inherit it)."""
    global _warned_no_scope
    scope = _retry_scope()
    if scope is None:
        if not _warned_no_scope:
            _warned_no_scope = True
            logger.warning(
                "crewai_rate_limit_retries_not_disabled",
                crewai_version=crewai_version(),
                effect="CrewAI may call a parked session's model up to 3 times",
            )
        yield
        return
    token = scope.set(True)
    try:
        yield
    finally:
        scope.reset(token)
