"""The ``anthropic`` SDK's clients, guarded (the optional extra ``agentguard[anthropic]``).

The SDK sends through an ``httpx2`` client, as openai 3.x does, so a guarded client is the
SDK's own client type with the guard's transport in place of its HTTP client
(``client.with_options(http_client=...)``).

The SDK turns any exception raised inside its HTTP client that is not an ``AnthropicError``
into a retried ``APIConnectionError``: a refused budget would be sent again up to
``max_retries`` times, and the caller would never see :class:`~agentguard.BudgetExceeded`.
So the guard's errors leave a guarded Anthropic client as themselves *and* as
``anthropic.AnthropicError`` (:func:`as_anthropic_error`), which the SDK hands on unchanged:
``except BudgetExceeded`` and ``except anthropic.AnthropicError`` both catch them.

Nothing here is imported by ``import agentguard``; the SDK is imported only when a client is
wrapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentguard.transport import flavour_for_client, transports

if TYPE_CHECKING:
    from agentguard.transport import TransportHost

__all__ = ["as_anthropic_error", "is_anthropic_client", "wrap_anthropic"]

_twins: dict[type[BaseException], type[BaseException]] = {}


def is_anthropic_client(client: object) -> bool:
    """Whether ``client`` is an ``anthropic.Anthropic`` or ``AsyncAnthropic`` (or a subclass),
    told without importing the SDK when it is not loaded."""
    import sys

    module = sys.modules.get("anthropic")
    if module is None:
        return False
    return isinstance(client, (module.Anthropic, module.AsyncAnthropic))


def as_anthropic_error(error: BaseException) -> BaseException:
    """The same error, its type made a subclass of ``anthropic.AnthropicError`` too."""
    import anthropic

    if isinstance(error, anthropic.AnthropicError):
        return error
    kind = type(error)
    twin = _twins.get(kind)
    if twin is None:
        twin = _twins[kind] = type(
            kind.__name__,
            (kind, anthropic.AnthropicError),
            {"__module__": kind.__module__, "__qualname__": kind.__qualname__},
        )
    error.__class__ = twin
    return error


def wrap_anthropic(guard: TransportHost, client: Any) -> Any:
    """A copy of an ``anthropic.Anthropic`` / ``AsyncAnthropic`` client whose calls go
    through ``guard``'s pipeline (the same type, options and interface)."""
    import anthropic

    inner = client._client
    classes = transports(flavour_for_client(inner))
    if isinstance(client, anthropic.AsyncAnthropic):
        transport = classes.AsyncGuardTransport(
            guard, inner, owns_inner=False, raise_as=as_anthropic_error
        )
        http_client = classes.module.AsyncClient(transport=transport, timeout=inner.timeout)
    else:
        transport = classes.GuardTransport(
            guard, inner, owns_inner=False, raise_as=as_anthropic_error
        )
        http_client = classes.module.Client(transport=transport, timeout=inner.timeout)
    return client.with_options(http_client=http_client)
