"""A ``ChatOpenAI`` whose every HTTP attempt goes through an agentguard :class:`~agentguard.Guard`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_openai import ChatOpenAI

if TYPE_CHECKING:
    from agentguard import Guard

__all__ = ["guarded_chat_openai"]

# Arguments that would give ChatOpenAI a second, unguarded way to the provider.
_OWN_CLIENTS = (
    "client",
    "async_client",
    "root_client",
    "root_async_client",
    "http_client",
    "http_async_client",
    "openai_proxy",
)


def guarded_chat_openai(
    guard: Guard, *, http_options: Mapping[str, Any] | None = None, **kwargs: Any
) -> ChatOpenAI:
    """A ``ChatOpenAI`` whose sync and async calls go through ``guard``.

    Both of its HTTP clients are the guard's (``guard.http_client()`` and
    ``guard.async_http_client()``), so every model call — ``invoke``, ``ainvoke``, streaming,
    ``with_structured_output`` — passes the guard's limits, budget, routing, trimming and
    parking, inside whatever agentguard session is bound when it is made. The guard retries
    transient failures itself, so the SDK's own retries are off (they would multiply
    attempts), and ``stream_usage`` is on so streamed answers carry their usage.

    Args:
        guard: the guard.
        http_options: keyword arguments for the guard's inner ``httpx`` clients (``proxy``,
            ``verify``, ``limits``, ``timeout``...).
        **kwargs: ``ChatOpenAI`` arguments (``model``, ``base_url``, ``api_key``,
            ``temperature``...).

    Returns:
        The chat model.

    Raises:
        ValueError: ``kwargs`` bring their own client or proxy, ask for SDK retries, or turn
            on the Responses API (the guard meters ``/chat/completions``; a Responses call
            would bypass it).

    Example::

        model = guarded_chat_openai(guard, model="gpt-4o-mini", temperature=0)
        agent = create_agent(model, tools, middleware=[AgentGuardMiddleware(guard)])
    """
    clashes = sorted(name for name in _OWN_CLIENTS if kwargs.get(name) is not None)
    if clashes:
        raise ValueError(
            f"guarded_chat_openai() supplies the HTTP clients itself; drop {', '.join(clashes)} "
            "(pass proxy or TLS settings as http_options={...})"
        )
    if kwargs.get("max_retries") not in (None, 0):
        raise ValueError(
            f"max_retries={kwargs['max_retries']!r}: the guard retries transient failures "
            "itself (limits.max_retries); SDK retries on top would multiply attempts"
        )
    if kwargs.get("use_responses_api"):
        raise ValueError(
            "use_responses_api=True would send calls to /responses, which the guard does not "
            "meter; guarded_chat_openai() uses Chat Completions"
        )
    options = dict(http_options or {})
    kwargs.update(
        http_client=guard.http_client(**options),
        http_async_client=guard.async_http_client(**options),
        max_retries=0,
        # Pinned: left unset, ChatOpenAI picks the Responses API for some models and params.
        use_responses_api=False,
    )
    # With its own http_client ChatOpenAI leaves stream usage off; LangChain's messages then
    # lack usage_metadata on streamed answers.
    kwargs.setdefault("stream_usage", True)
    return ChatOpenAI(**kwargs)
