"""The ``openai_agents`` resumer: continues a parked guarded run from its ``RunState``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from agents import Agent, RunConfig
from agents.result import RunResult
from agents.run_state import ContextDeserializer, ContextSerializer
from openai import AsyncOpenAI

from agentguard.log import logger
from agentguard.session import current_session
from agentguard_openai_agents.models import ModelApi
from agentguard_openai_agents.progress import (
    METADATA_KEY,
    continued_server_state,
    find_agent,
    run_state_from_record,
    stored_context,
    turns_left,
)
from agentguard_openai_agents.run import RESUMER, RunInput, guarded_run

if TYPE_CHECKING:
    from agentguard import Guard, ParkedSession

__all__ = ["AgentOrFactory", "register_agents_resumer"]

AgentOrFactory = Agent[Any] | Callable[[], Agent[Any]]
"""The starting agent, or a function that builds it (called for each resume)."""


def register_agents_resumer(
    guard: Guard,
    agent: AgentOrFactory,
    *,
    name: str = RESUMER,
    client: AsyncOpenAI | Callable[[], AsyncOpenAI] | None = None,
    api: ModelApi = "responses",
    run_config: RunConfig | None = None,
    runner_options: Mapping[str, Any] | None = None,
    on_result: Callable[[ParkedSession, RunResult], None] | None = None,
    context_serializer: ContextSerializer | None = None,
    context_deserializer: ContextDeserializer | None = None,
) -> Callable[[ParkedSession], Any]:
    """Register the resumer that continues parked guarded runs of ``agent``.

    It runs inside the parked session, restored (same id, budget and counters) by
    ``guard.parked.resume(id)`` or a :class:`~agentguard.scheduler.ResumeDaemon`. It loads
    the run's ``RunState`` from the record (``RunState.from_string``) and runs it on with
    ``Runner.run`` through the guard: the model call that parked is made again, with every
    finished tool call and its output in its input, so no tool runs twice. If the limit is hit
    again, the session parks again (``attempts + 1``).

    A run that chains responses on the provider (``auto_previous_response_id``,
    ``previous_response_id``) or uses a stored ``conversation_id`` parks with only the items
    new since the response or conversation it continued: the resume makes a new run from the
    agent that was running, with those items, continuing the same response or conversation
    (and the context kept in the record, unless ``runner_options`` gives one). The SDK's
    usage count starts again in that run.

    Args:
        guard: the guard to register with.
        agent: the run's starting agent, or a function building it (the state names agents
            by name, so build them as the parked run had them).
        name: the resumer's name (``guarded_run(..., resumer=name)``).
        client: the ``AsyncOpenAI`` the resumed calls are made with (a guarded copy), or a
            function building it; default ``AsyncOpenAI()`` (environment key and base URL).
        api: ``"responses"`` (the default) or ``"chat"``, as the parked run.
        run_config: the run config the parked run had (its model provider is replaced).
        runner_options: further ``Runner.run`` keyword arguments (``context``, ``hooks``...).
            ``max_turns`` comes from the state: the turns the parked run had left.
        on_result: called with the record and the ``RunResult`` when the resumed run
            finishes (the caller of the parked run got ``SessionParked``, so this is where
            the answer goes). An error it raises is logged, not retried: the run has
            finished and must not run again.
        context_serializer: as :func:`~agentguard_openai_agents.guarded_run`'s, for a resumed
            run that parks again.
        context_deserializer: rebuilds a context that is not a mapping from what the run's
            ``context_serializer`` stored.

    Returns:
        The resumer (a coroutine function; the guard runs it in an event loop of its own).

    Example::

        register_agents_resumer(guard, build_agent, client=AsyncOpenAI(),
                                on_result=lambda parked, result: save(result.final_output))
        ResumeDaemon(guard).start()
    """

    async def resume(parked: ParkedSession) -> Any:
        start = agent if isinstance(agent, Agent) else agent()
        if not isinstance(start, Agent):
            raise TypeError(f"the agent factory returned {type(start).__name__}, not an Agent")
        options = {k: v for k, v in dict(runner_options or {}).items() if k != "max_turns"}
        run_input: RunInput
        server_state = continued_server_state(parked)
        if server_state:
            # The parked call continued a stored response or conversation with the items new
            # since then: send them on the same one, from the agent that was running.
            kept = parked.metadata[METADATA_KEY]
            start = find_agent(start, str(kept.get("agent") or start.name))
            run_input = list(kept["input"])
            options.update(server_state)
            if "context" not in options:
                options["context"] = stored_context(parked, context_deserializer)
        else:
            run_input = await run_state_from_record(
                parked, start, context_deserializer=context_deserializer
            )
        session = current_session()
        if session is None or session.id != parked.session_id:
            session = guard.restore_session(parked)
        own_client = client() if callable(client) else client
        with session:
            result = await guarded_run(
                guard,
                start,
                run_input,
                resumer=name,
                client=own_client,
                api=api,
                run_config=run_config,
                context_serializer=context_serializer,
                # The SDK takes the limit from the state; the run's progress needs it too.
                max_turns=turns_left(parked),
                **options,
            )
        if on_result is not None:
            try:
                on_result(parked, result)
            except Exception as exc:
                logger.warning(
                    "openai_agents_on_result_failed",
                    session_id=parked.session_id,
                    error=repr(exc),
                )
        return result.final_output

    guard.resumer(name)(resume)
    return resume
