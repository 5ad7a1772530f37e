"""Pricing: costs from the genai-prices data, checked against genai-prices' own calc_price."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import data_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails
from openai.types.responses import ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from agentguard.config import PriceOverride, PricingConfig
from agentguard.errors import PricingError
from agentguard.pricing import ModelPrice, Pricer, Usage, default_pricer
from agentguard.pricing import prices as pricing

USAGES = [
    Usage(input_tokens=1_000, output_tokens=200),
    Usage(
        input_tokens=12_345, cached_input_tokens=4_096, output_tokens=3_210, reasoning_tokens=2_000
    ),
    Usage(input_tokens=50, cached_input_tokens=50, output_tokens=7, reasoning_tokens=7),
    Usage(),
]

# gpt-5.4 prices prompts over 272k tokens higher: both sides of the threshold.
TIER_USAGES = [
    Usage(input_tokens=272_000, cached_input_tokens=100_000, output_tokens=1_000),
    Usage(
        input_tokens=272_001, cached_input_tokens=100_000, output_tokens=1_000, reasoning_tokens=10
    ),
]


def library_cost(
    usage: Usage,
    model: str,
    provider_id: str | None,
    *,
    at: datetime | None = None,
    service_tier: str | None = None,
) -> Decimal:
    """What genai-prices itself charges for ``usage``."""
    library_usage = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
    )
    return genai_prices.calc_price(
        library_usage,
        model,
        provider_id=provider_id,
        genai_request_timestamp=at,
        price_context={"service_tier": service_tier} if service_tier else None,
    ).total_price


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


# --- costs match genai-prices ------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    ["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "o3-mini", "o4-mini", "gpt-4o-2024-08-06"],
)
@pytest.mark.parametrize("usage", USAGES, ids=lambda u: f"in{u.input_tokens}")
def test_cost_matches_calc_price(pricer: Pricer, model: str, usage: Usage) -> None:
    cost = pricer.cost(model, usage)
    assert isinstance(cost, Decimal)
    assert cost == library_cost(usage, model, "openai")


def test_cached_and_reasoning_tokens_are_priced_at_their_own_rates(pricer: Pricer) -> None:
    price = pricer.price("gpt-4o")
    assert price.cached_input < price.input
    plain = Usage(input_tokens=10_000, output_tokens=1_000)
    cached = Usage(input_tokens=10_000, cached_input_tokens=8_000, output_tokens=1_000)
    assert pricer.cost("gpt-4o", cached) < pricer.cost("gpt-4o", plain)
    assert pricer.cost("gpt-4o", cached) == library_cost(cached, "gpt-4o", "openai")


def test_separate_reasoning_price_and_request_fee_match_calc_price(pricer: Pricer) -> None:
    # sonar-deep-research bills reasoning below output; sonar bills a fee per request.
    usage = Usage(input_tokens=5_000, output_tokens=4_000, reasoning_tokens=3_000)
    deep = pricer.price("perplexity/sonar-deep-research")
    assert (deep.provider, deep.model) == ("perplexity", "sonar-deep-research")
    assert deep.reasoning != deep.output
    assert deep.cost(usage) == library_cost(usage, "sonar-deep-research", "perplexity")

    sonar = pricer.price("perplexity/sonar")
    assert sonar.request > 0
    assert sonar.cost(Usage()) == sonar.request
    assert sonar.cost(usage) == library_cost(usage, "sonar", "perplexity")


def test_cache_writes_match_calc_price(pricer: Pricer) -> None:
    usage = Usage(
        input_tokens=20_000, cached_input_tokens=5_000, cache_write_tokens=10_000, output_tokens=500
    )
    price = pricer.price("claude-sonnet-4-5")
    assert price.provider == "anthropic"
    assert price.cache_write > price.input
    assert price.cost(usage) == library_cost(usage, "claude-sonnet-4-5", "anthropic")


@pytest.mark.parametrize("usage", TIER_USAGES, ids=["at-threshold", "over-threshold"])
def test_tier_is_chosen_by_the_calls_input_size(pricer: Pricer, usage: Usage) -> None:
    price = pricer.price("gpt-5.4")
    assert price.tiers, "gpt-5.4 has prompt-size tiers in the price data"
    assert price.cost(usage) == library_cost(usage, "gpt-5.4", "openai")


def test_tiers_are_flat_and_selected_past_their_start(pricer: Pricer) -> None:
    price = pricer.price("gpt-5.4")
    (tier,) = price.tiers
    assert tier.tiers == ()
    assert price.for_input_tokens(tier.tier_start) is price
    assert price.for_input_tokens(tier.tier_start + 1) is tier
    assert tier.input > price.input


def test_service_tier_prices_match_calc_price(pricer: Pricer) -> None:
    usage = Usage(input_tokens=10_000, cached_input_tokens=2_000, output_tokens=1_000)
    for tier in ("priority", "flex"):
        cost = pricer.cost("o4-mini", usage, service_tier=tier)
        assert cost == library_cost(usage, "o4-mini", "openai", service_tier=tier)
    assert pricer.cost("o4-mini", usage, service_tier="priority") > pricer.cost("o4-mini", usage)
    assert pricer.price("o4-mini", service_tier="auto") is pricer.price("o4-mini")
    assert pricer.price("o4-mini", service_tier="default") is pricer.price("o4-mini")


# --- resolving names ---------------------------------------------------------------------------


def test_dated_snapshots_resolve(pricer: Pricer) -> None:
    base = pricer.price("gpt-4o")
    assert pricer.price("gpt-4o-2024-08-06").input == base.input
    assert pricer.price("gpt-4o-2024-08-06").model == "gpt-4o"
    assert pricer.price("gpt-4o-20240806").input == base.input
    # A snapshot the data prices on its own keeps its own price.
    older = pricer.price("gpt-4o-2024-05-13")
    assert older.cost(USAGES[0]) == library_cost(USAGES[0], "gpt-4o-2024-05-13", "openai")
    assert older.input != base.input


def test_provider_prefix_is_split(pricer: Pricer) -> None:
    prefixed = pricer.price("openai/gpt-4o-mini")
    assert (prefixed.provider, prefixed.model) == ("openai", "gpt-4o-mini")
    assert prefixed.input == pricer.price("gpt-4o-mini").input


def test_provider_is_guessed_when_not_openai(pricer: Pricer) -> None:
    assert pricer.price("claude-sonnet-4-5").provider == "anthropic"


def test_configured_provider_is_used() -> None:
    azure = Pricer(PricingConfig(provider_id="azure"))
    assert azure.price("gpt-4o").provider == "azure"
    # OpenRouter names its models with a slash; the whole name is the model.
    openrouter = Pricer(PricingConfig(provider_id="openrouter"))
    price = openrouter.price("openai/gpt-4o")
    assert (price.provider, price.model) == ("openrouter", "openai/gpt-4o")


def test_context_window_comes_from_the_data(pricer: Pricer) -> None:
    _, info = data_snapshot.get_snapshot().find_provider_model("gpt-4o", None, "openai", None)
    assert info.context_window is not None
    assert pricer.price("gpt-4o").context_window == info.context_window


def test_price_is_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    resolve = pricing._price_from_model_info

    def counting(requested: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(requested)
        return resolve(requested, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pricing, "_price_from_model_info", counting)
    fresh = Pricer()
    first = fresh.price("gpt-4o-mini")
    for _ in range(5):
        assert fresh.price("gpt-4o-mini") is first
        fresh.cost("gpt-4o-mini", USAGES[1])
    assert calls == ["gpt-4o-mini"]
    fresh.clear()
    fresh.price("gpt-4o-mini")
    assert calls == ["gpt-4o-mini", "gpt-4o-mini"]


# --- prices that change over time --------------------------------------------------------------


def _at(clock: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_wall_clock", clock.timestamp)


def test_time_of_day_price_is_re_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    # deepseek-chat has an off-peak price: a cached peak price must not outlive the peak.
    usage = USAGES[1]
    fresh = Pricer()
    peak = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    off_peak = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)
    _at(peak, monkeypatch)
    assert fresh.cost("deepseek-chat", usage) == library_cost(usage, "deepseek-chat", None, at=peak)
    _at(off_peak, monkeypatch)
    assert fresh.cost("deepseek-chat", usage) == library_cost(
        usage, "deepseek-chat", None, at=off_peak
    )
    assert library_cost(usage, "deepseek-chat", None, at=peak) != library_cost(
        usage, "deepseek-chat", None, at=off_peak
    )


def test_price_change_on_a_date_is_picked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # o3's price changed on 2025-06-10.
    usage = USAGES[0]
    fresh = Pricer()
    before = datetime(2025, 6, 9, 23, 59, tzinfo=UTC)
    after = datetime(2025, 6, 10, 0, 1, tzinfo=UTC)
    _at(before, monkeypatch)
    old = fresh.cost("o3", usage)
    assert old == library_cost(usage, "o3", "openai", at=before)
    _at(after, monkeypatch)
    assert fresh.cost("o3", usage) == library_cost(usage, "o3", "openai", at=after)
    assert fresh.cost("o3", usage) != old


# --- overrides ---------------------------------------------------------------------------------


def test_override_with_fallbacks() -> None:
    config = PricingConfig(
        overrides={
            "my-local-model": PriceOverride(
                input_per_mtok=Decimal("0.10"),
                output_per_mtok=Decimal("0.20"),
                context_window=32_000,
            )
        }
    )
    price = Pricer(config).price("my-local-model")
    assert price.source == "override"
    assert price.input == Decimal("0.10") / 1_000_000
    assert price.cached_input == price.input
    assert price.reasoning == price.output == Decimal("0.20") / 1_000_000
    assert price.context_window == 32_000
    usage = Usage(
        input_tokens=1_000_000,
        cached_input_tokens=500_000,
        output_tokens=1_000_000,
        reasoning_tokens=250_000,
    )
    assert price.cost(usage) == Decimal("0.30")


def test_override_with_cached_and_reasoning_prices() -> None:
    config = PricingConfig(
        provider_id="acme",
        overrides={
            "m": PriceOverride(
                input_per_mtok=Decimal(1),
                output_per_mtok=Decimal(4),
                cached_input_per_mtok=Decimal("0.5"),
                reasoning_per_mtok=Decimal(8),
            )
        },
    )
    price = Pricer(config).price("m")
    assert price.provider == "acme"
    usage = Usage(
        input_tokens=1_000_000,
        cached_input_tokens=1_000_000,
        output_tokens=2_000_000,
        reasoning_tokens=1_000_000,
    )
    assert price.cost(usage) == Decimal("0.5") + Decimal(4) + Decimal(8)


def test_override_wins_over_the_data() -> None:
    config = PricingConfig(
        overrides={"gpt-4o": PriceOverride(input_per_mtok=Decimal(7), output_per_mtok=Decimal(9))}
    )
    price = Pricer(config).price("gpt-4o")
    assert price.source == "override"
    assert price.input == Decimal(7) / 1_000_000


# --- unknown models ----------------------------------------------------------------------------


def test_unknown_model_says_how_to_configure_a_price(pricer: Pricer) -> None:
    with pytest.raises(PricingError) as caught:
        pricer.cost("acme-llm-9000", USAGES[0])
    assert caught.value.model == "acme-llm-9000"
    message = str(caught.value)
    assert "acme-llm-9000" in message
    assert '[pricing.overrides."acme-llm-9000"]' in message
    assert "input_per_mtok" in message and "output_per_mtok" in message


def test_unknown_snapshot_date_is_not_guessed(pricer: Pricer) -> None:
    with pytest.raises(PricingError):
        pricer.price("gpt-4o-2099-01-01")


def test_unknown_configured_provider() -> None:
    with pytest.raises(PricingError, match=r"pricing\.provider_id"):
        Pricer(PricingConfig(provider_id="no-such-provider")).price("gpt-4o")


def test_model_without_token_prices_is_an_error(pricer: Pricer) -> None:
    # tts-1 is priced per character: no token price, and never $0.
    with pytest.raises(PricingError, match=r'pricing\.overrides\."tts-1"'):
        pricer.price("tts-1")


# --- worst case --------------------------------------------------------------------------------

PROPERTY_MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "o4-mini",
    "gpt-5.4",
    "claude-sonnet-4-5",
    "perplexity/sonar-deep-research",
    "odd",
]
ODD_OVERRIDE = PriceOverride(
    input_per_mtok=Decimal(1),
    output_per_mtok=Decimal(2),
    cached_input_per_mtok=Decimal(3),
    reasoning_per_mtok=Decimal(5),
)
PROPERTY_PRICER = Pricer(PricingConfig(overrides={"odd": ODD_OVERRIDE}))


@st.composite
def bounded_usage(draw: st.DrawFn) -> tuple[int, int, Usage]:
    max_input = draw(st.integers(0, 600_000))
    max_output = draw(st.integers(0, 100_000))
    input_tokens = draw(st.integers(0, max_input))
    cached = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cached))
    output = draw(st.integers(0, max_output))
    reasoning = draw(st.integers(0, output))
    usage = Usage(
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        output_tokens=output,
        reasoning_tokens=reasoning,
        cache_write_tokens=cache_write,
    )
    return max_input, max_output, usage


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(PROPERTY_MODELS), bounds=bounded_usage())
def test_worst_case_covers_any_usage_within_bounds(
    model: str, bounds: tuple[int, int, Usage]
) -> None:
    max_input, max_output, usage = bounds
    assert PROPERTY_PRICER.worst_case(model, max_input, max_output) >= PROPERTY_PRICER.cost(
        model, usage
    )


def test_worst_case_is_all_uncached_at_the_dearer_output_rate(pricer: Pricer) -> None:
    price = pricer.price("gpt-4o")
    assert price.worst_case(1_000, 500) == price.cost(Usage(input_tokens=1_000, output_tokens=500))
    with pytest.raises(ValueError):
        price.worst_case(-1, 10)


def test_model_price_validates() -> None:
    with pytest.raises(ValueError):
        ModelPrice("m", None, input=Decimal(-1), output=Decimal(1))
    flat = ModelPrice("m", None, input=Decimal(1), output=Decimal(2), tier_start=10)
    with pytest.raises(ValueError):
        ModelPrice("m", None, input=Decimal(1), output=Decimal(2), tier_start=20, tiers=[flat])


def test_default_pricer_is_shared() -> None:
    assert default_pricer() is default_pricer()
    assert isinstance(default_pricer(), Pricer)


# --- usage -------------------------------------------------------------------------------------


def test_from_openai_chat_dict() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 40,
            "total_tokens": 140,
            "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": None},
            "completion_tokens_details": {"reasoning_tokens": 30},
        }
    )
    assert usage == Usage(
        input_tokens=100, cached_input_tokens=64, output_tokens=40, reasoning_tokens=30
    )


def test_from_openai_responses_dict() -> None:
    usage = Usage.from_openai(
        {
            "input_tokens": 100,
            "output_tokens": 40,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens_details": {"reasoning_tokens": 5},
        }
    )
    assert usage == Usage(
        input_tokens=100, cached_input_tokens=10, output_tokens=40, reasoning_tokens=5
    )


def test_from_openai_sdk_objects() -> None:
    bare = CompletionUsage(prompt_tokens=12, completion_tokens=3, total_tokens=15)
    assert Usage.from_openai(bare) == Usage(input_tokens=12, output_tokens=3)

    none_details = CompletionUsage(
        prompt_tokens=12,
        completion_tokens=3,
        total_tokens=15,
        prompt_tokens_details=None,
        completion_tokens_details=None,
    )
    assert Usage.from_openai(none_details) == Usage(input_tokens=12, output_tokens=3)

    empty_details = CompletionUsage(
        prompt_tokens=12,
        completion_tokens=3,
        total_tokens=15,
        prompt_tokens_details=PromptTokensDetails(),
        completion_tokens_details=CompletionTokensDetails(),
    )
    assert Usage.from_openai(empty_details) == Usage(input_tokens=12, output_tokens=3)

    full = CompletionUsage(
        prompt_tokens=2_000,
        completion_tokens=900,
        total_tokens=2_900,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=1_024),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=600),
    )
    assert Usage.from_openai(full) == Usage(
        input_tokens=2_000, cached_input_tokens=1_024, output_tokens=900, reasoning_tokens=600
    )

    responses = ResponseUsage(
        input_tokens=50,
        output_tokens=20,
        total_tokens=70,
        input_tokens_details=InputTokensDetails(cached_tokens=8, cache_write_tokens=30),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=4),
    )
    assert Usage.from_openai(responses) == Usage(
        input_tokens=50,
        cached_input_tokens=8,
        cache_write_tokens=30,
        output_tokens=20,
        reasoning_tokens=4,
    )


def test_from_openai_without_usage() -> None:
    assert Usage.from_openai(None) is None
    assert Usage.from_openai({}) is None
    usage = Usage(input_tokens=1)
    assert Usage.from_openai(usage) is usage


def test_from_openai_clamps_an_inconsistent_breakdown() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 50},
            "completion_tokens_details": {"reasoning_tokens": 9},
        }
    )
    assert usage == Usage(
        input_tokens=10, cached_input_tokens=10, output_tokens=5, reasoning_tokens=5
    )


def test_from_openai_rejects_non_counts() -> None:
    with pytest.raises(ValueError, match="prompt_tokens"):
        Usage.from_openai({"prompt_tokens": "many", "completion_tokens": 1})


def test_usage_validates_and_adds() -> None:
    with pytest.raises(ValueError):
        Usage(input_tokens=-1)
    with pytest.raises(ValueError):
        Usage(input_tokens=5, cached_input_tokens=6)
    with pytest.raises(ValueError):
        Usage(output_tokens=5, reasoning_tokens=6)
    a = Usage(input_tokens=10, cached_input_tokens=2, output_tokens=5, reasoning_tokens=1)
    b = Usage(
        input_tokens=20,
        cached_input_tokens=4,
        output_tokens=6,
        reasoning_tokens=3,
        cache_write_tokens=1,
    )
    total = Usage(
        input_tokens=30,
        cached_input_tokens=6,
        output_tokens=11,
        reasoning_tokens=4,
        cache_write_tokens=1,
    )
    assert a + b == total
    assert sum([a, b]) == total
    with pytest.raises(AttributeError):
        a.input_tokens = 3  # type: ignore[misc]
