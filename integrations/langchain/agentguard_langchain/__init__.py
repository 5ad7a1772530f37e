"""agentguard for LangChain and LangGraph agents.

- :func:`guarded_chat_openai` — a ``ChatOpenAI`` whose HTTP goes through the guard.
- :func:`guarded_chat_anthropic` — a ``ChatAnthropic`` (Claude) whose HTTP goes through the
  guard (needs ``langchain-anthropic``; imported on first use).
- :class:`AgentGuardMiddleware` — for ``langchain.agents.create_agent``: runs each agent run
  in an agentguard session named after its LangGraph thread, and can end a run cleanly when a
  limit stops it.
- :func:`register_langgraph_resumer` — continues a parked run from its checkpoint when its
  budget window resets.

Example::

    from langchain.agents import create_agent
    from agentguard_langchain import (
        AgentGuardMiddleware, guarded_chat_openai, register_langgraph_resumer)

    agent = create_agent(
        guarded_chat_openai(guard, model="gpt-4o-mini"),
        tools,
        middleware=[AgentGuardMiddleware(guard, budget_key="research")],
        checkpointer=checkpointer,
    )
    register_langgraph_resumer(guard, agent)
"""

from typing import TYPE_CHECKING, Any

from agentguard_langchain.chat_model import guarded_chat_openai
from agentguard_langchain.middleware import (
    DEFAULT_END_ON,
    AgentGuardMiddleware,
    AgentGuardState,
    session_id_for_thread,
)
from agentguard_langchain.resumer import GraphOrFactory, register_langgraph_resumer

if TYPE_CHECKING:
    from agentguard_langchain.chat_anthropic import guarded_chat_anthropic

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_END_ON",
    "AgentGuardMiddleware",
    "AgentGuardState",
    "GraphOrFactory",
    "__version__",
    "guarded_chat_anthropic",
    "guarded_chat_openai",
    "register_langgraph_resumer",
    "session_id_for_thread",
]


def __getattr__(name: str) -> Any:
    # The Claude model loads the anthropic SDK (slow to import): only when it is asked for.
    if name == "guarded_chat_anthropic":
        from agentguard_langchain.chat_anthropic import guarded_chat_anthropic

        return guarded_chat_anthropic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
