"""The ``crewai`` resumer: continues a parked crew from the task it stopped at."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crewai import Crew

from agentguard.log import logger
from agentguard.session import current_session
from agentguard_crewai.crew import _settings_of, continue_crew, guard_crew
from agentguard_crewai.progress import CrewProgress

if TYPE_CHECKING:
    from agentguard import Guard, ParkedSession

__all__ = ["CrewFactory", "register_crew_resumer"]

CrewFactory = Callable[[dict[str, Any] | None], Crew]
"""Builds the crew again from the kickoff's inputs: same agents and tasks, in the same order."""


def register_crew_resumer(
    guard: Guard,
    crew_factory: CrewFactory,
    *,
    name: str = "crewai",
    on_output: Callable[[ParkedSession, Any], None] | None = None,
) -> Callable[[ParkedSession], Any]:
    """Register the resumer that continues parked kickoffs of the crews ``crew_factory`` builds.

    It runs inside the parked session, restored (same id, budget and counters) by
    ``guard.parked.resume(id)`` or a :class:`~agentguard.scheduler.ResumeDaemon`. It builds the
    crew with ``crew_factory(inputs)``, guards it (unless the factory did), and continues it
    (:func:`~agentguard_crewai.continue_crew`): finished tasks are not run again and hand
    their outputs on as context, the parked task runs again from its agent's pending call,
    and the tasks after it follow. If a limit is hit again, the session parks again
    (``attempts + 1``).

    Args:
        guard: the guard to register with.
        crew_factory: ``crew_factory(inputs) -> Crew``; ``inputs`` are the parked kickoff's.
            It may return the same crew object each time.
        name: the resumer's name; give :func:`~agentguard_crewai.guard_crew` the same one.
        on_output: called with the record and the crew's output when a resumed crew
            finishes (the caller of the parked ``kickoff()`` got ``SessionParked``, so this
            is where the result goes). An error it raises is logged, not retried: the crew
            has finished and must not run again.

    Returns:
        The resumer; it returns the crew's output.

    Example::

        def build_crew(inputs):
            return guard_crew(Crew(agents=[...], tasks=[...]), guard)

        register_crew_resumer(guard, build_crew, on_output=lambda parked, out: save(out.raw))
        ResumeDaemon(guard).start()
    """

    @guard.resumer(name)
    def resume(parked: ParkedSession) -> Any:
        progress = CrewProgress.from_record(parked)
        crew = crew_factory(dict(progress.inputs) if progress.inputs is not None else None)
        if not isinstance(crew, Crew):
            raise TypeError(f"crew_factory returned {type(crew).__name__}, not a crewai.Crew")
        try:
            settings = _settings_of(crew)
        except ValueError:
            guard_crew(crew, guard, resumer=name)
        else:
            if settings.guard is not guard:
                raise ValueError("crew_factory guarded the crew with another Guard")
        session = current_session()
        if session is None or session.id != parked.session_id:
            session = guard.restore_session(parked)
        output = continue_crew(crew, progress, session=session)
        if on_output is not None:
            try:
                on_output(parked, output)
            except Exception as exc:
                # The crew finished: a failing callback must not make the resume count as
                # failed, which would run the crew again.
                logger.warning(
                    "crewai_on_output_failed", session_id=parked.session_id, error=repr(exc)
                )
        return output

    return resume
