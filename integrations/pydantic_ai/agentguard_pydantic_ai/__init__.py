"""agentguard for Pydantic AI agents.

- :func:`guarded_model` — a Pydantic AI model whose HTTP goes through the guard (OpenAI's
  Responses API and Chat Completions, Anthropic's Messages API).
- :class:`AgentGuardCapability` — for ``Agent(capabilities=[...])``: runs each agent run in an
  agentguard session and keeps what a parked run needs to be continued.
- :func:`register_pydantic_ai_resumer` — continues a parked run from its message history when
  its budget window resets.

Example::

    from pydantic_ai import Agent
    from agentguard_pydantic_ai import (
        AgentGuardCapability, guarded_model, register_pydantic_ai_resumer)

    agent = Agent(
        guarded_model(guard, "openai:gpt-4o-mini"),
        capabilities=[AgentGuardCapability(guard, budget_key="research")],
    )
    register_pydantic_ai_resumer(guard, agent)
"""

from agentguard_pydantic_ai.capability import (
    DEFAULT_RESUMER,
    FRAMEWORK,
    MESSAGES_KEY,
    USAGE_KEY,
    AgentGuardCapability,
    SessionIdFor,
    session_id_for_run,
)
from agentguard_pydantic_ai.models import GUARDED_MODEL_KINDS, METERED_APIS, guarded_model
from agentguard_pydantic_ai.resumer import (
    AgentOrFactory,
    parked_messages,
    parked_usage,
    register_pydantic_ai_resumer,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RESUMER",
    "FRAMEWORK",
    "GUARDED_MODEL_KINDS",
    "MESSAGES_KEY",
    "METERED_APIS",
    "USAGE_KEY",
    "AgentGuardCapability",
    "AgentOrFactory",
    "SessionIdFor",
    "__version__",
    "guarded_model",
    "parked_messages",
    "parked_usage",
    "register_pydantic_ai_resumer",
    "session_id_for_run",
]
