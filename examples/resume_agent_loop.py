"""An agent loop that carries on after the daemon resumes it (the plain openai SDK, offline).

The program's agent loop is one function, ``run_agent(messages)``. The program runs it inside a
session that names a resumer (``resumer="agent-loop"``). When the provider answers 429 (here the
simulated provider, as a budget gateway allowing $0.002 per 2-second window), the guard parks
the session: the pending request, which holds the whole conversation so far, goes to the store,
and ``SessionParked`` reaches the program, which may exit or go on with other work.

When the window resets, the daemon (``agentguard daemon --app myapp.agents:guard``) claims the
session and calls the resumer registered under that name. The recommended resumer is three
lines: take the conversation from the parked record and call the same loop with it. The loop
re-sends the call that hit the limit and carries on; tools that already ran are not run again
(their results are in the conversation), and the calls count against the same session. The
resumer then hands the answer to wherever the program wants it (here a file; a database row or
a queue in an application) and the program picks it up there.

Here the daemon runs in this process (``ResumeDaemon``, what ``agentguard daemon`` runs), so
the example runs alone: ``python examples/resume_agent_loop.py``.
"""

from __future__ import annotations

import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai

from agentguard import Guard, GuardConfig, ParkedSession, SessionParked
from agentguard.scheduler import ResumeDaemon
from agentguard.sim import GatewayKey, SimGateway, SimServer
from agentguard.sim.scripts import CODING_TOOLS, coding_agent_script, run_tools

MODEL = "gpt-4o-mini"
SESSION_ID = "ticket-7"
TASK = "Fix the rounding bug in the invoice totals (src/billing/invoice.py)."

home = Path(tempfile.mkdtemp(prefix="agentguard-resume-loop-"))
answers = home / "answers"  # where the resumer delivers; an application would use its database

# In an application this module is what `agentguard daemon --app myapp.agents:guard` imports:
# the guard, the wrapped client and the resumer are made at import time.
guard = Guard(
    GuardConfig.from_mapping(
        {
            "store": {"url": f"sqlite:///{home}/agentguard.db"},
            "parking": {"dir": str(home / "parked"), "wait_inline_max_s": 0, "max_attempts": 5},
        },
        env={},
    )
)
client: openai.OpenAI | None = None  # guard.wrap(openai.OpenAI()) in an application; see main()


def run_agent(messages: list[dict[str, Any]]) -> str:
    """The program's agent loop, unchanged by the guard: call the model, run its tools, repeat."""
    assert client is not None
    while True:
        step = sum(1 for message in messages if message["role"] == "assistant") + 1
        response = client.chat.completions.create(
            model=MODEL, messages=messages, tools=CODING_TOOLS, max_tokens=300
        )
        message = response.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        tools = [call.function.name for call in message.tool_calls or []]
        print(f"  step {step}: {', '.join(tools) or 'answer'}")
        if not message.tool_calls:
            return message.content or ""
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tools(call)})


@guard.resumer("agent-loop")
def continue_agent(parked: ParkedSession) -> str:
    """What the daemon calls when the limit resets: the same loop, from the saved conversation."""
    print(f"resumed by the daemon (attempt {parked.attempts + 1}); the loop carries on:")
    answer = run_agent(list(parked.request["messages"]))
    deliver(parked.session_id, answer)
    return answer


def deliver(session_id: str, answer: str) -> None:
    """Hand the answer to the program (here: a file it watches)."""
    answers.mkdir(exist_ok=True)
    (answers / f"{session_id}.txt").write_text(answer, encoding="utf-8")


def wait_for_answer(session_id: str, timeout_s: float = 60.0) -> str:
    """The program's side: poll for the delivered answer."""
    path = answers / f"{session_id}.txt"
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer for {session_id} after {timeout_s:.0f}s")
        time.sleep(0.1)
    return path.read_text(encoding="utf-8")


def main() -> str:
    """Run the loop until it parks, let the daemon resume it, and return the final answer."""
    global client
    gateway = SimGateway({"sk-loop": GatewayKey(limit_usd=Decimal("0.002"), window_s=2)})
    with SimServer(script=coding_agent_script(8), gateway=gateway) as sim:
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-loop"))
        messages = [
            {"role": "system", "content": "You are a careful engineer. Read before you edit."},
            {"role": "user", "content": TASK},
        ]
        print(f"task: {TASK}")
        try:
            with guard.session(SESSION_ID, resumer="agent-loop"):
                answer = run_agent(messages)
        except SessionParked as parked:
            record = guard.parked.get(SESSION_ID)
            print(
                f"parked: {record.reason.kind} (HTTP {record.reason.status}); resumes at "
                f"{record.resume_at:%H:%M:%S} from {record.reason.reset_source}, "
                f"{len(record.request['messages'])} messages saved"
            )
            daemon = ResumeDaemon(guard, poll_interval_s=0.5, watch_inbox=False)
            daemon.start()  # `agentguard daemon` in production, in its own process
            try:
                answer = wait_for_answer(parked.session_id)
            finally:
                daemon.stop()
        history = " -> ".join(t.state for t in guard.parked.get(SESSION_ID).history)
    guard.close()
    print(f"answer: {answer[:72]}...")
    print(f"record: {history}")
    return answer


if __name__ == "__main__":
    main()
