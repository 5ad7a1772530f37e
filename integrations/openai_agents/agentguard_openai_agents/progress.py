"""What a guarded run keeps with its agentguard session, so that a parked run can go on.

Before every model call of a guarded run, :class:`ProgressHooks` writes the call's place in the
run into ``session.metadata["openai_agents"]``: which agent is running, the turn, and the input
items the call sends (the whole conversation so far, in the SDK's own item format, with every
finished tool call and its output). When the call parks, the guard writes the session's record
with that metadata in the same transaction, and :func:`keep_parked_state` then adds the run's
``RunState``, serialised by the SDK itself (``RunState.to_string()``), to the record.

A resume (:func:`run_state_from_record`) loads that ``RunState`` with
``RunState.from_string(agent, ...)``, or, if the process died between the two writes, builds
the same state from the stored input items.

A call that continues state the provider keeps (``previous_response_id``, as
``auto_previous_response_id`` chains send, or ``conversation_id``) sends only the items new
since then; :func:`note_server_state` keeps which response or conversation it continued, and
the resume continues the same one with those items (:func:`continued_server_state`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents import Agent, RunContextWrapper, RunHooks, Tool
from agents.items import ModelResponse, TResponseInputItem
from agents.lifecycle import AgentHookContext
from agents.run_state import ContextDeserializer, ContextSerializer, RunState

from agentguard import SessionParked
from agentguard.log import logger
from agentguard.parking.record import ParkedSession
from agentguard.redact import scrub
from agentguard.session import current_session

if TYPE_CHECKING:
    from agentguard import Guard

__all__ = [
    "METADATA_KEY",
    "ProgressHooks",
    "RunProgress",
    "continued_server_state",
    "find_agent",
    "keep_parked_state",
    "note_server_state",
    "run_state_from_record",
    "stored_context",
]

METADATA_KEY = "openai_agents"
"""The key of a guarded run's progress in ``session.metadata`` and in parked records."""

_current_run: ContextVar[RunProgress | None] = ContextVar(
    "agentguard_openai_agents_run", default=None
)


@dataclass(slots=True)
class RunProgress:
    """Where one guarded run is: updated before each model call.

    Attributes:
        guard: the guard the run's calls go through.
        max_turns: the run's ``max_turns`` (``None``: no limit).
        run_id: a random id of this run, so a late write never lands on another run's record.
        turn: model calls started so far.
        agent: the agent making the current call.
        context: the run's context wrapper (usage, approvals, tool invocations).
        input_items: what the current call sends.
        context_serializer: turns a context that is not a mapping into one for the stored
            ``RunState`` (the SDK's ``to_string(context_serializer=...)``).
    """

    guard: Guard
    max_turns: int | None
    context_serializer: ContextSerializer | None = None
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))
    turn: int = 0
    agent: Agent[Any] | None = None
    context: RunContextWrapper[Any] | None = None
    input_items: list[TResponseInputItem] = field(default_factory=list)

    def bind(self) -> Any:
        """Make this the current run of the context (the model calls find it there)."""
        return _current_run.set(self)

    @staticmethod
    def unbind(token: Any) -> None:
        """Undo :meth:`bind`."""
        _current_run.reset(token)

    def before_model_call(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        input_items: list[TResponseInputItem],
    ) -> None:
        """Record the call about to be made, in the run's session (if one is bound)."""
        self.turn += 1
        self.agent = agent
        self.context = context
        self.input_items = list(input_items)
        session = current_session()
        if session is not None:
            # A new list and dict each time: the guard may serialise the metadata while parking.
            session.metadata[METADATA_KEY] = {
                "run_id": self.run_id,
                "agent": agent.name,
                "turn": self.turn,
                "max_turns": self.max_turns,
                "input": list(input_items),
            }

    def note_server_state(
        self, previous_response_id: str | None, conversation_id: str | None
    ) -> None:
        """Record, in the run's session, the provider-kept state the current call continues."""
        session = current_session()
        kept = session.metadata.get(METADATA_KEY) if session is not None else None
        if session is None or not isinstance(kept, dict) or kept.get("run_id") != self.run_id:
            return
        state = {"previous_response_id": previous_response_id, "conversation_id": conversation_id}
        session.metadata[METADATA_KEY] = {**kept, **state}

    def run_state(self) -> RunState[Any, Agent[Any]]:
        """The ``RunState`` that makes the current call again and goes on from there."""
        if self.agent is None or self.context is None:
            raise RuntimeError("the run has made no model call yet")
        return build_run_state(
            self.context, self.agent, self.input_items, _turns_left(self.max_turns, self.turn)
        )


def build_run_state(
    context: RunContextWrapper[Any],
    agent: Agent[Any],
    input_items: list[TResponseInputItem],
    max_turns: int | None,
) -> RunState[Any, Agent[Any]]:
    """A fresh ``RunState`` whose input is the conversation so far.

    Its context keeps the run's usage and the SDK's record of finished tool invocations; its
    input holds every finished tool call with its output, so resuming sends the pending model
    call again and runs no tool twice.
    """
    return RunState(
        context=context, original_input=input_items, starting_agent=agent, max_turns=max_turns
    )


def _turns_left(max_turns: int | None, turn: int) -> int | None:
    # The parked call's turn is still to be made: it counts in the resumed run.
    return None if max_turns is None else max(max_turns - turn + 1, 1)


def note_server_state(previous_response_id: str | None, conversation_id: str | None) -> None:
    """Keep with the current run's session which stored response or conversation the call
    about to be made continues (nothing when it continues neither, or no run is current)."""
    progress = _current_run.get()
    if progress is not None and (previous_response_id or conversation_id):
        progress.note_server_state(previous_response_id, conversation_id)


def continued_server_state(record: ParkedSession) -> dict[str, str]:
    """The ``Runner.run`` arguments (``previous_response_id``, ``conversation_id``) that
    continue the provider-kept state a parked call continued; empty if it continued none.

    Such a call's stored input holds only the items new since that state, so the resume must
    send them on the same response or conversation: a ``RunState`` built from them would
    count them as sent already.
    """
    kept = record.metadata.get(METADATA_KEY)
    if not isinstance(kept, dict):
        return {}
    return {
        name: value
        for name in ("previous_response_id", "conversation_id")
        if isinstance(value := kept.get(name), str) and value
    }


def stored_context(
    record: ParkedSession, context_deserializer: ContextDeserializer | None = None
) -> Any:
    """The application's context kept in a parked run's serialised ``RunState`` (``None``
    if none was kept), turned back by ``context_deserializer`` when one is given."""
    kept = record.metadata.get(METADATA_KEY)
    state_text = kept.get("run_state") if isinstance(kept, dict) else None
    if not isinstance(state_text, str):
        return None
    wrapper = json.loads(state_text).get("context")
    context = wrapper.get("context") if isinstance(wrapper, dict) else None
    if context is not None and context_deserializer is not None:
        return context_deserializer(context)
    return context


async def keep_parked_state(parked: SessionParked) -> None:
    """Add the current run's serialised ``RunState`` to the record ``parked`` names.

    Written only if the record still holds this run's last call (same run id and turn), so a
    late write never replaces a newer state. A failure is logged, not raised: the record's
    stored input items still let the run go on.
    """
    progress = _current_run.get()
    if progress is None or progress.agent is None:
        return
    try:
        state_text = _without_credentials(
            progress.run_state().to_string(context_serializer=progress.context_serializer)
        )
        await asyncio.to_thread(
            _store_state, progress.guard, parked.session_id, progress, state_text
        )
    except Exception as exc:
        logger.warning(
            "openai_agents_state_not_kept",
            session_id=parked.session_id,
            error=f"{type(exc).__name__}: {str(exc)[:200]}",
        )


def _without_credentials(state_text: str) -> str:
    """The serialised state with credential-named keys removed from the application's context.

    The SDK stores a mapping context as it is; the record's own scrubbing only sees the state
    as text (key-shaped values are redacted there), so keys such as ``api_key`` are removed
    here, at any depth, as they are from every stored request.
    """
    data = json.loads(state_text)
    wrapper = data.get("context")
    if isinstance(wrapper, dict) and isinstance(wrapper.get("context"), dict):
        wrapper["context"] = scrub(wrapper["context"])
    return json.dumps(data)


def _store_state(guard: Guard, session_id: str, progress: RunProgress, state_text: str) -> None:
    def change(current: ParkedSession | None) -> ParkedSession | None:
        if current is None or current.state not in ("parked", "failed"):
            return None
        kept = current.metadata.get(METADATA_KEY)
        if (
            not isinstance(kept, dict)
            or kept.get("run_id") != progress.run_id
            or kept.get("turn") != progress.turn
        ):
            return None
        metadata = {**current.metadata, METADATA_KEY: {**kept, "run_state": state_text}}
        # Validated again, so the state is scrubbed of credentials like the rest of the record.
        return ParkedSession.model_validate(
            {**current.model_dump(mode="json"), "metadata": metadata}
        )

    guard.parked.store.update(session_id, change)


async def run_state_from_record(
    record: ParkedSession,
    agent: Agent[Any],
    *,
    context_deserializer: ContextDeserializer | None = None,
) -> RunState[Any, Agent[Any]]:
    """The ``RunState`` a parked guarded run continues from.

    Args:
        record: the parked record.
        agent: the run's starting agent, built as it was (the state names agents by name).
        context_deserializer: rebuilds a context that was not a mapping from what the run's
            ``context_serializer`` made of it (the SDK's ``RunState.from_string`` argument).

    Raises:
        ValueError: the record was not parked by a guarded OpenAI Agents SDK run.
    """
    kept = record.metadata.get(METADATA_KEY)
    if not isinstance(kept, dict) or not isinstance(kept.get("input"), list):
        raise ValueError(
            f"parked session {record.session_id!r} holds no OpenAI Agents SDK run (no "
            f"metadata[{METADATA_KEY!r}]): it was not parked by a guarded run"
        )
    state_text = kept.get("run_state")
    if isinstance(state_text, str):
        return await RunState.from_string(
            agent, state_text, context_deserializer=context_deserializer
        )
    running = find_agent(agent, str(kept.get("agent") or agent.name))
    return build_run_state(
        RunContextWrapper(context=None), running, list(kept["input"]), turns_left(record)
    )


def turns_left(record: ParkedSession) -> int | None:
    """The ``max_turns`` a parked run goes on with: the turns it had left, the parked call's
    included (``None``: no limit)."""
    kept = record.metadata.get(METADATA_KEY)
    if not isinstance(kept, dict):
        return None
    max_turns = kept.get("max_turns")
    turn = kept.get("turn")
    if not isinstance(max_turns, int):
        return None
    return _turns_left(max_turns, turn if isinstance(turn, int) else 1)


def find_agent(start: Agent[Any], name: str) -> Agent[Any]:
    """The agent called ``name`` among ``start`` and the agents it hands off to."""
    seen: set[int] = set()
    pending: list[Agent[Any]] = [start]
    while pending:
        agent = pending.pop()
        if id(agent) in seen:
            continue
        seen.add(id(agent))
        if agent.name == name:
            return agent
        pending.extend(h for h in agent.handoffs if isinstance(h, Agent))
    return start


class ProgressHooks(RunHooks[Any]):
    """Run hooks that record each model call in the run's progress, then call the
    application's own hooks (if any)."""

    def __init__(self, progress: RunProgress, inner: RunHooks[Any] | None = None) -> None:
        self.progress = progress
        self.inner = inner

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        """Record the call, then the application's hook."""
        self.progress.before_model_call(context, agent, input_items)
        if self.inner is not None:
            await self.inner.on_llm_start(context, agent, system_prompt, input_items)

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        """The application's hook."""
        if self.inner is not None:
            await self.inner.on_llm_end(context, agent, response)

    async def on_agent_start(self, context: AgentHookContext[Any], agent: Agent[Any]) -> None:
        """The application's hook."""
        if self.inner is not None:
            await self.inner.on_agent_start(context, agent)

    async def on_agent_end(
        self, context: AgentHookContext[Any], agent: Agent[Any], output: Any
    ) -> None:
        """The application's hook."""
        if self.inner is not None:
            await self.inner.on_agent_end(context, agent, output)

    async def on_handoff(
        self, context: RunContextWrapper[Any], from_agent: Agent[Any], to_agent: Agent[Any]
    ) -> None:
        """The application's hook."""
        if self.inner is not None:
            await self.inner.on_handoff(context, from_agent, to_agent)

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        """The application's hook."""
        if self.inner is not None:
            await self.inner.on_tool_start(context, agent, tool)

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        """The application's hook."""
        if self.inner is not None:
            await self.inner.on_tool_end(context, agent, tool, result)
