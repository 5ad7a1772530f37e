"""Pricing: what a model call costs, in dollars.

Prices come from the `genai-prices <https://pypi.org/project/genai-prices/>`_ data, or from
``[pricing.overrides."<model>"]`` in the config for models the data does not know. The pipeline
asks two questions: before a call, its worst case (:meth:`Pricer.worst_case`, reserved in the
ledger), and after it, its real cost (:meth:`Pricer.cost`, settled).

Looking a model up in the price data is slow (tens of microseconds), so a :class:`Pricer`
resolves each model once into a flat :class:`ModelPrice` and keeps it; afterwards pricing a
call is a dict lookup and a few ``Decimal`` multiplications.

How a model name is resolved:

1. ``config.overrides[model]`` (exact name).
2. The price data, under ``config.provider_id`` when it is set; otherwise under the provider a
   ``provider/`` prefix names (``openai/gpt-4o-mini``), then under ``openai``, then under the
   provider genai-prices guesses from the name. genai-prices matches dated snapshots
   (``gpt-4o-2024-08-06``, also the compact ``gpt-4o-20240806``) to the model they belong to;
   a snapshot with prices of its own (``gpt-4o-2024-05-13``) gets those.
3. Otherwise :class:`~agentguard.errors.PricingError`, which says how to configure a price.
   A model is never priced at $0 for want of data.

Three things in the data make a price more than four numbers:

* **Tiers.** Some models charge more per token once the prompt passes a size (genai-prices'
  "cliff" model: past the threshold *every* token is billed at the higher rate). A
  :class:`ModelPrice` carries all its tiers and picks one from the call's input tokens, so the
  cache needs no tier in its key.
* **Price changes over time.** Prices that start on a date, or that apply at certain hours
  (off-peak discounts), are resolved for the current moment and cached only until the next
  moment the price could change.
* **Service tiers.** OpenAI's ``flex`` and ``priority`` tiers have their own prices; pass the
  request's ``service_tier`` (or, when settling, the one the response reports).

Money is ``Decimal`` throughout; prices are dollars per token.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from agentguard.config import PriceOverride, PricingConfig
from agentguard.errors import PricingError
from agentguard.pricing.usage import Usage

if TYPE_CHECKING:
    from genai_prices import types as genai_types
    from genai_prices.data_snapshot import DataSnapshot

__all__ = ["CacheWrites", "ModelPrice", "Pricer", "default_pricer"]

_TOKENS_PER_MTOK = Decimal(1_000_000)
_REQUESTS_PER_KCOUNT = Decimal(1_000)
_ZERO = Decimal(0)

# Called on every warm lookup to check a cached price is still current; a module attribute so
# tests can move the clock.
_wall_clock = time.time


PriceSource = Literal["genai-prices", "override"]
CacheWrites = Literal["any", "none", "5m", "1h"]
"""Which prompt-cache writes a call can make (see :meth:`ModelPrice.worst_case`)."""


@dataclass(frozen=True, slots=True, init=False)
class ModelPrice:
    """The price of one model, in dollars per token.

    Attributes:
        model: the model's id in the price data (for a dated snapshot, the model it belongs
            to), or the configured name for an override.
        provider: the price data's provider id (``openai``), or the configured
            ``pricing.provider_id`` (possibly ``None``) for an override.
        input: per uncached input token.
        cached_input: per input token read from the prompt cache.
        output: per output token that is not reasoning.
        reasoning: per reasoning token.
        cache_write: per input token written to the prompt cache (the default lifetime).
        cache_write_1h: per input token written to the prompt cache for an hour (Anthropic).
        request: per call, on top of the tokens (a few providers charge one).
        context_window: the most input tokens the model takes, when known.
        source: ``"genai-prices"`` or ``"override"``.
        tier_start: this price applies to calls whose input exceeds this many tokens (0 for
            the base price).
        tiers: the higher tiers, by ascending ``tier_start``; empty when the price does not
            depend on the prompt's size. Each tier is a flat ``ModelPrice`` with no tiers.
    """

    model: str
    provider: str | None
    input: Decimal
    cached_input: Decimal
    output: Decimal
    reasoning: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    request: Decimal
    context_window: int | None
    source: PriceSource
    tier_start: int
    tiers: tuple[ModelPrice, ...]
    _input_ceilings: dict[str, Decimal] = field(repr=False, compare=False)
    """The dearest input rate for each kind of cache writes a call can make (worst cases are
    priced on every call)."""

    def __init__(
        self,
        model: str,
        provider: str | None,
        *,
        input: Decimal,
        output: Decimal,
        cached_input: Decimal | None = None,
        reasoning: Decimal | None = None,
        cache_write: Decimal | None = None,
        cache_write_1h: Decimal | None = None,
        request: Decimal = _ZERO,
        context_window: int | None = None,
        source: PriceSource = "override",
        tier_start: int = 0,
        tiers: Iterable[ModelPrice] = (),
    ) -> None:
        """Make a price. Unset prices fall back to the price the token would otherwise be billed
        at: cached input and cache writes to ``input`` (hour-long writes to ``cache_write``),
        reasoning to ``output``.

        Raises:
            ValueError: a price is negative or not finite, or the tiers are out of order.
        """
        write = input if cache_write is None else cache_write
        values = {
            "input": input,
            "cached_input": input if cached_input is None else cached_input,
            "output": output,
            "reasoning": output if reasoning is None else reasoning,
            "cache_write": write,
            "cache_write_1h": write if cache_write_1h is None else cache_write_1h,
            "request": request,
        }
        for name, value in values.items():
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(
                    f"{model}: {name} price must be a finite Decimal >= 0, got {value!r}"
                )
        tiers = tuple(tiers)
        starts = [tier_start, *(tier.tier_start for tier in tiers)]
        if starts != sorted(set(starts)) or any(tier.tiers for tier in tiers):
            raise ValueError(f"{model}: tiers must be flat prices with ascending tier_start")
        fields: dict[str, object] = {
            "model": model,
            "provider": provider,
            **values,
            "context_window": context_window,
            "source": source,
            "tier_start": tier_start,
            "tiers": tiers,
        }
        for name, field_value in fields.items():
            object.__setattr__(self, name, field_value)
        plain = max(values["input"], values["cached_input"])
        short = max(plain, values["cache_write"])
        ceilings = {"none": plain, "5m": short, "1h": max(short, values["cache_write_1h"])}
        ceilings["any"] = ceilings["1h"]
        object.__setattr__(self, "_input_ceilings", ceilings)

    def for_input_tokens(self, input_tokens: int) -> ModelPrice:
        """The flat price for a call with this many input tokens (cached ones included)."""
        chosen = self
        for tier in self.tiers:
            if input_tokens <= tier.tier_start:
                break
            chosen = tier
        return chosen

    def cost(self, usage: Usage) -> Decimal:
        """What a call that used ``usage`` costs, in dollars.

        Each token is counted once, at its own rate: cached and cache-write tokens are taken out
        of ``input_tokens``, reasoning tokens out of ``output_tokens``.
        """
        price = self.for_input_tokens(usage.input_tokens) if self.tiers else self
        uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
        visible_output = usage.output_tokens - usage.reasoning_tokens
        total = uncached * price.input + visible_output * price.output + price.request
        # The breakdowns are mostly zero: decimal products of zero are skipped (every call).
        if usage.cached_input_tokens:
            total += usage.cached_input_tokens * price.cached_input
        if usage.cache_write_tokens:
            short_writes = usage.cache_write_tokens - usage.cache_write_1h_tokens
            total += short_writes * price.cache_write
            total += usage.cache_write_1h_tokens * price.cache_write_1h
        if usage.reasoning_tokens:
            total += usage.reasoning_tokens * price.reasoning
        return total

    def worst_case(
        self, input_tokens: int, max_output_tokens: int, *, cache_writes: CacheWrites = "any"
    ) -> Decimal:
        """The most a call can cost with at most these many input and output tokens.

        Every input token is priced at the dearest input rate (uncached, cached or a cache write
        of either lifetime)
        and every output token at the dearer of the output and reasoning rates, in the dearest
        tier a call of at most ``input_tokens`` can fall in. So ``cost(usage)`` never exceeds
        it for a usage within the bounds.

        Args:
            input_tokens: the most input tokens the call can bill.
            max_output_tokens: the most output tokens it can generate.
            cache_writes: which prompt-cache writes the call can make: ``"any"`` (not known),
                ``"none"`` (a request that marks nothing for caching, on an API that caches
                only what is marked), or the longest lifetime it asks for (``"5m"``, ``"1h"``).

        Raises:
            ValueError: a count is negative.
        """
        if input_tokens < 0 or max_output_tokens < 0:
            raise ValueError(
                f"token counts cannot be negative: input_tokens={input_tokens}, "
                f"max_output_tokens={max_output_tokens}"
            )
        worst = self._flat_worst_case(input_tokens, max_output_tokens, cache_writes)
        for tier in self.tiers:
            if input_tokens <= tier.tier_start:
                break
            # Smaller calls in a cheaper tier are covered too, even if the data had a tier
            # cheaper than the one below it.
            worst = max(worst, tier._flat_worst_case(input_tokens, max_output_tokens, cache_writes))
        return worst

    def _flat_worst_case(
        self, input_tokens: int, max_output_tokens: int, cache_writes: CacheWrites
    ) -> Decimal:
        return (
            input_tokens * self._input_ceilings[cache_writes]
            + max_output_tokens * max(self.output, self.reasoning)
            + self.request
        )


class Pricer:
    """Prices model calls, resolving each model's price once and keeping it.

    Args:
        config: overrides and the provider to look models up under; ``None`` for none.

    Safe to share between threads: a race only resolves a price twice.
    """

    __slots__ = ("_cache", "_overrides", "_provider_id")

    def __init__(self, config: PricingConfig | None = None) -> None:
        if config is None:
            config = PricingConfig()
        self._overrides: Mapping[str, PriceOverride] = dict(config.overrides)
        self._provider_id = config.provider_id
        # key -> (price, wall-clock time until which it stays current)
        self._cache: dict[str | tuple[str, str], tuple[ModelPrice, float]] = {}

    def price(self, model: str, *, service_tier: str | None = None) -> ModelPrice:
        """The price of ``model``.

        Args:
            model: the model name as sent to the API (``gpt-4o``, ``gpt-4o-2024-08-06``,
                ``openai/gpt-4o-mini``).
            service_tier: OpenAI's ``service_tier`` (``flex``, ``priority``); ``None``,
                ``auto`` and ``default`` mean standard prices. Ignored for overrides.

        Raises:
            PricingError: neither the config nor the price data has a price for the model.
        """
        key: str | tuple[str, str] = (
            model
            if service_tier is None or service_tier in ("auto", "default")
            else (model, service_tier)
        )
        entry = self._cache.get(key)
        if entry is not None and entry[1] > _wall_clock():
            return entry[0]
        return self._resolve(model, key)

    def cost(self, model: str, usage: Usage, *, service_tier: str | None = None) -> Decimal:
        """What a call to ``model`` that used ``usage`` costs, in dollars.

        Raises:
            PricingError: no price is known for the model.
        """
        return self.price(model, service_tier=service_tier).cost(usage)

    def worst_case(
        self,
        model: str,
        input_tokens: int,
        max_output_tokens: int,
        *,
        service_tier: str | None = None,
    ) -> Decimal:
        """The most a call to ``model`` can cost (see :meth:`ModelPrice.worst_case`).

        Raises:
            PricingError: no price is known for the model.
            ValueError: a count is negative.
        """
        return self.price(model, service_tier=service_tier).worst_case(
            input_tokens, max_output_tokens
        )

    def clear(self) -> None:
        """Forget the resolved prices, e.g. after genai-prices has loaded newer price data."""
        self._cache.clear()

    def _resolve(self, model: str, key: str | tuple[str, str]) -> ModelPrice:
        override = self._overrides.get(model)
        if override is not None:
            price = _price_from_override(model, override, self._provider_id)
            valid_until = math.inf
        else:
            service_tier = key[1] if isinstance(key, tuple) else None
            price, valid_until = self._price_from_data(model, service_tier)
        self._cache[key] = (price, valid_until)
        return price

    def _price_from_data(self, model: str, service_tier: str | None) -> tuple[ModelPrice, float]:
        # Imported here: loading genai-prices takes ~0.1 s, which `import agentguard` need not pay.
        from genai_prices import data_snapshot

        snapshot = data_snapshot.get_snapshot()
        failures: list[str] = []
        for provider_id, model_ref in self._lookups(model, snapshot):
            try:
                provider, info = snapshot.find_provider_model(model_ref, None, provider_id, None)
            except LookupError as exc:
                if str(exc) not in failures:
                    failures.append(str(exc))
                continue
            now = _wall_clock()
            return _price_from_model_info(model, provider, info, service_tier, now)
        raise PricingError(self._unknown_model_message(model, failures), model=model)

    def _lookups(self, model: str, snapshot: DataSnapshot) -> list[tuple[str | None, str]]:
        """(provider id, model name) pairs to look up, most specific first."""
        from genai_prices.data_snapshot import find_provider_by_id

        prefix, slash, bare = model.partition("/")
        # "meta-llama/Llama-3.3-70B" is one name; "openai/gpt-4o" is a provider and a name.
        prefixed = bool(slash and bare and find_provider_by_id(snapshot.providers, prefix))
        lookups: list[tuple[str | None, str]] = []
        if self._provider_id is not None:
            lookups.append((self._provider_id, model))
            if prefixed:
                lookups.append((self._provider_id, bare))
            return lookups
        if prefixed:
            lookups.append((prefix, bare))
        lookups += [("openai", model), (None, model)]
        return lookups

    def _unknown_model_message(self, model: str, failures: list[str]) -> str:
        from genai_prices import __version__ as data_version

        where = (
            f"under provider {self._provider_id!r} (pricing.provider_id)"
            if self._provider_id is not None
            else "under any provider"
        )
        return (
            f"no price known for model {model!r}: the price data (genai-prices {data_version}) "
            f"has no such model {where} ({'; '.join(failures)}). Check the model name, upgrade "
            f"genai-prices, or give the model a price (dollars per million tokens) in the "
            f"config:\n\n"
            f'    [pricing.overrides."{model}"]\n'
            f"    input_per_mtok = ...\n"
            f"    output_per_mtok = ...\n"
        )


@functools.cache
def default_pricer() -> Pricer:
    """A process-wide :class:`Pricer` with no overrides, for code that has no config."""
    return Pricer()


def _per_token(per_mtok: Decimal) -> Decimal:
    return per_mtok / _TOKENS_PER_MTOK


def _price_from_override(
    model: str, override: PriceOverride, provider_id: str | None
) -> ModelPrice:
    def optional(value: Decimal | None) -> Decimal | None:
        return None if value is None else _per_token(value)

    return ModelPrice(
        model,
        provider_id,
        input=_per_token(override.input_per_mtok),
        output=_per_token(override.output_per_mtok),
        cached_input=optional(override.cached_input_per_mtok),
        reasoning=optional(override.reasoning_per_mtok),
        context_window=override.context_window,
        source="override",
    )


def _price_from_model_info(
    requested: str,
    provider: genai_types.Provider,
    info: genai_types.ModelInfo,
    service_tier: str | None,
    now: float,
) -> tuple[ModelPrice, float]:
    """Flatten the data's price for ``info`` at ``now``; return it and when it may change."""
    moment = datetime.fromtimestamp(now, UTC)
    context = {"service_tier": service_tier} if service_tier is not None else None
    # genai-prices applies request variants only to a provider's own models, not to ones it
    # borrows from a fallback provider; do the same so costs match its calc_price.
    if context is not None and not any(model is info for model in provider.models):
        context = None
    data_price = info.get_prices(moment, context)

    rates = {
        key: getattr(data_price, key, None)
        for key in (
            "input_mtok",
            "output_mtok",
            "cache_read_mtok",
            "cache_write_mtok",
            "cache_write_1h_mtok",
            "output_reasoning_mtok",
            "requests_kcount",
        )
    }
    if rates["input_mtok"] is None:
        raise PricingError(
            f"model {requested!r} ({provider.id} {info.id}) has no per-token price in the price "
            f"data (it is priced by other units, e.g. characters or seconds). Give it a price "
            f"in the config:\n\n"
            f'    [pricing.overrides."{requested}"]\n'
            f"    input_per_mtok = ...\n"
            f"    output_per_mtok = ...\n",
            model=requested,
        )

    def flat(input_tokens: int, tier_start: int, tiers: Iterable[ModelPrice] = ()) -> ModelPrice:
        at = {key: _rate_at(value, input_tokens) for key, value in rates.items()}
        input_rate = at["input_mtok"]
        assert input_rate is not None  # checked above
        # A model with no output price (embeddings) never bills output; if output tokens show
        # up anyway, bill them at the input rate rather than for free.
        output_rate = at["output_mtok"] if at["output_mtok"] is not None else input_rate
        request = at["requests_kcount"]
        return ModelPrice(
            info.id,
            provider.id,
            input=_per_token(input_rate),
            output=_per_token(output_rate),
            cached_input=_optional_per_token(at["cache_read_mtok"]),
            reasoning=_optional_per_token(at["output_reasoning_mtok"]),
            cache_write=_optional_per_token(at["cache_write_mtok"]),
            cache_write_1h=_optional_per_token(at["cache_write_1h_mtok"]),
            request=_ZERO if request is None else request / _REQUESTS_PER_KCOUNT,
            context_window=info.context_window,
            source="genai-prices",
            tier_start=tier_start,
            tiers=tiers,
        )

    from genai_prices.types import TieredPrices

    # Each price key may have its own thresholds; a flat tier per distinct threshold covers
    # every combination. A tier applies once the input exceeds its start.
    thresholds = sorted(
        {
            tier.start
            for value in rates.values()
            if isinstance(value, TieredPrices)
            for tier in value.tiers
        }
    )
    base = flat(0, 0, [flat(start + 1, start) for start in thresholds])
    return base, _next_price_change(info, context is not None, moment)


def _rate_at(value: Decimal | genai_types.TieredPrices | None, input_tokens: int) -> Decimal | None:
    """The rate ``value`` charges a call with ``input_tokens`` input tokens (genai-prices'
    rule: the highest tier whose start the input exceeds)."""
    from genai_prices.types import TieredPrices

    if not isinstance(value, TieredPrices):
        return value
    rate = value.base
    for tier in value.tiers:
        if input_tokens > tier.start:
            rate = tier.price
    return rate


def _optional_per_token(per_mtok: Decimal | None) -> Decimal | None:
    return None if per_mtok is None else _per_token(per_mtok)


def _next_price_change(info: genai_types.ModelInfo, with_variants: bool, moment: datetime) -> float:
    """The first time after ``moment`` at which the data may price ``info`` differently
    (``inf`` if never); a cached price is re-resolved then."""
    from genai_prices.types import StartDateConstraint, TimeOfDateConstraint

    constraints: list[object] = []
    if isinstance(info.prices, list):
        constraints += [conditional.constraint for conditional in info.prices]
    if with_variants:
        constraints += [variant.constraint for variant in info.price_variants or ()]
    changes: list[datetime] = []
    for constraint in constraints:
        if isinstance(constraint, StartDateConstraint):
            # genai-prices compares UTC dates: the price starts at UTC midnight.
            starts = datetime.combine(constraint.start_date, time_of_day(0), tzinfo=UTC)
            if starts > moment:
                changes.append(starts)
        elif isinstance(constraint, TimeOfDateConstraint):
            changes.append(_next_time_of_day(moment, constraint.start_time))
            changes.append(_next_time_of_day(moment, constraint.end_time))
    return min(changes).timestamp() if changes else math.inf


def _next_time_of_day(moment: datetime, at: time_of_day) -> datetime:
    """The first instant after ``moment`` whose time of day is ``at`` (naive means UTC)."""
    zone = at.tzinfo or UTC
    local = moment.astimezone(zone)
    candidate = datetime.combine(local.date(), at.replace(tzinfo=None), tzinfo=zone)
    if candidate <= moment:
        candidate += timedelta(days=1)
    return candidate
