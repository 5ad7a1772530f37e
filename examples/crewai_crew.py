"""A two-agent CrewAI crew under agentguard, offline: it runs out of budget in its second task,
parks, and continues from that task when the budget window resets.

    python examples/crewai_crew.py

The simulated provider (on loopback, no API key needed) acts as a metered gateway that allows
$0.0004 per 2-second window. A researcher answers first; a writer then looks the weather up
with a tool, and its next model call is refused with a 429. The guard makes that one HTTP
attempt and parks the crew instead of letting CrewAI retry it; a resume daemon continues the
crew when the window resets, re-sending only the refused call: the research task and the tool
do not run again.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from decimal import Decimal

# CrewAI stays offline: no telemetry, no tracing, no version check.
os.environ.update(
    CREWAI_DISABLE_TELEMETRY="true",
    OTEL_SDK_DISABLED="true",
    CREWAI_TRACING_ENABLED="false",
    CREWAI_DISABLE_VERSION_CHECK="true",
)

from crewai import Agent, Crew, Task
from crewai.tools import tool

from agentguard import Guard, GuardConfig, SessionParked
from agentguard.engine import CallContext
from agentguard.scheduler import ResumeDaemon
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard_crewai import (
    CrewProgress,
    guard_crew,
    guarded_llm,
    kickoff_session,
    register_crew_resumer,
)

KEY = "sk-example"
INPUTS = {"city": "Paris"}
tool_runs: list[str] = []
outputs: list[object] = []


@tool("get_weather")
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    tool_runs.append(city)
    print(f"   tool     get_weather({city!r})")
    return f"Sunny, 24 C in {city}"


def script(body: dict) -> Reply:
    """What the simulated model answers: the researcher at once, the writer after a lookup."""
    messages = body["messages"]
    task = next(str(m.get("content")) for m in messages if m.get("role") == "user")
    if "Research" in task:
        return Reply(content="Paris will be sunny and warm, 24 C.")
    if not any(m.get("role") == "assistant" for m in messages):
        return Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    return Reply(content="Packing advice: sunglasses and a light jacket for a sunny Paris.")


def build_crew(guard: Guard, base_url: str) -> Crew:
    llm = guarded_llm(guard, model="gpt-4o", base_url=base_url, api_key=KEY)
    researcher = Agent(role="Researcher", goal="Find facts", backstory="Careful.", llm=llm)
    writer = Agent(
        role="Writer", goal="Give advice", backstory="Practical.", llm=llm, tools=[get_weather]
    )
    research = Task(
        description="Research the weather in {city}", expected_output="one line", agent=researcher
    )
    write = Task(
        description="Write packing advice for {city}", expected_output="advice", agent=writer
    )
    crew = Crew(agents=[researcher, writer], tasks=[research, write])
    return guard_crew(crew, guard, session_id="trip-42")


def show_call(call: CallContext) -> None:
    role = str(call.messages[0].get("content", "")).removeprefix("You are ").split(".")[0]
    said = ", ".join(call.notes.get("tool_calls") or []) or "answer"
    print(f"   model    {role:<10} {call.model:<8} ${call.notes['cost_usd']:<10} {said}")


def main() -> None:
    # CrewAI logs each refused call at ERROR level; this example tells the story itself.
    logging.getLogger().setLevel(logging.CRITICAL)
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0004"), window_s=2)})
    with (
        tempfile.TemporaryDirectory(prefix="agentguard-crewai-") as home,
        SimServer(script=script, gateway=gateway) as sim,
    ):
        # CrewAI's own files (task outputs, user data) go to the temporary directory too.
        os.environ.update(XDG_DATA_HOME=home, CREWAI_STORAGE_DIR="agentguard-crewai-example")
        guard = Guard(
            GuardConfig.from_mapping(
                {
                    "store": {"url": f"sqlite:///{home}/agentguard.db"},
                    # Park at once rather than sleep through the window in-process.
                    "parking": {"dir": f"{home}/parked", "wait_inline_max_s": 0},
                }
            )
        )
        guard.observers.append(show_call)
        register_crew_resumer(
            guard,
            lambda inputs: build_crew(guard, sim.base_url),
            on_output=lambda parked, output: outputs.append(output),
        )
        crew = build_crew(guard, sim.base_url)

        print("1. Kicking off the crew (Researcher, then Writer) on a $0.0004 / 2 s key...")
        try:
            crew.kickoff(inputs=INPUTS)
        except SessionParked as parked:
            print(f"   parked   {parked.session_id}, resumes at {parked.resume_at:%H:%M:%S} UTC")
        record = guard.parked.get("trip-42")
        progress = CrewProgress.from_record(record)
        print(
            f"   record   {record.reason.kind} (HTTP {record.reason.status}, retry-after "
            f"{record.reason.headers.get('retry-after')}s); HTTP attempts so far: "
            f"{len(sim.requests)}, the last one refused and not retried"
        )
        for done in progress.completed:
            print(f"   done     task {done.index} ({done.agent}): {done.raw!r}")
        assert progress.running is not None
        print(
            f"   running  task {progress.running.index} ({progress.running.agent}): "
            f"{progress.running.description!r}, {len(progress.running.messages)} messages kept"
        )

        print("2. A resume daemon waits for the window to reset...")
        daemon = ResumeDaemon(guard, poll_interval_s=0.2, watch_inbox=False)
        daemon.start()
        while guard.parked.get("trip-42").state in ("parked", "resuming"):
            time.sleep(0.1)
        daemon.stop()
        record = guard.parked.get("trip-42")
        print(f"   {' -> '.join(t.state for t in record.history)}")

        print("3. The crew's output:")
        for task_output in getattr(outputs[0], "tasks_output", []):
            print(f"   {task_output.agent:<10} {task_output.raw}")
        session = kickoff_session(crew)
        print(
            f"   {record.iterations} model calls in session {session.id if session else '?'} "
            f"({len(sim.requests)} HTTP attempts, one refused), tool runs: {tool_runs}, "
            f"spent ${record.spent_usd}"
        )


if __name__ == "__main__":
    main()
