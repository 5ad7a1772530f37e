"""Pydantic AI models whose every HTTP attempt goes through an agentguard :class:`~agentguard.Guard`.

A Pydantic AI model talks to its provider through an SDK client (``AsyncOpenAI`` for the OpenAI
models, ``AsyncAnthropic`` for the Anthropic model). Guarding a model means giving it a copy of
that client whose HTTP client sends through the guard (connections made per event loop) and
whose SDK retries are off. Each model kind speaks one wire API; a kind is built or guarded only
if agentguard meters its API (:data:`METERED_APIS`), and is otherwise refused with the reason,
so a model is never handed back half guarded. All three models read their client the same way,
from their provider.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from openai import AsyncOpenAI
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.profiles import ModelProfile
from pydantic_ai.providers import Provider
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from agentguard.anthropic_sdk import as_anthropic_error
from agentguard.transport import flavour_for_client, transports

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from agentguard import Guard

__all__ = ["GUARDED_MODEL_KINDS", "METERED_APIS", "guarded_model"]

METERED_APIS: frozenset[str] = frozenset({"chat", "responses", "anthropic"})
"""The wire APIs agentguard meters, whose models :func:`guarded_model` builds and guards:
``chat`` (``/chat/completions``), ``responses`` (``/responses``) and ``anthropic``
(Anthropic's ``/v1/messages``)."""

# Each model-string kind (Pydantic AI's prefix) and the wire API its model speaks.
_API_OF_KIND = {
    "openai-chat": "chat",
    "openai": "responses",  # Pydantic AI 2.x: a plain "openai:" model is a Responses model
    "openai-responses": "responses",
    "anthropic": "anthropic",
}
_NOT_METERED: dict[str, str] = {}

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
    retries transient failures itself, so the SDK's retries are off.

    Args:
        guard: the guard.
        model: a model string, ``"openai:<model name>"`` or ``"openai-responses:<model
            name>"`` (an OpenAI Responses API model, Pydantic AI's default for OpenAI) or
            ``"openai-chat:<model name>"`` (a Chat Completions model) or
            ``"anthropic:<model name>"`` (an ``AnthropicModel`` on the Messages API), or a model
            already built (an ``OpenAIResponsesModel`` or ``OpenAIChatModel`` with any
            OpenAI-compatible provider, or an ``AnthropicModel`` with an ``AsyncAnthropic``
            client): the result is a copy using a guarded copy of its client (same base URL,
            key, headers and timeout); the model passed in is left as it was. Under a budget
            the guard refuses what it cannot bound: built-in tools (``WebSearchTool``...), a
            stored ``openai_conversation_id``, and an ``openai_previous_response_id`` it did not
            settle (``'auto'`` continues responses it settled, and works).
        base_url: the provider's base URL (a model string only; default: ``OPENAI_BASE_URL``
            or OpenAI's, ``ANTHROPIC_BASE_URL`` or Anthropic's).
        api_key: the API key (a model string only; default: ``OPENAI_API_KEY``,
            ``ANTHROPIC_API_KEY``).
        settings: default model settings (a model string only).
        profile: the model profile (a model string only; default: the provider's).
        http_options: keyword arguments for the guard's inner ``httpx.AsyncClient``
            (``proxy``, ``verify``, ``limits``, ``timeout``...). A model passed in keeps its
            client's options, but not its custom ``httpx`` client, which the guard's replaces.

    Returns:
        The guarded model.

    Raises:
        ValueError: the model string names no model or a kind the guard cannot meter,
            model-string options came with a built model, or
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
            f"Responses API), 'openai-chat:{model}' (Chat Completions) or 'anthropic:{model}'"
        )
    api = _API_OF_KIND.get(kind)
    if api is None:
        raise ValueError(
            f"model {model!r}: guarded_model() builds {', '.join(GUARDED_MODEL_KINDS)} models; "
            "for another OpenAI-compatible provider, build OpenAIChatModel(name, provider=...) "
            "(or OpenAIResponsesModel) and pass the model"
        )
    _require_metered(api, f"model {model!r}")
    if api == "anthropic":
        from anthropic import AsyncAnthropic

        anthropic_client = _guarded_anthropic_client(
            guard, AsyncAnthropic(base_url=base_url, api_key=api_key), http_options
        )
        return AnthropicModel(
            name,
            provider=AnthropicProvider(anthropic_client=anthropic_client),
            settings=settings,
            profile=profile,
        )
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
    elif isinstance(model, AnthropicModel):
        api = "anthropic"
    else:
        raise TypeError(
            f"guarded_model() guards {', '.join(GUARDED_MODEL_KINDS)} models "
            f"(OpenAIChatModel, OpenAIResponsesModel, AnthropicModel), not {name}"
        )
    _require_metered(api, name)
    return _guard_anthropic if api == "anthropic" else _guard_openai


def _guard_openai(
    guard: Guard, model: OpenAIChatModel | OpenAIResponsesModel, http_options: dict[str, Any]
) -> Model:
    """A copy of an OpenAI model (chat or Responses) using a guarded copy of its client."""
    if _guarded_already(guard, model.client):
        return model
    client = _guarded_openai_client(guard, model.client, http_options)
    return _with_client(model, client)


def _guard_anthropic(guard: Guard, model: AnthropicModel, http_options: dict[str, Any]) -> Model:
    """A copy of an Anthropic model using a guarded copy of its ``AsyncAnthropic`` client."""
    from anthropic import AsyncAnthropic

    client = model.client
    # Bedrock, Vertex and Foundry clients sign requests for other hosts and wire shapes.
    if not isinstance(client, AsyncAnthropic):
        raise TypeError(
            f"guarded_model() guards an AnthropicModel on an AsyncAnthropic client, not on "
            f"{type(client).__name__}"
        )
    if _guarded_already(guard, client):
        return model
    return _with_client(model, _guarded_anthropic_client(guard, client, http_options))


def _guarded_already(guard: Guard, client: Any) -> bool:
    """Whether ``client`` sends through ``guard`` already (once is enough); refuses a client
    that sends through another guard."""
    owner = _guard_of(client)
    if owner is not None and owner is not guard:
        raise ValueError(
            "the model's client goes through another guard already; guarding it again would "
            "count every call twice"
        )
    return owner is guard


def _with_client(model: Any, client: Any) -> Model:
    guarded = copy.copy(model)
    # The model reads its client from its provider (a private field): give the copy a provider
    # that answers like the original one (name, base URL, profiles) with the guarded client.
    guarded._provider = _GuardedProvider(model._provider, client)
    return guarded  # type: ignore[no-any-return]


def _guard_of(client: Any) -> Any:
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


def _guarded_anthropic_client(
    guard: Guard, client: AsyncAnthropic, http_options: dict[str, Any]
) -> AsyncAnthropic:
    """A copy of ``client`` sending through ``guard`` with connections made per event loop (as
    for OpenAI), in the HTTP library the SDK speaks, with the SDK's retries off.

    The guard's errors leave it as ``anthropic.AnthropicError`` too: the SDK would turn any
    other error raised in its HTTP client into a connection error.
    """
    classes = transports(flavour_for_client(client._client))

    def make_inner() -> Any:
        if http_options:
            return classes.module.AsyncClient(**http_options)
        return classes.module.AsyncHTTPTransport()

    transport = classes.AsyncGuardTransport(
        guard,
        make_inner(),
        owns_inner=True,
        inner_factory=make_inner,
        raise_as=as_anthropic_error,
    )
    http_client = classes.module.AsyncClient(
        transport=transport, timeout=http_options.get("timeout", client.timeout)
    )
    return client.with_options(http_client=http_client, max_retries=0)


class _GuardedProvider(Provider[Any]):
    """A provider that answers like ``inner`` but hands out ``client``."""

    def __init__(self, inner: Provider[Any], client: Any) -> None:
        self._inner = inner
        self._client = client

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    @property
    def client(self) -> Any:
        return self._client

    def model_profile(self, model_name: str) -> ModelProfile | None:  # type: ignore[override]
        return self._inner.model_profile(model_name)
