"""A Pydantic AI agent under agentguard, offline: it runs out of budget mid-task, parks, and
continues from its message history when the budget window resets.

    python examples/pydantic_ai_agent.py

The simulated provider (on loopback, no API key needed) acts as a metered gateway that allows
$0.0004 per 3-second window. The agent's third model call is refused with a 429; the guard
parks the run instead of failing it, with the run's messages in the parked record, and a
resume daemon continues the run from them when the window resets, re-making only the refused
call: the tools that already ran are not run again.
"""

from __future__ import annotations

import tempfile
import time
from decimal import Decimal
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse, ToolCallPart, ToolReturnPart

from agentguard import Guard, GuardConfig, ParkedSession, SessionParked
from agentguard.scheduler import ResumeDaemon
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard_pydantic_ai import (
    AgentGuardCapability,
    guarded_model,
    parked_messages,
    register_pydantic_ai_resumer,
)

KEY = "sk-example"
SESSION_ID = "trip-42"
SCRIPT = [  # what the simulated model answers at each step
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Rome"})]),
    Reply(content="Both cities are sunny: pack sunglasses for Paris and Rome."),
]
tool_runs: list[str] = []


def get_weather(city: str) -> str:
    """Today's weather in a city."""
    tool_runs.append(city)
    return f"Sunny, 24 C in {city}"


def main() -> str:
    """Run the agent until it parks, let a daemon resume it, and return its answer."""
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0004"), window_s=3)})
    finished: list[Any] = []
    with (
        tempfile.TemporaryDirectory(prefix="agentguard-pydantic-ai-") as home,
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
        agent = Agent(
            guarded_model(guard, "openai-chat:gpt-4o", base_url=sim.base_url, api_key=KEY),
            tools=[get_weather],
            capabilities=[AgentGuardCapability(guard, session_id=SESSION_ID)],
        )

        def deliver(parked: ParkedSession, result: Any) -> None:
            # A resume runs in the daemon, where nobody awaits it: hand the result over.
            finished.append(result)

        register_pydantic_ai_resumer(guard, agent, on_result=deliver)

        print(f"1. Running the agent in session {SESSION_ID!r}...")
        try:
            agent.run_sync("Should I pack sunglasses for Paris and Rome?")
        except SessionParked as parked:
            print(f"   parked: {parked.session_id} resumes at {parked.resume_at:%H:%M:%S} UTC")
        record = guard.parked.get(SESSION_ID)
        print(
            f"   record: {record.reason.kind} (HTTP {record.reason.status}), "
            f"{len(parked_messages(record))} messages kept, tools run so far: {tool_runs}"
        )

        print("2. A resume daemon waits for the window to reset...")
        daemon = ResumeDaemon(guard, poll_interval_s=0.2, watch_inbox=False)
        daemon.start()
        while guard.parked.get(SESSION_ID).state in ("parked", "resuming"):
            time.sleep(0.1)
        daemon.stop()
        record = guard.parked.get(SESSION_ID)
        print(f"   {' -> '.join(t.state for t in record.history)}")

        print("3. The finished run:")
        (result,) = finished
        for message in result.all_messages():
            for part in message.parts:
                if isinstance(part, ToolCallPart):
                    print(f"   model  calls {part.tool_name}({part.args_as_dict()['city']})")
                elif isinstance(part, ToolReturnPart):
                    print(f"   tool   {part.content}")
            if isinstance(message, ModelResponse) and message.text:
                print(f"   model  {message.text}")
        print(
            f"   {record.iterations} model calls (one refused by the gateway), "
            f"tools run once each: {tool_runs}, spent ${record.spent_usd} "
            f"(the gateway billed ${sim.billed_usd(KEY)})"
        )
        output: str = result.output
        return output


if __name__ == "__main__":
    main()
