"""Fallback chains, cooldowns and the latency-aware choice within a tier: the stage that picks
which of several equal models serves a call, and the engine's way out when a model fails.

Before a call (:meth:`FallbackStage.prepare`, after routing, before trimming):

- among a tier's model and its ``routing.equivalents``, ``routing.prefer`` picks the cheapest
  (``cost``) or the fastest lately (``latency``); never a model of another tier;
- a model in cooldown (:mod:`agentguard.routing.health`) is stepped over to the next available model
  of its chain (a ``fallback`` event with reason ``cooldown``).

When an attempt fails (:meth:`FallbackStage.switch_reason`, :meth:`FallbackStage.next_model`,
asked by the engine): a 529 *overloaded*, a 404 *model not found* or an error saying the model
is gone moves the call to the next model of its chain at once; a timeout or a 5xx does once
the retry policy has given up on the model. The engine prices and reserves the next model
before it sends it.

A chain may cross to another provider's model when ``routing.providers`` says where it is
served: the call becomes a call in that provider's API (its request translated by
:mod:`agentguard.dialects.translate`, sent to the :class:`~agentguard.routing.providers.Upstream`
in ``call.notes["upstream"]``), and the engine translates the answer back. A request that
cannot be translated faithfully skips that model (a ``fallback_skipped`` event says why).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agentguard.log import logger

if TYPE_CHECKING:
    from agentguard.config import RoutingConfig
    from agentguard.engine.call import CallContext, Reply
    from agentguard.pricing import Pricer
    from agentguard.routing.health import ModelHealth
    from agentguard.routing.providers import Upstream

__all__ = ["FallbackStage", "switch_reason"]

_GONE_CODES = frozenset({"model_not_found", "model_decommissioned", "model_deprecated"})
_GONE_MESSAGE = re.compile(
    r"\bmodel\b.*\b(?:does not exist|not found|decommissioned|deprecated|retired"
    r"|no longer (?:available|supported|exists))",
    re.IGNORECASE | re.DOTALL,
)


def switch_reason(status: int, body: bytes | None) -> str | None:
    """Why a failed attempt should go to the next model at once, without retries:
    ``overloaded`` (529, or an ``overloaded_error``), ``model_not_found`` (404) or
    ``model_gone`` (410, or an error whose code or message says the model is gone); else
    ``None``. Read from the error shapes of OpenAI's and Anthropic's APIs alike."""
    if status < 400 or status == 429:
        return None
    error_type, code, message = _error_fields(body)
    if status == 529 or error_type == "overloaded_error":
        return "overloaded"
    if status == 404:
        return "model_not_found"
    if status == 410 or code in _GONE_CODES:
        return "model_gone"
    if 400 <= status < 500 and _GONE_MESSAGE.search(message):
        return "model_gone"
    return None


def _error_fields(body: bytes | None) -> tuple[str, str, str]:
    """``error.type``, ``error.code`` and ``error.message`` of an error body ('' if absent)."""
    try:
        payload = json.loads(body or b"")
    except ValueError:
        return "", "", ""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "", "", ""
    fields = (error.get("type"), error.get("code"), error.get("message"))
    return tuple(value if isinstance(value, str) else "" for value in fields)  # type: ignore[return-value]


class FallbackStage:
    """Chooses among a tier's equal models and steps over models in cooldown; tells the
    engine where a failed call goes next.

    Args:
        config: the ``[routing]`` section (``fallbacks``, ``equivalents``, ``prefer``).
        health: failures, cooldowns and latency per model.
        pricer: prices, for ``prefer = "cost"``.
    """

    __slots__ = (
        "_tier_models",
        "config",
        "health",
        "nested_calls",
        "pricer",
        "reads_budget",
        "upstreams",
    )

    def __init__(
        self,
        config: RoutingConfig,
        health: ModelHealth,
        pricer: Pricer,
        upstreams: dict[str, Upstream] | None = None,
    ) -> None:
        self.config = config
        self.upstreams = upstreams or {}
        """Other providers' APIs a chain may cross to, by provider."""
        self.health = health
        self.pricer = pricer
        # Choosing may read the store (cooldowns shared by other processes): an async driver
        # runs it off its event loop unless the store is a local SQLite file.
        self.nested_calls = health.reads_network_store
        self.reads_budget = False
        self._tier_models: dict[str, list[str]] = {}
        """Each tier's model with its equivalents, by any of those models."""
        for tier, models in config.equivalents.items():
            group = [config.tiers[tier], *(m for m in models if m != config.tiers[tier])]
            for model in group:
                self._tier_models.setdefault(model, group)

    # -- before the call ---------------------------------------------------------------------

    def prepare(self, call: CallContext) -> None:
        chosen = self.preferred(call.model)
        if chosen != call.model:
            logger.info(
                "prefer",
                session_id=call.session.id,
                model=chosen,
                replaced=call.model,
                prefer=self.config.prefer,
            )
            call.body["model"] = chosen
        call.notes["chain_start"] = chosen
        call.notes["tried"] = [chosen]
        if not self._has_alternatives(chosen) or self.health.available(chosen):
            return
        target = self.next_model(call)
        if target is not None:
            self.switched(call, target, "cooldown")

    def preferred(self, model: str) -> str:
        """The model a call to ``model`` goes to among its tier's equal models (``model``
        itself when it has none): the cheapest, or the fastest lately, of those not cooling
        down."""
        group = self._tier_models.get(model)
        if group is None:
            return model
        ready = [m for m in group if m == model or not self._cooling(m)] or [model]
        if self.config.prefer == "latency":
            return min(ready, key=self._latency_rank)
        return min(ready, key=self._cost_rank)

    def _has_alternatives(self, model: str) -> bool:
        return model in self._tier_models or bool(self.config.chain_for(model))

    def _cooling(self, model: str) -> bool:
        return model in self.health.cooling()

    def _latency_rank(self, model: str) -> tuple[int, float]:
        latency = self.health.latency(model)
        if latency is None:
            return (0, 0.0)  # not measured yet: try it, so it gets measured
        return (1, latency.total_p95)

    def _cost_rank(self, model: str) -> Decimal:
        price = self.pricer.price(model)
        return price.input + price.output

    # -- after a failed attempt --------------------------------------------------------------

    def next_model(self, call: CallContext) -> str | None:
        """The next model of the call's chain it has not tried and that is not cooling down,
        or ``None``."""
        tried: list[str] = call.notes.setdefault("tried", [])
        if call.model not in tried:
            # Escalated or downgraded since it last moved: the model it is on now has its own
            # chain (the models already tried stay skipped).
            call.notes["chain_start"] = call.model
            tried.append(call.model)
        start = call.notes["chain_start"]
        chain = self.config.chain_for(start)
        if not chain and start in self._tier_models:
            chain = [m for m in self._tier_models[start] if m != start]
        for model in chain:
            if model not in tried and self.health.available(model):
                problem = self._crossing_problem(call, model)
                if problem is None:
                    return model
                tried.append(model)
                logger.info(
                    "fallback_skipped",
                    session_id=call.session.id,
                    model=model,
                    from_model=call.model,
                    reason=problem,
                )
        return None

    def _provider(self, model: str) -> str | None:
        return self.pricer.price(model).provider

    def _home(self, call: CallContext) -> tuple[Any, dict[str, Any]]:
        """The call's own API and its request as it stood before it crossed providers."""
        home = call.notes.get("home")
        return home if home is not None else (call.dialect, call.body)

    def _crossing_problem(self, call: CallContext, model: str) -> str | None:
        """Why the call cannot go to ``model`` of another provider (``None``: it can, or
        ``model`` is served by the caller's own API)."""
        from agentguard.dialects.translate import untranslatable
        from agentguard.routing.providers import provider_of_dialect

        dialect, body = self._home(call)
        provider = self._provider(model)
        if provider is None or provider == provider_of_dialect(dialect.name):
            return None
        upstream = self.upstreams.get(provider)
        if upstream is None:
            return f"{model} is a model of {provider}, and routing.providers.{provider} is not set"
        return untranslatable(body, dialect.name, upstream.dialect)

    def _move(self, call: CallContext, model: str) -> None:
        """Put ``model`` on the call: in the caller's own API, or, for another provider's
        model, as a request translated into that provider's API."""
        from agentguard.dialects import dialect_named
        from agentguard.dialects.translate import translate_request
        from agentguard.routing.providers import provider_of_dialect

        dialect, body = self._home(call)
        provider = self._provider(model)
        if provider is None or provider == provider_of_dialect(dialect.name):
            if "home" in call.notes:  # back from another provider
                call.dialect, call.body = dialect, dict(body)
                del call.notes["home"], call.notes["upstream"]
            call.body["model"] = model
            return
        upstream = self.upstreams[provider]
        call.notes.setdefault("home", (dialect, dict(body)))
        target = dialect_named(upstream.dialect)
        assert target is not None
        call.body = translate_request(body, dialect.name, target.name, model)
        call.dialect = target
        call.notes["upstream"] = upstream

    def switch_reason(self, reply: Reply) -> str | None:
        """Why this error answer moves the call on at once (see :func:`switch_reason`)."""
        return switch_reason(reply.status, reply.body)

    def switched(self, call: CallContext, model: str, reason: str) -> None:
        """Send the call to ``model`` from now on: counted in the session, logged."""
        previous = call.model
        self._move(call, model)
        call.notes.setdefault("tried", [previous]).append(model)
        call.notes["fallbacks"] = call.notes.get("fallbacks", 0) + 1
        session = call.session
        with session.lock:
            session.state.fallbacks += 1
        logger.info(
            "fallback",
            session_id=session.id,
            model=model,
            from_model=previous,
            reason=reason,
            requested_model=call.requested_model,
        )

    def report(self, model: str, *, failed: bool) -> None:
        """Count a failed attempt of ``model`` toward its cooldown, or end the cooldown a
        successful probe of it was testing."""
        if failed:
            self.health.failed(model)
        else:
            self.health.succeeded(model)

    def on_probation(self, model: str) -> bool:
        """Whether ``model`` is cooling down or being probed (an answer from it is news)."""
        return self.health.on_probation(model)

    def observe(self, model: str, *, first_byte_s: float, total_s: float) -> None:
        """Record how long an answer of ``model`` took."""
        self.health.observe(model, first_byte_s=first_byte_s, total_s=total_s)
