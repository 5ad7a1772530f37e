"""The Pydantic AI integration, run for real: ``pydantic_ai.Agent`` with ``OpenAIChatModel``,
``OpenAIResponsesModel`` and ``AnthropicModel`` over HTTP on loopback against the sim provider
(plain and streamed, ``run_sync`` and ``run``),
parking on the sim's budget gateway and resuming through the registered ``pydantic-ai``
resumer, from the run's own message history."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from helpers import resume_by_daemon
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities.native_tool import NativeTool
from pydantic_ai.exceptions import ModelHTTPError, UsageLimitExceeded
from pydantic_ai.messages import ModelRequest, ToolReturnPart
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.native_tools import WebSearchTool
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.usage import UsageLimits

import agentguard_pydantic_ai
from agentguard import (
    BudgetExceeded,
    IterationLimitExceeded,
    LoopDetected,
    SessionParked,
    UnmeteredRequest,
)
from agentguard.config import GuardConfig
from agentguard.guard import Guard
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard.tokens import TokenCounter
from agentguard_pydantic_ai import (
    AgentGuardCapability,
    guarded_model,
    parked_messages,
    register_pydantic_ai_resumer,
    session_id_for_run,
)

KEY = "sk-pydantic-ai-test-key-0001"
QUESTION = "What is the weather in Paris?"
WEATHER_SCRIPT = [
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
    Reply(content="It is sunny in Paris."),
]


class Weather:
    """A tool that counts how often it really ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.request_limits: list[int | None] = []

    def get_weather(self, ctx: RunContext[None], city: str) -> str:
        """The current weather in a city."""
        self.calls.append(city)
        assert ctx.usage_limits is not None
        self.request_limits.append(ctx.usage_limits.request_limit)
        return f"Sunny, 22 C in {city}"


@pytest.fixture
def make_guard(tmp_path: Path) -> Callable[..., Guard]:
    """A guard on a fresh SQLite store, as the suite's ``make_guard``, with a token counter of
    its own: what it learns from these calls stays out of the process-wide counter."""

    def build(**sections: Any) -> Guard:
        data: dict[str, Any] = {"store": {"url": f"sqlite:///{tmp_path / 'store.db'}"}}
        data["limits"] = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}
        data["limits"].update(sections.pop("limits", {}))
        data["budgets"] = [{"key": "team"}]
        data.update(sections)
        return Guard(GuardConfig.from_mapping(data), counter=TokenCounter())

    return build


@pytest.fixture
def weather() -> Weather:
    return Weather()


def build_agent(
    guard: Guard, sim: SimServer, weather: Weather, *, model: Any = None, **capability: Any
) -> Agent[None, str]:
    model = model or guarded_model(guard, "openai-chat:gpt-4o", base_url=sim.base_url, api_key=KEY)
    agent: Agent[None, str] = Agent(model, capabilities=[AgentGuardCapability(guard, **capability)])
    agent.tool(weather.get_weather)
    return agent


def kinds(messages: list[Any]) -> list[str]:
    return [f"{m.kind}:{'+'.join(p.part_kind for p in m.parts)}" for m in messages]


FINISHED_RUN = [
    "request:user-prompt",
    "response:tool-call",
    "request:tool-return",
    "response:text",
]


def agent_runs(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        getattr(r, "agentguard_fields", {})
        for r in caplog.records
        if getattr(r, "agentguard_event", None) == "agent_run"
    ]


# -- runs under the guard ---------------------------------------------------------------------------


def test_run_sync_with_a_tool_goes_through_the_guard(
    make_guard: Callable[..., Guard], weather: Weather, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentguard")
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather, budget_key="team")
        result = agent.run_sync(QUESTION)
        sim.wait_idle()

    assert result.output == "It is sunny in Paris."
    assert kinds(result.all_messages()) == FINISHED_RUN
    assert weather.calls == ["Paris"]
    assert [r.path for r in sim.requests] == ["/v1/chat/completions"] * 2
    # The guard's pipeline rewrote each request: it capped the output it reserved for.
    assert all(r.body and r.body["max_tokens"] == 4096 for r in sim.requests)
    (run,) = agent_runs(caplog)
    assert run["session_id"] == session_id_for_run(result.run_id)
    assert run["iterations"] == 2 and run["tool_calls"] == 1
    # Money by the provider's own bill: what the sim billed is what the ledger settled.
    billed = sim.billed_usd(KEY)
    assert billed > 0
    assert guard.budget_status("team").spent_usd == billed == Decimal(run["spent_usd"])
    # Pydantic AI's default request_limit (50) was lifted: the guard's max_iterations bounds it.
    assert weather.request_limits == [None]
    assert guard.parked.list() == []


async def test_async_run_and_run_stream_are_guarded(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard()
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather)
        with guard.session("async-1", budget_key="team") as plain:
            result = await agent.run(QUESTION)
        assert result.output == "It is sunny in Paris."
        assert not any(r.body and r.body.get("stream") for r in sim.requests)
        sim.clear()

        with guard.session("iter-1", budget_key="team") as iterated:
            async with agent.iter(QUESTION) as run:
                nodes = [type(node).__name__ async for node in run]
        assert run.result is not None and run.result.output == "It is sunny in Paris."
        assert nodes.count("ModelRequestNode") == 2 and len(sim.requests) == 2
        assert iterated.iterations == 2 and iterated.spent_usd == plain.spent_usd
        sim.clear()

        with guard.session("stream-1", budget_key="team") as streamed:
            async with agent.run_stream(QUESTION) as stream:
                text = [chunk async for chunk in stream.stream_text(delta=True)]
                output = await stream.get_output()
        sim.wait_idle()

    assert output == "It is sunny in Paris." and "".join(text) == output
    assert len(sim.requests) == 2
    assert all(r.body and r.body["stream"] for r in sim.requests)
    assert all(r.body and r.body["stream_options"] == {"include_usage": True} for r in sim.requests)
    assert weather.calls == ["Paris", "Paris", "Paris"]
    for session in (plain, iterated, streamed):
        assert session.iterations == 2 and session.tool_calls == 1 and session.spent_usd > 0
        # A session bound around the run is the run's session, marked as a Pydantic AI run.
        assert session.framework == "pydantic-ai" and session.resumer == "pydantic-ai"
    # Streamed answers were settled from the usage in their last chunk, as the sim billed them.
    assert plain.spent_usd + iterated.spent_usd + streamed.spent_usd == sim.billed_usd(KEY)


def test_run_stream_sync_is_guarded(make_guard: Callable[..., Guard], weather: Weather) -> None:
    guard = make_guard()
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather, session_id="sync-stream", budget_key="team")
        result = agent.run_stream_sync(QUESTION)
        output = result.get_output()
        sim.wait_idle()
    assert output == "It is sunny in Paris."
    assert all(r.body and r.body["stream"] for r in sim.requests) and len(sim.requests) == 2
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY) > 0


# -- the Responses model ------------------------------------------------------------------------


def responses_agent(
    guard: Guard, sim: SimServer, weather: Weather, *, settings: Any = None, **capability: Any
) -> Agent[None, str]:
    """The weather agent on Pydantic AI's default OpenAI model: ``openai:`` is the Responses API."""
    model = guarded_model(
        guard, "openai:gpt-4o", base_url=sim.base_url, api_key=KEY, settings=settings
    )
    assert isinstance(model, OpenAIResponsesModel)
    return build_agent(guard, sim, weather, model=model, **capability)


def input_types(body: dict[str, Any]) -> list[str]:
    return [item.get("type", "message") for item in body["input"]]


@pytest.mark.parametrize("how", ["run_sync", "run_stream"])
@pytest.mark.parametrize("chained", [False, True], ids=["whole-history", "chained"])
def test_a_responses_agent_with_a_tool_spends_what_the_provider_bills(
    how: str, chained: bool, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    # 'auto': each request continues the response before it (which this guard settled) and
    # sends only the new messages; the provider bills the earlier conversation again.
    settings = {"openai_previous_response_id": "auto"} if chained else None
    reserved: list[Decimal] = []
    billed_so_far: list[Decimal] = []
    with SimServer(script=WEATHER_SCRIPT) as sim:

        def observe(call: Any) -> None:
            reserved.append(call.worst_case_usd)
            billed_so_far.append(sim.billed_usd(KEY))

        guard.observers.append(observe)
        agent = responses_agent(guard, sim, weather, settings=settings)
        with guard.session(f"resp-{how}", budget_key="team") as session:
            if how == "run_sync":
                output = agent.run_sync(QUESTION).output
            else:

                async def stream() -> tuple[str, list[str]]:
                    async with agent.run_stream(QUESTION) as streamed:
                        text = [chunk async for chunk in streamed.stream_text(delta=True)]
                        return await streamed.get_output(), text

                output, text = asyncio.run(stream())
                assert "".join(text) == output
        sim.wait_idle()
        bill = sim.billed_usd(KEY)
        bodies = [r.body or {} for r in sim.requests]

    assert output == "It is sunny in Paris." and weather.calls == ["Paris"]
    assert [r.path for r in sim.requests] == ["/v1/responses"] * 2
    # The guard capped the output it reserved for, in the Responses API's own field.
    assert all(body["max_output_tokens"] == 4096 for body in bodies)
    assert all(bool(body.get("stream")) == (how == "run_stream") for body in bodies)
    if chained:
        assert bodies[1]["previous_response_id"] and input_types(bodies[1]) == [
            "function_call_output"
        ]
    else:
        assert "previous_response_id" not in bodies[1]
        assert input_types(bodies[1]) == ["message", "function_call", "function_call_output"]
    assert session.iterations == 2 and session.tool_calls == 1
    # Each call reserved at least what the provider billed for it; the total is the bill.
    bills = [b - a for a, b in zip([Decimal(0), *billed_so_far], billed_so_far, strict=False)]
    for step, (paid, bound) in enumerate(zip(bills, reserved, strict=True)):
        assert 0 < paid <= bound, f"call {step}: billed {paid} > reserved {bound}"
    assert bill > 0 and abs(session.spent_usd - bill) <= bill / 100
    assert guard.budget_status("team").spent_usd == session.spent_usd


def test_a_responses_agent_stops_before_its_budget_is_overspent(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # With 50 output tokens, each call's worst case fits the limit, but after the first call's
    # spend the second one does not.
    limit = Decimal("0.001")
    guard = make_guard(budgets=[{"key": "team", "limit_usd": limit, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = responses_agent(guard, sim, weather, settings={"max_tokens": 50}, budget_key="team")
        with pytest.raises(BudgetExceeded, match="budget 'team' exceeded"):
            agent.run_sync(QUESTION)
        sim.wait_idle()
    assert len(sim.requests) == 1 and weather.calls == ["Paris"]
    assert sim.requests[0].body and sim.requests[0].body["max_output_tokens"] == 50
    assert 0 < sim.billed_usd(KEY) <= limit
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY)


@pytest.mark.parametrize("chained", [False, True], ids=["whole-history", "chained"])
def test_a_429_parks_a_responses_agent_and_the_resume_runs_no_tool_again(
    chained: bool, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=1.0)})
    # Under a dollar budget: a chained resume continues a response this guard settled.
    guard = make_guard(
        budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}],
        parking={"wait_inline_max_s": 0},
    )
    settings = {"openai_previous_response_id": "auto"} if chained else None
    finished: list[Any] = []
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        agent = responses_agent(
            guard, sim, weather, settings=settings, session_id="resp-park", budget_key="team"
        )
        register_pydantic_ai_resumer(
            guard, agent, on_result=lambda parked, result: finished.append(result)
        )
        with pytest.raises(SessionParked):
            agent.run_sync(QUESTION)
        assert len(sim.requests) == 2 and weather.calls == ["Paris"]
        record = guard.parked.get("resp-park")
        assert record.reason.status == 429 and record.dialect == "openai_responses"
        assert kinds(parked_messages(record)) == FINISHED_RUN[:3]

        resume_by_daemon(guard, "resp-park")
        bodies = [r.body or {} for r in sim.requests]

    (result,) = finished
    assert result.output == "It is sunny in Paris." and kinds(result.all_messages()) == FINISHED_RUN
    assert weather.calls == ["Paris"]  # the tool did not run again
    assert len(bodies) == 3 and sim.billed_calls(KEY) == 2  # only the refused call again
    # The resumed request is the refused one again: the same response continued with the
    # tool's output, or the whole history.
    assert bodies[2].get("previous_response_id") == bodies[1].get("previous_response_id")
    assert input_types(bodies[2]) == input_types(bodies[1])
    assert bool(bodies[2].get("previous_response_id")) == chained
    assert guard.parked.get("resp-park").spent_usd == sim.billed_usd(KEY)
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY)


# -- the Anthropic model ------------------------------------------------------------------------

HAIKU = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def anthropic_model_runs() -> None:
    """Skips where Pydantic AI's own ``AnthropicModel``, unguarded, cannot call the installed
    ``anthropic`` SDK (pydantic-ai-slim 2.31.1 on anthropic 2.x fails before sending: it calls
    ``BetaMessageParam``, a union there, and passes arguments the SDK dropped)."""
    from importlib.metadata import version

    with SimServer(script=[Reply(content="hi")]) as sim:
        client = anthropic.AsyncAnthropic(base_url=sim.url, api_key=KEY)
        plain = AnthropicModel(HAIKU, provider=AnthropicProvider(anthropic_client=client))
        try:
            Agent(plain).run_sync("hello")
        except TypeError as error:
            pytest.skip(
                f"pydantic-ai-slim {version('pydantic-ai-slim')}'s AnthropicModel cannot call "
                f"anthropic {version('anthropic')}: {error}"
            )


def anthropic_agent(
    guard: Guard, sim: SimServer, weather: Weather, *, settings: Any = None, **capability: Any
) -> Agent[None, str]:
    """The weather agent on ``AnthropicModel``, over Anthropic's Messages API."""
    model = guarded_model(
        guard, f"anthropic:{HAIKU}", base_url=sim.url, api_key=KEY, settings=settings
    )
    assert isinstance(model, AnthropicModel)
    return build_agent(guard, sim, weather, model=model, **capability)


def block_types(body: dict[str, Any]) -> list[str]:
    return [
        block["type"] if isinstance(block, dict) else "text"
        for message in body["messages"]
        for block in (
            message["content"] if isinstance(message["content"], list) else [message["content"]]
        )
    ]


@pytest.mark.parametrize("how", ["run_sync", "run_stream"])
@pytest.mark.usefixtures("anthropic_model_runs")
def test_an_anthropic_agent_with_a_tool_spends_what_the_provider_bills(
    how: str, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    reserved: list[Decimal] = []
    billed_so_far: list[Decimal] = []
    with SimServer(script=WEATHER_SCRIPT) as sim:

        def observe(call: Any) -> None:
            reserved.append(call.worst_case_usd)
            billed_so_far.append(sim.billed_usd(KEY))

        guard.observers.append(observe)
        agent = anthropic_agent(guard, sim, weather)
        with guard.session(f"claude-{how}", budget_key="team") as session:
            if how == "run_sync":
                output = agent.run_sync(QUESTION).output
            else:

                async def stream() -> tuple[str, list[str]]:
                    async with agent.run_stream(QUESTION) as streamed:
                        text = [chunk async for chunk in streamed.stream_text(delta=True)]
                        return await streamed.get_output(), text

                output, text = asyncio.run(stream())
                assert "".join(text) == output
        sim.wait_idle()
        bill = sim.billed_usd(KEY)
        posts = [r for r in sim.requests if r.path.split("?")[0] == "/v1/messages"]
        bodies = [r.body or {} for r in posts]

    assert output == "It is sunny in Paris." and weather.calls == ["Paris"]
    assert len(bodies) == 2 and all(body["model"] == HAIKU for body in bodies)
    # Pydantic AI streams every request of a run_stream, and (2.68) a plain one with a large
    # max_tokens too.
    assert how == "run_sync" or all(body["stream"] for body in bodies)
    assert "tool_result" in block_types(bodies[1])
    assert session.iterations == 2 and session.tool_calls == 1
    # Each call reserved at least what the provider billed for it; the total is the bill.
    bills = [b - a for a, b in zip([Decimal(0), *billed_so_far], billed_so_far, strict=False)]
    for step, (paid, bound) in enumerate(zip(bills, reserved, strict=True)):
        assert 0 < paid <= bound, f"call {step}: billed {paid} > reserved {bound}"
    assert bill > 0 and abs(session.spent_usd - bill) <= bill / 100
    assert guard.budget_status("team").spent_usd == session.spent_usd


@pytest.mark.usefixtures("anthropic_model_runs")
def test_an_anthropic_agent_stops_before_its_budget_is_overspent(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # With 50 output tokens, each call's worst case fits the limit, but after the first call's
    # spend the second one does not.
    limit = Decimal("0.0008")
    guard = make_guard(budgets=[{"key": "team", "limit_usd": limit, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = anthropic_agent(guard, sim, weather, settings={"max_tokens": 50}, budget_key="team")
        with pytest.raises(BudgetExceeded, match="budget 'team' exceeded") as raised:
            agent.run_sync(QUESTION)
        sim.wait_idle()
    # The refusal is the guard's own error, not a retried connection error of the SDK.
    assert isinstance(raised.value, anthropic.AnthropicError)
    assert len(sim.requests) == 1 and weather.calls == ["Paris"]
    assert sim.requests[0].body and sim.requests[0].body["max_tokens"] == 50
    assert 0 < sim.billed_usd(KEY) <= limit
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY)


@pytest.mark.usefixtures("anthropic_model_runs")
def test_a_429_parks_an_anthropic_agent_and_the_resume_runs_no_tool_again(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.00005"), window_s=1.0)})
    guard = make_guard(
        budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}],
        parking={"wait_inline_max_s": 0},
    )
    finished: list[Any] = []
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        agent = anthropic_agent(guard, sim, weather, session_id="claude-park", budget_key="team")
        register_pydantic_ai_resumer(
            guard, agent, on_result=lambda parked, result: finished.append(result)
        )
        with pytest.raises(SessionParked):
            agent.run_sync(QUESTION)
        assert len(sim.requests) == 2 and weather.calls == ["Paris"]
        record = guard.parked.get("claude-park")
        assert record.reason.status == 429 and record.dialect == "anthropic_messages"
        assert kinds(parked_messages(record)) == FINISHED_RUN[:3]

        resume_by_daemon(guard, "claude-park")
        bodies = [r.body or {} for r in sim.requests]

    (result,) = finished
    assert result.output == "It is sunny in Paris." and kinds(result.all_messages()) == FINISHED_RUN
    assert weather.calls == ["Paris"]  # the tool did not run again
    assert len(bodies) == 3 and sim.billed_calls(KEY) == 2  # only the refused call again
    assert bodies[2]["messages"] == bodies[1]["messages"]  # the refused request, sent again
    assert guard.parked.get("claude-park").spent_usd == sim.billed_usd(KEY)
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY)


def test_anthropic_models_are_built_and_guarded(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard()
    assert "anthropic" in agentguard_pydantic_ai.METERED_APIS
    assert "anthropic" in agentguard_pydantic_ai.GUARDED_MODEL_KINDS
    built = guarded_model(guard, f"anthropic:{HAIKU}", api_key=KEY)
    assert isinstance(built, AnthropicModel) and built.model_name == HAIKU
    given = AnthropicModel(
        HAIKU,
        provider=AnthropicProvider(
            anthropic_client=anthropic.AsyncAnthropic(
                api_key=KEY, base_url="http://127.0.0.1:9", default_headers={"x-team": "a"}
            )
        ),
    )
    copy = guarded_model(guard, given)
    for model in (built, copy):
        assert isinstance(model, AnthropicModel) and model.client.max_retries == 0
        assert isinstance(model.client, anthropic.AsyncAnthropic)
        assert type(model.client._client._transport).__name__ == "AsyncGuardTransport"
    assert copy.base_url == given.base_url and copy.system == "anthropic"
    assert copy.client.default_headers["x-team"] == "a"
    assert given.client.max_retries == 2  # the model passed in is left as it was
    assert type(given.client._client._transport).__name__ != "AsyncGuardTransport"
    assert guarded_model(guard, built) is built  # guarded once is enough
    with pytest.raises(ValueError, match="another guard"):
        guarded_model(make_guard(), built)
    with pytest.raises(ValueError, match="max_retries=3"):
        guarded_model(guard, f"anthropic:{HAIKU}", api_key=KEY, settings={"max_retries": 3})
    # A cloud client signs its requests for another host and wire shape: not guarded.
    vertex = anthropic.AsyncAnthropicVertex(region="us-east5", project_id="p", access_token="t")
    on_vertex = AnthropicModel(HAIKU, provider=AnthropicProvider(anthropic_client=vertex))
    with pytest.raises(TypeError, match="not on AsyncAnthropicVertex"):
        guarded_model(guard, on_vertex)


def test_what_cannot_be_bounded_is_refused_under_a_budget_before_sending(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = responses_agent(guard, sim, weather, budget_key="team")
        # The provider bills a web search per use, at rates the price data does not carry.
        with pytest.raises(UnmeteredRequest, match="built-in tool 'web_search'") as refused:
            agent.run_sync(QUESTION, capabilities=[NativeTool(WebSearchTool())])
        assert refused.value.field == "tools[0]"
        # A stored conversation adds items the guard cannot see.
        with pytest.raises(UnmeteredRequest) as refused:
            agent.run_sync(QUESTION, model_settings={"openai_conversation_id": "conv_elsewhere"})  # type: ignore[typeddict-unknown-key]
        assert refused.value.field == "conversation"
    assert sim.requests == [] and weather.calls == []


# -- limits --------------------------------------------------------------------------------------------


def test_an_exhausted_budget_stops_the_run_within_the_limit(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # With 50 output tokens, each call's worst case fits the limit, but after the first call's
    # spend the second one does not.
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 0.001, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        model = guarded_model(
            guard,
            "openai-chat:gpt-4o",
            base_url=sim.base_url,
            api_key=KEY,
            settings={"max_tokens": 50},
        )
        agent = build_agent(guard, sim, weather, model=model, budget_key="team")
        with pytest.raises(BudgetExceeded, match="budget 'team' exceeded") as error:
            agent.run_sync(QUESTION)
        sim.wait_idle()
    assert error.value.key == "team"
    assert len(sim.requests) == 1 and weather.calls == ["Paris"]
    assert sim.billed_usd(KEY) <= Decimal("0.001")
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY)


def test_an_exhausted_budget_with_on_exhausted_park_parks_the_run(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(
        budgets=[{"key": "team", "limit_usd": 0.001, "window": "1h", "on_exhausted": "park"}]
    )
    with SimServer(script=WEATHER_SCRIPT) as sim:
        model = guarded_model(
            guard,
            "openai-chat:gpt-4o",
            base_url=sim.base_url,
            api_key=KEY,
            settings={"max_tokens": 50},
        )
        agent = build_agent(guard, sim, weather, model=model, budget_key="team", session_id="b-1")
        with pytest.raises(SessionParked) as parked:
            agent.run_sync(QUESTION)
    record = guard.parked.get("b-1")
    assert parked.value.session_id == "b-1" and record.state == "parked"
    assert record.reason.kind == "local_budget" and record.resume_at == parked.value.resume_at
    assert kinds(parked_messages(record)) == FINISHED_RUN[:3]
    assert len(sim.requests) == 1 and weather.calls == ["Paris"]


LIMIT_CASES: dict[str, tuple[dict[str, Any], list[Reply], type[Exception], str, int]] = {
    "iterations": (
        {"max_iterations": 1},
        WEATHER_SCRIPT,
        IterationLimitExceeded,
        "max_iterations=1",
        1,
    ),
    "tool calls": (
        {"max_tool_calls": 1},
        [*WEATHER_SCRIPT[:1], Reply(tool_calls=[ToolCall("get_weather", {"city": "Rome"})])],
        IterationLimitExceeded,
        "max_tool_calls=1",
        1,
    ),
    # The repeated call is stopped when the model asks for it, before the tool runs again.
    "loop": ({"loop_threshold": 2}, [WEATHER_SCRIPT[0]] * 3, LoopDetected, "loop_threshold=2", 2),
}


@pytest.mark.parametrize("case", list(LIMIT_CASES))
def test_the_guards_limits_stop_the_run(
    case: str, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    limits, script, error, says, requests = LIMIT_CASES[case]
    guard = make_guard(limits=limits)
    with SimServer(script=script) as sim:
        agent = build_agent(guard, sim, weather)
        with pytest.raises(error, match=says):
            agent.run_sync(QUESTION)
    assert len(sim.requests) == requests
    assert weather.calls == ["Paris"]


def test_explicit_usage_limits_still_apply(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # Limits the application set itself are left alone: the stricter one stops the run.
    guard = make_guard(limits={"max_iterations": 10})
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather)
        with pytest.raises(UsageLimitExceeded, match="request_limit of 1"):
            agent.run_sync(QUESTION, usage_limits=UsageLimits(request_limit=1))
        assert len(sim.requests) == 1
        # Without a guard limit on iterations, Pydantic AI's default stays in force.
        unbounded = make_guard(limits={"max_iterations": None})
        build_agent(unbounded, sim, weather).run_sync(QUESTION)
    assert weather.request_limits == [1, 50]


def test_routing_and_trimming_change_the_request_not_the_runs_history(
    make_guard: Callable[..., Guard],
) -> None:
    def read_next(body: dict[str, Any]) -> Reply:
        # Decided from the last tool output, which trimming keeps (the step count it drops).
        last = body["messages"][-1]
        if last["role"] != "tool":
            return Reply(tool_calls=[ToolCall("read_file", {"path": "a.txt"})])
        if last["content"].startswith("a.txt"):
            return Reply(tool_calls=[ToolCall("read_file", {"path": "b.txt"})])
        return Reply(content="Both files read.")

    reads: list[str] = []

    def read_file(path: str) -> str:
        """Read a file."""
        reads.append(path)
        return f"{path}: " + " ".join(f"line{i}" for i in range(600))

    guard = make_guard(
        routing={"force_model": "gpt-4o-mini"},
        trimming={"max_context_tokens": 1600, "keep_last_turns": 1},
    )
    with SimServer(script=read_next) as sim:
        agent: Agent[None, str] = Agent(
            guarded_model(guard, "openai-chat:gpt-4o", base_url=sim.base_url, api_key=KEY),
            tools=[read_file],
            capabilities=[AgentGuardCapability(guard)],
        )
        result = agent.run_sync("Read a.txt and b.txt.")

    assert result.output == "Both files read." and reads == ["a.txt", "b.txt"]
    assert [r.body and r.body["model"] for r in sim.requests] == ["gpt-4o-mini"] * 3
    responses = [m for m in result.all_messages() if m.kind == "response"]
    assert [m.model_name for m in responses] == ["gpt-4o-mini"] * 3
    # The last request went out trimmed: a.txt's turn was cut, with a note saying so...
    last = sim.requests[-1].body
    assert last is not None
    sent = " ".join(str(m.get("content")) for m in last["messages"])
    assert "a.txt: line0" not in sent and "[agentguard:" in sent
    # ...while the run's own history still holds both outputs in full.
    returns = [p for m in result.all_messages() for p in m.parts if p.part_kind == "tool-return"]
    assert [len(p.content.split()) for p in returns] == [601, 601]


@pytest.mark.parametrize("construction", ["model string", "model built by the application"])
def test_a_429_handed_back_is_one_attempt_whatever_the_sdk_retries(
    construction: str, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(parking={"enabled": False, "wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT) as sim:
        model = None
        if construction != "model string":
            # AsyncOpenAI retries twice by default; the guarded copy does not.
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key=KEY)
            assert client.max_retries == 2
            built = OpenAIChatModel("gpt-4o", provider=OpenAIProvider(openai_client=client))
            model = guarded_model(guard, built)
            assert built.client is client  # the model passed in is left as it was
        agent = build_agent(guard, sim, weather, model=model)
        sim.rate_limit_next(5, retry_after=30)
        with pytest.raises(ModelHTTPError) as error:
            agent.run_sync(QUESTION)
    assert len(sim.requests) == 1
    assert error.value.status_code == 429


def test_model_settings_max_retries_do_not_multiply_the_guards_attempts(
    make_guard: Callable[..., Guard], weather: Weather, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentguard")
    guard = make_guard(parking={"enabled": False, "wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather)
        sim.rate_limit_next(10, retry_after=1)
        with pytest.raises(ModelHTTPError) as error:
            # Pydantic AI hands max_retries to the SDK client (2.68 does; 2.31 ignores it),
            # which would retry the 429 the guard handed back.
            agent.run_sync(QUESTION, model_settings={"max_retries": 3})  # type: ignore[typeddict-unknown-key]
        assert error.value.status_code == 429
        assert len(sim.requests) == 1
        with pytest.raises(ValueError, match="max_retries=2"):
            guarded_model(guard, "openai-chat:gpt-4o", api_key=KEY, settings={"max_retries": 2})  # type: ignore[typeddict-unknown-key]
    warned = [
        r for r in caplog.records if getattr(r, "agentguard_event", None) == "sdk_retries_off"
    ]
    assert len(warned) == 1


# -- parking and resuming --------------------------------------------------------------------------


def test_gateway_429_parks_the_run_and_the_daemon_continues_it_without_rerunning_tools(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # The first answer spends the key's window; the next call is refused until it resets.
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=1.0)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    finished: list[tuple[str, Any]] = []
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        agent = build_agent(guard, sim, weather, session_id="ticket-3", budget_key="team")
        register_pydantic_ai_resumer(
            guard,
            agent,
            on_result=lambda parked, result: finished.append((parked.session_id, result)),
        )

        with pytest.raises(SessionParked) as parked:
            agent.run_sync(QUESTION)
        assert parked.value.session_id == "ticket-3"
        assert len(sim.requests) == 2  # the answer, then one attempt refused with 429
        assert weather.calls == ["Paris"]

        record = guard.parked.get("ticket-3")
        assert record.state == "parked" and record.attempts == 0
        assert record.reason.status == 429 and record.reason.reset_source == "retry-after"
        assert record.framework == "pydantic-ai" and record.resumer == "pydantic-ai"
        history = parked_messages(record)
        assert kinds(history) == FINISHED_RUN[:3]  # ends with the pending request
        assert isinstance(history[-1], ModelRequest)
        (tool_return,) = history[-1].parts
        assert isinstance(tool_return, ToolReturnPart)
        assert tool_return.content == "Sunny, 22 C in Paris"
        assert record.metadata["pydantic_ai_usage"]["requests"] == 1
        # A new run under the parked id would be a second run of the same record.
        with pytest.raises(SessionParked, match="is parked"):
            agent.run_sync(QUESTION)
        assert len(sim.requests) == 2

        resume_by_daemon(guard, "ticket-3")

    assert len(sim.requests) == 3  # only the refused model call was made again
    assert weather.calls == ["Paris"]  # the tool did not run again
    ((session_id, result),) = finished
    assert session_id == "ticket-3" and result.output == "It is sunny in Paris."
    assert kinds(result.all_messages()) == FINISHED_RUN
    # Pydantic AI's usage went on from the parked run's: two requests in the whole run.
    assert result.usage.requests == 2 and result.usage.tool_calls == 1
    done = guard.parked.get("ticket-3")
    assert [t.state for t in done.history] == ["parked", "resuming", "resumed"]
    # The resumed run went on with the parked session's counters and spend.
    assert done.iterations == record.iterations + 1
    assert done.spent_usd > record.spent_usd
    assert done.spent_usd == sim.billed_usd(KEY)


async def test_an_async_run_parks_reparks_and_resumes_from_its_history(
    make_guard: Callable[..., Guard], weather: Weather, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentguard")
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0, "max_attempts": 3})
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        built: list[Agent[None, str]] = []

        def build() -> Agent[None, str]:
            # The resumer may build the agent for each resume (a daemon builds it lazily).
            built.append(build_agent(guard, sim, weather))
            return built[-1]

        def deliver(parked: Any, result: Any) -> None:
            raise RuntimeError("the mailbox is full")

        register_pydantic_ai_resumer(guard, build, on_result=deliver)
        with pytest.raises(SessionParked) as parked:
            await build().run(QUESTION)
        session_id = parked.value.session_id
        assert session_id.startswith("pai-")
        with pytest.raises(SessionParked):
            # The window is still spent: 429 again. The resume runs its own event loop, as a
            # daemon's worker thread would.
            await asyncio.to_thread(guard.parked.resume, session_id)
        record = guard.parked.get(session_id)
        assert record.state == "parked" and record.attempts == 1
        assert kinds(parked_messages(record)) == FINISHED_RUN[:3]

        gateway.reset()
        result = await asyncio.to_thread(guard.parked.resume, session_id)

    assert len(built) == 3
    assert result.output == "It is sunny in Paris."
    assert weather.calls == ["Paris"] and len(sim.requests) == 4
    # The hand-over failed, but the run is done: it is not run again.
    assert guard.parked.get(session_id).state == "resumed"
    (undelivered,) = [
        getattr(r, "agentguard_fields", {})
        for r in caplog.records
        if getattr(r, "agentguard_event", None) == "resume_result_not_delivered"
    ]
    assert undelivered["error"] == "RuntimeError: the mailbox is full"


TWO_CITIES_SCRIPT = [
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Rome"})]),
    Reply(content="Sunny in both."),
]


async def test_a_streamed_run_with_a_per_run_capability_parks_twice_and_finishes(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # Each window pays for one answer: the run parks after Paris, its resume gets Rome's
    # answer and parks again, and the second resume finishes.
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0, "max_attempts": 3})
    with SimServer(script=TWO_CITIES_SCRIPT, gateway=gateway) as sim:
        # The capability comes with the run, not the agent: the resumer adds one of its own,
        # which keeps the resumed run's history for its next park.
        agent: Agent[None, str] = Agent(
            guarded_model(guard, "openai-chat:gpt-4o", base_url=sim.base_url, api_key=KEY)
        )
        agent.tool(weather.get_weather)
        register_pydantic_ai_resumer(guard, lambda: agent)
        capability = AgentGuardCapability(guard, session_id="two-cities", budget_key="team")
        with pytest.raises(SessionParked):
            async with agent.run_stream("Paris and Rome?", capabilities=[capability]) as stream:
                await stream.get_output()
        assert weather.calls == ["Paris"] and len(sim.requests) == 2
        assert all(r.body and r.body["stream"] for r in sim.requests)

        gateway.reset()
        with pytest.raises(SessionParked):
            await asyncio.to_thread(guard.parked.resume, "two-cities")
        record = guard.parked.get("two-cities")
        assert record.attempts == 1 and weather.calls == ["Paris", "Rome"]
        assert kinds(parked_messages(record)) == [
            *FINISHED_RUN[:3],
            "response:tool-call",
            "request:tool-return",
        ]

        gateway.reset()
        result = await asyncio.to_thread(guard.parked.resume, "two-cities")
    assert result.output == "Sunny in both."
    assert weather.calls == ["Paris", "Rome"]  # neither tool ran again
    assert len(sim.requests) == 5  # three answers, two refusals
    done = guard.parked.get("two-cities")
    assert done.state == "resumed" and done.spent_usd == sim.billed_usd(KEY)


async def test_a_chosen_session_id_parks_and_resumes_on_every_store(
    store_url: str, weather: Weather
) -> None:
    guard = Guard(
        GuardConfig.from_mapping(
            {
                "store": {"url": store_url},
                "limits": {"backoff_initial_s": 0.01, "backoff_max_s": 0.05},
                "budgets": [{"key": "team"}],
                "parking": {"wait_inline_max_s": 0},
            }
        ),
        counter=TokenCounter(),
    )
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather, session_id="store-1", budget_key="team")
        register_pydantic_ai_resumer(guard, agent)
        sim.rate_limit_next(1, retry_after=600)
        with pytest.raises(SessionParked):
            await agent.run(QUESTION)
        with pytest.raises(SessionParked, match="is parked"):
            await agent.run(QUESTION)  # the id is taken until the parked run is continued
        result = await asyncio.to_thread(guard.parked.resume, "store-1")
        assert result.output == "It is sunny in Paris."
        again = await agent.run(QUESTION)  # resumed: the id is free again
    assert again.output == "It is sunny in Paris."
    assert weather.calls == ["Paris", "Paris"] and len(sim.requests) == 5
    assert guard.parked.get("store-1").state == "resumed"
    guard.close()


def test_a_parked_record_holds_no_secret(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 0})
    leaked = "sk-proj-" + "A1b2C3d4" * 5
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather, session_id="secret-1")
        sim.rate_limit_next(1, retry_after=600)
        with pytest.raises(SessionParked):
            agent.run_sync(f"My key is {leaked}; what is the weather in Paris?")
        stored = guard.parked.get("secret-1").model_dump_json()
        assert KEY not in stored and leaked not in stored
        assert "[redacted]" in json.dumps(guard.parked.get("secret-1").metadata)
        assert kinds(parked_messages(guard.parked.get("secret-1"))) == ["request:user-prompt"]

        # A run parked at its first request resumes from its prompt, as it was stored.
        register_pydantic_ai_resumer(guard, agent)
        result = guard.parked.resume("secret-1")
        resent = sim.requests[1].body
    assert result.output == "It is sunny in Paris." and weather.calls == ["Paris"]
    assert resent is not None and "My key is [redacted];" in resent["messages"][0]["content"]


def test_a_record_without_history_cannot_be_continued(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT) as sim:
        # No capability: the model is guarded, but nothing keeps the run's history.
        agent: Agent[None, str] = Agent(
            guarded_model(guard, "openai-chat:gpt-4o", base_url=sim.base_url, api_key=KEY)
        )
        register_pydantic_ai_resumer(guard, agent)
        sim.rate_limit_next(1, retry_after=600)
        with guard.session("bare-1", resumer="pydantic-ai"), pytest.raises(SessionParked):
            agent.run_sync(QUESTION)
        with pytest.raises(ValueError, match="holds no Pydantic AI message history"):
            guard.parked.resume("bare-1")
    record = guard.parked.get("bare-1")
    assert record.state == "parked" and record.attempts == 1 and len(sim.requests) == 1


def test_the_example_parks_and_the_daemon_finishes_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "pydantic_ai_agent.py"
    spec = importlib.util.spec_from_file_location("example_pydantic_ai_agent", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    answer = example.main()
    output = capsys.readouterr().out
    assert answer == "Both cities are sunny: pack sunglasses for Paris and Rome."
    assert example.tool_runs == ["Paris", "Rome"]  # each tool once: the resume ran none again
    assert "record: budget_window (HTTP 429), 5 messages kept" in output, output
    assert "parked -> resuming -> resumed" in output, output
    assert "4 model calls (one refused by the gateway)" in output, output
    spent, billed = re.findall(r"\$(\d+\.\d+)", output.splitlines()[-1])
    assert Decimal(spent) == Decimal(billed), output  # the same amount, however it is written


# -- the pieces --------------------------------------------------------------------------------------


def test_guarded_model_owns_its_client_and_refuses_what_it_cannot_meter(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard()
    model = guarded_model(guard, "openai-chat:gpt-4o-mini", api_key=KEY)
    assert isinstance(model, OpenAIChatModel) and model.model_name == "gpt-4o-mini"
    assert model.client.max_retries == 0
    assert type(model.client._client._transport).__name__ == "AsyncGuardTransport"
    assert guarded_model(guard, model) is model  # guarded once is enough
    with pytest.raises(ValueError, match="another guard"):
        guarded_model(make_guard(), model)
    with pytest.raises(ValueError, match="api_key"):
        guarded_model(guard, model, api_key=KEY)
    for name, says in (
        ("gpt-4o", "write 'openai:gpt-4o' .*, 'openai-chat:gpt-4o' .* or 'anthropic:gpt-4o'"),
        (
            "google-gla:gemini-2.5-flash",
            "builds openai-chat, openai, openai-responses, anthropic models",
        ),
    ):
        with pytest.raises(ValueError, match=says):
            guarded_model(guard, name, api_key=KEY)
    with pytest.raises(TypeError, match="not FunctionModel"):
        from pydantic_ai.models.function import FunctionModel

        guarded_model(guard, FunctionModel(lambda messages, info: None))  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("name", ["openai:gpt-4o", "openai-responses:gpt-4o"])
def test_responses_models_are_built_and_guarded(
    name: str, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    assert {"chat", "responses"} <= agentguard_pydantic_ai.METERED_APIS
    built = guarded_model(guard, name, api_key=KEY)
    assert isinstance(built, OpenAIResponsesModel) and built.model_name == "gpt-4o"
    given = OpenAIResponsesModel("gpt-4o", provider=OpenAIProvider(api_key=KEY))
    for model in (built, guarded_model(guard, given)):
        assert isinstance(model, OpenAIResponsesModel) and model.client.max_retries == 0
        assert type(model.client._client._transport).__name__ == "AsyncGuardTransport"
    assert given.client.max_retries == 2  # the model passed in is left as it was
    assert guarded_model(guard, built) is built  # guarded once is enough


def test_capability_options_are_checked(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard()
    with pytest.raises(ValueError, match="session id"):
        AgentGuardCapability(guard, session_id="not valid/")
    with pytest.raises(ValueError, match="resumer name"):
        AgentGuardCapability(guard, resumer="my.module:fn")
    with pytest.raises(Exception, match="did you mean 'team'"):
        AgentGuardCapability(guard, budget_key="teem")
    assert session_id_for_run("01a2-b3") == "pai-01a2-b3"
    awkward = session_id_for_run("x" * 300)
    assert awkward.startswith("pai-") and len(awkward) <= 200


def test_public_names() -> None:
    assert sorted(agentguard_pydantic_ai.__all__) == [
        "AgentGuardCapability",
        "AgentOrFactory",
        "DEFAULT_RESUMER",
        "FRAMEWORK",
        "GUARDED_MODEL_KINDS",
        "MESSAGES_KEY",
        "METERED_APIS",
        "SessionIdFor",
        "USAGE_KEY",
        "__version__",
        "guarded_model",
        "parked_messages",
        "parked_usage",
        "register_pydantic_ai_resumer",
        "session_id_for_run",
    ]
    for name in agentguard_pydantic_ai.__all__:
        assert hasattr(agentguard_pydantic_ai, name)


def test_import_agentguard_loads_no_pydantic_ai() -> None:
    code = (
        "import json, sys, agentguard\n"
        "guard = agentguard.Guard(agentguard.GuardConfig.from_mapping("
        "{'store': {'url': 'sqlite://'}}))\n"
        "guard.async_http_client(); agentguard.SessionParked\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic_ai', 'pydantic_graph', 'agentguard_pydantic_ai'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []
