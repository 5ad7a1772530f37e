"""agentguard for the OpenAI Agents SDK.

- :func:`guarded_run`, :func:`guarded_run_sync`, :func:`guarded_run_streamed` — ``Runner.run``,
  ``run_sync`` and ``run_streamed`` with every model call of the run through the guard, in one
  agentguard session per run.
- :class:`GuardedModelProvider` / :func:`guarded_run_config` — the SDK's own OpenAI models on a
  guarded ``AsyncOpenAI`` client, for a ``RunConfig``.
- :func:`register_agents_resumer` — continues a parked run from its ``RunState`` when its
  window resets.

Example::

    from agents import Agent, function_tool
    from agentguard_openai_agents import guarded_run, register_agents_resumer

    agent = Agent(name="assistant", model="gpt-4o", tools=[get_weather])
    register_agents_resumer(guard, agent)
    result = await guarded_run(guard, agent, "Weather in Paris?", budget_key="research")
"""

from agentguard_openai_agents.models import (
    GuardedModel,
    GuardedModelProvider,
    ModelApi,
    guarded_client,
)
from agentguard_openai_agents.progress import METADATA_KEY, run_state_from_record
from agentguard_openai_agents.resumer import AgentOrFactory, register_agents_resumer
from agentguard_openai_agents.run import (
    FRAMEWORK,
    RESUMER,
    RunInput,
    guarded_run,
    guarded_run_config,
    guarded_run_streamed,
    guarded_run_sync,
)

__version__ = "0.1.0"

__all__ = [
    "FRAMEWORK",
    "METADATA_KEY",
    "RESUMER",
    "AgentOrFactory",
    "GuardedModel",
    "GuardedModelProvider",
    "ModelApi",
    "RunInput",
    "__version__",
    "guarded_client",
    "guarded_run",
    "guarded_run_config",
    "guarded_run_streamed",
    "guarded_run_sync",
    "register_agents_resumer",
    "run_state_from_record",
]
