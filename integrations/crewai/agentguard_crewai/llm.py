"""CrewAI LLMs whose every HTTP attempt goes through an agentguard :class:`~agentguard.Guard`.

CrewAI's native providers send each model call through an SDK client they build once:

- the OpenAI provider (what ``LLM(model="gpt-4o-mini")`` or ``LLM(model=..., base_url=...)``
  returns: an ``OpenAICompletion``) through ``openai.OpenAI`` / ``openai.AsyncOpenAI``;
- the Anthropic provider (``LLM(model="anthropic/claude-haiku-4-5")`` or any ``claude-*``
  model: an ``AnthropicCompletion``) through ``anthropic.Anthropic`` / ``anthropic.AsyncAnthropic``.

Guarding the LLM swaps those two clients for the guard's copies, so every model call — plain,
streamed, with tools or structured output, sync or async — passes the guard's limits,
budgets, routing, trimming and parking. A CrewAI ``interceptor`` set on the LLM keeps seeing
every attempt: the client it sits in becomes the guard's inner transport.

The guard changes only the HTTP request it forwards (a routed model, trimmed messages, an
output cap); the LLM object — ``llm.model`` included — is never touched, so agents that share
one LLM never see another agent's routing.
"""

from __future__ import annotations

import sys
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from crewai import LLM
from crewai.llms.base_llm import BaseLLM
from crewai.llms.hooks.transport import AsyncHTTPTransport, HTTPTransport
from crewai.llms.providers.openai.completion import OpenAICompletion

if TYPE_CHECKING:
    from crewai.llms.providers.anthropic.completion import AnthropicCompletion

    from agentguard import Guard

__all__ = ["guard_llm", "guarded_llm", "is_guarded"]

LLMT = TypeVar("LLMT", bound=BaseLLM)

# Loaded by CrewAI when it builds a Claude LLM; looked up, never imported here, so that
# guarding OpenAI models does not import the anthropic SDK.
_ANTHROPIC_MODULE = "crewai.llms.providers.anthropic.completion"

# Guarded SDK clients (openai or anthropic) and the guard each belongs to. Keyed by the client
# object, which CrewAI's shallow copies of an LLM (Agent.copy(), Crew.copy()) share, so copies
# stay guarded.
_GUARDED: weakref.WeakKeyDictionary[Any, Guard] = weakref.WeakKeyDictionary()


def _is_anthropic(llm: Any) -> bool:
    """Whether ``llm`` is served by CrewAI's native Anthropic provider."""
    module = sys.modules.get(_ANTHROPIC_MODULE)
    return module is not None and isinstance(llm, module.AnthropicCompletion)


def is_guarded(llm: Any, guard: Guard | None = None) -> bool:
    """Whether ``llm`` sends its calls through ``guard`` (through any guard if ``None``)."""
    if not isinstance(llm, OpenAICompletion) and not _is_anthropic(llm):
        return False
    owner = _GUARDED.get(llm._client) if llm._client is not None else None
    return owner is not None and (guard is None or owner is guard)


def guard_llm(llm: LLMT, guard: Guard) -> LLMT:
    """Send every model call of a CrewAI LLM through ``guard``; returns the same LLM.

    The LLM keeps its model, base URL, key, timeout and interceptor. Its clients no longer
    retry by themselves: the guard retries transient failures (``limits.max_retries``; for
    Claude, 529 ``overloaded_error`` too) and waits out short rate limits
    (``parking.wait_inline_max_s``, honouring ``retry-after``), so SDK retries on top would
    only multiply attempts. Guarding an LLM twice with the same guard does nothing.

    Args:
        llm: a CrewAI LLM using the native OpenAI provider (OpenAI, or an OpenAI-compatible
            server given as ``base_url``) or the native Anthropic provider (Claude models).
        guard: the guard.

    Returns:
        ``llm``, guarded.

    Raises:
        TypeError: ``llm`` is served by neither native provider (Gemini, Bedrock, Azure and
            LiteLLM-served models do not speak through the openai or anthropic SDK, so the
            guard cannot sit in their HTTP path).
        ValueError: the LLM uses the Responses API (the guard meters ``/chat/completions``),
            has no API key, or is already guarded by another guard.
    """
    if _is_anthropic(llm):
        return _guard_clients(llm, guard, _guarded_anthropic_clients)
    if not isinstance(llm, OpenAICompletion):
        raise TypeError(
            f"agentguard can guard CrewAI LLMs served by the native OpenAI provider (OpenAI or "
            f"an OpenAI-compatible base_url) or the native Anthropic provider (Claude), not "
            f"{type(llm).__name__} (model {getattr(llm, 'model', '?')!r})"
        )
    if llm.api == "responses":
        raise ValueError(
            f"LLM {llm.model!r} uses api='responses', which the guard does not meter; use the "
            "default api='completions'"
        )
    return _guard_clients(llm, guard, _guarded_openai_clients)


def _guard_clients(llm: LLMT, guard: Guard, guarded_clients: Any) -> LLMT:
    """Swap the LLM's two SDK clients for ``guarded_clients(llm, guard)``."""
    owner = _GUARDED.get(llm._get_sync_client())  # type: ignore[attr-defined]
    if owner is guard:
        return llm
    if owner is not None:
        raise ValueError(f"LLM {llm.model!r} is already guarded by another Guard")
    guarded_sync, guarded_async = guarded_clients(llm, guard)
    llm._client = guarded_sync  # type: ignore[attr-defined]
    llm._async_client = guarded_async  # type: ignore[attr-defined]
    _GUARDED[guarded_sync] = guard
    _GUARDED[guarded_async] = guard
    return llm


def _guarded_openai_clients(llm: OpenAICompletion, guard: Guard) -> tuple[Any, Any]:
    # The openai SDK takes an HTTP client: the guard's, with the interceptor as its inner
    # transport.
    sync_inner: dict[str, Any] = {}
    async_inner: dict[str, Any] = {}
    if llm.interceptor is not None:
        sync_inner["transport"] = HTTPTransport(interceptor=llm.interceptor)
        async_inner["transport"] = AsyncHTTPTransport(interceptor=llm.interceptor)
    guarded_sync = llm._get_sync_client().with_options(
        http_client=guard.http_client(**sync_inner), max_retries=0
    )
    guarded_async = llm._get_async_client().with_options(
        http_client=guard.async_http_client(**async_inner), max_retries=0
    )
    return guarded_sync, guarded_async


def _guarded_anthropic_clients(llm: AnthropicCompletion, guard: Guard) -> tuple[Any, Any]:
    # guard.wrap() keeps each client's own HTTP client (and any interceptor in it) as the
    # guard's inner transport.
    guarded_sync = guard.wrap(llm._get_sync_client().with_options(max_retries=0))
    guarded_async = guard.wrap(llm._get_async_client().with_options(max_retries=0))
    return guarded_sync, guarded_async


def guarded_llm(
    guard: Guard, *, model: str, **kwargs: Any
) -> OpenAICompletion | AnthropicCompletion:
    """A CrewAI ``LLM`` whose every model call goes through ``guard``.

    Args:
        guard: the guard.
        model: the model: ``"gpt-4o-mini"``, ``"openai/gpt-4o"`` (the native OpenAI
            provider), ``"anthropic/claude-haiku-4-5"``, ``"claude-sonnet-4-6"`` (the native
            Anthropic provider).
        **kwargs: ``crewai.LLM`` arguments (``base_url``, ``api_key``, ``temperature``,
            ``max_tokens``, ``timeout``, ``interceptor``...).

    Left unset, ``max_tokens`` of a Claude model is the guard's
    ``limits.default_max_output_tokens`` (4096), the cap the guard gives any call that sets
    none: CrewAI would otherwise ask every call for the model's largest output (64,000
    tokens for Claude Haiku 4.5, 128,000 for Sonnet 4.6), and a budget reserves each call's
    worst case before sending it.

    Returns:
        The LLM, guarded (see :func:`guard_llm`).

    Raises:
        TypeError: the model is served by neither native provider.
        ValueError: see :func:`guard_llm`.

    Example::

        llm = guarded_llm(guard, model="gpt-4o-mini", temperature=0)
        claude = guarded_llm(guard, model="anthropic/claude-haiku-4-5", max_tokens=1024)
        researcher = Agent(role="Researcher", goal="...", backstory="...", llm=claude)
    """
    if kwargs.get("api") == "responses":
        raise ValueError("api='responses' is not metered by the guard; use api='completions'")
    llm = LLM(model=model, **kwargs)
    if _is_anthropic(llm) and kwargs.get("max_tokens") is None:
        llm.max_tokens = guard.config.limits.default_max_output_tokens
    return guard_llm(llm, guard)  # type: ignore[return-value]
