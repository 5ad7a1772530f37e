"""The ``pydantic-ai`` resumer: continues a parked agent run from its message history.

When a model request of a guarded run parks, the record holds the run's messages up to and
including the pending request (a ``ModelRequest`` with the user prompt, or with the returns of
the tools that already ran). Pydantic AI continues a history that ends in a request by sending
that request: running the agent with no new prompt and that history makes the refused model
call again and goes on from there; finished tool calls are not run again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_ai.agent import AbstractAgent
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelRequest
from pydantic_ai.usage import RunUsage

from agentguard.log import logger
from agentguard_pydantic_ai.capability import (
    _USAGE,
    DEFAULT_RESUMER,
    MESSAGES_KEY,
    USAGE_KEY,
    AgentGuardCapability,
)

if TYPE_CHECKING:
    from pydantic_ai.run import AgentRunResult

    from agentguard import Guard, ParkedSession

__all__ = [
    "AgentOrFactory",
    "parked_messages",
    "parked_usage",
    "register_pydantic_ai_resumer",
]

AgentOrFactory = AbstractAgent[Any, Any] | Callable[[], AbstractAgent[Any, Any]]
"""An agent, or a function that builds one (called for each resume)."""


def parked_messages(parked: ParkedSession) -> list[ModelMessage]:
    """The message history a parked run continues from, ending with its pending request.

    Raises:
        ValueError: the record holds no Pydantic AI history (it was not parked by a run
            guarded with :class:`~agentguard_pydantic_ai.AgentGuardCapability`), or the history
            does not validate, or it does not end with a request.
    """
    stored = parked.metadata.get(MESSAGES_KEY)
    if not isinstance(stored, list) or not stored:
        raise ValueError(
            f"parked session {parked.session_id!r} holds no Pydantic AI message history: the "
            "run was not guarded by AgentGuardCapability, so it cannot be continued"
        )
    try:
        messages = ModelMessagesTypeAdapter.validate_python(stored)
    except ValidationError as exc:
        raise ValueError(
            f"parked session {parked.session_id!r}: its message history does not validate "
            f"({exc.error_count()} errors, first at "
            f"{'.'.join(str(p) for p in exc.errors()[0]['loc'])})"
        ) from None
    if not isinstance(messages[-1], ModelRequest):
        raise ValueError(
            f"parked session {parked.session_id!r}: its message history ends with a "
            f"{type(messages[-1]).__name__}, not the pending request"
        )
    return messages


def parked_usage(parked: ParkedSession) -> RunUsage:
    """The run's Pydantic AI usage before the pending request (empty if none was kept)."""
    stored = parked.metadata.get(USAGE_KEY)
    if not isinstance(stored, dict):
        return RunUsage()
    try:
        return _USAGE.validate_python(stored)
    except ValidationError:
        return RunUsage()


def register_pydantic_ai_resumer(
    guard: Guard,
    agent: AgentOrFactory,
    *,
    name: str = DEFAULT_RESUMER,
    run_options: Callable[[ParkedSession], Mapping[str, Any]] | None = None,
    on_result: Callable[[ParkedSession, AgentRunResult[Any]], Any] | None = None,
) -> Callable[[ParkedSession], Any]:
    """Register the resumer that continues parked runs of ``agent``.

    The resumer runs inside the parked session, restored (same id, budget and counters) by
    ``guard.parked.resume(id)`` or a :class:`~agentguard.scheduler.ResumeDaemon`, and calls
    ``await agent.run(None, message_history=parked_messages(parked), usage=...)``: the
    pending model request is sent again and the run goes on to its end; tools that already
    ran are not run again. Pydantic AI's usage continues from the parked run's, so its
    per-run ``UsageLimits`` count the whole run. If a limit is hit again, the session parks
    again (``attempts + 1``).

    Args:
        guard: the guard to register with.
        agent: the agent, built with a guarded model; or a function building it, called for
            each resume (a daemon can build the agent lazily). If the agent does not carry an
            :class:`~agentguard_pydantic_ai.AgentGuardCapability`, one is added to the resumed
            run, so it can park again.
        name: the resumer's name; the capability's ``resumer`` names it too.
        run_options: a function of the record returning more ``agent.run`` keyword arguments:
            ``deps`` (which are never stored), ``usage_limits``, ``model_settings``,
            ``output_type``... (``message_history`` and the prompt are the record's).
        on_result: called with the record and the finished run's result (to deliver the
            output: a resume usually runs in a daemon, where nobody awaits it). If it raises,
            the error is logged (``resume_result_not_delivered``) and the resume still counts
            as done: the run is not run again.

    Returns:
        The resumer (a coroutine function; the guard runs it in an event loop of its own). It
        returns the run's ``AgentRunResult``.

    Example::

        register_pydantic_ai_resumer(
            guard, agent, run_options=lambda parked: {"deps": load_deps(parked.session_id)}
        )
        ResumeDaemon(guard).start()
    """

    async def resume(parked: ParkedSession) -> AgentRunResult[Any]:
        history = parked_messages(parked)
        target = agent if isinstance(agent, AbstractAgent) else agent()
        options = dict(run_options(parked)) if run_options is not None else {}
        clashes = sorted({"message_history", "user_prompt"} & options.keys())
        if clashes:
            raise ValueError(
                f"run_options gave {', '.join(clashes)}: a resume continues the parked history"
            )
        options.setdefault("usage", parked_usage(parked))
        # A run already guarded by the agent's own capability stands this one aside.
        capability = AgentGuardCapability(guard, resumer=name)
        options["capabilities"] = [*options.get("capabilities", ()), capability]
        result: AgentRunResult[Any] = await target.run(None, message_history=history, **options)
        if on_result is not None:
            try:
                on_result(parked, result)
            except Exception as exc:
                # The run is finished: a failed hand-over must not make the resume count as
                # failed, which would run it (and its tools) again.
                logger.warning(
                    "resume_result_not_delivered",
                    session_id=parked.session_id,
                    resume_id=parked.resume_id,
                    error=f"{type(exc).__name__}: {str(exc)[:300]}",
                )
        return result

    guard.resumer(name)(resume)
    return resume
