"""agentguard for CrewAI crews.

- :func:`guard_crew` — every model call of a crew goes through the guard (limits, budgets,
  routing, trimming, parking), one agentguard session per ``kickoff()``; a limit parks the
  kickoff after one HTTP attempt and ``SessionParked`` reaches the caller.
- :func:`guarded_llm` / :func:`guard_llm` — a CrewAI ``LLM`` whose HTTP goes through the
  guard: OpenAI models (and OpenAI-compatible servers) through CrewAI's native OpenAI provider,
  Claude models (``"anthropic/claude-haiku-4-5"``) through its native Anthropic provider.
- :func:`register_crew_resumer` — continues a parked crew from the task it stopped at when
  its window resets: finished tasks are not run again.

Example::

    from crewai import Agent, Crew, Task
    from agentguard_crewai import guard_crew, guarded_llm, register_crew_resumer

    def build_crew(inputs):
        llm = guarded_llm(guard, model="gpt-4o-mini")
        writer = Agent(role="Writer", goal="...", backstory="...", llm=llm)
        return guard_crew(Crew(agents=[writer], tasks=[Task(..., agent=writer)]), guard)

    register_crew_resumer(guard, build_crew)
    build_crew(None).kickoff(inputs={"topic": "budgets"})
"""

from agentguard_crewai.crew import continue_crew, guard_crew, kickoff_session
from agentguard_crewai.llm import guard_llm, guarded_llm, is_guarded
from agentguard_crewai.progress import (
    METADATA_KEY,
    CompletedTask,
    CrewProgress,
    RunningTask,
    TaskRef,
)
from agentguard_crewai.resumer import CrewFactory, register_crew_resumer

__version__ = "0.1.0"

__all__ = [
    "METADATA_KEY",
    "CompletedTask",
    "CrewFactory",
    "CrewProgress",
    "RunningTask",
    "TaskRef",
    "__version__",
    "continue_crew",
    "guard_crew",
    "guard_llm",
    "guarded_llm",
    "is_guarded",
    "kickoff_session",
    "register_crew_resumer",
]
