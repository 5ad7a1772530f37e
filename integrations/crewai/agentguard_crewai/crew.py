"""Guarding a whole crew: its LLMs, a session per kickoff, and the progress a resume needs.

:func:`guard_crew` guards every LLM the crew can call (each agent's, the manager's, the
function-calling and planning LLMs) and makes each ``kickoff()`` / ``kickoff_async()`` /
``akickoff()`` run inside its own agentguard session (``framework="crewai"``). Inside it:

- every model call passes the guard's pipeline in the HTTP layer (limits, budget reserve and
  settle, routing, trimming, retries, parking); nothing about CrewAI's objects is changed by
  it, so a model routed for one agent never shows up in another agent's ``llm.model``;
- CrewAI's own retries stand aside (see :mod:`agentguard_crewai._compat`): a 429 costs one
  HTTP attempt, then the guard waits it out (short ``retry-after``) or parks the session and
  ``SessionParked`` reaches the caller of ``kickoff()``;
- before every model call, a CrewAI hook scoped to the kickoff writes the crew's progress into
  ``session.metadata["crewai"]`` (:class:`~agentguard_crewai.CrewProgress`): the inputs, the
  finished tasks and their outputs, the running task and its agent's messages. A parked
  record carries it; the ``crewai`` resumer continues the crew from it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crewai import Crew, Task
from crewai.agents.agent_executor import AgentExecutor
from crewai.hooks.dispatch import (
    InterceptionPoint,
    get_scoped_hooks,
    register_scoped,
    scoped_hooks,
)
from crewai.llms.base_llm import BaseLLM
from crewai.tasks.output_format import OutputFormat
from crewai.tasks.task_output import TaskOutput

from agentguard.log import logger
from agentguard.session import current_session
from agentguard_crewai._compat import crewai_version, guard_owns_retries, let_guard_errors_through
from agentguard_crewai.llm import guard_llm
from agentguard_crewai.progress import METADATA_KEY, CompletedTask, CrewProgress, RunningTask

if TYPE_CHECKING:
    from crewai.hooks.llm_hooks import LLMCallHookContext

    from agentguard import Guard, Session

__all__ = ["continue_crew", "guard_crew", "kickoff_session"]

_RESUMER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# Where a guarded crew keeps its settings and last session (in the instance's __dict__: the
# Crew model has no field for them, and pydantic ignores __dict__ entries that are not fields).
_SETTINGS = "__agentguard_crewai__"
_LAST_SESSION = "__agentguard_crewai_session__"


@dataclass(frozen=True, slots=True)
class _Settings:
    guard: Guard
    session_id: str | None
    budget_key: str | None
    resumer: str


def guard_crew(
    crew: Crew,
    guard: Guard,
    *,
    session_id: str | None = None,
    budget_key: str | None = None,
    resumer: str = "crewai",
) -> Crew:
    """Run every model call of ``crew`` through ``guard``, one session per kickoff.

    Guards the crew's LLMs in place (:func:`~agentguard_crewai.guard_llm`) and makes
    ``crew.kickoff()``, ``crew.kickoff_async()``, ``crew.akickoff()`` (and the
    ``kickoff_for_each`` variants, which run on ``crew.copy()``) open an agentguard session
    with ``framework="crewai"`` and ``resumer=resumer``. A session of the same guard that is
    already bound becomes the kickoff session's parent (its budget is shared).

    When a limit parks the session, ``kickoff()`` raises :class:`~agentguard.SessionParked`
    after a single HTTP attempt, and the parked record's ``metadata["crewai"]`` holds the
    crew's progress; register :func:`~agentguard_crewai.register_crew_resumer` under the same
    ``resumer`` name to continue it.

    Args:
        crew: the crew.
        guard: the guard.
        session_id: the id of every kickoff's session (default: a new one per kickoff). A
            fixed id names the parked record, so two kickoffs with it share one record.
        budget_key: the budget the kickoffs draw on (default: the parent session's, else
            ``"default"``).
        resumer: the registered resumer that continues this crew when it parks.

    Returns:
        ``crew`` itself, guarded. Guarding it again replaces the settings.

    Raises:
        TypeError: an LLM of the crew is served by neither of CrewAI's native OpenAI and
            Anthropic providers.
        ValueError: ``resumer`` is not a plain lower-case name, an LLM uses the Responses
            API, or ``planning=True`` without a ``planning_llm`` (CrewAI would build an
            unguarded one).

    Example::

        crew = guard_crew(Crew(agents=[researcher, writer], tasks=[research, write]), guard,
                          budget_key="research")
        try:
            result = crew.kickoff(inputs={"topic": "budgets"})
        except SessionParked as parked:
            print("paused until", parked.resume_at)
    """
    if not _RESUMER_NAME.match(resumer):
        raise ValueError(f"resumer {resumer!r} must be a plain lower-case name (a-z, 0-9, _ and -)")
    _guard_llms(crew, guard)
    let_guard_errors_through()
    settings = _Settings(guard=guard, session_id=session_id, budget_key=budget_key, resumer=resumer)
    object.__setattr__(crew, _SETTINGS, settings)
    if "kickoff" not in crew.__dict__:
        _install(crew)
    return crew


def kickoff_session(crew: Crew) -> Session | None:
    """The session of the guarded crew's latest kickoff (``None`` before the first), to read
    ``iterations``, ``spent_usd`` and ``id`` after it returned or parked."""
    session: Session | None = crew.__dict__.get(_LAST_SESSION)
    return session


def continue_crew(crew: Crew, progress: CrewProgress, *, session: Session) -> Any:
    """Run a guarded crew on from where a parked kickoff stopped, in ``session``.

    Finished tasks are not run again: their outputs are put back on the tasks and CrewAI
    starts from the first task without one (the way it resumes from its own checkpoints),
    handing the finished outputs on as context. The task that was running runs again, and
    its agent's first model call sends the messages it had when it parked, so the pending
    call is what goes out, not the steps before it. Later tasks follow as usual.

    Args:
        crew: a guarded crew (:func:`guard_crew`) built the same way as the one that parked:
            same tasks, in the same order.
        progress: the parked kickoff's progress (:meth:`CrewProgress.from_record`).
        session: the session to run in: the parked one, restored.

    Returns:
        The crew's output (every task's, the finished ones included).

    Raises:
        ValueError: the crew's tasks do not match the progress (a different crew).
        SessionParked: a limit parked the session again.
    """
    settings = _settings_of(crew)
    tasks = list(crew.tasks)
    if len(tasks) != progress.task_count:
        raise ValueError(
            f"the crew to resume has {len(tasks)} tasks but the parked one had "
            f"{progress.task_count}: crew_factory must build the same crew"
        )
    for entry in [*progress.completed, *_running_entries(progress)]:
        if not 0 <= entry.index < len(tasks) or tasks[entry.index].key != entry.key:
            raise ValueError(
                f"task {entry.index} ({entry.description[:60]!r}) of the parked crew is not the "
                "same task in the crew to resume: crew_factory must build the same crew"
            )
    done = {entry.index: entry for entry in progress.completed}
    for index, task in enumerate(tasks):
        # Outputs left on the tasks by an earlier kickoff of the same objects must not count.
        task.output = _task_output(task, done[index]) if index in done else None
    previous = crew.checkpoint_kickoff_event_id
    # With a checkpoint kickoff id set, CrewAI starts at the first task without an output.
    crew.checkpoint_kickoff_event_id = f"agentguard:{session.id}"
    try:
        with _guarded_run(crew, settings, progress.inputs, session=session, restore=progress):
            return type(crew).kickoff(crew, inputs=progress.inputs)
    finally:
        crew.checkpoint_kickoff_event_id = previous


# -- installing the kickoff wrappers ---------------------------------------------------------------


def _settings_of(crew: Crew) -> _Settings:
    settings = crew.__dict__.get(_SETTINGS)
    if not isinstance(settings, _Settings):
        raise ValueError("the crew is not guarded: call guard_crew(crew, guard) first")
    return settings


def _inputs_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    inputs = kwargs["inputs"] if "inputs" in kwargs else (args[0] if args else None)
    return dict(inputs) if isinstance(inputs, Mapping) else None


def _refuse_checkpoint_restore(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    checkpoint = kwargs.get("from_checkpoint")
    if checkpoint is None and len(args) > 2:
        checkpoint = args[2]
    if getattr(checkpoint, "restore_from", None) is not None:
        raise ValueError(
            "kickoff(from_checkpoint=...) with restore_from runs a new crew that CrewAI builds "
            "from the checkpoint, outside the guard: restore it with Crew.from_checkpoint(), "
            "guard that crew with guard_crew() and kick it off"
        )


def _install(crew: Crew) -> None:
    """Put guarded ``kickoff``, ``akickoff`` and ``copy`` on the instance (``kickoff_async``
    and the ``kickoff_for_each`` variants call these)."""
    crew_class = type(crew)

    def kickoff(*args: Any, **kwargs: Any) -> Any:
        _refuse_checkpoint_restore(args, kwargs)
        if crew.stream:
            # CrewAI runs a streaming crew in a worker that calls crew.kickoff() again with
            # streaming off; that inner call opens the session, in the worker's context.
            return crew_class.kickoff(crew, *args, **kwargs)
        with _guarded_run(crew, _settings_of(crew), _inputs_of(args, kwargs)):
            return crew_class.kickoff(crew, *args, **kwargs)

    async def akickoff(*args: Any, **kwargs: Any) -> Any:
        _refuse_checkpoint_restore(args, kwargs)
        if crew.stream:
            return await crew_class.akickoff(crew, *args, **kwargs)
        with _guarded_run(crew, _settings_of(crew), _inputs_of(args, kwargs)):
            return await crew_class.akickoff(crew, *args, **kwargs)

    def copy() -> Crew:
        settings = _settings_of(crew)
        # A copy runs its own kickoffs (kickoff_for_each): each gets its own session.
        return guard_crew(
            crew_class.copy(crew),
            settings.guard,
            budget_key=settings.budget_key,
            resumer=settings.resumer,
        )

    for name, function in (("kickoff", kickoff), ("akickoff", akickoff), ("copy", copy)):
        object.__setattr__(crew, name, function)


# -- guarding the LLMs -----------------------------------------------------------------------------


def _crew_llms(crew: Crew) -> list[tuple[str, Any]]:
    """Every LLM slot the crew may call, named for error messages."""
    agents: list[Any] = []
    for agent in [*crew.agents, *(task.agent for task in crew.tasks), crew.manager_agent]:
        if agent is not None and all(agent is not seen for seen in agents):
            agents.append(agent)
    slots: list[tuple[str, Any]] = []
    for agent in agents:
        role = getattr(agent, "role", "?")
        slots.append((f"agent {role!r} llm", _field(agent, "llm")))
        slots.append(
            (f"agent {role!r} function_calling_llm", _field(agent, "function_calling_llm"))
        )
    for name in ("manager_llm", "function_calling_llm", "planning_llm"):
        slots.append((f"crew {name}", _field(crew, name)))
    return [(name, llm) for name, llm in slots if llm is not None]


def _field(model: Any, name: str) -> Any:
    # Read from __dict__: reading a deprecated pydantic field (function_calling_llm) warns.
    return model.__dict__.get(name)


def _guard_llms(crew: Crew, guard: Guard) -> None:
    if crew.planning and _field(crew, "planning_llm") is None:
        raise ValueError(
            "crew.planning is on without a planning_llm: CrewAI would plan with a default LLM "
            "the guard cannot see; set planning_llm=guarded_llm(guard, model=...)"
        )
    for name, llm in _crew_llms(crew):
        if isinstance(llm, str):
            raise TypeError(
                f"{name} is the model name {llm!r}; give it a CrewAI LLM object "
                "(guarded_llm(guard, model=...)) so the guard can sit in its HTTP path"
            )
        if not isinstance(llm, BaseLLM):
            raise TypeError(f"{name} is a {type(llm).__name__}, not a CrewAI LLM")
        try:
            guard_llm(llm, guard)
        except TypeError as exc:
            raise TypeError(f"{name}: {exc}") from None


# -- one guarded kickoff ---------------------------------------------------------------------------


@contextmanager
def _guarded_run(
    crew: Crew,
    settings: _Settings,
    inputs: dict[str, Any] | None,
    *,
    session: Session | None = None,
    restore: CrewProgress | None = None,
) -> Iterator[_CrewRun]:
    guard = settings.guard
    _guard_llms(crew, guard)  # agents or LLMs may have been swapped since guard_crew()
    with ExitStack() as stack:
        if session is None:
            bound = current_session()
            session = guard.session(
                settings.session_id,
                budget_key=settings.budget_key,
                parent=bound if bound is not None and guard.owns(bound) else None,
                resumer=settings.resumer,
                framework="crewai",
            )
            stack.enter_context(session)
        elif current_session() is not session:
            stack.enter_context(session)
        object.__setattr__(crew, _LAST_SESSION, session)
        run = _CrewRun(crew, session, inputs, restore)
        stack.enter_context(guard_owns_retries())
        stack.enter_context(_scoped_before_model_call(run.before_model_call))
        yield run


@contextmanager
def _scoped_before_model_call(hook: Any) -> Iterator[None]:
    """Register ``hook`` as a CrewAI ``before_llm_call`` hook for this kickoff only (hooks
    scoped to the context: other crews, threads and kickoffs never see it)."""
    inherited = {point: get_scoped_hooks(point) for point in InterceptionPoint}
    with scoped_hooks({point: hooks for point, hooks in inherited.items() if hooks}):
        register_scoped(InterceptionPoint.PRE_MODEL_CALL, hook)
        yield


class _CrewRun:
    """The progress of one kickoff, kept in ``session.metadata["crewai"]``."""

    def __init__(
        self,
        crew: Crew,
        session: Session,
        inputs: dict[str, Any] | None,
        restore: CrewProgress | None,
    ) -> None:
        self.session = session
        self.tasks: list[Task] = list(crew.tasks)
        # An output that is already there was made before this kickoff (or restored).
        self.start_outputs = [task.output for task in self.tasks]
        self.lock = threading.Lock()
        self.completed: dict[int, dict[str, Any]] = {}
        self.in_flight: dict[int, dict[str, Any]] = {}
        self.last_index: int | None = None
        self.pending_messages: dict[int, RunningTask] = {}
        if restore is not None:
            self.completed = {
                entry.index: entry.model_dump(mode="json") for entry in restore.completed
            }
            self.pending_messages = {
                entry.index: entry
                for entry in _running_entries(restore)
                if entry.index not in self.completed
            }
        self.progress: dict[str, Any] = {
            "format": 1,
            "crewai_version": crewai_version(),
            "inputs": inputs,
            "process": getattr(crew.process, "value", str(crew.process)),
            "task_count": len(self.tasks),
        }
        session.metadata[METADATA_KEY] = self.progress
        self._publish()

    def before_model_call(self, context: LLMCallHookContext) -> None:
        try:
            self._record(context)
        except Exception as exc:
            # CrewAI swallows hook errors without a word: say it here.
            logger.warning(
                "crewai_progress_not_recorded", session_id=self.session.id, error=repr(exc)
            )

    def _record(self, context: LLMCallHookContext) -> None:
        task, executor = context.task, context.executor
        if task is None or executor is None:
            return  # a model call outside an agent's task loop (planning, summaries)
        index = next((i for i, known in enumerate(self.tasks) if known is task), None)
        if index is None:
            return  # a task the crew made on the fly (delegation): its crew task is recorded
        with self.lock:
            self._collect_completed()
            if index in self.pending_messages:
                self._restore_messages(index, context)
            agent = context.agent
            self.in_flight[index] = {
                "index": index,
                "key": task.key,
                "name": task.name,
                "description": task.description,
                "agent": getattr(agent, "role", None),
                "iteration": getattr(executor, "iterations", context.iterations),
                "messages": [dict(message) for message in context.messages],
            }
            self.last_index = index
            self._publish()

    def _collect_completed(self) -> None:
        for index, task in enumerate(self.tasks):
            output = task.output
            if index in self.completed or output is None or output is self.start_outputs[index]:
                continue
            self.completed[index] = _completed_entry(index, task, output)
            self.in_flight.pop(index, None)

    def _restore_messages(self, index: int, context: LLMCallHookContext) -> None:
        """On the parked task's first call after a resume, bring back the conversation its
        agent had when it parked, so the pending call is re-sent rather than the task
        restarted (tools it already ran are not run again)."""
        saved = self.pending_messages.pop(index)
        messages: list[Any] = context.messages
        fresh = len(messages)
        if len(saved.messages) <= fresh:
            return  # it parked on its first call: the fresh prompt is that call
        if [_comparable(m) for m in messages] != [_comparable(m) for m in saved.messages[:fresh]]:
            logger.warning(
                "crewai_resume_restarts_task",
                session_id=self.session.id,
                task_index=index,
                reason="the task's prompt differs from the parked one",
            )
            return
        messages.extend(dict(message) for message in saved.messages[fresh:])
        if isinstance(context.executor, AgentExecutor):
            # max_iter keeps counting across the park.
            context.executor.iterations = saved.iteration
        logger.info(
            "crewai_resume_messages",
            session_id=self.session.id,
            task_index=index,
            messages=len(messages),
        )

    def _publish(self) -> None:
        # New lists each time: the guard may serialise the metadata from another thread.
        running = self.in_flight.get(self.last_index) if self.last_index is not None else None
        self.progress["completed"] = [self.completed[i] for i in sorted(self.completed)]
        self.progress["running"] = running
        self.progress["in_flight"] = [
            entry
            for index, entry in sorted(self.in_flight.items())
            if index != self.last_index and index not in self.completed
        ]


def _running_entries(progress: CrewProgress) -> list[RunningTask]:
    return [*([progress.running] if progress.running else []), *progress.in_flight]


def _comparable(message: Mapping[str, Any]) -> tuple[Any, Any]:
    return message.get("role"), message.get("content")


def _completed_entry(index: int, task: Task, output: TaskOutput) -> dict[str, Any]:
    structured = output.pydantic
    return {
        "index": index,
        "key": task.key,
        "name": task.name or output.name,
        "description": output.description,
        "agent": output.agent,
        "raw": output.raw,
        "json_dict": output.json_dict,
        "pydantic": structured.model_dump(mode="json") if structured is not None else None,
        "output_format": getattr(output.output_format, "value", str(output.output_format)),
        "summary": output.summary,
        "expected_output": output.expected_output,
    }


def _task_output(task: Task, entry: CompletedTask) -> TaskOutput:
    structured = None
    if entry.pydantic is not None and task.output_pydantic is not None:
        structured = task.output_pydantic.model_validate(entry.pydantic)
    return TaskOutput(
        description=entry.description,
        name=entry.name,
        expected_output=entry.expected_output,
        summary=entry.summary,
        raw=entry.raw,
        pydantic=structured,
        json_dict=entry.json_dict,
        agent=entry.agent or "",
        output_format=OutputFormat(entry.output_format),
    )
