"""The plain openai SDK under agentguard, offline: a budget, a session, a park and a resume.

Run: python examples/openai_quickstart.py
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal

import openai

from agentguard import Guard, GuardConfig, SessionParked
from agentguard.sim import GatewayKey, SimGateway, SimServer

home = tempfile.mkdtemp(prefix="agentguard-quickstart-")
guard = Guard(
    GuardConfig.from_mapping(
        {
            "store": {"url": f"sqlite:///{home}/agentguard.db"},
            "limits": {"max_iterations": 20},
            "budgets": [{"key": "demo", "limit_usd": 1.0, "window": "1h"}],
            "parking": {"wait_inline_max_s": 0, "dir": f"{home}/parked"},
        },
        env={},
    )
)

# A metered provider: this key may spend $0.0005 per 3-second window, then answers 429.
gateway = SimGateway({"sk-quickstart": GatewayKey(limit_usd=Decimal("0.0005"), window_s=3)})
with SimServer(gateway=gateway) as sim:
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-quickstart"))
    guard.on_resumed(
        lambda parked, response: print("resumed answer:", response.choices[0].message.content[:60])
    )

    with guard.session("quickstart", budget_key="demo") as session:
        try:
            for step in range(10):
                response = client.chat.completions.create(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": f"Step {step}: say hi."}],
                    max_tokens=30,
                )
                print(
                    f"step {step}: {response.usage.total_tokens} tokens, session spent ${session.spent_usd}"
                )
        except SessionParked as parked:
            print(f"parked: {parked}")

    record = guard.parked.get("quickstart")
    print(
        f"record: state={record.state}, reason={record.reason.kind}, resumes at {record.resume_at}"
    )
    time.sleep(max(0.0, (record.resume_at - datetime.now(UTC)).total_seconds()) + 0.1)
    guard.parked.resume("quickstart")  # what `agentguard daemon` does when the window resets
    print("history:", " -> ".join(t.state for t in guard.parked.get("quickstart").history))
