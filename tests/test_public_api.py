"""The public names: exactly the ones the contract lists, all importable, errors in one tree."""

from __future__ import annotations

import openai

import agentguard as ag

CONTRACT = {
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
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(ag.__all__) == CONTRACT
    for name in ag.__all__:
        assert getattr(ag, name) is not None


def test_error_tree() -> None:
    for name in (
        "ConfigError",
        "LimitExceeded",
        "SessionParked",
        "ContextTooLarge",
        "PricingError",
        "StoreError",
    ):
        assert issubclass(getattr(ag, name), ag.AgentGuardError)
    for name in ("IterationLimitExceeded", "RetryLimitExceeded", "LoopDetected", "BudgetExceeded"):
        assert issubclass(getattr(ag, name), ag.LimitExceeded)
    assert issubclass(ag.UnmeteredRequest, ag.ConfigError)
    assert issubclass(ag.AgentGuardError, openai.OpenAIError)


def test_pure_helpers() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    assert ag.count_tokens(messages, "gpt-4o") > 0
    assert ag.trim_messages(messages, max_tokens=1000, model="gpt-4o") == messages
