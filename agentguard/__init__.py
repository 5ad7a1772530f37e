"""agentguard: stops AI agents from burning money.

It wraps an agent's OpenAI client and, on every model call, enforces iteration and retry
limits, reserves the call's worst-case cost against windowed dollar budgets, routes each step
to the cheapest model that will do, trims the accumulating context, and parks the session when
a limit says "later", resuming it when the window resets.

    import agentguard as ag
    guard = ag.Guard.from_config("agentguard.toml")
    client = guard.wrap(OpenAI())
    with guard.session("task-42", budget_key="research") as s:
        client.chat.completions.create(model="gpt-4o", messages=messages)

Public names are imported lazily, so ``import agentguard`` stays cheap and loads no framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentguard.config import GuardConfig
    from agentguard.errors import (
        AgentGuardError,
        BudgetExceeded,
        ConfigError,
        ContextTooLarge,
        IterationLimitExceeded,
        LimitExceeded,
        LoopDetected,
        PricingError,
        RetryLimitExceeded,
        SessionParked,
        StoreError,
        UnmeteredRequest,
    )
    from agentguard.guard import Guard
    from agentguard.ledger import BudgetStatus
    from agentguard.log import configure_logging
    from agentguard.parking.record import ParkedSession
    from agentguard.pricing import ModelPrice, Pricer, Usage
    from agentguard.session import Session, SessionState, current_session
    from agentguard.tokens import count_tokens
    from agentguard.trimming import trim_messages

__version__ = "0.1.0"

__all__ = [
    "AgentGuardError",
    "BudgetExceeded",
    "BudgetStatus",
    "ConfigError",
    "ContextTooLarge",
    "Guard",
    "GuardConfig",
    "IterationLimitExceeded",
    "LimitExceeded",
    "LoopDetected",
    "ModelPrice",
    "ParkedSession",
    "Pricer",
    "PricingError",
    "RetryLimitExceeded",
    "Session",
    "SessionParked",
    "SessionState",
    "StoreError",
    "UnmeteredRequest",
    "Usage",
    "__version__",
    "configure_logging",
    "count_tokens",
    "current_session",
    "trim_messages",
]

# The errors are lazy too: they subclass openai's, and importing openai costs more than a
# second, which `agentguard --version` and `--help` should not pay.
_LAZY = {
    "AgentGuardError": "agentguard.errors",
    "BudgetExceeded": "agentguard.errors",
    "ConfigError": "agentguard.errors",
    "ContextTooLarge": "agentguard.errors",
    "IterationLimitExceeded": "agentguard.errors",
    "LimitExceeded": "agentguard.errors",
    "LoopDetected": "agentguard.errors",
    "PricingError": "agentguard.errors",
    "RetryLimitExceeded": "agentguard.errors",
    "SessionParked": "agentguard.errors",
    "StoreError": "agentguard.errors",
    "UnmeteredRequest": "agentguard.errors",
    "Guard": "agentguard.guard",
    "GuardConfig": "agentguard.config",
    "BudgetStatus": "agentguard.ledger",
    "configure_logging": "agentguard.log",
    "ModelPrice": "agentguard.pricing",
    "ParkedSession": "agentguard.parking.record",
    "Pricer": "agentguard.pricing",
    "Usage": "agentguard.pricing",
    "Session": "agentguard.session",
    "SessionState": "agentguard.session",
    "current_session": "agentguard.session",
    "count_tokens": "agentguard.tokens",
    "trim_messages": "agentguard.trimming",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
