"""The CrewAI integration, run for real: crews of CrewAI agents calling the sim provider over
HTTP on loopback through guarded LLMs, parking on the sim's budget gateway and resuming through
the registered ``crewai`` resumer. CrewAI runs offline: its telemetry and tracing are off and a
fixture fails any connection that leaves the machine."""

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
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.llms.hooks.base import BaseInterceptor
from crewai.tools import BaseTool
from helpers import wait_for_state
from pydantic import Field

from agentguard import IterationLimitExceeded, SessionParked
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

# CrewAI warns about its own deprecated fields whenever a crew runs.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai.*")

KEY = "sk-crewai-test-key-0001"
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


# -- a crew to run -------------------------------------------------------------------------------


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


def task_of(body: dict[str, Any] | None) -> str:
    """Which task a request belongs to: CrewAI puts the task in the first user message."""
    messages = (body or {}).get("messages") or []
    return next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")


def crew_script(body: dict[str, Any]) -> Reply:
    """The researcher answers at once; the writer looks the weather up, then reports."""
    if RESEARCH in task_of(body):
        return Reply(content=RESEARCH_ANSWER)
    if not any(m.get("role") == "assistant" for m in body["messages"]):
        return Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    return Reply(content=REPORT)


def requests_for(sim: SimServer, task: str) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests if r.body is not None and task in task_of(r.body)]


def two_agent_crew(
    guard: Guard, sim: SimServer, weather: Weather, *, write: str = f"{WRITE} {{city}}", **llm: Any
) -> Crew:
    model = guarded_llm(guard, model="gpt-4o", base_url=sim.base_url, api_key=KEY, **llm)
    researcher = Agent(role="Researcher", goal="Find facts", backstory="Careful.", llm=model)
    writer = Agent(
        role="Writer", goal="Write reports", backstory="Clear.", llm=model, tools=[weather]
    )
    research = Task(
        description=f"{RESEARCH} {{city}}", expected_output="one sentence", agent=researcher
    )
    write_task = Task(description=write, expected_output="a report", agent=writer)
    return Crew(agents=[researcher, writer], tasks=[research, write_task])


def one_agent_crew(guard: Guard, sim: SimServer, **llm: Any) -> Crew:
    model = guarded_llm(guard, model="gpt-4o-mini", base_url=sim.base_url, api_key=KEY, **llm)
    researcher = Agent(role="Researcher", goal="Find facts", backstory="Careful.", llm=model)
    research = Task(
        description=f"{RESEARCH} {{city}}", expected_output="one sentence", agent=researcher
    )
    return guard_crew(Crew(agents=[researcher], tasks=[research]), guard, budget_key="team")


class CountingInterceptor(BaseInterceptor[httpx.Request, httpx.Response]):
    """A CrewAI interceptor: sees each HTTP attempt the LLM makes."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def on_outbound(self, message: httpx.Request) -> httpx.Request:
        return message

    def on_inbound(self, message: httpx.Response) -> httpx.Response:
        self.statuses.append(message.status_code)
        return message


# -- crews under the guard -----------------------------------------------------------------------


def test_one_agent_crew_completes_in_a_crewai_session(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": 5, "window": "1h"}])
    interceptor = CountingInterceptor()
    with SimServer(script=crew_script) as sim:
        crew = one_agent_crew(guard, sim, interceptor=interceptor)
        output = crew.kickoff(inputs=INPUTS)

    assert output.raw == RESEARCH_ANSWER
    session = kickoff_session(crew)
    assert session is not None and session.framework == "crewai" and session.resumer == "crewai"
    assert session.iterations == 1 and session.spent_usd > 0
    assert guard.budget_status("team").spent_usd == session.spent_usd
    [body] = [r.body for r in sim.requests]
    assert body is not None and body["model"] == "gpt-4o-mini"
    assert body["max_tokens"] == 4096  # the guard's pipeline capped the output it reserved for
    assert interceptor.statuses == [200]  # the LLM's own interceptor still sees the attempt
    progress = CrewProgress.model_validate(session.metadata["crewai"])
    assert progress.inputs == INPUTS and progress.running is not None
    assert progress.running.description == f"{RESEARCH} Paris"
    assert guard.parked.list() == []


def test_two_agent_crew_with_a_tool_completes(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard()
    weather = Weather()
    with SimServer(script=crew_script) as sim:
        crew = guard_crew(two_agent_crew(guard, sim, weather), guard, session_id="crew-ok")
        output = crew.kickoff(inputs=INPUTS)

    assert output.raw == REPORT
    assert [task.raw for task in output.tasks_output] == [RESEARCH_ANSWER, REPORT]
    assert weather.calls == ["Paris"]
    assert len(requests_for(sim, RESEARCH)) == 1 and len(requests_for(sim, WRITE)) == 2
    session = kickoff_session(crew)
    assert session is not None and session.id == "crew-ok" and session.iterations == 3
    assert all(is_guarded(agent.llm, guard) for agent in crew.agents)


# -- parking and resuming ------------------------------------------------------------------------


def test_gateway_429_costs_one_attempt_parks_and_a_daemon_resumes_from_the_parked_task(
    make_guard: Callable[..., Guard],
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("1"), window_s=1.5)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    # While the writer's tool runs, another client on the same key spends the window's budget:
    # the writer's next call gets the gateway's 429, retry-after = time to the window's reset.
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
        assert len(sim.requests) == 3
        assert len(requests_for(sim, RESEARCH)) == 1 and len(requests_for(sim, WRITE)) == 2
        session = kickoff_session(crew)
        assert session is not None and caught.value.session_id == session.id
        record = guard.parked.get(session.id)
        assert record.state == "parked" and record.framework == "crewai"
        assert record.resumer == "crewai" and record.reason.status == 429
        assert record.reason.reset_source == "retry-after"
        assert [m["role"] for m in record.request["messages"]] == [
            "system",
            "user",
            "assistant",
            "tool",
        ]
        progress = CrewProgress.from_record(record)
        assert progress.inputs == INPUTS and progress.task_count == 2
        assert [(t.index, t.agent, t.raw) for t in progress.completed] == [
            (0, "Researcher", RESEARCH_ANSWER)
        ]
        assert progress.running is not None and progress.running.index == 1
        assert progress.running.description == f"{WRITE} Paris"
        assert progress.running.agent == "Writer"
        assert [m["role"] for m in progress.running.messages] == [
            "system",
            "user",
            "assistant",
            "tool",
        ]
        assert weather.calls == ["Paris"]

        daemon = ResumeDaemon(guard, poll_interval_s=0.2, watch_inbox=False)
        daemon.start()
        try:
            wait_for_state(guard, session.id, "resumed")
        finally:
            daemon.stop()

        [output] = outputs
        assert output.raw == REPORT
        assert [task.raw for task in output.tasks_output] == [RESEARCH_ANSWER, REPORT]
        # The research task did not run again, nor did the tool; the pending call was re-sent.
        assert len(requests_for(sim, RESEARCH)) == 1
        assert len(requests_for(sim, WRITE)) == 3
        resent = requests_for(sim, WRITE)[-1]
        assert [m["role"] for m in resent["messages"]] == ["system", "user", "assistant", "tool"]
        assert weather.calls == ["Paris"]
        done = guard.parked.get(session.id)
        assert [t.state for t in done.history] == ["parked", "resuming", "resumed"]
        assert done.attempts == 0 and done.iterations == record.iterations + 1


def test_resume_in_a_spent_window_reparks_then_finishes(make_guard: Callable[..., Guard]) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("1"), window_s=60)})
    guard = make_guard(parking={"wait_inline_max_s": 0})
    weather = Weather(on_call=lambda: gateway.charge(KEY, Decimal("5")))
    with SimServer(script=crew_script, gateway=gateway) as sim:
        register_crew_resumer(
            guard, lambda inputs: guard_crew(two_agent_crew(guard, sim, weather), guard)
        )
        crew = guard_crew(two_agent_crew(guard, sim, weather), guard, session_id="crew-repark")
        with pytest.raises(SessionParked):
            crew.kickoff(inputs=INPUTS)
        assert len(sim.requests) == 3

        with pytest.raises(SessionParked):
            guard.parked.resume("crew-repark")  # the window is still spent: 429 again
        assert len(sim.requests) == 4  # one attempt for the resume, too
        record = guard.parked.get("crew-repark")
        assert record.state == "parked" and record.attempts == 1
        assert [t.index for t in CrewProgress.from_record(record).completed] == [0]

        gateway.reset()
        output = guard.parked.resume("crew-repark")
        assert output.raw == REPORT
        assert len(requests_for(sim, RESEARCH)) == 1 and weather.calls == ["Paris"]
        assert guard.parked.get("crew-repark").state == "resumed"


def test_a_short_rate_limit_is_waited_out_once(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 5})
    with SimServer(script=crew_script) as sim:
        crew = one_agent_crew(guard, sim)
        sim.rate_limit_next(1, retry_after=0.3)
        started = time.monotonic()
        output = crew.kickoff(inputs=INPUTS)
        waited = time.monotonic() - started

    assert output.raw == RESEARCH_ANSWER
    assert len(sim.requests) == 2  # the 429, then the retry after retry-after
    assert waited >= 0.3
    assert guard.parked.list() == []


async def test_async_kickoffs_are_guarded_and_park_after_one_attempt(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 0})
    with SimServer(script=crew_script) as sim:
        crew = one_agent_crew(guard, sim)
        output = await crew.kickoff_async(inputs=INPUTS)
        assert output.raw == RESEARCH_ANSWER
        first = kickoff_session(crew)
        assert first is not None and first.iterations == 1

        sim.rate_limit_next(1, retry_after=600)
        with pytest.raises(SessionParked) as caught:
            await crew.akickoff(inputs=INPUTS)
        assert len(sim.requests) == 2
        record = guard.parked.get(caught.value.session_id)
        assert record.framework == "crewai" and caught.value.session_id != first.id
        assert CrewProgress.from_record(record).running is not None


def test_a_guard_limit_is_not_retried_or_wrapped_by_crewai(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard(limits={"max_iterations": 1})
    weather = Weather()
    with SimServer(script=crew_script) as sim:
        crew = two_agent_crew(guard, sim, weather)
        # With a time limit CrewAI runs the task in a worker and wraps its errors in a
        # RuntimeError, unless the error is a deliberate stop, as a guard's limit is.
        crew.agents[1].max_execution_time = 30
        guard_crew(crew, guard)
        with pytest.raises(IterationLimitExceeded):
            crew.kickoff(inputs=INPUTS)
    assert len(sim.requests) == 1


def test_kickoff_for_each_runs_each_copy_in_its_own_session(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard()
    seen: list[tuple[str, str]] = []
    guard.observers.append(lambda call: seen.append((call.session.id, call.session.framework)))
    with SimServer(script=crew_script) as sim:
        crew = one_agent_crew(guard, sim)
        outputs = crew.kickoff_for_each(inputs=[{"city": "Paris"}, {"city": "Rome"}])
    assert [output.raw for output in outputs] == [RESEARCH_ANSWER] * 2
    assert len(sim.requests) == 2
    assert len({session_id for session_id, _ in seen}) == 2
    assert {framework for _, framework in seen} == {"crewai"}


# -- routing stays in the HTTP body ---------------------------------------------------------------


def test_routing_one_agent_does_not_change_another_agents_model(
    make_guard: Callable[..., Guard],
) -> None:
    # The hand-weighted classifier: its labels for these two steps are fixed, so the test is
    # about one agent's routing not leaking into the other's, not about the scorer.
    guard = make_guard(
        routing={"tiers": {"small": "gpt-4o-mini", "large": "gpt-4o"}, "classifier": "heuristic"}
    )
    routes: list[tuple[str, str]] = []
    guard.observers.append(lambda call: routes.append((call.requested_model, call.model)))
    models_while_writing: list[str] = []
    weather = Weather()
    # The researcher's one-line step is easy, the writer's multi-step one is not.
    hard = f"{WRITE} {{city}}: compare the forecasts, analyse the trends and explain the risks"
    with SimServer(script=crew_script) as sim:
        crew = guard_crew(two_agent_crew(guard, sim, weather, write=hard), guard)
        researcher, writer = crew.agents
        assert researcher.llm is writer.llm  # one LLM object shared by both agents
        weather.on_call = lambda: models_while_writing.append(writer.llm.model)
        output = crew.kickoff(inputs=INPUTS)

    assert output.raw == REPORT
    assert routes == [("gpt-4o", "gpt-4o-mini"), ("gpt-4o", "gpt-4o"), ("gpt-4o", "gpt-4o")]
    # The router changed the request body only: the sim saw each step's model...
    assert [body["model"] for body in requests_for(sim, RESEARCH)] == ["gpt-4o-mini"]
    assert [body["model"] for body in requests_for(sim, WRITE)] == ["gpt-4o", "gpt-4o"]
    # ...and the LLM both agents share never changed, not even while the writer worked.
    assert models_while_writing == ["gpt-4o"]
    assert researcher.llm.model == "gpt-4o" and writer.llm.model == "gpt-4o"


# -- what cannot be guarded -----------------------------------------------------------------------


class PlainLLM(BaseLLM):
    """A hand-written CrewAI LLM: it does not speak through the openai SDK."""

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        return "Final Answer: done"


def test_what_cannot_be_guarded_is_refused(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard()
    base_url = "http://127.0.0.1:9/v1"
    agent = Agent(role="Scribe", goal="g", backstory="b", llm=PlainLLM(model="plain"))
    crew = Crew(agents=[agent], tasks=[Task(description="d", expected_output="e", agent=agent)])
    with pytest.raises(TypeError, match="agent 'Scribe' llm"):
        guard_crew(crew, guard)
    with pytest.raises(ValueError, match="responses"):
        guarded_llm(guard, model="gpt-4o", base_url=base_url, api_key=KEY, api="responses")
    model = guarded_llm(guard, model="gpt-4o", base_url=base_url, api_key=KEY)
    assert guard_llm(model, guard) is model  # guarding twice with one guard changes nothing
    with pytest.raises(ValueError, match="another Guard"):
        guard_llm(model, Guard(guard.config))
    agent = Agent(role="Planner", goal="g", backstory="b", llm=model)
    task = Task(description="d", expected_output="e", agent=agent)
    with pytest.raises(ValueError, match="resumer"):
        guard_crew(Crew(agents=[agent], tasks=[task]), guard, resumer="my.module:fn")
    with pytest.raises(ValueError, match="planning_llm"):
        guard_crew(Crew(agents=[agent], tasks=[task], planning=True), guard)
