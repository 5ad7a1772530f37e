"""Run an OpenAI Agents SDK agent with every model call through an agentguard guard.

``guarded_run`` / ``guarded_run_sync`` / ``guarded_run_streamed`` are ``Runner.run`` /
``run_sync`` / ``run_streamed`` with three things added:

- one agentguard session per run (the session bound in the caller's context, if any), so the
  guard's iteration and tool-call limits, loop detection, budgets, routing and trimming apply
  to the run's model calls as a whole;
- a run config whose model provider is a :class:`~agentguard_openai_agents.GuardedModelProvider`
  and whose model settings turn the SDK's runner retries off (the guard retries transient
  failures itself; the SDK's retries and the openai client's on top would multiply attempts);
- run hooks that keep the run's progress with the session, so that a parked run keeps its
  ``RunState`` and the registered resumer can continue it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from agents import Agent, ModelSettings, RunConfig, RunHooks, Runner
from agents.items import TResponseInputItem
from agents.models.interface import Model
from agents.models.multi_provider import MultiProvider
from agents.result import RunResult, RunResultStreaming
from agents.retry import ModelRetrySettings
from agents.run_config import DEFAULT_MAX_TURNS
from agents.run_state import ContextSerializer, RunState
from openai import AsyncOpenAI

from agentguard.session import current_session
from agentguard_openai_agents.models import GuardedModel, GuardedModelProvider, ModelApi
from agentguard_openai_agents.progress import ProgressHooks, RunProgress

if TYPE_CHECKING:
    from agentguard import Guard, Session

__all__ = [
    "FRAMEWORK",
    "RESUMER",
    "RunInput",
    "guarded_run",
    "guarded_run_config",
    "guarded_run_streamed",
    "guarded_run_sync",
]

FRAMEWORK = "openai_agents"
"""The ``framework`` a parked record of a guarded run names."""

RESUMER = "openai_agents"
"""The default name of the resumer that continues parked runs."""

RunInput = str | list[TResponseInputItem] | RunState[Any, Any]
"""What ``Runner.run`` takes: text, input items, or a ``RunState`` to continue."""

_NO_RETRIES = ModelSettings(retry=ModelRetrySettings(max_retries=0))


def guarded_run_config(
    guard: Guard,
    run_config: RunConfig | None = None,
    *,
    client: AsyncOpenAI | None = None,
    api: ModelApi = "responses",
    http_options: Mapping[str, Any] | None = None,
    provider: GuardedModelProvider | None = None,
) -> RunConfig:
    """A copy of ``run_config`` whose model calls all go through ``guard``.

    Args:
        guard: the guard.
        run_config: the application's run config (default: ``RunConfig()``); not changed.
        client: the application's ``AsyncOpenAI`` (copied onto a guarded HTTP client).
        api: ``"responses"`` (the Responses API, the default) or ``"chat"`` (Chat
            Completions).
        http_options: keyword arguments for the guard's inner ``httpx.AsyncClient``.
        provider: a provider to reuse across runs instead of building one from ``client``.

    Returns:
        The run config: its ``model_provider`` is guarded and its model settings turn the
        SDK's runner retries off (``retry=ModelRetrySettings(max_retries=0)``, which also
        makes the SDK call the openai client with ``max_retries=0``).

    Raises:
        ValueError: ``run_config`` brings a ``Model`` object or a provider of its own (its
            calls would bypass the guard), or asks for runner retries.
    """
    config = run_config or RunConfig()
    if isinstance(config.model, Model) and not isinstance(config.model, GuardedModel):
        raise ValueError(
            f"run_config.model is a {type(config.model).__name__} object with a client of its "
            "own, whose calls would bypass the guard: give the model's name instead"
        )
    own_provider = config.model_provider
    if not isinstance(own_provider, GuardedModelProvider | MultiProvider):
        raise ValueError(
            f"run_config.model_provider is a {type(own_provider).__name__}, whose models would "
            "call their provider outside the guard: leave it unset (the guarded run supplies "
            "a GuardedModelProvider)"
        )
    settings = config.model_settings
    retries = settings.retry.max_retries if settings and settings.retry else None
    if retries:
        raise ValueError(
            f"run_config.model_settings.retry.max_retries={retries}: the guard retries "
            "transient failures itself (limits.max_retries); runner retries on top would "
            "multiply attempts"
        )
    if provider is None:
        if isinstance(own_provider, GuardedModelProvider):
            provider = own_provider
        else:
            provider = GuardedModelProvider(
                guard, client=client, api=api, http_options=http_options
            )
    merged = (settings or ModelSettings()).resolve(_NO_RETRIES)
    return dataclasses.replace(config, model_provider=provider, model_settings=merged)


def _check_agents(start: Agent[Any]) -> None:
    """Refuse agents whose model is an object with its own client: the provider never sees
    them, so their calls would bypass the guard."""
    seen: set[int] = set()
    pending: list[Agent[Any]] = [start]
    while pending:
        agent = pending.pop()
        if id(agent) in seen:
            continue
        seen.add(id(agent))
        if isinstance(agent.model, Model) and not isinstance(agent.model, GuardedModel):
            raise ValueError(
                f"agent {agent.name!r} has a {type(agent.model).__name__} object as its model, "
                "whose calls would bypass the guard: give the model's name "
                "(Agent(model='gpt-4o')) and the guarded run resolves it through the guard"
            )
        pending.extend(h for h in agent.handoffs if isinstance(h, Agent))


@dataclasses.dataclass(slots=True)
class _Prepared:
    session: Session
    bound_already: bool
    """The session is the caller's, bound in this context: it is not bound again (runs
    gathered in one session would otherwise unbind each other's tokens)."""
    progress: RunProgress
    options: dict[str, Any]
    own_provider: GuardedModelProvider | None
    """The provider built for this run alone, closed when the run ends."""


def _prepare(
    guard: Guard,
    agent: Agent[Any],
    *,
    session_id: str | None,
    budget_key: str | None,
    resumer: str,
    client: AsyncOpenAI | None,
    api: ModelApi,
    provider: GuardedModelProvider | None,
    context_serializer: ContextSerializer | None,
    options: dict[str, Any],
) -> _Prepared:
    """The run's session, progress and ``Runner`` keyword arguments (no I/O)."""
    _check_agents(agent)
    options = dict(options)
    user_config = _as_run_config(options.get("run_config"))
    config = guarded_run_config(guard, user_config, client=client, api=api, provider=provider)
    options["run_config"] = config
    built_here = provider is None and not (
        user_config is not None and isinstance(user_config.model_provider, GuardedModelProvider)
    )
    own_provider = cast(GuardedModelProvider, config.model_provider) if built_here else None
    session = current_session()
    bound_already = session is not None and guard.owns(session)
    if session is None or not bound_already:
        session = guard.session(
            session_id, budget_key=budget_key, resumer=resumer, framework=FRAMEWORK
        )
    else:
        # A session someone else opened keeps its own resumer, unless it is the default one,
        # which would only re-send the pending request instead of continuing the run.
        if session.framework == "openai":
            session.framework = FRAMEWORK
        if session.resumer == "replay":
            session.resumer = resumer
    max_turns = options.get("max_turns", DEFAULT_MAX_TURNS)
    progress = RunProgress(guard=guard, max_turns=max_turns, context_serializer=context_serializer)
    hooks: RunHooks[Any] | None = options.get("hooks")
    options["hooks"] = ProgressHooks(progress, hooks)
    return _Prepared(session, bound_already, progress, options, own_provider)


def _as_run_config(value: Any) -> RunConfig | None:
    if value is None or isinstance(value, RunConfig):
        return value
    if isinstance(value, Mapping):
        return RunConfig(**value)
    raise TypeError(f"run_config must be a RunConfig or a mapping, not {type(value).__name__}")


@contextmanager
def _bound(prepared: _Prepared) -> Iterator[None]:
    token = prepared.progress.bind()
    try:
        if prepared.bound_already:
            yield
        else:
            with prepared.session:
                yield
    finally:
        RunProgress.unbind(token)


def _close_in_sync_loop(provider: GuardedModelProvider) -> None:
    """Close a provider's connections in the loop ``Runner.run_sync`` ran in (the thread's
    default loop, which the SDK keeps), where they were opened."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        return
    if not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(provider.aclose())


async def guarded_run(
    guard: Guard,
    agent: Agent[Any],
    input: RunInput,
    *,
    session_id: str | None = None,
    budget_key: str | None = None,
    resumer: str = RESUMER,
    client: AsyncOpenAI | None = None,
    api: ModelApi = "responses",
    provider: GuardedModelProvider | None = None,
    context_serializer: ContextSerializer | None = None,
    **runner_options: Any,
) -> RunResult:
    """``Runner.run(agent, input, ...)`` with every model call through ``guard``.

    The run is one agentguard session: the session bound in the caller's context (``with
    guard.session(...)``, or the one a resumer restored), else a new one with ``session_id``
    (default: a fresh ``s-...`` id). Its limits, budget, routing, trimming and parking apply
    to each model call; tool calls the model asks for count against ``limits.max_tool_calls``
    and loop detection.

    Args:
        guard: the guard.
        agent: the starting agent. Agents must name their model (``Agent(model="gpt-4o")``)
            or leave it unset; a ``Model`` object brings a client the guard does not see.
        input: text, input items, or a ``RunState`` to continue.
        session_id: the id of the run's session, if none is bound.
        budget_key: the budget the run's session draws on, if none is bound.
        resumer: the registered resumer that continues the run when it parks
            (see :func:`~agentguard_openai_agents.register_agents_resumer`).
        client: the application's ``AsyncOpenAI`` (default ``AsyncOpenAI()``); the run uses
            a guarded copy of it.
        api: ``"responses"`` (the Responses API, the default, as the SDK's own) or
            ``"chat"`` (Chat Completions, for providers that serve only that).
        provider: a :class:`GuardedModelProvider` to reuse instead of building one.
        context_serializer: turns a ``context`` that is not a mapping into one, for the
            ``RunState`` a park keeps (the SDK stores mapping contexts as they are and leaves
            others out); the resumer's ``context_deserializer`` turns it back.
        **runner_options: ``Runner.run`` keyword arguments (``context``, ``max_turns``,
            ``hooks``, ``run_config``, ``session``...).

    Returns:
        The SDK's ``RunResult``.

    Raises:
        SessionParked: a 429 or an exhausted budget parked the run after one HTTP attempt;
            its record holds the run's ``RunState``.
        LimitExceeded: an iteration, tool-call, loop or budget limit (``on_exhausted =
            "raise"``) stopped the run.
        ValueError: a model or provider that would bypass the guard, or runner retries.
    """
    prepared = _prepare(
        guard,
        agent,
        session_id=session_id,
        budget_key=budget_key,
        resumer=resumer,
        client=client,
        api=api,
        provider=provider,
        context_serializer=context_serializer,
        options=runner_options,
    )
    try:
        with _bound(prepared):
            return await Runner.run(agent, input, **prepared.options)
    finally:
        if prepared.own_provider is not None:
            await prepared.own_provider.aclose()


def guarded_run_sync(
    guard: Guard,
    agent: Agent[Any],
    input: RunInput,
    *,
    session_id: str | None = None,
    budget_key: str | None = None,
    resumer: str = RESUMER,
    client: AsyncOpenAI | None = None,
    api: ModelApi = "responses",
    provider: GuardedModelProvider | None = None,
    context_serializer: ContextSerializer | None = None,
    **runner_options: Any,
) -> RunResult:
    """``Runner.run_sync(agent, input, ...)`` with every model call through ``guard``; see
    :func:`guarded_run` for the arguments and errors."""
    prepared = _prepare(
        guard,
        agent,
        session_id=session_id,
        budget_key=budget_key,
        resumer=resumer,
        client=client,
        api=api,
        provider=provider,
        context_serializer=context_serializer,
        options=runner_options,
    )
    try:
        with _bound(prepared):
            return Runner.run_sync(agent, input, **prepared.options)
    finally:
        if prepared.own_provider is not None:
            _close_in_sync_loop(prepared.own_provider)


def guarded_run_streamed(
    guard: Guard,
    agent: Agent[Any],
    input: RunInput,
    *,
    session_id: str | None = None,
    budget_key: str | None = None,
    resumer: str = RESUMER,
    client: AsyncOpenAI | None = None,
    api: ModelApi = "responses",
    provider: GuardedModelProvider | None = None,
    context_serializer: ContextSerializer | None = None,
    **runner_options: Any,
) -> RunResultStreaming:
    """``Runner.run_streamed(agent, input, ...)`` with every model call through ``guard``.

    Call it inside a running event loop, as ``Runner.run_streamed``. The run's task takes the
    session with it, so the calls it makes while the caller reads ``stream_events()`` are
    guarded; a park or a limit is raised from ``stream_events()``. See :func:`guarded_run` for
    the arguments and errors.
    """
    prepared = _prepare(
        guard,
        agent,
        session_id=session_id,
        budget_key=budget_key,
        resumer=resumer,
        client=client,
        api=api,
        provider=provider,
        context_serializer=context_serializer,
        options=runner_options,
    )
    with _bound(prepared):
        # The SDK starts the run's task here; the task copies the context, session included.
        return Runner.run_streamed(agent, input, **prepared.options)
