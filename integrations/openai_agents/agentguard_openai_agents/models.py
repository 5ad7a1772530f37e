"""The SDK's OpenAI models, with their HTTP through an agentguard :class:`~agentguard.Guard`.

:class:`GuardedModelProvider` is a ``ModelProvider`` for ``RunConfig(model_provider=...)``: every
model name an agent gives resolves to the SDK's own ``OpenAIResponsesModel`` (or
``OpenAIChatCompletionsModel``) on an ``AsyncOpenAI`` client whose HTTP goes through the guard, wrapped
in a thin :class:`GuardedModel` that keeps the run's state with a parked record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import ModelResponse, TResponseInputItem, TResponseStreamEvent
from agents.model_settings import ModelSettings
from agents.models.default_models import get_default_model
from agents.models.interface import Model, ModelProvider, ModelTracing
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from agents.models.openai_responses import OpenAIResponsesModel
from agents.retry import ModelRetryAdvice, ModelRetryAdviceRequest
from agents.tool import Tool
from openai import AsyncOpenAI
from openai.types.responses.response_prompt_param import ResponsePromptParam

from agentguard import SessionParked
from agentguard_openai_agents.progress import keep_parked_state, note_server_state

if TYPE_CHECKING:
    from agentguard import Guard

__all__ = ["GuardedModel", "GuardedModelProvider", "ModelApi", "guarded_client"]

ModelApi = Literal["chat", "responses"]
"""Which OpenAI API the SDK's model speaks: Chat Completions or the Responses API."""


def guarded_client(
    guard: Guard,
    client: AsyncOpenAI | None = None,
    *,
    http_options: Mapping[str, Any] | None = None,
) -> AsyncOpenAI:
    """A copy of ``client`` whose HTTP goes through ``guard``, with the SDK's retries off.

    The copy keeps the client's base URL, key, organisation and headers, and gets a guarded
    ``httpx.AsyncClient`` of its own (``guard.async_http_client()``), which keeps one connection
    pool per event loop: ``Runner.run_sync`` and a resume daemon each run a loop of their own.
    ``max_retries`` is 0, because the guard retries transient failures itself
    (``limits.max_retries``); the client's retries on top would multiply HTTP attempts.

    Args:
        guard: the guard.
        client: the application's client (default: ``AsyncOpenAI()``, configured from
            ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``). It is not changed.
        http_options: keyword arguments for the guard's inner ``httpx.AsyncClient`` (``proxy``,
            ``verify``, ``limits``, ``timeout``...).

    Returns:
        The guarded client.
    """
    base = client if client is not None else AsyncOpenAI()
    return base.with_options(
        http_client=guard.async_http_client(**dict(http_options or {})), max_retries=0
    )


class GuardedModel(Model):
    """One of the SDK's OpenAI models, unchanged, with one addition: when a call parks the
    agentguard session (a 429 or an exhausted budget), the run's ``RunState`` is kept with the
    parked record before :class:`~agentguard.SessionParked` goes on up to ``Runner.run``.

    Args:
        inner: the SDK model (its client must be a guarded one, see :func:`guarded_client`).
    """

    def __init__(self, inner: Model) -> None:
        self.inner = inner

    @property
    def model(self) -> str:
        """The model name the inner model sends (the guard's router may send another)."""
        return str(getattr(self.inner, "model", ""))

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        """The inner model's ``get_response``; a park keeps the run's state first."""
        note_server_state(previous_response_id, conversation_id)
        try:
            return await self.inner.get_response(
                system_instructions,
                input,
                model_settings,
                tools,
                output_schema,
                handoffs,
                tracing,
                previous_response_id=previous_response_id,
                conversation_id=conversation_id,
                prompt=prompt,
            )
        except SessionParked as parked:
            await keep_parked_state(parked)
            raise

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        """The inner model's ``stream_response``; a park keeps the run's state first."""
        note_server_state(previous_response_id, conversation_id)
        events = self.inner.stream_response(
            system_instructions,
            input,
            model_settings,
            tools,
            output_schema,
            handoffs,
            tracing,
            previous_response_id=previous_response_id,
            conversation_id=conversation_id,
            prompt=prompt,
        )
        try:
            async for event in events:
                yield event
        except SessionParked as parked:
            await keep_parked_state(parked)
            raise
        finally:
            # A reader that stops early closes this generator; close the SDK's stream too.
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    def get_retry_advice(self, request: ModelRetryAdviceRequest) -> ModelRetryAdvice | None:
        """The inner model's advice (the guard's errors carry ``x-should-retry: false``)."""
        return self.inner.get_retry_advice(request)

    async def close(self) -> None:
        """Close the inner model."""
        await self.inner.close()


class GuardedModelProvider(ModelProvider):
    """A ``ModelProvider`` whose models all call OpenAI through ``guard``.

    Give it to a run as ``RunConfig(model_provider=...)`` (the ``guarded_run`` functions do):
    every agent that names its model by string (``Agent(model="gpt-4o")``, or no model: the
    SDK's default) gets the SDK's own OpenAI model on a guarded client.

    Args:
        guard: the guard.
        client: the application's ``AsyncOpenAI`` (copied, see :func:`guarded_client`).
        api: ``"responses"`` (``OpenAIResponsesModel``, the default, as the SDK's own) or
            ``"chat"`` (``OpenAIChatCompletionsModel``, for providers that serve only
            ``/chat/completions``). The guard meters both alike. Under a budget it refuses
            what it cannot bound: a ``conversation_id`` run (the provider adds the stored
            conversation), a ``previous_response_id`` it did not settle, and built-in tools
            (web search, file search...); ``auto_previous_response_id`` chains work.
        http_options: keyword arguments for the guard's inner ``httpx.AsyncClient``.

    Raises:
        ValueError: ``api`` is neither ``"chat"`` nor ``"responses"``.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        client: AsyncOpenAI | None = None,
        api: ModelApi = "responses",
        http_options: Mapping[str, Any] | None = None,
    ) -> None:
        if api not in ("chat", "responses"):
            raise ValueError(f"api must be 'chat' or 'responses', not {api!r}")
        self.guard = guard
        self.api: ModelApi = api
        self.client = guarded_client(guard, client, http_options=http_options)

    def get_model(self, model_name: str | None) -> Model:
        """The guarded model for ``model_name`` (the SDK's default model when ``None``)."""
        name = model_name or get_default_model()
        inner: Model
        if self.api == "responses":
            inner = OpenAIResponsesModel(
                model=name, openai_client=self.client, model_is_explicit=model_name is not None
            )
        else:
            inner = OpenAIChatCompletionsModel(model=name, openai_client=self.client)
        return GuardedModel(inner)

    async def aclose(self) -> None:
        """Close the guarded client's connections (those of the running event loop)."""
        await self.client.close()
