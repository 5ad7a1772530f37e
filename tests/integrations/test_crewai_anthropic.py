"""Claude models in CrewAI, run for real: crews whose agents use CrewAI's native Anthropic
provider (``LLM(model="anthropic/...")``, the ``anthropic`` SDK) through guarded clients, over
HTTP on loopback against the sim's ``/v1/messages``; parking on the sim's budget gateway
(Anthropic's 429) and resuming through the ``crewai`` resumer. Money is judged by the sim's own
bill. CrewAI runs offline: telemetry and tracing are off, and any connection that leaves the
machine fails the test."""

from __future__ import annotations

import os

# Before CrewAI is imported: no telemetry, no tracing, no version check, no first-run prompt.
os.environ.update(
    CREWAI_DISABLE_TELEMETRY="true",
    CREWAI_DISABLE_TRACKING="true",
    OTEL_SDK_DISABLED="true",
    CREWAI_TRACING_ENABLED="false",
    CREWAI_DISABLE_VERSION_CHECK="true",
    CREWAI_TESTING="true",
)

import ipaddress
import socket
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from crewai import LLM, Agent, Crew, Task
from crewai.llms.providers.anthropic.completion import AnthropicCompletion
from crewai.tools import BaseTool
from helpers import wait_for_state
from pydantic import Field

from agentguard import BudgetExceeded, SessionParked
from agentguard.guard import Guard
from agentguard.scheduler import ResumeDaemon
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard_crewai import (
    CrewProgress,
    guard_crew,
    guard_llm,
    guarded_llm,
    is_guarded,
    kickoff_session,
    register_crew_resumer,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai.*")

KEY = "sk-ant-crewai-test-key-0001"
HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-6"
INPUTS = {"city": "Paris"}
RESEARCH = "Research the weather in"
WRITE = "Write a report on"
RESEARCH_ANSWER = "Paris: sunny, 22 C."
REPORT = "Report: it is sunny in Paris."


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Any]]:
    """CrewAI's files go under tmp_path, and any connection off the machine fails the test."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CREWAI_STORAGE_DIR", "agentguard-crewai-tests")
    leaks: list[Any] = []
    connect = socket.socket.connect
    getaddrinfo = socket.getaddrinfo

    def local_connect(sock: socket.socket, address: Any) -> Any:
        inet = sock.family in (socket.AF_INET, socket.AF_INET6)
        if inet and not ipaddress.ip_address(address[0]).is_loopback:
            leaks.append(address)
            raise OSError(f"tests stay on loopback: connect to {address!r}")
        return connect(sock, address)

    def local_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("localhost", "127.0.0.1", "::1"):
            leaks.append(name)
            raise socket.gaierror(f"tests stay on loopback: lookup of {name!r}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", local_connect)
    monkeypatch.setattr(socket, "getaddrinfo", local_getaddrinfo)
    yield leaks
    assert leaks == [], f"CrewAI tried to reach the network: {leaks}"


# -- a crew on Claude ------------------------------------------------------------------------------


class Weather(BaseTool):
    """A CrewAI tool that counts how often it really ran."""

    name: str = "get_weather"
    description: str = "The current weather in a city."
    calls: list[str] = Field(default_factory=list)
    on_call: Callable[[], None] | None = None

    def _run(self, city: str) -> str:
        self.calls.append(city)
        if self.on_call is not None:
            self.on_call()
        return f"Sunny, 22 C in {city}"


def text_of(content: Any) -> str:
    """The text of an Anthropic message's content (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    return " ".join(str(block.get("text", "")) for block in content if isinstance(block, dict))


def task_of(body: dict[str, Any] | None) -> str:
    """Which task a request belongs to: CrewAI puts the task in the first user message."""
    messages = (body or {}).get("messages") or []
    return next((text_of(m.get("content")) for m in messages if m.get("role") == "user"), "")


def crew_script(body: dict[str, Any]) -> Reply:
    """The researcher answers at once; the writer looks the weather up, then reports."""
    if RESEARCH in task_of(body):
        return Reply(content=RESEARCH_ANSWER)
    if not any(m.get("role") == "assistant" for m in body["messages"]):
        return Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    return Reply(content=REPORT)


def model_calls(sim: SimServer, task: str | None = None) -> list[dict[str, Any]]:
    """The bodies of the Messages calls (token counting left out), for one task or all."""
    return [
        r.body
        for r in sim.requests
        if r.body is not None
        and r.path == "/v1/messages"
        and (task is None or task in task_of(r.body))
    ]


def claude(guard: Guard, sim: SimServer, model: str = HAIKU, **kwargs: Any) -> Any:
    kwargs.setdefault("max_tokens", 300)
    return guarded_llm(guard, model=f"anthropic/{model}", base_url=sim.url, api_key=KEY, **kwargs)


def two_agent_crew(
    guard: Guard,
    sim: SimServer,
    weather: Weather,
    *,
    write: str = f"{WRITE} {{city}}",
    **llm: Any,
) -> Crew:
    model = claude(guard, sim, **llm)
    researcher = Agent(role="Researcher", goal="Find facts", backstory="Careful.", llm=model)
    writer = Agent(
        role="Writer", goal="Write reports", backstory="Clear.", llm=model, tools=[weather]
    )
    research = Task(
        description=f"{RESEARCH} {{city}}", expected_output="one sentence", agent=researcher
    )
    write_task = Task(description=write, expected_output="a report", agent=writer)
    return Crew(agents=[researcher, writer], tasks=[research, write_task])


# -- crews under the guard ---------------------------------------------------------------------------


def test_a_claude_crew_with_a_tool_spends_what_the_provider_bills(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    weather = Weather()
    with SimServer(script=crew_script) as sim:
        crew = guard_crew(two_agent_crew(guard, sim, weather), guard, budget_key="team")
        output = crew.kickoff(inputs=INPUTS)

    assert output.raw == REPORT
    assert [task.raw for task in output.tasks_output] == [RESEARCH_ANSWER, REPORT]
    assert weather.calls == ["Paris"]
    assert all(isinstance(agent.llm, AnthropicCompletion) for agent in crew.agents)
    assert all(is_guarded(agent.llm, guard) for agent in crew.agents)
    assert len(model_calls(sim, RESEARCH)) == 1 and len(model_calls(sim, WRITE)) == 2
    # The writer's second call carries the tool's result as Anthropic's tool_result block.
    last = model_calls(sim, WRITE)[-1]["messages"][-1]
    assert last["role"] == "user" and last["content"][0]["type"] == "tool_result"
    session = kickoff_session(crew)
    assert session is not None and session.framework == "crewai" and session.iterations == 3
    assert session.spent_usd == sim.billed_usd() > 0
    assert guard.budget_status("team").spent_usd == sim.billed_usd()


def test_a_streaming_claude_crew_is_settled_from_the_streams(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    weather = Weather()
    with SimServer(script=crew_script) as sim:
        crew = guard_crew(
            two_agent_crew(guard, sim, weather, stream=True), guard, budget_key="team"
        )
        output = crew.kickoff(inputs=INPUTS)

    assert output.raw == REPORT and weather.calls == ["Paris"]
    assert [body["stream"] for body in model_calls(sim)] == [True, True, True]
    session = kickoff_session(crew)
    assert session is not None and session.iterations == 3
    assert session.spent_usd == sim.billed_usd() > 0
    assert guard.budget_status("team").in_flight_usd == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_async_claude_kickoffs_go_through_the_async_client(
    stream: bool, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    weather = Weather()
    with SimServer(script=crew_script) as sim:
        crew = guard_crew(
            two_agent_crew(guard, sim, weather, stream=stream), guard, budget_key="team"
        )
        output = await crew.akickoff(inputs=INPUTS)

    assert output.raw == REPORT and weather.calls == ["Paris"]
    assert [bool(body.get("stream")) for body in model_calls(sim)] == [stream] * 3
    session = kickoff_session(crew)
    assert session is not None and session.iterations == 3
    assert guard.budget_status("team").spent_usd == sim.billed_usd() > 0


# -- budgets, judged by the sim's bill ---------------------------------------------------------------


def test_a_claude_crew_under_a_budget_stops_before_the_bill_passes_it(
    make_guard: Callable[..., Guard],
) -> None:
    limit = Decimal("0.01")
    weather = Weather()

    def forever(body: dict[str, Any]) -> Reply:
        # The writer never stops looking things up, a new city each time.
        step = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        return Reply(tool_calls=[ToolCall("get_weather", {"city": f"City {step}"})])

    guard = make_guard(budgets=[{"key": "team", "limit_usd": float(limit), "window": "1h"}])
    with SimServer(script=forever) as sim:
        model = claude(guard, sim, model=SONNET, max_tokens=100)
        writer = Agent(
            role="Writer",
            goal="Write reports",
            backstory="Thorough.",
            llm=model,
            tools=[weather],
            max_iter=200,
        )
        task = Task(description=f"{WRITE} Paris", expected_output="a report", agent=writer)
        crew = guard_crew(Crew(agents=[writer], tasks=[task]), guard, budget_key="team")
        with pytest.raises(BudgetExceeded) as caught:
            crew.kickoff()
        billed = sim.billed_usd()

    assert caught.value.key == "team"
    assert len(weather.calls) >= 3  # it ran a while before the budget stopped it
    assert 0 < billed <= limit
    assert guard.budget_status("team").spent_usd == billed


# -- parking on Anthropic's 429 and resuming ------------------------------------------------------


def test_a_claude_429_costs_one_attempt_parks_and_a_daemon_resumes_from_the_parked_task(
    make_guard: Callable[..., Guard],
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("1"), window_s=1.5)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    # While the writer's tool runs, another client on the same key spends the window's budget:
    # the writer's next call gets the gateway's 429 in Anthropic's shape.
    weather = Weather(on_call=lambda: gateway.charge(KEY, Decimal("5")))
    outputs: list[Any] = []
    with SimServer(script=crew_script, gateway=gateway) as sim:

        def build_crew(inputs: dict[str, Any] | None) -> Crew:
            assert inputs == INPUTS
            return guard_crew(two_agent_crew(guard, sim, weather), guard)

        register_crew_resumer(guard, build_crew, on_output=lambda parked, out: outputs.append(out))
        crew = build_crew(INPUTS)
        with pytest.raises(SessionParked) as caught:
            crew.kickoff(inputs=INPUTS)

        # One HTTP attempt for the 429: no SDK retry, no CrewAI rate-limit retry, no task re-run.
        assert isinstance(caught.value, anthropic.AnthropicError)
        assert len(model_calls(sim, RESEARCH)) == 1 and len(model_calls(sim, WRITE)) == 2
        session = kickoff_session(crew)
        assert session is not None and caught.value.session_id == session.id
        record = guard.parked.get(session.id)
        assert record.state == "parked" and record.dialect == "anthropic_messages"
        assert record.framework == "crewai" and record.resumer == "crewai"
        assert record.reason.status == 429
        assert "anthropic-ratelimit-requests-reset" in record.reason.headers
        progress = CrewProgress.from_record(record)
        assert [(t.index, t.agent, t.raw) for t in progress.completed] == [
            (0, "Researcher", RESEARCH_ANSWER)
        ]
        assert progress.running is not None and progress.running.index == 1
        assert weather.calls == ["Paris"]
        billed_before = sim.billed_usd()

        daemon = ResumeDaemon(guard, poll_interval_s=0.2, watch_inbox=False)
        daemon.start()
        try:
            wait_for_state(guard, session.id, "resumed")
        finally:
            daemon.stop()

        [output] = outputs
        assert output.raw == REPORT
        assert [task.raw for task in output.tasks_output] == [RESEARCH_ANSWER, REPORT]
        # The research task did not run again, nor did the tool; the refused call was re-sent.
        assert len(model_calls(sim, RESEARCH)) == 1
        assert len(model_calls(sim, WRITE)) == 3
        resent = model_calls(sim, WRITE)[-1]["messages"]
        assert [m["role"] for m in resent] == ["user", "assistant", "user"]
        assert resent[-1]["content"][0]["type"] == "tool_result"
        assert weather.calls == ["Paris"]
        done = guard.parked.get(session.id)
        assert [t.state for t in done.history] == ["parked", "resuming", "resumed"]
        assert done.iterations == record.iterations + 1
        assert done.spent_usd - record.spent_usd == sim.billed_usd() - billed_before > 0


# -- routing across Claude tiers ---------------------------------------------------------------------


def test_routing_sends_each_agents_step_to_its_claude_tier(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard(
        routing={"tiers": {"small": HAIKU, "large": SONNET}, "classifier": "heuristic"}
    )
    routes: list[tuple[str, str]] = []
    guard.observers.append(lambda call: routes.append((call.requested_model, call.model)))
    weather = Weather()
    hard = f"{WRITE} {{city}}: compare the forecasts, analyse the trends and explain the risks"
    with SimServer(script=crew_script) as sim:
        crew = guard_crew(two_agent_crew(guard, sim, weather, model=SONNET, write=hard), guard)
        output = crew.kickoff(inputs=INPUTS)
        researcher, writer = crew.agents

    assert output.raw == REPORT
    assert routes == [(SONNET, HAIKU), (SONNET, SONNET), (SONNET, SONNET)]
    assert [body["model"] for body in model_calls(sim, RESEARCH)] == [HAIKU]
    assert [body["model"] for body in model_calls(sim, WRITE)] == [SONNET, SONNET]
    # Routing changed the request only: the LLM both agents share still names Sonnet.
    assert researcher.llm is writer.llm and writer.llm.model == SONNET


# -- the LLM itself -------------------------------------------------------------------------------------


def test_guarding_a_claude_llm_swaps_its_clients_and_turns_sdk_retries_off(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard()
    llm = LLM(model=f"anthropic/{HAIKU}", api_key=KEY, base_url="http://127.0.0.1:9")
    assert isinstance(llm, AnthropicCompletion) and not is_guarded(llm)
    assert guard_llm(llm, guard) is llm and is_guarded(llm, guard)
    sync_client, async_client = llm._client, llm._async_client
    assert type(sync_client) is anthropic.Anthropic and sync_client.max_retries == 0
    assert type(async_client) is anthropic.AsyncAnthropic and async_client.max_retries == 0
    assert type(sync_client._client._transport).__name__ == "GuardTransport"
    assert type(async_client._client._transport).__name__ == "AsyncGuardTransport"
    assert guard_llm(llm, guard) is llm and llm._client is sync_client  # once is enough
    with pytest.raises(ValueError, match="another Guard"):
        guard_llm(llm, Guard(guard.config))
    assert llm.model == HAIKU  # the LLM itself is untouched
    # guarded_llm() caps a Claude model's output at the guard's default, not the model's
    # largest output (64,000 for Haiku 4.5), unless told otherwise.
    assert llm.max_tokens == 64000
    capped = guarded_llm(guard, model=f"anthropic/{HAIKU}", api_key=KEY, base_url=llm.base_url)
    assert capped.max_tokens == guard.config.limits.default_max_output_tokens == 4096
    chosen = guarded_llm(guard, model=HAIKU, api_key=KEY, base_url=llm.base_url, max_tokens=900)
    assert isinstance(chosen, AnthropicCompletion) and chosen.max_tokens == 900


def test_kickoff_for_each_runs_guarded_copies_of_the_claude_crew(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard()
    seen: list[tuple[str, str]] = []
    guard.observers.append(lambda call: seen.append((call.session.id, call.model)))
    with SimServer(script=crew_script) as sim:
        model = claude(guard, sim)
        researcher = Agent(role="Researcher", goal="Find facts", backstory="Careful.", llm=model)
        research = Task(
            description=f"{RESEARCH} {{city}}", expected_output="one sentence", agent=researcher
        )
        crew = guard_crew(Crew(agents=[researcher], tasks=[research]), guard)
        outputs = crew.kickoff_for_each(inputs=[{"city": "Paris"}, {"city": "Rome"}])

    assert [output.raw for output in outputs] == [RESEARCH_ANSWER] * 2
    # Both copies' calls went through the guard, each in a session of its own.
    assert len(model_calls(sim)) == 2 and len(seen) == 2
    assert len({session_id for session_id, _ in seen}) == 2
    assert {model for _, model in seen} == {HAIKU}
    assert sim.billed_usd() > 0
