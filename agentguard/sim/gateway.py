"""Budget-gateway mode: API keys with a dollar limit per time window.

The simulated provider then behaves like a metered provider or a LiteLLM proxy in front of one:
each key has a dollar limit per window; each answer's cost (its usage at real prices, from
genai-prices; Claude models at Anthropic's, cache writes included) is charged to the key that asked; once a key's spend reaches its limit, requests
are refused until the window resets.

A window starts at the first request a key makes and lasts ``window_s`` seconds; the next window
starts at the key's first request after that (the way LiteLLM's budget windows behave). Requests
already admitted are charged even if they take the spend past the limit, and an answer is charged
once generated even if the client never reads it (it timed out, or the stream was cut), as on a
real gateway. Refusals and injected errors cost nothing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentguard.sim.payloads import error_body, format_reset_duration

__all__ = ["GatewayKey", "GatewayStyle", "ModelPrice", "Rejection", "SimGateway", "list_price"]

GatewayStyle = Literal["openai", "litellm"]
"""How the gateway words its refusals: like OpenAI (429 with reset headers) or like LiteLLM's
proxy (422 by default, no retry-after)."""

_MILLION = Decimal(1_000_000)


class GatewayKey(BaseModel):
    """The budget of one API key.

    Example:
        >>> GatewayKey(limit_usd=0.01, window_s=5.0)  # one cent per 5 seconds
        GatewayKey(limit_usd=Decimal('0.01'), window_s=5.0, name=None)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit_usd: Decimal | None = Field(default=None, ge=0)
    """Dollars the key may spend per window; None for no limit."""
    window_s: float | None = Field(default=None, gt=0)
    """Length of a budget window in seconds; None for a budget that never resets."""
    name: str | None = None
    """How error messages name the key (a masked form of the key when None)."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Dollars per token for one model (cache writes at the input price unless given)."""

    input: Decimal
    cached_input: Decimal
    output: Decimal
    cache_write: Decimal | None = None
    """Per prompt token written to the cache for the default five minutes (Anthropic)."""
    cache_write_1h: Decimal | None = None
    """Per prompt token written to the cache for an hour (Anthropic)."""

    def cost(
        self,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        *,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> Decimal:
        """The cost of one answer. ``cached_tokens`` (read) and ``cache_write_tokens``
        (written, of which ``cache_write_1h_tokens`` for an hour) are part of
        ``prompt_tokens``."""
        uncached = max(0, prompt_tokens - cached_tokens - cache_write_tokens)
        write_5m = self.input if self.cache_write is None else self.cache_write
        write_1h = write_5m if self.cache_write_1h is None else self.cache_write_1h
        return (
            uncached * self.input
            + cached_tokens * self.cached_input
            + (cache_write_tokens - cache_write_1h_tokens) * write_5m
            + cache_write_1h_tokens * write_1h
            + completion_tokens * self.output
        )


_PRICE_PROBE_TOKENS = 1000
"""Prices are read from genai-prices for a call of this many tokens: a small call, so a model
whose price rises past a prompt size (Claude Sonnet's long-context tier) gets its base price."""


def list_price(model: str, service_tier: str = "default") -> ModelPrice | None:
    """A model's list price from genai-prices (Claude models under provider ``anthropic``,
    others under ``openai``), or ``None`` when the data does not know it."""
    import genai_prices  # imported here: it takes ~0.1 s to load

    name = model.removeprefix("openai/").removeprefix("anthropic/")
    provider = "anthropic" if name.startswith("claude") else "openai"
    context = None if service_tier == "default" else {"service_tier": service_tier}
    probe = _PRICE_PROBE_TOKENS
    usages = {
        "input": genai_prices.Usage(input_tokens=probe),
        "cached": genai_prices.Usage(input_tokens=probe, cache_read_tokens=probe),
        "output": genai_prices.Usage(output_tokens=probe),
        "write": genai_prices.Usage(input_tokens=probe, cache_write_tokens=probe),
        "write_1h": genai_prices.Usage(
            input_tokens=probe, cache_write_tokens=probe, cache_write_1h_tokens=probe
        ),
    }
    per_token: dict[str, Decimal] = {}
    for name_of, usage in usages.items():
        try:
            calculation = genai_prices.calc_price(
                usage, name, provider_id=provider, price_context=context
            )
        except (LookupError, ValueError):
            return None
        per_token[name_of] = Decimal(calculation.total_price) / probe
    if provider != "anthropic":
        return ModelPrice(per_token["input"], per_token["cached"], per_token["output"])
    return ModelPrice(
        per_token["input"],
        per_token["cached"],
        per_token["output"],
        cache_write=per_token["write"],
        cache_write_1h=per_token["write_1h"],
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refusal the gateway answers instead of a completion."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _KeyState:
    spec: GatewayKey
    spent: Decimal = Decimal(0)
    window_start: float | None = None
    requests: int = 0


class SimGateway:
    """Dollar budgets per API key, enforced by the simulated provider.

    Args:
        keys: the known keys and their budgets; requests with any other key get a 401.
        style: ``"openai"`` refuses with 429, ``retry-after`` and ``x-ratelimit-reset-requests``
            and a ``budget_exceeded`` error; ``"litellm"`` refuses as LiteLLM's proxy does
            (``Budget has been exceeded! ...``, no retry-after).
        budget_status: the HTTP status of a refusal (default 429 for ``"openai"``, 422 for
            ``"litellm"``, LiteLLM's default).
        default_price_per_mtok: (input, output) dollars per million tokens for models
            genai-prices does not know; cached input is charged at the input price.
        clock: the time source (seconds since the epoch); windows and ``reset_at`` use it.

    Example:
        >>> gateway = SimGateway({"sk-sim-a": GatewayKey(limit_usd=0.01, window_s=5.0)})
    """

    def __init__(
        self,
        keys: Mapping[str, GatewayKey] | None = None,
        *,
        style: GatewayStyle = "openai",
        budget_status: int | None = None,
        default_price_per_mtok: tuple[float, float] = (1.0, 4.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if style not in ("openai", "litellm"):
            raise ValueError(f"style must be 'openai' or 'litellm', not {style!r}")
        self.style: GatewayStyle = style
        self.budget_status = budget_status or (429 if style == "openai" else 422)
        input_price, output_price = (Decimal(str(price)) for price in default_price_per_mtok)
        self.default_price = ModelPrice(
            input_price / _MILLION, input_price / _MILLION, output_price / _MILLION
        )
        self.clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._prices: dict[str, ModelPrice] = {}
        self._lock = threading.Lock()
        for key, spec in (keys or {}).items():
            self.add_key(key, spec)

    # -- keys -------------------------------------------------------------------------------

    def add_key(
        self,
        key: str,
        spec: GatewayKey | None = None,
        *,
        limit_usd: Decimal | float | str | None = None,
        window_s: float | None = None,
        name: str | None = None,
    ) -> None:
        """Add a key, or replace its budget (its spend so far is kept).

        Args:
            key: the API key, as clients send it in ``Authorization: Bearer <key>``.
            spec: the key's budget; built from the keyword arguments when None.
            limit_usd: dollars per window (when ``spec`` is None).
            window_s: window length in seconds (when ``spec`` is None).
            name: how messages name the key (when ``spec`` is None).
        """
        if spec is None:
            limit = None if limit_usd is None else Decimal(str(limit_usd))
            spec = GatewayKey(limit_usd=limit, window_s=window_s, name=name)
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                self._keys[key] = _KeyState(spec)
            else:
                state.spec = spec

    def remove_key(self, key: str) -> None:
        """Forget a key; its requests then get a 401."""
        with self._lock:
            self._keys.pop(key, None)

    def spent(self, key: str) -> Decimal:
        """Dollars the key has spent in its current window (zero once the window is over)."""
        with self._lock:
            state = self._state(key)
            self._roll_window(state, self.clock())
            return state.spent

    def remaining(self, key: str) -> Decimal | None:
        """Dollars the key may still spend in its window; None when it has no limit."""
        with self._lock:
            state = self._state(key)
            self._roll_window(state, self.clock())
            if state.spec.limit_usd is None:
                return None
            return max(Decimal(0), state.spec.limit_usd - state.spent)

    def reset_at(self, key: str) -> float | None:
        """When the key's current window ends (seconds since the epoch, by ``clock``), or None
        when no window is open or the budget never resets."""
        with self._lock:
            state = self._state(key)
            self._roll_window(state, self.clock())
            if state.window_start is None or state.spec.window_s is None:
                return None
            return state.window_start + state.spec.window_s

    def reset(self, key: str | None = None) -> None:
        """Zero the spend of one key, or of every key, and close their windows."""
        with self._lock:
            states = [self._state(key)] if key is not None else list(self._keys.values())
            for state in states:
                state.spent = Decimal(0)
                state.window_start = None

    # -- prices -----------------------------------------------------------------------------

    def price(self, model: str) -> ModelPrice:
        """The per-token price of a model, resolved once from genai-prices and cached."""
        price = self._prices.get(model)
        if price is None:
            price = self._prices[model] = self._resolve_price(model)
        return price

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        *,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> Decimal:
        """The dollar cost of an answer with this usage (see :meth:`ModelPrice.cost`)."""
        return self.price(model).cost(
            prompt_tokens,
            cached_tokens,
            completion_tokens,
            cache_write_tokens=cache_write_tokens,
            cache_write_1h_tokens=cache_write_1h_tokens,
        )

    def _resolve_price(self, model: str) -> ModelPrice:
        return list_price(model) or self.default_price

    # -- what the server asks ---------------------------------------------------------------

    def authorize(self, key: str | None) -> Rejection | None:
        """Refuse (401) a request whose key is missing or unknown."""
        if key is not None and key in self._keys:
            return None
        if self.style == "litellm":
            message = (
                "Authentication Error, Invalid proxy server token passed. "
                f"Received API Key = {_mask(key or '')}"
            )
            return Rejection(401, error_body(message, "auth_error", "None", "401"))
        if key is None:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth "
                "(i.e. Authorization: Bearer YOUR_KEY)."
            )
            return Rejection(401, error_body(message, "invalid_request_error", None, None))
        message = f"Incorrect API key provided: {_mask(key)}."
        return Rejection(401, error_body(message, "invalid_request_error", None, "invalid_api_key"))

    def admit(self, key: str) -> Rejection | None:
        """Refuse a request whose key has spent its budget for the current window.

        A key's first request opens its window.
        """
        now = self.clock()
        with self._lock:
            state = self._state(key)
            self._roll_window(state, now)
            if state.window_start is None:
                state.window_start = now
            state.requests += 1
            limit = state.spec.limit_usd
            if limit is None or state.spent < limit:
                return None
            label = state.spec.name or _mask(key)
            spent = state.spent
            window_s = state.spec.window_s
            resets_in = None if window_s is None else state.window_start + window_s - now
        return self._refusal(label, spent, limit, resets_in)

    def charge(self, key: str, cost: Decimal) -> Decimal:
        """Charge an answer's cost to a key; returns the key's spend in its window."""
        now = self.clock()
        with self._lock:
            state = self._state(key)
            self._roll_window(state, now)
            if state.window_start is None:
                state.window_start = now
            state.spent += cost
            return state.spent

    def _refusal(
        self, label: str, spent: Decimal, limit: Decimal, resets_in: float | None
    ) -> Rejection:
        status = self.budget_status
        if self.style == "litellm":
            message = (
                f"Budget has been exceeded! Key={label} Current cost: {float(spent)}, "
                f"Max budget: {float(limit)}"
            )
            return Rejection(status, error_body(message, "budget_exceeded", None, str(status)))
        headers: dict[str, str] = {}
        if resets_in is None:
            when = "it does not reset"
        else:
            seconds = max(1, math.ceil(resets_in))
            when = f"resets in {seconds}s"
            headers["retry-after"] = str(seconds)
            headers["x-ratelimit-reset-requests"] = format_reset_duration(seconds)
        message = (
            f"Budget exceeded for key {label} (spent ${float(spent):.6f} of "
            f"${float(limit):.6f}); {when}"
        )
        return Rejection(
            status, error_body(message, "budget_exceeded", None, "budget_exceeded"), headers
        )

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            raise KeyError(f"unknown gateway key {_mask(key)}")
        return state

    @staticmethod
    def _roll_window(state: _KeyState, now: float) -> None:
        window_s = state.spec.window_s
        if (
            window_s is not None
            and state.window_start is not None
            and now >= state.window_start + window_s
        ):
            state.spent = Decimal(0)
            state.window_start = None


def _mask(key: str) -> str:
    """A key as error messages show it: enough to tell keys apart, never the whole key."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}...{key[-4:]}"
