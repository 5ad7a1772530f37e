"""An OpenAI Agents SDK agent under agentguard, offline: it runs out of budget mid-task, parks
with its RunState, and continues from it when the budget window resets.

    python examples/openai_agents_run.py

The simulated provider (on loopback, no API key needed) acts as a metered gateway that allows
$0.0004 per 3-second window. The agent's third model call is refused with a 429; the guard
parks the run instead of failing it (one HTTP attempt: the SDK's and the openai client's
retries are off), and a resume daemon continues the run from its stored RunState when the
window resets, re-making only the refused call: the tools that already ran are not run again.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from decimal import Decimal
from typing import Any

from agents import Agent, function_tool, set_tracing_disabled
from agents.result import RunResult
from openai import AsyncOpenAI

from agentguard import Guard, GuardConfig, ParkedSession, SessionParked
from agentguard.scheduler import ResumeDaemon
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard_openai_agents import METADATA_KEY, guarded_run, register_agents_resumer

KEY = "sk-example"
SESSION_ID = "trip-42"
SCRIPT = [  # what the simulated model answers at each step
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Rome"})]),
    Reply(content="Both cities are sunny: pack sunglasses for Paris and Rome."),
]
tool_runs: list[str] = []
answers: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    tool_runs.append(city)
    return f"Sunny, 24 C in {city}"


def build_agent() -> Agent[Any]:
    return Agent(
        name="travel-agent",
        instructions="Check the weather in each city, then answer in one sentence.",
        model="gpt-4o",
        tools=[get_weather],
    )


def main() -> str:
    # The SDK exports traces to OpenAI's servers by default; this example stays offline.
    set_tracing_disabled(True)
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0004"), window_s=3)})
    with (
        tempfile.TemporaryDirectory(prefix="agentguard-openai-agents-") as home,
        SimServer(script=SCRIPT, gateway=gateway) as sim,
    ):
        guard = Guard(
            GuardConfig.from_mapping(
                {
                    "store": {"url": f"sqlite:///{home}/agentguard.db"},
                    # Park at once rather than sleep through the window in-process.
                    "parking": {"dir": f"{home}/parked", "wait_inline_max_s": 0},
                }
            )
        )

        def keep_answer(parked: ParkedSession, result: RunResult) -> None:
            answers.append(str(result.final_output))

        register_agents_resumer(
            guard,
            build_agent,
            client=lambda: AsyncOpenAI(base_url=sim.base_url, api_key=KEY),
            on_result=keep_answer,
        )

        print(f"1. Running the agent as session {SESSION_ID!r}...")
        try:
            result = asyncio.run(
                guarded_run(
                    guard,
                    build_agent(),
                    "Should I pack sunglasses for Paris and Rome?",
                    session_id=SESSION_ID,
                    client=AsyncOpenAI(base_url=sim.base_url, api_key=KEY),
                )
            )
            answers.append(str(result.final_output))
        except SessionParked as parked:
            assert parked.resume_at is not None
            print(f"   parked: {parked.session_id} resumes at {parked.resume_at:%H:%M:%S} UTC")
        record = guard.parked.get(SESSION_ID)
        kept = record.metadata[METADATA_KEY]
        print(
            f"   record: {record.reason.kind} (HTTP {record.reason.status}), agent "
            f"{kept['agent']!r} at turn {kept['turn']}, RunState kept: {'run_state' in kept}, "
            f"tools run so far: {tool_runs}"
        )

        print("2. A resume daemon waits for the window to reset...")
        daemon = ResumeDaemon(guard, poll_interval_s=0.2, watch_inbox=False)
        daemon.start()
        try:
            deadline = time.monotonic() + 60
            while guard.parked.get(SESSION_ID).state in ("parked", "resuming"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the run was not resumed within 60 s")
                time.sleep(0.1)
        finally:
            daemon.stop()
        record = guard.parked.get(SESSION_ID)
        print(f"   {' -> '.join(t.state for t in record.history)}")

        print("3. The finished run:")
        print(f"   answer: {answers[-1]}")
        print(
            f"   {len(sim.requests)} HTTP requests, {sim.billed_calls(KEY)} answered (one refused "
            f"by the gateway), tools run once each: {tool_runs}"
        )
        print(f"   spent ${record.spent_usd}; the gateway billed ${sim.billed_usd(KEY)}")
        guard.close()
    return answers[-1]


if __name__ == "__main__":
    main()
