"""The OpenAI Agents SDK integration, run for real: the SDK's ``Runner`` with its Chat Completions
model over HTTP on loopback against the sim provider, parking on the sim's 429s and budget
gateway, and resuming from the parked ``RunState`` through the registered resumer."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    FunctionTool,
    ModelSettings,
    RunConfig,
    WebSearchTool,
    function_tool,
)
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from agents.retry import ModelRetrySettings, retry_policies
from agents.tracing import set_tracing_disabled
from helpers import resume_by_daemon
from openai import AsyncOpenAI, RateLimitError

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
from agentguard_openai_agents import (
    METADATA_KEY,
    GuardedModelProvider,
    ModelApi,
    guarded_run,
    guarded_run_config,
    guarded_run_streamed,
    guarded_run_sync,
    register_agents_resumer,
    run_state_from_record,
)

# The SDK would export traces to OpenAI's servers.
set_tracing_disabled(True)

KEY = "sk-agents-test-key-0001"
QUESTION = "What is the weather in Paris?"
WEATHER_SCRIPT = [
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
    Reply(content="It is sunny in Paris."),
]


class Weather:
    """A function tool that counts how often it really ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

        @function_tool
        def get_weather(city: str) -> str:
            """The current weather in a city."""
            self.calls.append(city)
            return f"Sunny, 22 C in {city}"

        self.tool: FunctionTool = get_weather

    def agent(self) -> Agent[Any]:
        return Agent(
            name="forecaster", instructions="Answer briefly.", model="gpt-4o", tools=[self.tool]
        )


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


def small_answers(agent: Agent[Any]) -> Agent[Any]:
    """The agent with a 50-token output cap: its first gpt-4o call reserves ~$0.0007 and costs
    ~$0.0003, its second reserves ~$0.0009, so a $0.0008 budget holds the first call only."""
    return agent.clone(model_settings=ModelSettings(max_tokens=50))


def client_for(sim: SimServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=sim.base_url, api_key=KEY)


def chat_paths(sim: SimServer) -> list[str]:
    return [r.path for r in sim.requests]


# -- runs under the guard ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["run", "run_sync", "run_streamed"])
def test_a_tool_using_run_goes_through_the_guard(
    how: str, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        agent = weather.agent()
        options: dict[str, Any] = {"session_id": f"w-{how}", "budget_key": "team"}
        if how == "run_sync":
            result = guarded_run_sync(
                guard, agent, QUESTION, client=client_for(sim), api="chat", **options
            )
            output = result.final_output
        elif how == "run":
            result = asyncio.run(
                guarded_run(guard, agent, QUESTION, client=client_for(sim), api="chat", **options)
            )
            output = result.final_output
        else:

            async def stream() -> tuple[Any, list[str]]:
                streamed = guarded_run_streamed(
                    guard, agent, QUESTION, client=client_for(sim), api="chat", **options
                )
                kinds = [event.type async for event in streamed.stream_events()]
                return streamed.final_output, kinds

            output, kinds = asyncio.run(stream())
            assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
        bill = sim.billed_usd(KEY)

    assert output == "It is sunny in Paris."
    assert weather.calls == ["Paris"]
    assert chat_paths(sim) == ["/v1/chat/completions"] * 2
    bodies = [r.body or {} for r in sim.requests]
    # The guard's pipeline rewrote each request (the output cap it reserved for).
    assert all(body["max_tokens"] == 4096 for body in bodies)
    assert all(bool(body.get("stream")) == (how == "run_streamed") for body in bodies)
    # The second call carries the finished tool call and its output.
    assert [m["role"] for m in bodies[1]["messages"]] == ["system", "user", "assistant", "tool"]
    status = guard.budget_status("team")
    assert bill > 0 and status.spent_usd == bill  # the ledger holds what the provider billed
    assert guard.parked.list() == []


def test_the_session_bound_around_the_run_counts_iterations_and_tool_calls(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard()
    with (
        SimServer(script=WEATHER_SCRIPT) as sim,
        guard.session("task-7", budget_key="team") as session,
    ):
        guarded_run_sync(guard, weather.agent(), QUESTION, client=client_for(sim), api="chat")
    assert session.iterations == 2 and session.tool_calls == 1
    assert session.spent_usd == sim.billed_usd(KEY)
    assert session.framework == "openai_agents" and session.resumer == "openai_agents"
    assert session.metadata[METADATA_KEY]["turn"] == 2


def test_runs_gathered_in_one_bound_session_share_its_counters(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard()
    agent = Agent(name="echo", model="gpt-4o")

    async def both() -> list[Any]:
        with guard.session("shared", budget_key="team") as session:
            results = await asyncio.gather(
                *(
                    guarded_run(guard, agent, f"Say {n}.", client=client, api="chat")
                    for n in range(3)
                )
            )
            assert session.iterations == 3
        return [r.final_output for r in results]

    with SimServer(script=["one", "two", "three"]) as sim:
        client = client_for(sim)
        outputs = asyncio.run(both())
    assert outputs == ["one"] * 3  # the sim scripts each conversation from its start
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY)


def test_routing_and_trimming_apply_to_the_sdks_requests(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(
        routing={"tiers": {"small": "gpt-4o-mini", "large": "gpt-4o"}, "classifier": "heuristic"},
        trimming={"max_context_tokens": 600, "tool_output_max_tokens": 100},
    )
    routes: list[tuple[str, str]] = []
    guard.observers.append(lambda call: routes.append((call.requested_model, call.model)))
    report = " ".join(f"reading-{n} sunny and mild" for n in range(600))

    @function_tool
    def read_station_log(city: str) -> str:
        """The weather station's full log for a city."""
        return report

    agent = Agent(name="forecaster", model="gpt-4o", tools=[read_station_log])
    script = [Reply(tool_calls=[ToolCall("read_station_log", {"city": "Paris"})]), "Sunny."]
    with SimServer(script=script) as sim:
        result = guarded_run_sync(guard, agent, QUESTION, client=client_for(sim), api="chat")

    assert result.final_output == "Sunny."
    # The router chose each step's model in the request body; the SDK saw answers as usual.
    sent = [(r.body or {})["model"] for r in sim.requests]
    assert sent == [model for _, model in routes] and len(sent) == 2
    assert {requested for requested, _ in routes} == {"gpt-4o"}
    assert "gpt-4o-mini" in sent
    # The trimmer cut the long tool output in the request; the SDK's own history kept it whole.
    tool_message = (sim.requests[1].body or {})["messages"][-1]
    assert tool_message["role"] == "tool" and "agentguard" in tool_message["content"]
    assert len(tool_message["content"]) < len(report) / 4
    assert any(item.get("output") == report for item in result.to_input_list())


LOOPING_SCRIPT = [WEATHER_SCRIPT[0], WEATHER_SCRIPT[0], "done"]


@pytest.mark.parametrize(
    ("limits", "error", "requests"),
    [
        # The next call would exceed one tool call: refused before it is sent.
        ({"max_tool_calls": 1}, IterationLimitExceeded, 1),
        # The second answer repeats the tool call with the same arguments: stopped on it.
        ({"loop_threshold": 2}, LoopDetected, 2),
    ],
    ids=["tool-calls", "loop"],
)
def test_tool_call_limits_see_the_sdks_function_tools(
    limits: dict[str, Any],
    error: type[Exception],
    requests: int,
    make_guard: Callable[..., Guard],
    weather: Weather,
) -> None:
    guard = make_guard(limits=limits)
    with SimServer(script=LOOPING_SCRIPT) as sim, pytest.raises(error):
        guarded_run_sync(guard, weather.agent(), QUESTION, client=client_for(sim), api="chat")
    assert len(sim.requests) == requests
    assert weather.calls == ["Paris"]  # the repeated call never reached the tool


def test_an_exhausted_budget_that_raises_stops_the_run_within_the_limit(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    limit = Decimal("0.0008")
    guard = make_guard(
        budgets=[{"key": "team", "limit_usd": limit, "window": "1h", "on_exhausted": "raise"}]
    )
    agent = small_answers(weather.agent())
    with SimServer(script=WEATHER_SCRIPT) as sim, pytest.raises(BudgetExceeded) as stopped:
        guarded_run_sync(
            guard, agent, QUESTION, client=client_for(sim), api="chat", budget_key="team"
        )
    assert stopped.value.key == "team"
    assert len(sim.requests) == 1 and weather.calls == ["Paris"]
    assert sim.billed_usd(KEY) <= limit
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY)


def test_one_http_attempt_per_429_whatever_the_sdk_and_client_retries(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # Parking off: the 429 reaches the caller. The openai client retries twice by default, and
    # the agent asks the runner to retry 429s three times (run by the plain Runner, this makes
    # four HTTP attempts); the guarded run allows neither.
    guard = make_guard(parking={"enabled": False, "wait_inline_max_s": 0})
    retry = ModelRetrySettings(
        max_retries=3,
        policy=retry_policies.http_status([429]),
        backoff={"initial_delay": 0.01, "max_delay": 0.02},
    )
    agent = weather.agent().clone(model_settings=ModelSettings(retry=retry))
    with SimServer(script=WEATHER_SCRIPT) as sim:
        sim.rate_limit_next(5, retry_after=30)
        with pytest.raises(RateLimitError):
            guarded_run_sync(guard, agent, QUESTION, client=client_for(sim), api="chat")
    assert len(sim.requests) == 1


def test_models_and_providers_that_bypass_the_guard_are_refused(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard()
    own = OpenAIChatCompletionsModel(model="gpt-4o", openai_client=AsyncOpenAI(api_key=KEY))
    helper = Agent(name="helper", model=own)
    agent = weather.agent().clone(handoffs=[helper])
    with pytest.raises(ValueError, match="agent 'helper' has a OpenAIChatCompletionsModel"):
        guarded_run_sync(guard, agent, QUESTION, client=AsyncOpenAI(api_key=KEY))
    with pytest.raises(ValueError, match="runner retries on top"):
        guarded_run_config(
            guard,
            RunConfig(model_settings=ModelSettings(retry=ModelRetrySettings(max_retries=2))),
            client=AsyncOpenAI(api_key=KEY),
        )
    config = guarded_run_config(guard, client=AsyncOpenAI(api_key=KEY))
    assert isinstance(config.model_provider, GuardedModelProvider)
    assert config.model_settings is not None and config.model_settings.retry is not None
    assert config.model_settings.retry.max_retries == 0


# -- the Responses model (the default) ---------------------------------------------------------

CITIES = ["Paris", "Rome", "Oslo", "Lima"]
TOUR_SCRIPT = [
    *(Reply(tool_calls=[ToolCall("get_weather", {"city": city})]) for city in CITIES),
    Reply(content="Sunny everywhere."),
]


def input_types(body: dict[str, Any]) -> list[str]:
    return [item.get("type", "message") for item in body["input"]]


@pytest.mark.parametrize("how", ["run", "run_sync", "run_streamed"])
def test_the_responses_model_is_metered_under_a_budget(
    how: str, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim:
        client = client_for(sim)
        agent = weather.agent()
        with guard.session(f"r-{how}", budget_key="team") as session:
            # No api argument: the Responses model is the default, as it is the SDK's.
            if how == "run_sync":
                output = guarded_run_sync(guard, agent, QUESTION, client=client).final_output
            elif how == "run":
                output = asyncio.run(
                    guarded_run(guard, agent, QUESTION, client=client)
                ).final_output
            else:

                async def stream() -> tuple[Any, list[str]]:
                    streamed = guarded_run_streamed(guard, agent, QUESTION, client=client)
                    kinds = [event.type async for event in streamed.stream_events()]
                    return streamed.final_output, kinds

                output, kinds = asyncio.run(stream())
                assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
        sim.wait_idle()
        bill = sim.billed_usd(KEY)

    assert output == "It is sunny in Paris."
    assert weather.calls == ["Paris"]
    assert chat_paths(sim) == ["/v1/responses"] * 2
    bodies = [r.body or {} for r in sim.requests]
    # The guard capped the output it reserved for, in the Responses API's own field.
    assert all(body["max_output_tokens"] == 4096 for body in bodies)
    assert all(bool(body.get("stream")) == (how == "run_streamed") for body in bodies)
    assert bodies[1]["instructions"] == "Answer briefly."
    assert input_types(bodies[1]) == ["message", "function_call", "function_call_output"]
    assert session.iterations == 2 and session.tool_calls == 1
    # Money by the provider's own bill, streamed answers included.
    assert bill > 0 and abs(session.spent_usd - bill) <= bill / 100
    assert guard.budget_status("team").spent_usd == session.spent_usd


def run_tour(guard: Guard, sim: SimServer, weather: Weather, **options: Any) -> Any:
    agent = weather.agent().clone(model_settings=ModelSettings(max_tokens=200))
    return guarded_run_sync(
        guard, agent, "Weather in four cities?", client=client_for(sim), **options
    )


@pytest.mark.parametrize("chained", [False, True], ids=["whole-input", "chained"])
def test_a_responses_run_reserves_at_least_each_bill_and_spends_the_total(
    chained: bool, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 1, "window": "1h"}])
    reserved: list[Decimal] = []
    billed_so_far: list[Decimal] = []
    with SimServer(script=TOUR_SCRIPT) as sim:

        def observe(call: Any) -> None:
            # Called as each call settles; the sim billed it before answering.
            reserved.append(call.worst_case_usd)
            billed_so_far.append(sim.billed_usd(KEY))

        guard.observers.append(observe)
        with guard.session("tour", budget_key="team") as session:
            result = run_tour(guard, sim, weather, auto_previous_response_id=chained)
        bill = sim.billed_usd(KEY)
        bodies = [r.body or {} for r in sim.requests]

    assert result.final_output == "Sunny everywhere." and weather.calls == CITIES
    assert len(bodies) == len(reserved) == 5
    if chained:
        # The SDK sends each call's new items only, continuing the response before it, which
        # this guard settled: the provider bills that conversation again, and it is reserved.
        previous = [body.get("previous_response_id") for body in bodies]
        assert previous[0] is None and all(previous[1:])
        assert all(input_types(body) == ["function_call_output"] for body in bodies[1:])
    else:
        assert all("previous_response_id" not in body for body in bodies)
    bills = [b - a for a, b in zip([Decimal(0), *billed_so_far], billed_so_far, strict=False)]
    for step, (paid, bound) in enumerate(zip(bills, reserved, strict=True)):
        assert 0 < paid <= bound, f"call {step}: billed {paid} > reserved {bound}"
    assert abs(session.spent_usd - bill) <= bill / 100
    assert guard.budget_status("team").spent_usd == session.spent_usd


@pytest.mark.parametrize("chained", [False, True], ids=["whole-input", "chained"])
def test_a_responses_run_stops_before_it_would_overspend(
    chained: bool, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # Three of the tour's five calls fit (each reserves ~$0.0025 at worst and costs under
    # $0.001): the run must stop before the fourth, which would go over, never after the
    # provider billed it.
    limit = Decimal("0.0037")
    guard = make_guard(
        budgets=[{"key": "team", "limit_usd": limit, "window": "1h", "on_exhausted": "raise"}]
    )
    with SimServer(script=TOUR_SCRIPT) as sim, pytest.raises(BudgetExceeded) as stopped:
        run_tour(guard, sim, weather, budget_key="team", auto_previous_response_id=chained)
    bill = sim.billed_usd(KEY)
    assert stopped.value.key == "team"
    assert len(sim.requests) == 3 and weather.calls == CITIES[:3]
    assert 0 < bill <= limit
    assert guard.budget_status("team").spent_usd == bill


def test_a_stored_conversation_is_refused_under_a_budget(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    with SimServer(script=WEATHER_SCRIPT) as sim, pytest.raises(UnmeteredRequest) as refused:
        guarded_run_sync(
            guard,
            weather.agent(),
            QUESTION,
            client=client_for(sim),
            budget_key="team",
            conversation_id="conv_elsewhere",
        )
    assert refused.value.field == "conversation"
    assert sim.requests == [] and weather.calls == []


def test_a_hosted_tool_is_refused_under_a_budget(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # The provider bills a web search per use, at rates the price data does not carry.
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    agent = weather.agent().clone(tools=[weather.tool, WebSearchTool()])
    with SimServer(script=WEATHER_SCRIPT) as sim, pytest.raises(UnmeteredRequest) as refused:
        guarded_run_sync(guard, agent, QUESTION, client=client_for(sim), budget_key="team")
    assert "built-in tool 'web_search" in str(refused.value)
    assert sim.requests == [] and weather.calls == []


def test_a_chained_run_cannot_start_from_a_response_the_guard_never_settled(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    # The sim answers by the conversation's step: the greeting, then the weather run on it.
    with SimServer(script=["Hello!", *WEATHER_SCRIPT]) as sim:
        with pytest.raises(UnmeteredRequest) as refused:
            guarded_run_sync(
                guard,
                weather.agent(),
                QUESTION,
                client=client_for(sim),
                budget_key="team",
                previous_response_id="resp_elsewhere",
            )
        assert refused.value.field == "previous_response_id" and sim.requests == []
        # A response this guard settled can be continued by a later run.
        first = guarded_run_sync(
            guard, Agent(name="greeter", model="gpt-4o"), "Hello.", client=client_for(sim)
        )
        greeting_bill = sim.billed_usd(KEY)  # outside the budget: no session drew on it
        later = guarded_run_sync(
            guard,
            weather.agent(),
            QUESTION,
            client=client_for(sim),
            budget_key="team",
            previous_response_id=first.last_response_id,
        )
        bodies = [r.body or {} for r in sim.requests]
    assert first.final_output == "Hello!" and later.final_output == "It is sunny in Paris."
    assert weather.calls == ["Paris"]
    assert bodies[1]["previous_response_id"] == first.last_response_id
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY) - greeting_bill > 0


# -- parking and resuming ---------------------------------------------------------------------


def test_a_429_parks_the_run_with_its_run_state_and_the_daemon_finishes_it_without_rerunning_tools(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # The first answer spends the key's window at the gateway; the next call is refused (429)
    # until the window resets.
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=1.0)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    finished: list[Any] = []
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        register_agents_resumer(
            guard,
            weather.agent,
            client=lambda: client_for(sim),
            api="chat",
            on_result=lambda parked, result: finished.append(result),
        )
        with pytest.raises(SessionParked) as parked:
            guarded_run_sync(
                guard,
                weather.agent(),
                QUESTION,
                client=client_for(sim),
                api="chat",
                session_id="trip-1",
                context={"traveller": "ada", "api_key": "ctx-credential-0001"},
            )
        assert parked.value.session_id == "trip-1"
        assert len(sim.requests) == 2  # the answer, then one attempt refused with 429
        assert weather.calls == ["Paris"]

        record = guard.parked.get("trip-1")
        assert record.state == "parked" and record.reason.status == 429
        assert record.framework == "openai_agents" and record.resumer == "openai_agents"
        kept = record.metadata[METADATA_KEY]
        assert kept["agent"] == "forecaster" and kept["turn"] == 2
        # The SDK's own serialisation of the run, with the finished tool call in its input.
        state = json.loads(kept["run_state"])
        assert state["$schemaVersion"] and state["current_agent"]["name"] == "forecaster"
        types = [item.get("type", "message") for item in state["original_input"]]
        assert types == ["message", "function_call", "function_call_output"]
        stored = json.dumps(record.model_dump(mode="json"))
        assert KEY not in stored and "ctx-credential-0001" not in stored

        resume_by_daemon(guard, "trip-1")

    assert len(sim.requests) == 3  # only the refused model call was made again
    assert weather.calls == ["Paris"]  # the tool did not run again
    assert [r.final_output for r in finished] == ["It is sunny in Paris."]
    roles = [m["role"] for m in (sim.requests[2].body or {})["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    done = guard.parked.get("trip-1")
    assert [t.state for t in done.history] == ["parked", "resuming", "resumed"]
    assert done.iterations == record.iterations + 1
    assert done.result == {"value": "It is sunny in Paris."}
    # The resumed run goes on with the parked run's context (less the credential, which was
    # not stored) and usage (the refused attempt was never answered: two answers in all).
    assert finished[0].context_wrapper.context == {"traveller": "ada"}
    assert finished[0].context_wrapper.usage.requests == 2


@pytest.mark.parametrize(
    ("chained", "streamed"),
    [(False, False), (True, False), (True, True)],
    ids=["whole-input", "chained", "chained-streamed"],
)
def test_a_429_parks_a_responses_run_and_the_resumer_finishes_it_without_rerunning_tools(
    chained: bool, streamed: bool, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # The Responses model (the default). The gateway pays for one answer per window: the run
    # parks after Paris, and goes on once the window resets.
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    # Under a dollar budget: a chained resume continues a response this guard settled.
    guard = make_guard(
        budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}],
        parking={"wait_inline_max_s": 0},
    )
    finished: list[Any] = []
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        register_agents_resumer(
            guard,
            weather.agent,
            client=lambda: client_for(sim),
            on_result=lambda parked, result: finished.append(result),
        )
        options: dict[str, Any] = {
            "client": client_for(sim),
            "session_id": "resp-1",
            "budget_key": "team",
            "auto_previous_response_id": chained,
            "context": {"traveller": "ada"},
        }

        async def stream() -> None:
            run = guarded_run_streamed(guard, weather.agent(), QUESTION, **options)
            async for _ in run.stream_events():
                pass

        with pytest.raises(SessionParked):
            if streamed:
                asyncio.run(stream())
            else:
                guarded_run_sync(guard, weather.agent(), QUESTION, **options)
        assert chat_paths(sim) == ["/v1/responses"] * 2 and weather.calls == ["Paris"]
        record = guard.parked.get("resp-1")
        assert record.reason.status == 429 and "run_state" in record.metadata[METADATA_KEY]

        gateway.reset()
        answer = guard.parked.resume("resp-1")
        bodies = [r.body or {} for r in sim.requests]

    assert answer == "It is sunny in Paris."
    assert [r.final_output for r in finished] == [answer]
    assert guard.parked.get("resp-1").state == "resumed"
    assert weather.calls == ["Paris"]  # the tool did not run again
    assert len(bodies) == 3 and sim.billed_calls(KEY) == 2  # only the refused call again
    # The resumed call is the refused one again: the whole conversation so far, or, chained,
    # the tool's output on the response the refused call continued (which this guard settled,
    # so it is metered under a budget too).
    resent = bodies[2]
    if chained:
        assert resent["previous_response_id"] == bodies[1]["previous_response_id"]
        assert input_types(resent) == input_types(bodies[1]) == ["function_call_output"]
    else:
        assert "previous_response_id" not in resent
        assert input_types(resent) == ["message", "function_call", "function_call_output"]
    assert guard.parked.get("resp-1").spent_usd == sim.billed_usd(KEY)
    assert guard.budget_status("team").spent_usd == sim.billed_usd(KEY)
    assert finished[0].context_wrapper.context == {"traveller": "ada"}


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_streamed_run_parked_on_its_budget_resumes_from_the_stored_state(
    api: ModelApi, make_guard: Callable[..., Guard], weather: Weather
) -> None:
    guard = make_guard(
        # The second call (~$0.0009 at worst) fits an empty window, not what the first left.
        budgets=[{"key": "team", "limit_usd": 0.001, "window": "1h", "on_exhausted": "park"}],
        parking={"wait_inline_max_s": 0},
    )
    agent = small_answers(weather.agent())
    with SimServer(script=WEATHER_SCRIPT) as sim:
        register_agents_resumer(guard, lambda: agent, client=lambda: client_for(sim), api=api)

        async def stream() -> None:
            streamed = guarded_run_streamed(
                guard,
                agent,
                QUESTION,
                client=client_for(sim),
                api=api,
                session_id="s-1",
                budget_key="team",
            )
            async for _ in streamed.stream_events():
                pass

        with pytest.raises(SessionParked):
            asyncio.run(stream())
        assert len(sim.requests) == 1 and weather.calls == ["Paris"]
        record = guard.parked.get("s-1")
        assert record.reason.kind == "local_budget" and "run_state" in record.metadata[METADATA_KEY]

        # The state the resumer loads is the SDK's own, with the tool's output in it.
        state = asyncio.run(run_state_from_record(record, agent))
        assert state.to_json()["original_input"][-1]["type"] == "function_call_output"

        # A new window: the application raises the limit and resumes the run by hand.
        guard2 = make_guard(
            budgets=[{"key": "team", "limit_usd": 1, "window": "1h", "on_exhausted": "park"}]
        )
        register_agents_resumer(guard2, lambda: agent, client=lambda: client_for(sim), api=api)
        answer = guard2.parked.resume("s-1")

    assert answer == "It is sunny in Paris."
    assert len(sim.requests) == 2 and weather.calls == ["Paris"]
    assert guard2.parked.get("s-1").state == "resumed"
    assert guard2.budget_status("team").spent_usd == sim.billed_usd(KEY)


def test_a_record_without_the_state_resumes_from_its_input_items(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # As if the process died between parking and keeping the state: only the input is there.
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    with SimServer(script=WEATHER_SCRIPT, gateway=gateway) as sim:
        register_agents_resumer(guard, weather.agent, client=lambda: client_for(sim), api="chat")
        with pytest.raises(SessionParked):
            guarded_run_sync(
                guard,
                weather.agent(),
                QUESTION,
                client=client_for(sim),
                api="chat",
                session_id="bare-1",
            )
        record = guard.parked.get("bare-1")
        kept = dict(record.metadata[METADATA_KEY])
        del kept["run_state"]
        guard.parked.store.put(record.model_copy(update={"metadata": {METADATA_KEY: kept}}))
        with pytest.raises(SessionParked):
            guard.parked.resume("bare-1")  # the window is still spent: 429 again
        assert guard.parked.get("bare-1").attempts == 1
        gateway.reset()
        answer = guard.parked.resume("bare-1")
    assert answer == "It is sunny in Paris."
    assert weather.calls == ["Paris"]
    assert len(sim.requests) == 4


# -- the example ------------------------------------------------------------------------------


def test_the_example_parks_and_the_daemon_finishes_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "openai_agents_run.py"
    spec = importlib.util.spec_from_file_location("example_openai_agents_run", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    answer = example.main()
    output = capsys.readouterr().out

    assert answer == "Both cities are sunny: pack sunglasses for Paris and Rome."
    assert example.tool_runs == ["Paris", "Rome"], output  # each tool ran once
    assert "record: budget_window (HTTP 429)" in output and "RunState kept: True" in output
    assert "parked -> resuming -> resumed" in output, output
    assert "4 HTTP requests, 3 answered" in output, output


def test_a_run_parked_after_a_handoff_goes_on_in_the_agent_it_handed_off_to(
    make_guard: Callable[..., Guard], weather: Weather
) -> None:
    # The gateway allows one answer per window; each resume makes progress, then parks again.
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    script = [
        Reply(tool_calls=[ToolCall("transfer_to_forecaster", {})]),
        *WEATHER_SCRIPT,
    ]

    def build() -> Agent[Any]:
        return Agent(name="triage", model="gpt-4o", handoffs=[weather.agent()])

    with SimServer(script=script, gateway=gateway) as sim:
        register_agents_resumer(guard, build, client=lambda: client_for(sim), api="chat")
        with pytest.raises(SessionParked):
            guarded_run_sync(
                guard, build(), QUESTION, client=client_for(sim), api="chat", session_id="h-1"
            )
        record = guard.parked.get("h-1")
        assert record.metadata[METADATA_KEY]["agent"] == "forecaster"
        assert json.loads(record.metadata[METADATA_KEY]["run_state"])["max_turns"] == 9

        gateway.reset()
        with pytest.raises(SessionParked):
            guard.parked.resume("h-1")  # the forecaster's tool call, then 429 again
        assert weather.calls == ["Paris"]
        reparked = guard.parked.get("h-1")
        assert reparked.attempts == 1
        # One more turn answered of the nine left: eight left, the refused call's included.
        assert json.loads(reparked.metadata[METADATA_KEY]["run_state"])["max_turns"] == 8

        gateway.reset()
        answer = guard.parked.resume("h-1")

    assert answer == "It is sunny in Paris."
    assert weather.calls == ["Paris"]  # the tool ran once across three runs
    # Three answers, two refusals: no call was answered twice.
    assert sim.billed_calls(KEY) == 3 and len(sim.requests) == 5
    assert guard.parked.get("h-1").state == "resumed"
