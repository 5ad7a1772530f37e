"""What a parked crew keeps in its record: how far the kickoff got, and what resuming needs.

A guarded kickoff writes this into its session's ``metadata["crewai"]`` before every model
call, so the record a limit writes says which tasks were done (with their outputs), which
task was running and the agent's messages at the call that stopped it. The ``crewai``
resumer reads it back with :meth:`CrewProgress.from_record`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from agentguard import ParkedSession

__all__ = ["METADATA_KEY", "CompletedTask", "CrewProgress", "RunningTask", "TaskRef"]

METADATA_KEY = "crewai"
"""The key of a parked record's ``metadata`` that holds a :class:`CrewProgress`."""


class TaskRef(BaseModel):
    """Which task of the crew: its position, CrewAI key, name, description and agent."""

    model_config = ConfigDict(extra="ignore")

    index: int
    """Position in ``crew.tasks``."""
    key: str
    """CrewAI's ``Task.key``: a hash of the task's description and expected output as
    written (before inputs are interpolated), so a crew rebuilt from the same code matches."""
    name: str | None = None
    description: str = ""
    """The description as it ran (inputs interpolated)."""
    agent: str | None = None
    """The role of the agent that ran it."""


class CompletedTask(TaskRef):
    """A task that finished before the crew parked, with its output."""

    raw: str = ""
    json_dict: dict[str, Any] | None = None
    pydantic: dict[str, Any] | None = None
    """The structured output's fields, when the task had ``output_pydantic``."""
    output_format: str = "raw"
    summary: str | None = None
    expected_output: str | None = None


class RunningTask(TaskRef):
    """A task that was running when the crew parked."""

    iteration: int = 0
    """The agent's iteration count at its last model call."""
    messages: list[dict[str, Any]] = Field(default_factory=list)
    """The agent's messages at its last model call (before the guard trimmed them)."""


class CrewProgress(BaseModel):
    """How far a guarded kickoff got."""

    model_config = ConfigDict(extra="ignore")

    format: Literal[1] = 1
    crewai_version: str = ""
    inputs: dict[str, Any] | None = None
    """The kickoff's inputs, as given."""
    process: str = "sequential"
    task_count: int = 0
    completed: list[CompletedTask] = Field(default_factory=list)
    """Tasks finished in this kickoff (or restored by an earlier resume), by position."""
    running: RunningTask | None = None
    """The task whose model call was the last one made: the one that parked."""
    in_flight: list[RunningTask] = Field(default_factory=list)
    """Other tasks started but not finished (``async_execution`` tasks)."""

    @classmethod
    def from_record(cls, parked: ParkedSession) -> CrewProgress:
        """The progress kept in a parked record.

        Raises:
            ValueError: the record was not parked by a guarded CrewAI kickoff.
        """
        data = parked.metadata.get(METADATA_KEY)
        if not isinstance(data, dict):
            raise ValueError(
                f"parked session {parked.session_id!r} holds no CrewAI progress (framework "
                f"{parked.framework!r}): it was not parked by a crew guarded with guard_crew()"
            )
        return cls.model_validate(data)

    def completed_indexes(self) -> set[int]:
        return {task.index for task in self.completed}
