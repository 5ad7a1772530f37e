"""Fail closed: under a budget nothing reaches the provider unmetered, a misspelt budget key or
model is an error, and without a budget the guard stays out of the way. Over the sim on
loopback; "reached the provider" is what the sim recorded."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from agentguard import (
    BudgetExceeded,
    ConfigError,
    Guard,
    PricingError,
    UnmeteredRequest,
    configure_logging,
)
from agentguard.config import GuardConfig
from agentguard.sim import SimServer

TINY = [{"key": "research", "limit_usd": 0.000001, "window": "1h"}]
MESSAGES = [{"role": "user", "content": "Hello"}]


def paths(sim: SimServer) -> list[str]:
    return [request.path for request in sim.requests]


def test_endpoints_the_guard_cannot_price_are_refused_under_a_budget(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=TINY)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-closed"))
    with guard.session(budget_key="research"):
        with pytest.raises(UnmeteredRequest) as caught:
            client.images.generate(model="gpt-image-1", prompt="A lighthouse")
        message = str(caught.value)
        assert "/v1/images/generations is not metered" in message
        assert 'limits.unmetered = ["/v1/images/generations"]' in message
        assert "'research'" in message
        assert caught.value.endpoint == "/v1/images/generations"
        # A Responses call with a built-in tool, billed per use at rates nobody publishes
        # as data, cannot be bounded either.
        with pytest.raises(UnmeteredRequest, match=r"tools\[0\] is the built-in tool"):
            client.responses.create(
                model="gpt-4o", input="Hello", tools=[{"type": "web_search"}], max_output_tokens=20
            )
        # Reads cost nothing and pass.
        assert [model.id for model in client.models.list()][:1] == ["gpt-4o"]
    assert paths(sim) == ["/v1/models"]


def test_the_sessionless_default_and_a_session_budget_count_as_budgets(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=[{"key": "default", "limit_usd": 1}])
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-closed"))
    with pytest.raises(UnmeteredRequest):
        client.images.generate(model="gpt-image-1", prompt="A lighthouse")

    capped = make_guard(limits={"max_session_usd": 1})
    client = capped.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-closed"))
    with capped.session(), pytest.raises(UnmeteredRequest):
        client.images.generate(model="gpt-image-1", prompt="A lighthouse")
    assert sim.requests == []


def test_async_clients_are_refused_too(make_guard: Callable[..., Guard], sim: SimServer) -> None:
    guard = make_guard(budgets=TINY)
    client = guard.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-closed"))

    async def run() -> None:
        async with guard.session(budget_key="research"):
            await client.images.generate(model="gpt-image-1", prompt="A lighthouse")

    with pytest.raises(UnmeteredRequest):
        asyncio.run(run())
    assert sim.requests == []


def test_limits_unmetered_lets_a_named_endpoint_through(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=TINY, limits={"unmetered": ["/v1/images/generations"]})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-closed", max_retries=0))
    with guard.session(budget_key="research"):
        # Let through as named: it reaches the sim (which serves no images).
        with pytest.raises(openai.NotFoundError):
            client.images.generate(model="gpt-image-1", prompt="A lighthouse")
        with pytest.raises(UnmeteredRequest):
            client.images.edit(model="gpt-image-1", image=b"png", prompt="A lighthouse")
    assert paths(sim) == ["/v1/images/generations"]


def test_without_a_budget_other_endpoints_pass_through(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard()
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-open", max_retries=0))
    with guard.session():
        assert client.responses.create(model="gpt-4o", input="Hello").output_text
    assert paths(sim) == ["/v1/responses"]


def test_a_chat_body_that_is_not_json_is_refused_under_a_budget(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=TINY)
    with guard.http_client() as http, guard.session(budget_key="research"):
        with pytest.raises(UnmeteredRequest, match="not a JSON object"):
            http.post(f"{sim.base_url}/chat/completions", content=b"{not json")
        with pytest.raises(UnmeteredRequest, match="not a JSON object"):
            http.post(f"{sim.base_url}/chat/completions", json=["a", "list"])
    assert sim.requests == []
    free = make_guard()
    with free.http_client() as http:
        response = http.post(f"{sim.base_url}/chat/completions", content=b"{not json")
    assert isinstance(response, httpx.Response) and response.status_code == 400


def test_unmetered_paths_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match=r"limits\.unmetered"):
        GuardConfig.from_mapping({"limits": {"unmetered": ["embeddings"]}}, env={})


# -- config validation --------------------------------------------------------------------------


def test_an_unconfigured_budget_key_is_an_error_with_a_suggestion(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=[{"key": "research", "limit_usd": 1}, {"key": "ops"}])
    with pytest.raises(ConfigError) as caught:
        guard.session(budget_key="reserch")
    message = str(caught.value)
    assert "budget key 'reserch' is not configured" in message
    assert "did you mean 'research'?" in message
    assert "configured: 'research', 'ops'" in message
    assert caught.value.field == "budgets.key"
    # A key configured without a limit records spend; the implicit default key needs no entry.
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-closed"))
    with guard.session(budget_key="ops"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    status = guard.budget_status("ops")
    assert status.spent_usd > 0 and status.limit_usd is None
    with guard.session(budget_key="default"):
        pass


def test_unpriced_routing_models_fail_when_the_config_loads(
    make_guard: Callable[..., Guard],
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_guard(routing={"tiers": {"small": "gpt-4o-mnii", "large": "gpt-4o"}})
    assert caught.value.field == "routing.tiers.small"
    assert "routing.tiers.small: model 'gpt-4o-mnii' has no price" in str(caught.value)
    with pytest.raises(ConfigError, match=r"routing\.force_model"):
        make_guard(routing={"force_model": "gtp-4o"})
    with pytest.raises(ConfigError, match=r"trimming\.summary_model"):
        make_guard(trimming={"strategy": "summarize", "summary_model": "no-such-model"})
    # A price override makes a private model usable.
    make_guard(
        routing={"tiers": {"small": "local-small", "large": "gpt-4o"}},
        pricing={"overrides": {"local-small": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}}},
    )


def test_an_unpriced_caller_model_fails_even_when_routing_would_replace_it(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(routing={"tiers": {"small": "gpt-4o-mini", "large": "gpt-4o"}})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-closed"))
    with guard.session(), pytest.raises(PricingError, match="gpt-4o-mnii"):
        client.chat.completions.create(model="gpt-4o-mnii", messages=MESSAGES, max_tokens=5)
    assert sim.requests == []


# -- the legacy endpoints are metered ---------------------------------------------------------


def reservations(stream: io.StringIO) -> list[Decimal]:
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [Decimal(event["amount_usd"]) for event in events if event["event"] == "reserve"]


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", json_lines=True, stream=stream)
    try:
        yield stream
    finally:
        logger = logging.getLogger("agentguard")
        for handler in list(logger.handlers):
            if getattr(handler, "_agentguard", False):
                logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


LEGACY_CALLS: dict[str, Callable[[openai.OpenAI], Any]] = {
    "completion": lambda client: client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=30
    ),
    "completion, n and best_of": lambda client: client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["Once", "upon"], max_tokens=20, n=2, best_of=3
    ),
    "completion, default cap, token ids": lambda client: client.completions.create(
        model="davinci-002", prompt=[1, 2, 3, 4, 5]
    ),
    "embeddings": lambda client: client.embeddings.create(
        model="text-embedding-3-small", input=["a lighthouse keeper", "the sea at night"] * 20
    ),
}


@pytest.mark.parametrize("shape", list(LEGACY_CALLS))
def test_legacy_endpoints_are_metered_under_a_budget(
    shape: str, make_guard: Callable[..., Guard], sim: SimServer, debug_log: io.StringIO
) -> None:
    guard = make_guard(budgets=[{"key": "research", "limit_usd": 1}])
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-legacy"))
    with guard.session(budget_key="research") as session:
        LEGACY_CALLS[shape](client)
    (reserved,) = reservations(debug_log)
    billed = sim.billed_usd()
    assert sim.billed_calls() == 1 and 0 < billed <= reserved
    assert abs(session.spent_usd - billed) < Decimal("1e-9")
    assert guard.budget_status("research").spent_usd == session.spent_usd


def test_a_legacy_call_that_does_not_fit_is_never_sent(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=TINY)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-legacy"))
    with guard.session(budget_key="research"):
        with pytest.raises(BudgetExceeded):
            client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=5)
        with pytest.raises(BudgetExceeded):
            client.embeddings.create(model="text-embedding-3-small", input="Hello " * 200)
        with pytest.raises(UnmeteredRequest, match="streamed legacy completion"):
            client.completions.create(
                model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=5, stream=True
            )
        with pytest.raises(PricingError):
            client.embeddings.create(model="no-such-embedder", input="Hello")
    assert sim.requests == []


def test_a_legacy_attempt_that_timed_out_is_charged_its_worst_case(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard(budgets=[{"key": "research", "limit_usd": 1}])
    with SimServer() as sim:
        sim.timeout_next(1, seconds=1.0)
        client = guard.wrap(
            openai.OpenAI(base_url=sim.base_url, api_key="sk-legacy", max_retries=0, timeout=0.3)
        )
        with guard.session(budget_key="research"), pytest.raises(openai.APITimeoutError):
            client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=50)
        deadline = time.monotonic() + 30
        while sim.billed_calls() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        billed = sim.billed_usd()
    guard.close()
    assert billed > 0
    # The provider billed an answer nobody read: the ledger holds at least that.
    assert guard.budget_status("research").spent_usd >= billed


def test_async_legacy_calls_are_metered(make_guard: Callable[..., Guard], sim: SimServer) -> None:
    guard = make_guard(budgets=[{"key": "research", "limit_usd": 1}])
    client = guard.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-legacy"))

    async def run() -> Decimal:
        async with guard.session(budget_key="research") as session:
            await client.embeddings.create(model="text-embedding-3-small", input="Hello there")
            await client.completions.create(
                model="gpt-3.5-turbo-instruct", prompt="Hello", max_tokens=8
            )
            return session.spent_usd

    spent = asyncio.run(run())
    assert sim.billed_calls() == 2
    assert abs(spent - sim.billed_usd()) < Decimal("1e-9")
