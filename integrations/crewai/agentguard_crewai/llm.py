"""CrewAI LLMs whose every HTTP attempt goes through an agentguard :class:`~agentguard.Guard`.

CrewAI's native OpenAI provider (what ``LLM(model="gpt-4o-mini")`` or
``LLM(model=..., base_url=...)`` returns: an ``OpenAICompletion``) sends each model call through
an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client it builds once. Guarding the LLM swaps
those two clients for copies whose HTTP client is the guard's, so every chat completion —
plain, streamed, with tools or structured output, sync or async — passes the guard's limits,
budgets, routing, trimming and parking. A CrewAI ``interceptor`` set on the LLM keeps seeing
every attempt: it becomes the guard's inner transport.

The guard changes only the HTTP request it forwards (a routed model, trimmed messages, an
output cap); the LLM object — ``llm.model`` included — is never touched, so agents that share
one LLM never see another agent's routing.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from crewai import LLM
from crewai.llms.base_llm import BaseLLM
from crewai.llms.hooks.transport import AsyncHTTPTransport, HTTPTransport
from crewai.llms.providers.openai.completion import OpenAICompletion

if TYPE_CHECKING:
    from agentguard import Guard

__all__ = ["guard_llm", "guarded_llm", "is_guarded"]

# Guarded openai clients and the guard each belongs to. Keyed by the client object, which
# CrewAI's shallow copies of an LLM (Agent.copy(), Crew.copy()) share, so copies stay guarded.
_GUARDED: weakref.WeakKeyDictionary[Any, Guard] = weakref.WeakKeyDictionary()


def is_guarded(llm: Any, guard: Guard | None = None) -> bool:
    """Whether ``llm`` sends its calls through ``guard`` (through any guard if ``None``)."""
    if not isinstance(llm, OpenAICompletion):
        return False
    owner = _GUARDED.get(llm._client) if llm._client is not None else None
    return owner is not None and (guard is None or owner is guard)


def guard_llm(llm: BaseLLM, guard: Guard) -> OpenAICompletion:
    """Send every model call of a CrewAI LLM through ``guard``; returns the same LLM.

    The LLM keeps its model, base URL, key, timeout and interceptor. Its clients no longer
    retry by themselves: the guard retries transient failures (``limits.max_retries``) and
    waits out short rate limits (``parking.wait_inline_max_s``, honouring ``retry-after``),
    so SDK retries on top would only multiply attempts. Guarding an LLM twice with the same
    guard does nothing.

    Args:
        llm: a CrewAI LLM using the native OpenAI provider (OpenAI, or an OpenAI-compatible
            server given as ``base_url``).
        guard: the guard.

    Returns:
        ``llm``, guarded.

    Raises:
        TypeError: ``llm`` is not served by CrewAI's native OpenAI provider (Anthropic,
            Gemini, Bedrock, Azure and LiteLLM-served models do not speak through the openai
            SDK, so the guard cannot sit in their HTTP path).
        ValueError: the LLM uses the Responses API (the guard meters ``/chat/completions``),
            has no API key, or is already guarded by another guard.
    """
    if not isinstance(llm, OpenAICompletion):
        raise TypeError(
            f"agentguard can guard CrewAI LLMs served by the native OpenAI provider (OpenAI or "
            f"an OpenAI-compatible base_url), not {type(llm).__name__} "
            f"(model {getattr(llm, 'model', '?')!r})"
        )
    if llm.api == "responses":
        raise ValueError(
            f"LLM {llm.model!r} uses api='responses', which the guard does not meter; use the "
            "default api='completions'"
        )
    sync_client = llm._get_sync_client()  # builds it now if CrewAI deferred it
    owner = _GUARDED.get(sync_client)
    if owner is guard:
        return llm
    if owner is not None:
        raise ValueError(f"LLM {llm.model!r} is already guarded by another Guard")
    sync_inner: dict[str, Any] = {}
    async_inner: dict[str, Any] = {}
    if llm.interceptor is not None:
        sync_inner["transport"] = HTTPTransport(interceptor=llm.interceptor)
        async_inner["transport"] = AsyncHTTPTransport(interceptor=llm.interceptor)
    guarded_sync = sync_client.with_options(
        http_client=guard.http_client(**sync_inner), max_retries=0
    )
    guarded_async = llm._get_async_client().with_options(
        http_client=guard.async_http_client(**async_inner), max_retries=0
    )
    llm._client = guarded_sync
    llm._async_client = guarded_async
    _GUARDED[guarded_sync] = guard
    _GUARDED[guarded_async] = guard
    return llm


def guarded_llm(guard: Guard, *, model: str, **kwargs: Any) -> OpenAICompletion:
    """A CrewAI ``LLM`` whose every model call goes through ``guard``.

    Args:
        guard: the guard.
        model: the model (``"gpt-4o-mini"``, ``"openai/gpt-4o"``).
        **kwargs: ``crewai.LLM`` arguments (``base_url``, ``api_key``, ``temperature``,
            ``timeout``, ``interceptor``...).

    Returns:
        The LLM, guarded (see :func:`guard_llm`).

    Raises:
        TypeError: the model is not served by CrewAI's native OpenAI provider.
        ValueError: see :func:`guard_llm`.

    Example::

        llm = guarded_llm(guard, model="gpt-4o-mini", temperature=0)
        researcher = Agent(role="Researcher", goal="...", backstory="...", llm=llm)
    """
    if kwargs.get("api") == "responses":
        raise ValueError("api='responses' is not metered by the guard; use api='completions'")
    return guard_llm(LLM(model=model, **kwargs), guard)
