"""The errors agentguard raises.

Every error is an :class:`AgentGuardError`, and every ``AgentGuardError`` is also an
``openai.OpenAIError``: the guard works inside the openai SDK's HTTP transport, and the SDK
turns any other exception raised there into a retried ``APIConnectionError``. Subclassing
``OpenAIError`` makes the SDK pass agentguard's errors through to the caller unchanged. The
``anthropic`` SDK does the same with errors that are not ``AnthropicError``: a client wrapped for
it raises agentguard's errors as subclasses of both (:mod:`agentguard.anthropic_sdk`).

The tree::

    openai.OpenAIError
    └── AgentGuardError
        ├── ConfigError              a config file, field or environment variable is invalid
        │   └── UnmeteredRequest         a request under a budget the guard cannot meter
        ├── LimitExceeded            a limit stopped the session
        │   ├── IterationLimitExceeded   too many model calls or tool calls
        │   ├── RetryLimitExceeded       too many retries of one call, or failures in a row
        │   ├── LoopDetected             the same tool call with the same arguments, repeated
        │   └── BudgetExceeded           the dollar budget of a key or a session is spent
        ├── SessionParked            the session was parked and will resume later
        ├── ContextTooLarge          the messages cannot be trimmed to fit
        ├── PricingError             no price is known for a model
        └── StoreError               the ledger or parked-session store failed

Each error carries the session id, the limit and the value that tripped it, and says them in
its message.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import openai

__all__ = [
    "AgentGuardError",
    "BudgetExceeded",
    "ConfigError",
    "ContextTooLarge",
    "IterationLimitExceeded",
    "LimitExceeded",
    "LoopDetected",
    "PricingError",
    "RetryLimitExceeded",
    "SessionParked",
    "StoreError",
    "UnmeteredRequest",
]


class AgentGuardError(openai.OpenAIError):
    """Base of every error agentguard raises."""


class ConfigError(AgentGuardError):
    """A configuration file, field or environment variable is invalid.

    Attributes:
        source: the file or environment variable the bad value came from.
        field: the dotted path of the field (``limits.max_iterations``), if one is at fault.
        expected: what the field should have been.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.field = field
        self.expected = expected


class UnmeteredRequest(ConfigError):
    """A request under a budget that the guard cannot meter, refused before it was sent.

    Under a dollar budget every request is priced and reserved first, or refused: an endpoint
    the guard does not meter (unless ``limits.unmetered`` names it), a body it cannot parse, or
    a request whose worst-case cost it cannot bound (an unknown content part, audio).

    Attributes:
        endpoint: the request's path (``/v1/responses``).
        reason: why it cannot be metered.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        reason: str,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message, source=endpoint, field=field, expected=expected)
        self.endpoint = endpoint
        self.reason = reason


class LimitExceeded(AgentGuardError):
    """A limit stopped the session.

    Attributes:
        session_id: the session the limit applies to.
        limit: the name of the limit (``max_iterations``).
        value: the configured limit.
        observed: the value that went over it.
    """

    def __init__(
        self,
        message: str,
        *,
        session_id: str | None,
        limit: str,
        value: Any,
        observed: Any = None,
    ) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.limit = limit
        self.value = value
        self.observed = observed


class IterationLimitExceeded(LimitExceeded):
    """The session made more model calls (or tool calls) than allowed."""


class RetryLimitExceeded(LimitExceeded):
    """One call failed more often than ``max_retries``, or the session failed too often in a row.

    Attributes:
        last_error: the failure that used up the last attempt.
    """

    def __init__(self, message: str, *, last_error: BaseException | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.last_error = last_error


class LoopDetected(LimitExceeded):
    """The agent asked for the same tool call with the same arguments too many times.

    Attributes:
        tool_name: the repeated tool.
    """

    def __init__(self, message: str, *, tool_name: str, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.tool_name = tool_name


class BudgetExceeded(LimitExceeded):
    """A dollar budget has no room for the call.

    Attributes:
        key: the budget key (or ``session:<id>`` for a session's own budget).
        spent_usd: settled plus reserved spend in the current window.
        limit_usd: the budget's limit.
        needed_usd: the worst-case cost of the call that did not fit.
        resets_at: when the window resets (``None`` when it never does, or when the call
            would not fit even an empty window).
        fits_empty_window: ``False`` when the call's worst case is larger than the whole limit:
            waiting for a reset cannot help, so such a call is never parked.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str,
        spent_usd: Decimal,
        limit_usd: Decimal,
        needed_usd: Decimal,
        resets_at: datetime | None,
        session_id: str | None,
        fits_empty_window: bool = True,
    ) -> None:
        super().__init__(
            message, session_id=session_id, limit="limit_usd", value=limit_usd, observed=spent_usd
        )
        self.fits_empty_window = fits_empty_window
        self.key = key
        self.spent_usd = spent_usd
        self.limit_usd = limit_usd
        self.needed_usd = needed_usd
        self.resets_at = resets_at


class SessionParked(AgentGuardError):
    """The session hit a limit that resets later; its state was saved and it will resume.

    Attributes:
        session_id: the parked session.
        resume_at: when it is due to resume.
        reason: why it was parked.
    """

    def __init__(
        self, message: str, *, session_id: str, resume_at: datetime | None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.resume_at = resume_at
        self.reason = reason


class ContextTooLarge(AgentGuardError):
    """The messages cannot be trimmed to fit the context budget.

    Attributes:
        session_id: the session, if any.
        tokens: the size of the smallest request trimming could produce.
        max_tokens: the room available.
    """

    def __init__(
        self, message: str, *, tokens: int, max_tokens: int, session_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.session_id = session_id


class PricingError(AgentGuardError):
    """No price is known for a model (and the config gives none).

    Attributes:
        model: the model that has no price.
    """

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message)
        self.model = model


class StoreError(AgentGuardError):
    """The ledger or the parked-session store could not be read or written.

    Attributes:
        url: the store's URL, with any password removed.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url
