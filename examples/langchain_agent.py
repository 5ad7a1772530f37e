"""A LangChain agent under agentguard, offline: it runs out of budget mid-task, parks, and
continues from its LangGraph checkpoint when the budget window resets.

    python examples/langchain_agent.py

The simulated provider (on loopback, no API key needed) acts as a metered gateway that allows
$0.0004 per 3-second window. The agent's third model call is refused with a 429; the guard
parks the run instead of failing it, and a resume daemon continues it when the window resets,
re-making only the refused call: the tools that already ran are not run again.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver

from agentguard import Guard, GuardConfig, SessionParked
from agentguard.scheduler import ResumeDaemon
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard_langchain import (
    AgentGuardMiddleware,
    guarded_chat_openai,
    register_langgraph_resumer,
)

KEY = "sk-example"
SCRIPT = [  # what the simulated model answers at each step
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
    Reply(tool_calls=[ToolCall("get_weather", {"city": "Rome"})]),
    Reply(content="Both cities are sunny: pack sunglasses for Paris and Rome."),
]
tool_runs: list[str] = []


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    tool_runs.append(city)
    return f"Sunny, 24 C in {city}"


def main() -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.0004"), window_s=3)})
    with (
        tempfile.TemporaryDirectory(prefix="agentguard-langchain-") as home,
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
        connection = sqlite3.connect(Path(home) / "threads.db", check_same_thread=False)
        agent = create_agent(
            guarded_chat_openai(guard, model="gpt-4o", base_url=sim.base_url, api_key=KEY),
            [get_weather],
            middleware=[AgentGuardMiddleware(guard)],
            checkpointer=SqliteSaver(connection),
        )
        register_langgraph_resumer(guard, agent)
        thread: RunnableConfig = {"configurable": {"thread_id": "trip-42"}}

        print("1. Running the agent on thread 'trip-42'...")
        try:
            agent.invoke(
                {"messages": [HumanMessage("Should I pack sunglasses for Paris and Rome?")]}, thread
            )
        except SessionParked as parked:
            print(f"   parked: {parked.session_id} resumes at {parked.resume_at:%H:%M:%S} UTC")
        record = guard.parked.get("lg-trip-42")
        print(
            f"   record: {record.reason.kind} (HTTP {record.reason.status}), "
            f"thread {record.metadata['thread_id']}, tools run so far: {tool_runs}"
        )

        print("2. A resume daemon waits for the window to reset...")
        daemon = ResumeDaemon(guard, poll_interval_s=0.2, watch_inbox=False)
        daemon.start()
        while guard.parked.get("lg-trip-42").state in ("parked", "resuming"):
            time.sleep(0.1)
        daemon.stop()
        record = guard.parked.get("lg-trip-42")
        print(f"   {' -> '.join(t.state for t in record.history)}")

        print("3. The finished thread:")
        for message in agent.get_state(thread).values["messages"]:
            if isinstance(message, AIMessage):
                step = message.response_metadata["agentguard"]
                said = ", ".join(f"{c['name']}({c['args']['city']})" for c in message.tool_calls)
                print(f"   model  ${step['cost_usd']:<10} {said or message.content}")
            elif isinstance(message, ToolMessage):
                print(f"   tool   {message.content}")
        print(
            f"   {record.iterations} model calls (one refused by the gateway), "
            f"tools run once each: {tool_runs}, spent ${record.spent_usd}"
        )
        connection.close()


if __name__ == "__main__":
    main()
