"""Claude models in LangChain, run for real: ``create_agent`` with the guarded ``ChatAnthropic``
over HTTP on loopback against the sim's ``/v1/messages``, LangGraph checkpoints in SQLite,
parking on the sim's budget gateway (Anthropic's 429) and resuming through the ``langgraph``
resumer. Money is judged by the sim's own bill."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from helpers import resume_by_daemon
from langchain.agents import create_agent
from langchain_anthropic import ChatAnthropic
from langchain_core.load import dumpd
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from pydantic import BaseModel

from agentguard import BudgetExceeded, SessionParked
from agentguard.config import GuardConfig
from agentguard.guard import Guard
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard.tokens import TokenCounter
from agentguard_langchain import (
    AgentGuardMiddleware,
    guarded_chat_anthropic,
    guarded_chat_openai,
    register_langgraph_resumer,
)

KEY = "sk-ant-langchain-test-key-0001"
HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-6"
QUESTION = {"messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
WEATHER_SCRIPT = [
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
    Reply(content="It is sunny in Paris."),
]


class Weather:
    """A tool that counts how often it really ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

        @tool
        def get_weather(city: str) -> str:
            """The current weather in a city."""
            self.calls.append(city)
            return f"Sunny, 22 C in {city}"

        self.tool: BaseTool = get_weather


@pytest.fixture
def make_guard(tmp_path: Path) -> Callable[..., Guard]:
    """A guard on a fresh SQLite store, with a token counter of its own."""

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


@pytest.fixture
def checkpointer(tmp_path: Path) -> Iterator[SqliteSaver]:
    connection = sqlite3.connect(tmp_path / "threads.db", check_same_thread=False)
    yield SqliteSaver(connection)
    connection.close()


def thread(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


def claude(guard: Guard, sim: SimServer, model: str = HAIKU, **kwargs: Any) -> ChatAnthropic:
    kwargs.setdefault("max_tokens", 200)
    return guarded_chat_anthropic(guard, model=model, base_url=sim.url, api_key=KEY, **kwargs)


def build_agent(
    guard: Guard,
    sim: SimServer,
    weather: Weather,
    *,
    checkpointer: Any = None,
    model: Any = None,
    **middleware: Any,
) -> Any:
    return create_agent(
        model or claude(guard, sim),
        [weather.tool],
        middleware=[AgentGuardMiddleware(guard, **middleware)],
        checkpointer=checkpointer,
    )


def kinds(messages: list[Any]) -> list[str]:
    return [
        "ai+tools" if isinstance(m, AIMessage) and m.tool_calls else type(m).__name__
        for m in messages
    ]


def sent_models(sim: SimServer) -> list[str]:
    return [r.body["model"] for r in sim.requests if r.body and r.path == "/v1/messages"]


# -- a run under the guard ------------------------------------------------------------------------


def test_claude_tool_agent_spends_what_the_provider_bills(
    make_guard: Callable[..., Guard],
    weather: Weather,
    checkpointer: SqliteSaver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agentguard")
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather, checkpointer=checkpointer, budget_key="team")
        result = agent.invoke(QUESTION, thread("claude-1"))

    messages = result["messages"]
    assert kinds(messages) == ["HumanMessage", "ai+tools", "ToolMessage", "AIMessage"]
    assert messages[-1].text == "It is sunny in Paris."
    assert weather.calls == ["Paris"]
    assert [r.path for r in sim.requests] == ["/v1/messages"] * 2
    # The second request carries the tool's result as Anthropic's tool_result block.
    second = sim.requests[1].body
    assert second and second["messages"][-1]["content"][0]["type"] == "tool_result"
    info = messages[-1].response_metadata["agentguard"]
    assert info["session_id"] == "lg-claude-1" and info["iterations"] == 2
    assert Decimal(info["spent_usd"]) == sim.billed_usd() > 0
    assert guard.budget_status("team").spent_usd == sim.billed_usd()
    steps = [
        getattr(r, "agentguard_fields", {})
        for r in caplog.records
        if getattr(r, "agentguard_event", None) == "agent_step"
    ]
    assert [(s["tool_calls"], s["model"]) for s in steps] == [
        (["get_weather"], HAIKU),
        ([], HAIKU),
    ]


def test_claude_agent_streams_and_each_answer_is_settled(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard()
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather)
        with guard.session("claude-stream", budget_key="team") as session:
            chunks = list(agent.stream(QUESTION, stream_mode="messages"))

    assert all(r.body and r.body["stream"] for r in sim.requests)
    usage = [c.usage_metadata for c, _ in chunks if getattr(c, "usage_metadata", None)]
    assert sum(u["output_tokens"] for u in usage) > 0
    assert weather.calls == ["Paris"]
    assert session.iterations == 2
    assert session.spent_usd == sim.billed_usd() > 0
    assert guard.budget_status("team").in_flight_usd == 0


async def test_claude_agent_ainvoke_and_astream_go_through_the_async_client(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather, checkpointer=InMemorySaver(), budget_key="team")
        result = await agent.ainvoke(QUESTION, thread("claude-async-1"))
        streamed = [
            chunk
            async for chunk, _ in agent.astream(
                QUESTION, thread("claude-async-2"), stream_mode="messages"
            )
        ]

    assert kinds(result["messages"]) == ["HumanMessage", "ai+tools", "ToolMessage", "AIMessage"]
    assert any(getattr(c, "text", "") for c in streamed)
    assert weather.calls == ["Paris", "Paris"]
    assert [bool(r.body and r.body.get("stream")) for r in sim.requests] == [
        False,
        False,
        True,
        True,
    ]
    # Spend reaches the ledger only through the guard's transport.
    assert guard.budget_status("team").spent_usd == sim.billed_usd() > 0


def test_structured_output_and_token_counting_go_through_the_guard(
    make_guard: Callable[..., Guard],
) -> None:
    class Forecast(BaseModel):
        city: str
        sunny: bool

    guard = make_guard(budgets=[{"key": "team", "limit_usd": 1, "window": "1h"}])
    script = [Reply(tool_calls=[ToolCall("Forecast", {"city": "Paris", "sunny": True})])]
    with SimServer(script=script) as sim:
        model = claude(guard, sim)
        with guard.session("claude-structured", budget_key="team") as session:
            forecast = model.with_structured_output(Forecast).invoke("Weather in Paris?")
            counted = model.get_num_tokens_from_messages([HumanMessage("Weather in Paris?")])
    assert forecast == Forecast(city="Paris", sunny=True)
    body = sim.requests[0].body
    assert body and body["tool_choice"]["name"] == "Forecast"
    # Counting tokens is billed nothing and spends nothing.
    assert counted > 0 and sim.requests[1].path == "/v1/messages/count_tokens"
    assert session.iterations == 1 and session.spent_usd == sim.billed_usd() > 0


# -- budgets, judged by the sim's bill -------------------------------------------------------------


def test_a_claude_agent_under_a_budget_stops_before_the_bill_passes_it(
    make_guard: Callable[..., Guard], weather: Weather, checkpointer: SqliteSaver
) -> None:
    limit = Decimal("0.01")
    looping = [
        Reply(tool_calls=[ToolCall("get_weather", {"city": f"City {n}"})]) for n in range(80)
    ]
    guard = make_guard(budgets=[{"key": "team", "limit_usd": float(limit), "window": "1h"}])
    with SimServer(script=looping) as sim:
        agent = build_agent(
            guard,
            sim,
            weather,
            model=claude(guard, sim, model=SONNET, max_tokens=100),
            checkpointer=checkpointer,
            budget_key="team",
            exit_behavior="end",
        )
        result = agent.invoke(QUESTION, {**thread("claude-budget"), "recursion_limit": 200})
        billed = sim.billed_usd()

    last = result["messages"][-1]
    assert last.response_metadata["agentguard"]["stopped_by"] == BudgetExceeded.__name__
    assert len(weather.calls) >= 3  # it ran a while before the budget stopped it
    assert 0 < billed <= limit
    assert guard.budget_status("team").spent_usd == billed


# -- parking on Anthropic's 429 and resuming ------------------------------------------------------


def test_a_claude_429_parks_the_run_and_the_daemon_continues_it_without_rerunning_tools(
    make_guard: Callable[..., Guard], weather: Weather, checkpointer: SqliteSaver
) -> None:
    # The first answer spends the key's window; the next call is refused until it resets.
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.00001"), window_s=1.0)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        agent = build_agent(guard, sim, weather, checkpointer=checkpointer, exit_behavior="end")
        register_langgraph_resumer(guard, agent)

        with pytest.raises(SessionParked) as parked:
            agent.invoke(QUESTION, thread("claude-park"))
        assert isinstance(parked.value, anthropic.AnthropicError)
        assert len(sim.requests) == 2  # the answer, then one attempt refused with 429
        assert weather.calls == ["Paris"]

        record = guard.parked.get("lg-claude-park")
        assert record.state == "parked" and record.dialect == "anthropic_messages"
        assert record.reason.status == 429
        assert record.framework == "langchain" and record.resumer == "langgraph"
        assert record.metadata["thread_id"] == "claude-park"
        assert record.request["messages"][-1]["content"][0]["type"] == "tool_result"
        assert agent.get_state(thread("claude-park")).next == ("model",)

        resume_by_daemon(guard, "lg-claude-park")

    assert len(sim.requests) == 3  # only the refused model call was made again
    assert weather.calls == ["Paris"]  # the finished tool call did not run again
    messages = agent.get_state(thread("claude-park")).values["messages"]
    assert kinds(messages) == ["HumanMessage", "ai+tools", "ToolMessage", "AIMessage"]
    assert messages[-1].text == "It is sunny in Paris."
    done = guard.parked.get("lg-claude-park")
    assert [t.state for t in done.history] == ["parked", "resuming", "resumed"]
    assert done.iterations == record.iterations + 1
    assert done.spent_usd == sim.billed_usd()


async def test_an_async_claude_run_parks_and_resumes_with_ainvoke(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.00001"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    checkpointer = InMemorySaver()
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:

        def build_graph() -> Any:
            # A resume runs in an event loop of its own: a fresh model, fresh async clients.
            return build_agent(guard, sim, weather, checkpointer=checkpointer)

        register_langgraph_resumer(guard, build_graph)
        with pytest.raises(SessionParked):
            await build_graph().ainvoke(QUESTION, thread("claude-async-park"))
        record = guard.parked.get("lg-claude-async-park")
        assert record.metadata["langgraph_invoke"] == "ainvoke"

        gateway.reset()
        final = await asyncio.to_thread(guard.parked.resume, "lg-claude-async-park")

    assert final["messages"][-1].text == "It is sunny in Paris."
    assert weather.calls == ["Paris"] and len(sim.requests) == 3
    assert guard.parked.get("lg-claude-async-park").state == "resumed"


# -- routing across Claude tiers --------------------------------------------------------------------


def test_routing_sends_each_agent_step_to_its_claude_tier(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(
        routing={"tiers": {"small": HAIKU, "large": SONNET}, "classifier": "heuristic"}
    )
    hard = (
        "Our distributed job scheduler deadlocks under load. Traceback (most recent call last):\n"
        '  File "scheduler/lease.py", line 88, in acquire\nRuntimeError: deadlock detected\n'
        "Debug why lease renewal and the worker heartbeat deadlock, design a fix across "
        "scheduler/lease.py, scheduler/worker.py and scheduler/store.py, and prove it cannot "
        "starve a worker."
    )
    easy = "Classify the sentiment of this review as positive or negative: 'Great phone.'"
    with SimServer(script=[Reply(content="Done.")]) as sim:
        # The agent asks for Sonnet; the guard decides per step.
        agent = build_agent(guard, sim, weather, model=claude(guard, sim, model=SONNET))
        easy_run = agent.invoke({"messages": [{"role": "user", "content": easy}]})
        hard_run = agent.invoke({"messages": [{"role": "user", "content": hard}]})

    assert sent_models(sim) == [HAIKU, SONNET]
    assert easy_run["messages"][-1].response_metadata["model_name"] == HAIKU
    assert hard_run["messages"][-1].response_metadata["model_name"] == SONNET


def test_one_middleware_serves_an_agent_on_claude_and_one_on_openai(
    make_guard: Callable[..., Guard], weather: Weather, checkpointer: SqliteSaver
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    middleware = AgentGuardMiddleware(guard, budget_key="team")
    with SimServer(script=WEATHER_SCRIPT) as sim:
        models = {
            "claude": claude(guard, sim),
            "openai": guarded_chat_openai(
                guard, model="gpt-4o-mini", base_url=sim.base_url, api_key=KEY
            ),
        }
        for name, model in models.items():
            agent = create_agent(
                model, [weather.tool], middleware=[middleware], checkpointer=checkpointer
            )
            result = agent.invoke(QUESTION, thread(f"mixed-{name}"))
            assert result["messages"][-1].response_metadata["agentguard"]["iterations"] == 2

    assert [r.path for r in sim.requests] == ["/v1/messages"] * 2 + ["/v1/chat/completions"] * 2
    assert weather.calls == ["Paris", "Paris"]
    assert guard.budget_status("team").spent_usd == sim.billed_usd() > 0


# -- the model itself ---------------------------------------------------------------------------------


def test_guarded_chat_anthropic_owns_its_clients_and_turns_sdk_retries_off(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard()
    model = guarded_chat_anthropic(guard, model=HAIKU, api_key=KEY)
    assert isinstance(model, ChatAnthropic) and model.max_retries == 0
    # Not the model's largest output (64,000 for Haiku 4.5): the guard's default cap.
    assert model.max_tokens == guard.config.limits.default_max_output_tokens == 4096
    assert guarded_chat_anthropic(guard, model=HAIKU, api_key=KEY, max_tokens=900).max_tokens == 900
    sync_client, async_client = model._client, model._async_client
    assert type(sync_client) is anthropic.Anthropic and sync_client.max_retries == 0
    assert type(async_client) is anthropic.AsyncAnthropic
    assert type(sync_client._client._transport).__name__ == "GuardTransport"
    assert type(async_client._client._transport).__name__ == "AsyncGuardTransport"
    # Copies (bind_tools, with_config, model_copy) keep the guard.
    copy = model.model_copy(update={"temperature": 0.0})
    assert type(copy._client._client._transport).__name__ == "GuardTransport"
    # It serialises as a plain ChatAnthropic, without its key.
    serialised = dumpd(model)
    assert serialised["id"] == ["langchain", "chat_models", "anthropic", "ChatAnthropic"]
    assert KEY not in str(serialised)
    with pytest.raises(ValueError, match="max_retries=2"):
        guarded_chat_anthropic(guard, model=HAIKU, api_key=KEY, max_retries=2)


def test_a_429_handed_back_is_one_attempt(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(parking={"enabled": False, "wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather)
        sim.rate_limit_next(5, retry_after=30)
        with pytest.raises(anthropic.RateLimitError) as error:
            agent.invoke(QUESTION)
    assert len(sim.requests) == 1
    assert error.value.response.headers["retry-after"] == "30"
