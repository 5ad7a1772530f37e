"""The LangChain / LangGraph integration, run for real: ``create_agent`` with ``ChatOpenAI`` over
HTTP on loopback against the sim provider, LangGraph checkpoints in SQLite, parking on the sim's
budget gateway and resuming through the registered ``langgraph`` resumer."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers import resume_by_daemon
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from pydantic import BaseModel, SecretStr

import agentguard_langchain
from agentguard import BudgetExceeded, IterationLimitExceeded, LoopDetected, SessionParked
from agentguard.config import GuardConfig
from agentguard.guard import Guard
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard.tokens import TokenCounter
from agentguard_langchain import (
    AgentGuardMiddleware,
    guarded_chat_openai,
    register_langgraph_resumer,
    session_id_for_thread,
)

KEY = "sk-langchain-test-key-0001"
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
    """A guard on a fresh SQLite store, as the suite's ``make_guard``, but with a token counter
    of its own: what it learns from these calls stays out of the process-wide counter."""

    def build(**sections: Any) -> Guard:
        data: dict[str, Any] = {"store": {"url": f"sqlite:///{tmp_path / 'store.db'}"}}
        data["limits"] = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}
        data["limits"].update(sections.pop("limits", {}))
        # The key these tests run sessions under, recording spend only (as the suite's).
        data["budgets"] = [{"key": "team"}]
        data.update(sections)
        return Guard(GuardConfig.from_mapping(data), counter=TokenCounter())

    return build


@pytest.fixture
def weather() -> Weather:
    return Weather()


@pytest.fixture
def checkpointer(tmp_path: Path) -> Iterator[SqliteSaver]:
    # The daemon resumes in its own worker threads; SqliteSaver serialises access with a lock.
    connection = sqlite3.connect(tmp_path / "threads.db", check_same_thread=False)
    yield SqliteSaver(connection)
    connection.close()


def thread(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


def build_agent(
    guard: Guard,
    sim: SimServer,
    weather: Weather,
    *,
    checkpointer: Any = None,
    model: ChatOpenAI | None = None,
    **middleware: Any,
) -> Any:
    model = model or guarded_chat_openai(guard, model="gpt-4o", base_url=sim.base_url, api_key=KEY)
    return create_agent(
        model,
        [weather.tool],
        middleware=[AgentGuardMiddleware(guard, **middleware)],
        checkpointer=checkpointer,
    )


def kinds(messages: list[Any]) -> list[str]:
    return [
        "ai+tools" if isinstance(m, AIMessage) and m.tool_calls else type(m).__name__
        for m in messages
    ]


# -- a run under the guard --------------------------------------------------------------------


def test_tool_agent_completes_with_spend_and_iterations_recorded(
    make_guard: Callable[..., Guard],
    weather: Weather,
    checkpointer: SqliteSaver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agentguard")
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather, checkpointer=checkpointer, budget_key="team")
        result = agent.invoke(QUESTION, thread("ticket-1"))

    messages = result["messages"]
    assert kinds(messages) == ["HumanMessage", "ai+tools", "ToolMessage", "AIMessage"]
    assert messages[-1].content == "It is sunny in Paris."
    assert weather.calls == ["Paris"]
    assert [r.path for r in sim.requests] == ["/v1/chat/completions"] * 2
    # The guard's pipeline rewrote each request: it capped the output it reserved for.
    assert all(r.body and r.body["max_tokens"] == 4096 for r in sim.requests)

    first, last = messages[1].response_metadata, messages[-1].response_metadata
    assert first["agentguard"]["session_id"] == "lg-ticket-1"
    assert first["agentguard"]["iterations"] == 1
    assert last["agentguard"]["iterations"] == 2
    spent = Decimal(last["agentguard"]["spent_usd"])
    assert spent > 0
    assert spent == Decimal(first["agentguard"]["cost_usd"]) + Decimal(
        last["agentguard"]["cost_usd"]
    )
    assert guard.budget_status("team").spent_usd == spent
    assert messages[-1].usage_metadata and messages[-1].usage_metadata["input_tokens"] > 0
    assert guard.parked.list() == []
    steps = [
        getattr(r, "agentguard_fields", {})
        for r in caplog.records
        if getattr(r, "agentguard_event", None) == "agent_step"
    ]
    assert [(s["iterations"], s["tool_calls"], s["model"]) for s in steps] == [
        (1, ["get_weather"], "gpt-4o"),
        (2, [], "gpt-4o"),
    ]
    assert all(s["thread_id"] == "ticket-1" for s in steps)


def test_structured_output_goes_through_the_guard(make_guard: Callable[..., Guard]) -> None:
    class Forecast(BaseModel):
        city: str
        sunny: bool

    guard = make_guard()
    with SimServer(script=[Reply(content='{"city": "Paris", "sunny": true}')]) as sim:
        model = guarded_chat_openai(guard, model="gpt-4o", base_url=sim.base_url, api_key=KEY)
        with guard.session("structured") as session:
            forecast = model.with_structured_output(Forecast).invoke("Weather in Paris?")
    assert forecast == Forecast(city="Paris", sunny=True)
    assert sim.requests[0].body and sim.requests[0].body["response_format"]["type"] == "json_schema"
    assert session.iterations == 1 and session.spent_usd > 0


def test_a_session_bound_around_invoke_is_the_one_used(
    make_guard: Callable[..., Guard], weather: Weather, checkpointer: SqliteSaver
) -> None:
    guard = make_guard()
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather, checkpointer=checkpointer)
        with guard.session("task-7", budget_key="team") as session:
            result = agent.invoke(QUESTION, thread("ticket-2"))

    assert result["messages"][-1].response_metadata["agentguard"]["session_id"] == "task-7"
    assert session.iterations == 2 and session.spent_usd > 0
    assert session.framework == "langchain" and session.resumer == "langgraph"
    assert session.metadata["thread_id"] == "ticket-2"
    assert guard.budget_status("team").spent_usd == session.spent_usd


def test_streamed_answers_carry_usage_and_are_settled(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard()
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather)
        with guard.session("streaming") as session:
            chunks = list(agent.stream(QUESTION, stream_mode="messages"))

    assert all(r.body and r.body["stream"] for r in sim.requests)
    usage = [c.usage_metadata for c, _ in chunks if getattr(c, "usage_metadata", None)]
    assert len(usage) == 2  # one usage chunk per streamed answer (stream_usage=True)
    assert session.iterations == 2 and session.spent_usd > 0
    assert weather.calls == ["Paris"]


# -- parking and resuming -------------------------------------------------------------------------


def test_gateway_429_parks_the_run_and_the_daemon_continues_it_without_rerunning_tools(
    make_guard: Callable[..., Guard], weather: Weather, checkpointer: SqliteSaver
) -> None:
    # The first answer spends the key's window; the next call is refused until it resets.
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=1.0)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        # exit_behavior="end" turns limits into a final message; a park still propagates.
        agent = build_agent(guard, sim, weather, checkpointer=checkpointer, exit_behavior="end")
        register_langgraph_resumer(guard, agent)

        with pytest.raises(SessionParked) as parked:
            agent.invoke(QUESTION, thread("ticket-3"))
        assert parked.value.session_id == "lg-ticket-3"
        assert len(sim.requests) == 2  # the answer, then one attempt refused with 429
        assert weather.calls == ["Paris"]

        record = guard.parked.get("lg-ticket-3")
        assert record.state == "parked" and record.attempts == 0
        assert record.reason.status == 429 and record.reason.reset_source == "retry-after"
        assert record.framework == "langchain" and record.resumer == "langgraph"
        assert record.metadata["thread_id"] == "ticket-3"
        assert record.request["messages"][-1]["role"] == "tool"
        assert agent.get_state(thread("ticket-3")).next == ("model",)

        resume_by_daemon(guard, "lg-ticket-3")
        resumed_at = datetime.now(UTC)

    assert record.resume_at is not None and resumed_at >= record.resume_at
    assert len(sim.requests) == 3  # only the failed model call was made again
    assert weather.calls == ["Paris"]  # the tool did not run again
    messages = agent.get_state(thread("ticket-3")).values["messages"]
    assert kinds(messages) == ["HumanMessage", "ai+tools", "ToolMessage", "AIMessage"]
    assert messages[-1].content == "It is sunny in Paris."
    done = guard.parked.get("lg-ticket-3")
    assert [t.state for t in done.history] == ["parked", "resuming", "resumed"]
    # The resumed run went on with the parked session's counters and spend.
    assert done.iterations == record.iterations + 1 and done.spent_usd > record.spent_usd
    assert messages[-1].response_metadata["agentguard"]["iterations"] == done.iterations


def test_a_resume_refused_again_reparks_then_a_graph_factory_finishes_it(
    make_guard: Callable[..., Guard], weather: Weather, checkpointer: SqliteSaver
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0, "max_attempts": 3})
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        agent = build_agent(guard, sim, weather, checkpointer=checkpointer)
        built: list[Any] = []

        def build_graph() -> Any:
            built.append(agent)
            return agent

        register_langgraph_resumer(guard, build_graph)
        with pytest.raises(SessionParked):
            agent.invoke(QUESTION, thread("ticket-4"))
        with pytest.raises(SessionParked):
            guard.parked.resume("lg-ticket-4")  # the window is still spent: 429 again
        record = guard.parked.get("lg-ticket-4")
        assert record.state == "parked" and record.attempts == 1

        gateway.reset()
        final = guard.parked.resume("lg-ticket-4")

    assert len(built) == 2
    assert final["messages"][-1].content == "It is sunny in Paris."
    assert weather.calls == ["Paris"]
    assert len(sim.requests) == 4
    assert guard.parked.get("lg-ticket-4").state == "resumed"


def test_a_thread_continued_by_hand_is_not_run_again_by_the_resume(
    make_guard: Callable[..., Guard], weather: Weather, checkpointer: SqliteSaver
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        agent = build_agent(guard, sim, weather, checkpointer=checkpointer)
        register_langgraph_resumer(guard, agent)
        with pytest.raises(SessionParked):
            agent.invoke(QUESTION, thread("ticket-5"))
        gateway.reset()
        agent.invoke(None, thread("ticket-5"))  # the application continued it itself
        calls = len(sim.requests)
        final = guard.parked.resume("lg-ticket-5")

    assert len(sim.requests) == calls == 3
    assert final["messages"][-1].content == "It is sunny in Paris."
    assert guard.parked.get("lg-ticket-5").state == "resumed"


def test_a_run_without_a_checkpointer_parks_but_cannot_be_continued(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        agent = build_agent(guard, sim, weather)
        register_langgraph_resumer(guard, agent)
        with pytest.raises(SessionParked) as parked:
            agent.invoke(QUESTION)
        assert parked.value.session_id.startswith("lg-run-")
        assert "thread_id" not in guard.parked.get(parked.value.session_id).metadata
        with pytest.raises(ValueError, match="no LangGraph thread_id"):
            guard.parked.resume(parked.value.session_id)


@pytest.mark.parametrize("construction", ["guarded_chat_openai", "ChatOpenAI with guard clients"])
def test_a_429_handed_back_is_one_attempt_whatever_the_sdk_retries(
    construction: str, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(parking={"enabled": False, "wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT) as sim:
        model = None
        if construction != "guarded_chat_openai":
            # ChatOpenAI's SDK client retries twice by default; the guard tells it not to.
            model = ChatOpenAI(
                model="gpt-4o",
                base_url=sim.base_url,
                api_key=SecretStr(KEY),
                http_client=guard.http_client(),
                http_async_client=guard.async_http_client(),
            )
        agent = build_agent(guard, sim, weather, model=model)
        sim.rate_limit_next(5, retry_after=30)
        with pytest.raises(openai.RateLimitError) as error:
            agent.invoke(QUESTION)
    assert len(sim.requests) == 1
    assert error.value.response.headers["retry-after"] == "30"


# -- exit_behavior ----------------------------------------------------------------------------------

LimitCase = tuple[dict[str, Any], list[Any], type[Exception], str, str]
LIMIT_CASES: dict[str, LimitCase] = {
    "iterations": (
        {"limits": {"max_iterations": 1}},
        WEATHER_SCRIPT,
        IterationLimitExceeded,
        "max_iterations",
        "max_iterations=1",
    ),
    "budget": (
        # 50 output tokens reserve ~$0.0007: the first call fits, the second does not.
        {"budgets": [{"key": "team", "limit_usd": 0.0008, "window": "1h"}]},
        WEATHER_SCRIPT,
        BudgetExceeded,
        "limit_usd",
        "budget 'team' exceeded",
    ),
    "loop": (
        {"limits": {"loop_threshold": 2}},
        [WEATHER_SCRIPT[0], WEATHER_SCRIPT[0], WEATHER_SCRIPT[1]],
        LoopDetected,
        "loop_threshold",
        "loop_threshold=2",
    ),
}


@pytest.mark.parametrize("case", list(LIMIT_CASES))
def test_exit_behavior_end_finishes_the_run_with_a_message(
    case: str, make_guard: Callable[..., Guard], weather: Weather, checkpointer: SqliteSaver
) -> None:
    config, script, error_type, limit, says = LIMIT_CASES[case]
    guard = make_guard(**config)
    with SimServer(script=script) as sim:
        model = guarded_chat_openai(
            guard, model="gpt-4o", base_url=sim.base_url, api_key=KEY, max_tokens=50
        )
        agent = build_agent(
            guard,
            sim,
            weather,
            model=model,
            checkpointer=checkpointer,
            exit_behavior="end",
            budget_key="team",
        )
        result = agent.invoke(QUESTION, thread(f"ticket-{case}"))

    last = result["messages"][-1]
    assert isinstance(last, AIMessage) and not last.tool_calls
    assert last.text.startswith("Stopped by agentguard:") and says in last.text
    stop = last.response_metadata["agentguard"]
    assert stop["stopped_by"] == error_type.__name__ and stop["limit"] == limit
    assert stop["session_id"] == f"lg-ticket-{case}"
    assert agent.get_state(thread(f"ticket-{case}")).next == ()  # ended, nothing pending
    # A looping answer is stopped before its tool call runs.
    assert weather.calls == ["Paris"]


def test_exit_behavior_error_raises_the_limit(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(limits={"max_iterations": 1})
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather)
        with pytest.raises(IterationLimitExceeded, match="max_iterations=1"):
            agent.invoke(QUESTION)
    assert len(sim.requests) == 1


# -- async --------------------------------------------------------------------------------------


async def test_ainvoke_goes_through_the_async_guarded_client(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = build_agent(guard, sim, weather, checkpointer=InMemorySaver(), budget_key="team")
        result = await agent.ainvoke(QUESTION, thread("async-1"))

    messages = result["messages"]
    assert kinds(messages) == ["HumanMessage", "ai+tools", "ToolMessage", "AIMessage"]
    info = messages[-1].response_metadata["agentguard"]
    assert info["session_id"] == "lg-async-1" and info["iterations"] == 2
    # Spend reaches the ledger only through the guard's transport.
    assert guard.budget_status("team").spent_usd == Decimal(info["spent_usd"]) > 0


async def test_an_async_run_parks_and_resumes_with_ainvoke(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    checkpointer = InMemorySaver()
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:

        def build_graph() -> Any:
            # Each resume runs in an event loop of its own, where async HTTP clients made in
            # another loop cannot be used: the factory gives it a fresh model.
            return build_agent(guard, sim, weather, checkpointer=checkpointer, exit_behavior="end")

        register_langgraph_resumer(guard, build_graph)
        with pytest.raises(SessionParked):
            await build_graph().ainvoke(QUESTION, thread("async-2"))
        record = guard.parked.get("lg-async-2")
        assert record.metadata == {"thread_id": "async-2", "langgraph_invoke": "ainvoke"}

        gateway.reset()
        # The resume runs its own event loop, as a daemon's worker thread would.
        final = await asyncio.to_thread(guard.parked.resume, "lg-async-2")

    assert final["messages"][-1].content == "It is sunny in Paris."
    assert weather.calls == ["Paris"] and len(sim.requests) == 3
    assert guard.parked.get("lg-async-2").state == "resumed"


# -- the pieces -----------------------------------------------------------------------------------


def test_guarded_chat_openai_owns_its_clients_and_retries(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard()
    model = guarded_chat_openai(guard, model="gpt-4o-mini", api_key=KEY)
    assert model.max_retries == 0 and model.stream_usage is True
    assert model.use_responses_api is False
    assert model.root_client.max_retries == 0
    assert model.http_client is not None and model.http_async_client is not None
    assert type(model.http_client._transport).__name__ == "GuardTransport"
    assert type(model.http_async_client._transport).__name__ == "AsyncGuardTransport"
    for bad in (
        {"http_client": object()},
        {"max_retries": 2},
        {"use_responses_api": True},
        {"openai_proxy": "http://127.0.0.1:9"},
    ):
        with pytest.raises(ValueError):
            guarded_chat_openai(guard, model="gpt-4o-mini", api_key=KEY, **bad)


def test_session_ids_for_threads(make_guard: Callable[..., Guard]) -> None:
    assert session_id_for_thread("ticket-42") == "lg-ticket-42"
    assert session_id_for_thread("3f2a:7@b.c") == "lg-3f2a:7@b.c"
    for awkward in ("user 7/chat #3", "é" * 5, "x" * 300):
        session_id = session_id_for_thread(awkward)
        assert session_id.startswith("lg-") and len(session_id) <= 200
        assert session_id == session_id_for_thread(awkward)
    guard = make_guard()
    with pytest.raises(ValueError):
        AgentGuardMiddleware(guard, session_id="not valid/")
    with pytest.raises(ValueError):
        AgentGuardMiddleware(guard, exit_behavior="stop")  # type: ignore[arg-type]


def test_public_names() -> None:
    assert sorted(agentguard_langchain.__all__) == [
        "AgentGuardMiddleware",
        "AgentGuardState",
        "DEFAULT_END_ON",
        "GraphOrFactory",
        "__version__",
        "guarded_chat_anthropic",
        "guarded_chat_openai",
        "register_langgraph_resumer",
        "session_id_for_thread",
    ]
    for name in agentguard_langchain.__all__:
        assert hasattr(agentguard_langchain, name)


def test_import_agentguard_loads_no_framework() -> None:
    code = (
        "import json, sys, agentguard\n"
        "guard = agentguard.Guard(agentguard.GuardConfig.from_mapping("
        "{'store': {'url': 'sqlite://'}}))\n"
        "guard.http_client(); guard.async_http_client(); agentguard.SessionParked\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('langchain', 'langchain_core', 'langchain_openai', 'langchain_anthropic', 'langgraph', "
        "'langsmith', 'agentguard_langchain'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []
