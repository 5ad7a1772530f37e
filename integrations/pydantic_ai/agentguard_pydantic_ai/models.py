"""Pydantic AI models whose every HTTP attempt goes through an agentguard :class:`~agentguard.Guard`.

A Pydantic AI model talks to its provider through an SDK client (``AsyncOpenAI`` for the OpenAI
models). Guarding a model means giving it a copy of that client whose HTTP client is the guard's
(``guard.async_http_client()``) and whose SDK retries are off. Each model kind speaks one wire
API; a kind is built or guarded only if agentguard meters its API (:data:`METERED_APIS`), and
is otherwise refused with the reason, so a model is never handed back half guarded. The chat
and Responses models read their client the same way; the Anthropic model needs a guarder for
its client.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from openai import AsyncOpenAI
from pydantic_ai.models import Model
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.profiles import ModelProfile
from pydantic_ai.providers import Provider
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

if TYPE_CHECKING:
    from agentguard import Guard

__all__ = ["GUARDED_MODEL_KINDS", "METERED_APIS", "guarded_model"]

METERED_APIS: frozenset[str] = frozenset({"chat", "responses"})
"""The wire APIs agentguard meters, whose models :func:`guarded_model` builds and guards:
``chat`` (``/chat/completions``) and ``responses`` (``/responses``). Not yet: ``anthropic``
(``/v1/messages``)."""

# Each model-string kind (Pydantic AI's prefix) and the wire API its model speaks.
_API_OF_KIND = {
    "openai-chat": "chat",
    "openai": "responses",  # Pydantic AI 2.x: a plain "openai:" model is a Responses model
    "openai-responses": "responses",
    "anthropic": "anthropic",
}
_NOT_METERED = {
    "anthropic": "agentguard cannot wrap Anthropic clients yet; use an OpenAI model "
    "('openai:<model>' or 'openai-chat:<model>')",
}

GUARDED_MODEL_KINDS: tuple[str, ...] = tuple(
    kind for kind, api in _API_OF_KIND.items() if api in METERED_APIS
)
"""The model kinds (the prefix of a Pydantic AI model string) :func:`guarded_model` builds."""


def guarded_model(
    guard: Guard,
    model: Model | str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    settings: ModelSettings | None = None,
    profile: ModelProfile | None = None,
    http_options: Mapping[str, Any] | None = None,
) -> Model:
    """A Pydantic AI model whose requests go through ``guard``.

    Every model request of an agent using it (``run``, ``run_sync``, ``run_stream``, ``iter``,
    structured output, tool calls) passes the guard's limits, budget, routing, trimming and
    parking, inside whatever agentguard session is bound when it is made
    (:class:`~agentguard_pydantic_ai.AgentGuardCapability` binds one per agent run). The guard
    retries transient failures itself, so the OpenAI SDK's retries are off.

    Args:
        guard: the guard.
        model: a model string, ``"openai:<model name>"`` or ``"openai-responses:<model
            name>"`` (an OpenAI Responses API model, Pydantic AI's default for OpenAI) or
            ``"openai-chat:<model name>"`` (a Chat Completions model), or a model already built
            (an ``OpenAIResponsesModel`` or ``OpenAIChatModel`` with any OpenAI-compatible
            provider): the result is a copy using a guarded copy of its client (same base URL,
            key, headers and timeout); the model passed in is left as it was. Under a budget
            the guard refuses what it cannot bound: built-in tools (``WebSearchTool``...), a
            stored ``openai_conversation_id``, and an ``openai_previous_response_id`` it did not
            settle (``'auto'`` continues responses it settled, and works).
        base_url: the provider's base URL (a model string only; default: ``OPENAI_BASE_URL``
            or OpenAI's).
        api_key: the API key (a model string only; default: ``OPENAI_API_KEY``).
        settings: default model settings (a model string only).
        profile: the model profile (a model string only; default: the provider's).
        http_options: keyword arguments for the guard's inner ``httpx.AsyncClient``
            (``proxy``, ``verify``, ``limits``, ``timeout``...). A model passed in keeps its
            client's options, but not its custom ``httpx`` client, which the guard's replaces.

    Returns:
        The guarded model.

    Raises:
        ValueError: the model string names no model or a kind the guard cannot meter yet
            (Anthropic), model-string options came with a built model, or
            the settings ask for SDK retries (``max_retries``).
        TypeError: a model of a class this function cannot guard.

    Example::

        agent = Agent(
            guarded_model(guard, "openai:gpt-4o-mini"),
            capabilities=[AgentGuardCapability(guard, budget_key="research")],
        )
    """
    options = dict(http_options or {})
    for where, chosen in (
        ("settings", settings),
        (f"{type(model).__name__}.settings", _settings_of(model)),
    ):
        _refuse_sdk_retries(where, chosen)
    if isinstance(model, str):
        return _from_string(guard, model, base_url, api_key, settings, profile, options)
    given = [
        name
        for name, value in (
            ("base_url", base_url),
            ("api_key", api_key),
            ("settings", settings),
            ("profile", profile),
        )
        if value is not None
    ]
    if given:
        raise ValueError(
            f"guarded_model() got a built {type(model).__name__} and {', '.join(given)}: "
            "those options are for a model string; set them on the model itself"
        )
    return _guarder_for(model)(guard, model, options)


def _settings_of(model: Model | str) -> ModelSettings | None:
    return None if isinstance(model, str) else model.settings


def _refuse_sdk_retries(where: str, settings: ModelSettings | None) -> None:
    retries = dict(settings or {}).get("max_retries")
    if retries not in (None, 0):
        raise ValueError(
            f"{where} has max_retries={retries!r}: the guard retries transient failures "
            "itself (limits.max_retries); SDK retries on top would multiply attempts"
        )


# -- model strings ----------------------------------------------------------------------------------

_OPENAI_MODELS: dict[str, type[OpenAIChatModel] | type[OpenAIResponsesModel]] = {
    "chat": OpenAIChatModel,
    "responses": OpenAIResponsesModel,
}


def _from_string(
    guard: Guard,
    model: str,
    base_url: str | None,
    api_key: str | None,
    settings: ModelSettings | None,
    profile: ModelProfile | None,
    http_options: dict[str, Any],
) -> Model:
    kind, _, name = model.partition(":")
    if not name:
        raise ValueError(
            f"model {model!r} does not say which API it uses: write 'openai:{model}' (the "
            f"Responses API) or 'openai-chat:{model}' (Chat Completions)"
        )
    api = _API_OF_KIND.get(kind)
    if api is None:
        raise ValueError(
            f"model {model!r}: guarded_model() builds {', '.join(GUARDED_MODEL_KINDS)} models; "
            "for another OpenAI-compatible provider, build OpenAIChatModel(name, provider=...) "
            "(or OpenAIResponsesModel) and pass the model"
        )
    _require_metered(api, f"model {model!r}")
    model_class = _OPENAI_MODELS.get(api)
    if model_class is None:
        raise ValueError(f"model {model!r}: guarded_model() cannot build {kind!r} models yet")
    client = AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        http_client=guard.async_http_client(**http_options),
        max_retries=0,
    )
    return model_class(
        name,
        provider=OpenAIProvider(openai_client=client),
        settings=settings,
        profile=profile,
    )


def _require_metered(api: str, what: str) -> None:
    if api not in METERED_APIS:
        raise ValueError(f"{what}: {_NOT_METERED.get(api, f'{api} is not metered')}")


# -- built models -------------------------------------------------------------------------------------

ModelGuarder = Callable[["Guard", Any, dict[str, Any]], Model]


def _guarder_for(model: Model) -> ModelGuarder:
    name = type(model).__name__
    if isinstance(model, OpenAIChatModel):
        api = "chat"
    elif isinstance(model, OpenAIResponsesModel):
        api = "responses"
    elif name == "AnthropicModel":  # not imported: the anthropic SDK is optional
        api = "anthropic"
    else:
        raise TypeError(
            f"guarded_model() guards {', '.join(GUARDED_MODEL_KINDS)} models "
            f"(OpenAIChatModel, OpenAIResponsesModel), not {name}"
        )
    _require_metered(api, name)
    if api not in ("chat", "responses"):
        raise ValueError(f"{name}: guarded_model() cannot guard its client yet")
    return _guard_openai


def _guard_openai(
    guard: Guard, model: OpenAIChatModel | OpenAIResponsesModel, http_options: dict[str, Any]
) -> Model:
    """A copy of an OpenAI model (chat or Responses) using a guarded copy of its client."""
    owner = _guard_of(model.client)
    if owner is guard:
        return model  # guarded already: once is enough
    if owner is not None:
        raise ValueError(
            "the model's client goes through another guard already; guarding it again would "
            "count every call twice"
        )
    client = _guarded_openai_client(guard, model.client, http_options)
    guarded = copy.copy(model)
    # The model reads its client from its provider (a private field): give the copy a provider
    # that answers like the original one (name, base URL, profiles) with the guarded client.
    guarded._provider = _GuardedProvider(model._provider, client)
    return guarded


def _guard_of(client: AsyncOpenAI) -> Any:
    """The guard whose transport the client's HTTP client sends through, if any."""
    transport = getattr(client._client, "_transport", None)
    return getattr(transport, "guard", None)


def _guarded_openai_client(
    guard: Guard, client: AsyncOpenAI, http_options: dict[str, Any]
) -> AsyncOpenAI:
    # A fresh guarded HTTP client rather than guard.wrap(client): its connections are made per
    # event loop, and a Pydantic AI run and its resume (asyncio.run in a daemon thread) run in
    # different loops.
    return client.with_options(
        http_client=guard.async_http_client(**http_options),
        max_retries=0,
    )


class _GuardedProvider(Provider[AsyncOpenAI]):
    """An OpenAI-compatible provider that answers like ``inner`` but hands out ``client``."""

    def __init__(self, inner: Provider[AsyncOpenAI], client: AsyncOpenAI) -> None:
        self._inner = inner
        self._client = client

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    @property
    def client(self) -> AsyncOpenAI:
        return self._client

    def model_profile(self, model_name: str) -> ModelProfile | None:  # type: ignore[override]
        return self._inner.model_profile(model_name)
