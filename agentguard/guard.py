"""The :class:`Guard`: the pipeline's stages composed from a config, and the ways in."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from agentguard.config import GuardConfig, agentguard_home
from agentguard.dialects import dialect_named
from agentguard.engine import CallContext, CallStage, Pipeline
from agentguard.errors import ConfigError, PricingError
from agentguard.files import tighten_home
from agentguard.ledger import BudgetLine, BudgetStatus, Ledger
from agentguard.ledger.budgets import DEFAULT_BUDGET_KEY, Budgets
from agentguard.ledger.response_contexts import ResponseContexts
from agentguard.limits import Limits
from agentguard.log import logger
from agentguard.parking.handler import Parker
from agentguard.parking.openclaw import OpenClawResumer
from agentguard.parking.record import ParkedSession
from agentguard.parking.resume import ParkedSessions, Resumer
from agentguard.parking.store import ParkedStore
from agentguard.retrying import RetryPolicy
from agentguard.routing.fallbacks import FallbackStage
from agentguard.routing.stage import RouteStage
from agentguard.session import Session, SessionState
from agentguard.store import Store, open_store
from agentguard.transport import flavour_for_client, flavour_of_openai, transports
from agentguard.trimming.stage import TrimStage

if TYPE_CHECKING:
    from agentguard.ledger.history import WindowSpend
    from agentguard.pricing import Pricer
    from agentguard.routing import RouteDecision
    from agentguard.routing.health import Latency
    from agentguard.tokens import TokenCounter

__all__ = ["Guard"]


def _log_corrupt(session_id: str, problem: str) -> None:
    logger.warning("corrupt_record", session_id=session_id, problem=problem)


ClientT = TypeVar("ClientT")


class Guard:
    """Guards the model calls of the clients it wraps.

    Args:
        config: the configuration; defaults to ``GuardConfig()``.
        counter: the token counter (default: the process-wide offline BPE counter).
        pricer: prices per model (default: from genai-prices with the config's overrides).

    Example::

        guard = Guard.from_config("agentguard.toml")
        client = guard.wrap(OpenAI())
        with guard.session("task-42", budget_key="research") as s:
            client.chat.completions.create(model="gpt-4o", messages=messages)
            print(s.iterations, s.spent_usd, s.remaining_usd)
    """

    def __init__(
        self,
        config: GuardConfig | None = None,
        *,
        counter: TokenCounter | None = None,
        pricer: Pricer | None = None,
    ) -> None:
        from agentguard.pricing import Pricer
        from agentguard.tokens import default_counter

        self.config = config or GuardConfig()
        tighten_home(agentguard_home())
        self.store: Store = open_store(
            self.config.store.resolved_url(),
            busy_timeout_s=self.config.store.busy_timeout_s,
            origin="store.url" if self.config.store.url else "the default store; set store.url",
        )
        self.ledger = Ledger(
            self.store,
            reservation_ttl_s=self.config.store.reservation_ttl_s,
            lease_fraction=self.config.store.lease_fraction,
            lease_idle_s=self.config.store.lease_idle_s,
        )
        self.counter = counter or default_counter()
        self.pricer = pricer or Pricer(self.config.pricing)
        self._check_models_priced()
        self.limits = Limits.from_config(self.config.limits)
        limits = self.config.limits
        self.retry = RetryPolicy(
            limits.max_retries,
            initial_s=limits.backoff_initial_s,
            max_s=limits.backoff_max_s,
            max_retry_after_s=limits.max_retry_after_s,
        )
        self.budgets = Budgets(self.config, self.ledger)
        self.default_budget_key = DEFAULT_BUDGET_KEY
        self.current_session_var: ContextVar[Session | None] = ContextVar(
            f"agentguard_session_{id(self)}", default=None
        )
        """The session of this guard bound in the current context."""
        self.observers: list[Callable[[CallContext], None]] = []
        """Called with each settled call's context (the demo prints from it)."""
        self.stages: list[CallStage] = []
        self.router_stage = RouteStage(
            self.config.routing,
            self.counter,
            self.remaining_fraction,
            ask=self._classifier_ask
            if self.config.routing.classifier in ("llm", "cascade")
            else None,
        )
        self.stages.append(self.router_stage)
        self.fallbacks = self._fallback_stage()
        """Fallback chains, cooldowns and the choice among a tier's equal models (``None``
        when ``routing.fallbacks`` and ``routing.equivalents`` are empty)."""
        if self.fallbacks is not None:
            self.stages.append(self.fallbacks)
        if self.config.trimming.enabled:
            summarize = self.config.trimming.strategy == "summarize"
            self.stages.append(
                TrimStage(
                    self.config.trimming,
                    self.counter,
                    self.pricer,
                    summarizer=self._summarize if summarize else None,
                )
            )
        self.resumers: dict[str, Resumer] = {
            "replay": self._replay,
            "openclaw": OpenClawResumer(self),
        }
        """Registered resumers by name; see :meth:`resumer`."""
        self._result_callbacks: list[Callable[[ParkedSession, Any], None]] = []
        self._replay_client: Any = None
        self._replay_clients: dict[str, Any] = {}
        """Replay clients of the dialects other than chat completions, by dialect name."""
        parked_store = ParkedStore(self.store, on_corrupt=_log_corrupt)
        self.parker = Parker(
            self.config.parking, parked_store, max_retry_after_s=limits.max_retry_after_s
        )
        self.parked = ParkedSessions(self, parked_store)
        """The parked sessions: ``list()``, ``get(id)``, ``resume(id)``, ``drop(id)``."""
        self.pipeline = Pipeline(
            limits=self.limits,
            retry=self.retry,
            counter=self.counter,
            pricer=self.pricer,
            ledger=self.ledger,
            stages=self.stages,
            default_max_output_tokens=limits.default_max_output_tokens,
            enforce_output_cap=limits.enforce_output_cap,
            wait_inline_max_s=self.config.parking.wait_inline_max_s,
            budget_policy=self._on_exhausted,
            limit_handler=self.parker,
            escalator=self.router_stage,
            contexts=ResponseContexts(self.store),
            observers=self.observers,
            fallbacks=self.fallbacks,
        )

    def _fallback_stage(self) -> FallbackStage | None:
        routing = self.config.routing
        if not routing.fallbacks and not routing.equivalents:
            return None
        from agentguard.config import parse_duration
        from agentguard.routing.health import ModelHealth

        health = ModelHealth(
            self.store,
            failures=routing.cooldown_failures,
            window_s=parse_duration(routing.cooldown_window).total_seconds(),
            cooldown_s=parse_duration(routing.cooldown).total_seconds(),
            samples=routing.latency_samples,
        )
        from agentguard.routing.providers import upstreams_from

        return FallbackStage(routing, health, self.pricer, upstreams_from(routing.providers))

    def model_latency(self, model: str) -> Latency | None:
        """``model``'s recent latency in this process (median and 95th percentile of the time
        to the first byte and to the end of its answers), or ``None`` when it has not answered
        yet or ``routing.fallbacks`` and ``routing.equivalents`` are empty (nothing is
        measured then)."""
        return self.fallbacks.health.latency(model) if self.fallbacks is not None else None

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> Guard:
        """A guard configured from a TOML file (or found the way the CLI finds it)."""
        return cls(GuardConfig.discover(path, origin="Guard.from_config()"))

    # -- ways in --------------------------------------------------------------------------------

    def wrap(self, client: ClientT) -> ClientT:
        """Return a copy of an ``openai.OpenAI`` / ``openai.AsyncOpenAI`` or
        ``anthropic.Anthropic`` / ``anthropic.AsyncAnthropic`` client whose model calls go
        through the guard. The copy has the same type, options and interface; the original
        client is left as it was.
        """
        from agentguard.anthropic_sdk import is_anthropic_client, wrap_anthropic

        if is_anthropic_client(client):
            import anthropic  # loaded already: the client is one of its

            guarded = wrap_anthropic(self, client)
            if not isinstance(guarded, anthropic.AsyncAnthropic):
                self._replay_clients["anthropic_messages"] = guarded
            return guarded  # type: ignore[no-any-return]
        import openai

        if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
            raise TypeError(
                f"Guard.wrap() takes an openai.OpenAI / AsyncOpenAI or anthropic.Anthropic / "
                f"AsyncAnthropic client, not {type(client).__name__}; for other clients use "
                f"guard.http_client()"
            )
        inner = client._client
        classes = transports(flavour_for_client(inner))
        if isinstance(client, openai.AsyncOpenAI):
            transport = classes.AsyncGuardTransport(self, inner, owns_inner=False)
            http_client = classes.module.AsyncClient(transport=transport, timeout=inner.timeout)
        else:
            transport = classes.GuardTransport(self, inner, owns_inner=False)
            http_client = classes.module.Client(transport=transport, timeout=inner.timeout)
        wrapped = client.with_options(http_client=http_client)
        if isinstance(wrapped, openai.OpenAI):
            self._replay_client = wrapped
        return wrapped  # type: ignore[return-value]

    def http_client(self, *, flavour: str | None = None, **kwargs: Any) -> Any:
        """A guarded ``httpx.Client`` (``httpx2`` with openai 3.x) for code that builds its own
        OpenAI client: ``OpenAI(http_client=guard.http_client())``,
        ``ChatOpenAI(http_client=...)``. ``kwargs`` go to the inner transport's client."""
        classes = transports(flavour or flavour_of_openai())
        inner = classes.module.Client(**kwargs) if kwargs else classes.module.HTTPTransport()
        transport = classes.GuardTransport(self, inner, owns_inner=True)
        return classes.module.Client(transport=transport, timeout=kwargs.get("timeout", 600.0))

    def async_http_client(self, *, flavour: str | None = None, **kwargs: Any) -> Any:
        """A guarded ``httpx.AsyncClient``; see :meth:`http_client`."""
        classes = transports(flavour or flavour_of_openai())

        def make_inner() -> Any:
            if kwargs:
                return classes.module.AsyncClient(**kwargs)
            return classes.module.AsyncHTTPTransport()

        transport = classes.AsyncGuardTransport(
            self, make_inner(), owns_inner=True, inner_factory=make_inner
        )
        return classes.module.AsyncClient(transport=transport, timeout=kwargs.get("timeout", 600.0))

    def session(
        self,
        session_id: str | None = None,
        *,
        budget_key: str | None = None,
        parent: Session | None = None,
        resumer: str = "replay",
        force_model: str | None = None,
        framework: str = "openai",
    ) -> Session:
        """A session to run an agent in: ``with guard.session("task-42") as s:`` (or
        ``async with``). Calls made through wrapped clients inside the block count against
        it. A child session (``parent=``) draws on its root session's budget.

        Raises:
            ValueError: the session id is not 1-200 characters of letters, digits and ``._:@-``.
            ConfigError: ``budget_key`` names no ``[[budgets]]`` entry of the config.
        """
        return Session(
            self.budgets,
            self.current_session_var,
            session_id,
            budget_key=budget_key,
            parent=parent,
            resumer=resumer,
            force_model=force_model,
            framework=framework,
        )

    def owns(self, session: Session) -> bool:
        """Whether ``session`` was made by this guard (its calls go through this guard's
        budgets, and its clients find it bound)."""
        return session.binding is self.current_session_var

    # -- parking and resuming ------------------------------------------------------------------

    def resumer(self, name: str) -> Callable[[Resumer], Resumer]:
        """Register ``fn(parked: ParkedSession)`` as the way sessions naming ``name`` resume.

        It runs inside a session restored from the record, so calls through this guard's
        clients count against the same budget, and a limit inside it re-parks the session.
        """
        if not name or not name.replace("-", "").replace("_", "").isalnum() or not name.islower():
            raise ValueError(
                f"resumer name {name!r} must be plain lower-case letters, digits, - and _"
            )

        def register(function: Resumer) -> Resumer:
            self.resumers[name] = function
            return function

        return register

    def on_resumed(
        self, callback: Callable[[ParkedSession, Any], None]
    ) -> Callable[[ParkedSession, Any], None]:
        """Register ``callback(parked, response)``: the built-in ``replay`` resumer hands it each
        replayed call's response."""
        self._result_callbacks.append(callback)
        return callback

    def set_replay_client(self, client: Any) -> None:
        """The client the ``replay`` resumer re-sends pending requests through (default: the
        last sync ``openai.OpenAI`` client wrapped by this guard; for parked Anthropic calls,
        the last sync ``anthropic.Anthropic`` client wrapped)."""
        from agentguard.anthropic_sdk import is_anthropic_client

        if is_anthropic_client(client):
            self._replay_clients["anthropic_messages"] = client
        else:
            self._replay_client = client

    def _replay_client_for(self, dialect: str) -> Any:
        if dialect.startswith("openai"):
            return self._replay_client  # every OpenAI API is called through the one client
        return self._replay_clients.get(dialect)

    def resume_problem(self, record: ParkedSession) -> str | None:
        """Why this process cannot resume ``record`` (its resumer is not registered, or the
        ``replay`` resumer has no client), or ``None`` when it can."""
        if record.resumer not in self.resumers:
            return (
                f"session {record.session_id!r} resumes with {record.resumer!r}, which is not "
                f"registered here (registered: {', '.join(sorted(self.resumers))})"
            )
        if record.resumer == "replay" and self._replay_client_for(record.dialect) is None:
            sdk = "anthropic" if record.dialect.startswith("anthropic") else "openai"
            return (
                f"session {record.session_id!r} resumes with 'replay', which needs the "
                f"application's wrapped {sdk} client (guard.wrap or guard.set_replay_client)"
            )
        return None

    def restore_session(self, record: ParkedSession) -> Session:
        """A session with a parked record's id, budget, counters and metadata."""
        if record.session_state:
            state = SessionState.model_validate(record.session_state)
        else:
            state = SessionState(iterations=record.iterations, spent_usd=record.spent_usd)
        state.consecutive_failures = 0
        metadata = dict(record.metadata)
        session = Session(
            self.budgets,
            self.current_session_var,
            record.session_id,
            budget_key=record.budget_key,
            resumer=record.resumer,
            framework=record.framework,
            state=state,
            parent_id=record.parent_id,
            root_id=metadata.get("root_session_id"),
        )
        session.metadata = metadata
        return session

    def _replay(self, parked: ParkedSession) -> Any:
        dialect = dialect_named(parked.dialect)
        if dialect is None:
            raise RuntimeError(
                f"the replay resumer cannot resend a {parked.dialect!r} request: this agentguard "
                "does not speak that API"
            )
        client = self._replay_client_for(dialect.name)
        if client is None:
            sdk = "anthropic.Anthropic" if dialect.name.startswith("anthropic") else "openai.OpenAI"
            raise RuntimeError(
                f"the replay resumer has no client: wrap an {sdk} client with this guard "
                "(guard.wrap) or call guard.set_replay_client(client) in the application"
            )
        response = dialect.replay(client, parked.request)
        for callback in self._result_callbacks:
            callback(parked, response)
        return response

    def route(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        session: Session | None = None,
    ) -> RouteDecision:
        """The routing decision for a call, without making it: the pipeline's own decision for
        the same step (no I/O with the learned or heuristic classifier; budget pressure is read
        only when a session is given)."""
        from agentguard.routing import RouteDecision as _RouteDecision

        decision: _RouteDecision = self.router_stage.decide_step(
            model=model, messages=messages, tools=tools, session=session
        )
        return decision

    def _summarize(self, messages: list[dict[str, Any]]) -> str:
        """Summarise a dropped span of the conversation with the small model (a guarded call:
        its cost counts against the session's budget)."""
        client = self._replay_client
        if client is None:
            raise RuntimeError("trimming.strategy = 'summarize' needs a wrapped sync openai client")
        model = self.config.trimming.summary_model or next(
            iter(self.config.routing.tiers.values()), None
        )
        if model is None:
            raise RuntimeError(
                "trimming.strategy = 'summarize' needs trimming.summary_model or routing.tiers"
            )
        transcript = "\n".join(
            f"[{m.get('role')}] {str(m.get('content') or '')[:4000]}"
            + (f" (called {len(m['tool_calls'])} tools)" if m.get("tool_calls") else "")
            for m in messages
        )
        response = client.chat.completions.create(
            model=model,
            max_tokens=400,
            temperature=0,
            messages=[
                {
                    "role": "system",
                    "content": "Summarise this part of an agent's conversation for the agent "
                    "itself: facts learned, files and values seen, decisions made, open "
                    "questions. Be terse; keep names, paths and numbers exact.",
                },
                {"role": "user", "content": transcript[:60000]},
            ],
        )
        return response.choices[0].message.content or ""

    def _classifier_ask(self, messages: list[dict[str, Any]]) -> str:
        from agentguard.routing import CLASSIFIER_REQUEST_OPTIONS

        client = self._replay_client
        if client is None:
            raise RuntimeError(
                "routing.classifier needs a wrapped sync openai client to ask the small tier"
            )
        small = next(iter(self.config.routing.tiers.values()))
        response = client.chat.completions.create(
            model=small, messages=messages, **CLASSIFIER_REQUEST_OPTIONS
        )
        return response.choices[0].message.content or ""

    # -- budgets --------------------------------------------------------------------------------

    def check_budget_key(self, key: str) -> None:
        """Check that sessions may name ``key``: a ``[[budgets]]`` entry configures it (with or
        without a ``limit_usd``), or it is the implicit ``"default"`` key.

        Raises:
            ConfigError: the key is not configured (a misspelt key would otherwise run the
                session with no budget at all).
        """
        self.budgets.check_key(key)

    def _check_models_priced(self) -> None:
        """Price every model the config names, so a misspelt one fails here, not on every call.

        Raises:
            ConfigError: a routing tier, ``routing.force_model`` or ``trimming.summary_model``
                has no price; the message names the field and the model.
        """
        named = [
            (f"routing.tiers.{tier}", model) for tier, model in self.config.routing.tiers.items()
        ]
        if self.config.routing.force_model is not None:
            named.append(("routing.force_model", self.config.routing.force_model))
        if self.config.trimming.summary_model is not None:
            named.append(("trimming.summary_model", self.config.trimming.summary_model))
        routing = self.config.routing
        for source in routing.fallbacks:
            named.append((f"routing.fallbacks.{source}", routing.tiers.get(source, source)))
            named.extend((f"routing.fallbacks.{source}", m) for m in routing.chain_for(source))
        for tier, models in routing.equivalents.items():
            named.extend((f"routing.equivalents.{tier}", model) for model in models)
        for field, model in named:
            try:
                self.pricer.price(model)
            except PricingError as exc:
                raise ConfigError(
                    f"{field}: model {model!r} has no price, so no call to it could be "
                    f"budgeted: {exc}",
                    field=field,
                    expected="a model the price data knows, or one priced in [pricing.overrides]",
                ) from None
        self._check_one_provider_per_chain()

    def _check_one_provider_per_chain(self) -> None:
        """Refuse a fallback chain that crosses to a provider ``routing.providers`` does not
        configure (a call is sent to the API its client speaks, and another provider's model
        is not served there), and a tier's equivalents that cross providers at all.

        Raises:
            ConfigError: the chain names models of two providers; the message names the
                field, both models and what to set.
        """
        routing = self.config.routing
        groups = [
            (f"routing.fallbacks.{source}", [routing.tiers.get(source, source), *chain], True)
            for source, chain in ((s, routing.chain_for(s)) for s in routing.fallbacks)
        ]
        groups += [
            (f"routing.equivalents.{tier}", [routing.tiers[tier], *models], False)
            for tier, models in routing.equivalents.items()
        ]
        for field, models, may_cross in groups:
            first: tuple[str, str] | None = None
            for model in models:
                provider = self.pricer.price(model).provider
                if provider is None:
                    continue  # priced by an override: it runs where the caller sends it
                if first is None:
                    first = (model, provider)
                elif provider != first[1]:
                    if may_cross and provider in routing.providers:
                        continue
                    fix = (
                        f"set [routing.providers.{provider}] (base_url, api_key_env) so the "
                        f"call can be translated and sent there, or name models of one provider"
                        if may_cross and provider in ("openai", "anthropic")
                        else "name models of one provider"
                    )
                    raise ConfigError(
                        f"{field}: {model!r} is a model of {provider} and {first[0]!r} one "
                        f"of {first[1]}; a call goes to the API its client speaks: {fix}",
                        field=field,
                        expected=f"models of one provider ({first[1]}), or "
                        f"routing.providers.{provider}",
                    )

    def budget_lines_for(self, session: Session) -> tuple[BudgetLine, ...]:
        """The ledger lines calls in ``session`` draw on: its budget key's window and, with
        ``limits.max_session_usd``, its root session's own budget."""
        return session.budget_lines()

    def budget_line(self, key: str) -> BudgetLine:
        """The ledger line of a budget key (unlimited if no budget is configured for it)."""
        return self.budgets.line(key)

    def budget_status(self, key: str) -> BudgetStatus:
        """Spend, holds, limit and reset time of ``key``'s current window: ``spent_usd``,
        ``in_flight_usd`` (calls in flight), ``idle_lease_usd`` (this process's unused slice),
        ``other_leases_usd``, ``free_usd`` and ``remaining_usd`` (free to this process now)."""
        return self.ledger.status(self.budget_line(key))

    def budget_keys(self) -> list[str]:
        """Every budget key: the configured ones and those with spend in the store (sessions'
        own ``session:<id>`` budgets left out)."""
        in_store = self.ledger.keys()
        stored = {key for key in in_store if not key.startswith("session:")}
        return sorted({budget.key for budget in self.config.budgets} | stored)

    def budget_history(self, key: str, *, windows: int = 12) -> list[WindowSpend]:
        """Spend of ``key`` in each of its last ``windows`` windows, oldest first.

        A key the config does not know but the store does gives its stored windows as they
        were written.

        Raises:
            ConfigError: neither the config nor the store knows ``key``.
        """
        from agentguard.ledger.history import spend_history

        self.require_budget_key(key)
        self.ledger.flush()
        return spend_history(self.store, self.budget_line(key), windows=windows)

    def require_budget_key(self, key: str) -> None:
        """Raise :class:`ConfigError` (with a did-you-mean) unless the config or the store
        knows budget ``key``."""

        known = self.budget_keys()
        if key in known:
            return
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(repr(k) for k in known) if known else "none"
        raise ConfigError(
            f"unknown budget key {key!r}: not configured and no spend in the store{hint} "
            f"(known keys: {listed})",
            field="budgets",
        )

    def budget_statuses(self, session: Session) -> list[BudgetStatus]:
        """The status of each budget line ``session``'s calls draw on."""
        return self.budgets.statuses(session.budget_lines())

    def remaining_fraction(self, session: Session) -> float | None:
        """The smallest remaining fraction over the session's limited budgets."""
        fractions = [
            status.remaining_fraction
            for status in self.budget_statuses(session)
            if status.remaining_fraction is not None
        ]
        return min(fractions) if fractions else None

    def _on_exhausted(self, key: str) -> str:
        budget = self.config.budget(key)
        return budget.on_exhausted if budget is not None else "raise"

    def close(self) -> None:
        """Write pending settlements and give this process's budget leases back (also done at
        interpreter exit; call it in processes that end with ``os._exit``, like pool workers)."""
        self.ledger.close()
