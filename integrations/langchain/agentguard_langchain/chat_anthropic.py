"""A ``ChatAnthropic`` whose every HTTP attempt goes through an agentguard :class:`~agentguard.Guard`.

``ChatAnthropic`` takes no HTTP client: it builds its ``anthropic.Anthropic`` and
``anthropic.AsyncAnthropic`` clients itself, lazily, in two cached properties (``_client`` and
``_async_client``), and sends every model call — ``invoke``, ``ainvoke``, ``stream``,
``astream``, tool calls, structured output, ``get_num_tokens_from_messages`` — through them. A
guarded model is a ``ChatAnthropic`` whose two properties return the guard's copies of those
clients (``guard.wrap(...)``), built from the model's own settings (key, base URL, timeout,
headers, ``anthropic_proxy``).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import anthropic
from langchain_anthropic import ChatAnthropic
from pydantic import PrivateAttr

if TYPE_CHECKING:
    from agentguard import Guard

__all__ = ["guarded_chat_anthropic"]


class _GuardedChatAnthropic(ChatAnthropic):
    """``ChatAnthropic`` with its SDK clients wrapped by a guard.

    Each model builds clients of its own rather than sharing LangChain's process-wide
    HTTP pools: an async client cannot be carried from one event loop to another, and a
    resumed async run runs in a loop of its own.
    """

    _guard: Guard = PrivateAttr()

    @classmethod
    def lc_id(cls) -> list[str]:
        """Serialised as a plain ``ChatAnthropic`` (a guard is not serialisable)."""
        return ChatAnthropic.lc_id()

    @cached_property
    def _client(self) -> anthropic.Client:  # type: ignore[override]
        http_client = None
        if self.anthropic_proxy:
            http_client = anthropic.DefaultHttpxClient(proxy=self.anthropic_proxy)
        client = anthropic.Anthropic(**self._client_params, http_client=http_client)
        return self._guard.wrap(client)

    @cached_property
    def _async_client(self) -> anthropic.AsyncClient:  # type: ignore[override]
        http_client = None
        if self.anthropic_proxy:
            http_client = anthropic.DefaultAsyncHttpxClient(proxy=self.anthropic_proxy)
        client = anthropic.AsyncAnthropic(**self._client_params, http_client=http_client)
        return self._guard.wrap(client)


def guarded_chat_anthropic(guard: Guard, **kwargs: Any) -> ChatAnthropic:
    """A ``ChatAnthropic`` whose sync and async calls go through ``guard``.

    Every Claude call the model makes — ``invoke``, ``ainvoke``, ``stream``, ``astream``,
    tool calls, ``with_structured_output`` — passes the guard's limits, budget, routing
    (``routing.tiers`` naming Claude models), trimming and parking, inside whatever
    agentguard session is bound when it is made. The guard retries transient failures
    (529 ``overloaded_error``, 5xx) itself and decides what a 429 does, so the SDK's own
    retries are off: they would multiply attempts.

    Left unset, ``ChatAnthropic`` asks every call for the model's largest output (64,000
    tokens for Claude Haiku 4.5, 128,000 for Sonnet 4.6), and a budget reserves each call's
    worst case before sending it: about $1.92 a call on Sonnet 4.6. So ``max_tokens``
    defaults here to the guard's ``limits.default_max_output_tokens`` (4096), the cap the
    guard gives any call that sets none; pass ``max_tokens`` for longer answers.

    Args:
        guard: the guard.
        **kwargs: ``ChatAnthropic`` arguments (``model``, ``base_url``, ``api_key``,
            ``max_tokens`` (default: ``limits.default_max_output_tokens``), ``temperature``,
            ``anthropic_proxy``, ``default_headers``...).

    Returns:
        The chat model: a ``ChatAnthropic`` (serialised as one, without the guard).

    Raises:
        ValueError: ``kwargs`` ask for SDK retries (``max_retries`` other than 0).

    Example::

        model = guarded_chat_anthropic(guard, model="claude-haiku-4-5", max_tokens=1024)
        agent = create_agent(model, tools, middleware=[AgentGuardMiddleware(guard)])
    """
    if kwargs.get("max_retries") not in (None, 0):
        raise ValueError(
            f"max_retries={kwargs['max_retries']!r}: the guard retries transient failures "
            "itself (limits.max_retries); SDK retries on top would multiply attempts"
        )
    kwargs["max_retries"] = 0
    if kwargs.get("max_tokens") is None and kwargs.get("max_tokens_to_sample") is None:
        kwargs.pop("max_tokens_to_sample", None)
        kwargs["max_tokens"] = guard.config.limits.default_max_output_tokens
    model = _GuardedChatAnthropic(**kwargs)
    model._guard = guard
    return model
