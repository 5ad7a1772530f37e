"""``agentguard demo``: a scripted coding agent on the simulated provider, guarded.

Runs offline with no API key: the sim serves a tool-using agent's replies on loopback, the
guard routes each step, trims the history, reserves and settles every call against a small
dollar budget with a short window, and when the budget runs out parks the session; the demo
then waits for the window to reset and resumes the agent through a registered resumer.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SYSTEM_PROMPT = (
    "You are a careful senior engineer working in a Python repository. Read before you edit, "
    "keep changes minimal, explain what you changed and why. "
) * 12
TASK = "Fix the rounding bug in the invoice totals (src/billing/invoice.py) and explain the fix."


def _agent_loop(
    client: Any, model: str, messages: list[dict[str, Any]], tools: Any, max_steps: int
) -> str:
    from agentguard.sim.scripts import run_tools

    for _ in range(max_steps):
        response = client.chat.completions.create(
            model=model, messages=messages, tools=tools, max_tokens=300
        )
        message = response.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return message.content or ""
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tools(call)})
    return ""


def run_demo(
    console: Console, *, steps: int = 12, budget_usd: float = 0.06, model: str = "gpt-4o"
) -> int:
    """Run the demo; returns the process exit code."""
    with tempfile.TemporaryDirectory(prefix="agentguard-demo-") as home:
        previous = os.environ.get("AGENTGUARD_HOME")
        os.environ["AGENTGUARD_HOME"] = home
        try:
            return _run(console, Path(home), steps=steps, budget_usd=budget_usd, model=model)
        finally:
            if previous is None:
                os.environ.pop("AGENTGUARD_HOME", None)
            else:
                os.environ["AGENTGUARD_HOME"] = previous


def _run(console: Console, home: Path, *, steps: int, budget_usd: float, model: str) -> int:
    import openai

    from agentguard.config import GuardConfig
    from agentguard.errors import LimitExceeded, SessionParked
    from agentguard.guard import Guard
    from agentguard.pipeline import CallContext
    from agentguard.sim import SimServer
    from agentguard.sim.scripts import CODING_TOOLS, coding_agent_script

    window_s = 8
    config = GuardConfig.from_mapping(
        {
            "store": {"url": f"sqlite:///{home / 'agentguard.db'}"},
            "limits": {"max_iterations": 40, "max_tool_calls": 60},
            "parking": {"max_attempts": 10},
            "budgets": [
                {
                    "key": "demo",
                    "limit_usd": budget_usd,
                    "window": f"{window_s}s",
                    "on_exhausted": "park",
                }
            ],
            # The hand-weighted classifier, whose routine-step rule sends this short scripted
            # session's file reads to the small tier; the learned default keeps every step of
            # a debugging task on the frontier model, which this tiny budget cannot carry.
            "routing": {
                "tiers": {"small": "gpt-4o-mini", "large": "gpt-4o"},
                "classifier": "heuristic",
            },
            "trimming": {
                "max_context_tokens": 12000,
                "keep_last_turns": 3,
                "tool_output_max_tokens": 800,
            },
        },
        env={},
    )
    guard = Guard(config)
    table = Table(
        title=f"agentguard demo: a coding agent on a ${budget_usd} per {window_s}s budget"
    )
    for column in ("step", "model", "why", "in tok", "out tok", "cost", "left", "action"):
        table.add_column(
            column,
            justify="right" if column in ("step", "in tok", "out tok", "cost", "left") else "left",
        )
    rows: list[tuple[str, ...]] = []

    def observe(call: CallContext) -> None:
        usage = call.notes.get("usage")
        cost: Decimal = call.notes.get("cost_usd", Decimal(0))
        route = call.notes.get("route")
        why = ""
        if route is not None:
            classification = route.classification
            if classification is not None:
                first = classification.reasons[0].split(" (")[0] if classification.reasons else ""
                why = f"{classification.label}: {first}"[:46]
            else:
                why = (route.reasons[0] if route.reasons else "")[:46]
        trim = call.notes.get("trim")
        if trim is not None and (trim.elided_tool_outputs or trim.dropped_messages):
            why = f"{why}; trimmed {trim.tokens_before}->{trim.tokens_after}"
        remaining = guard.budget_status("demo").remaining_usd
        action = "answer"
        if call.notes.get("tool_calls"):
            action = "tools: " + ", ".join(call.notes["tool_calls"])
        rows.append(
            (
                str(call.session.iterations),
                call.model,
                why,
                str(usage.input_tokens if usage else "?"),
                str(usage.output_tokens if usage else "?"),
                f"${cost:.5f}",
                f"${remaining:.4f}" if remaining is not None else "-",
                action,
            )
        )
        console.print(
            f"  step {rows[-1][0]:>2}  {call.model:<12} in={rows[-1][3]:>6} out={rows[-1][4]:>4} "
            f"cost={rows[-1][5]}  left={rows[-1][6]}  {action}",
            highlight=False,
        )

    guard.observers.append(observe)
    with SimServer(script=coding_agent_script(steps)) as sim:
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-demo-not-a-real-key"))

        @guard.resumer("demo-agent")
        def resume_agent(parked: Any) -> str:
            console.print(
                f"\n[bold green]resuming[/] {parked.session_id} (attempt {parked.attempts + 1})"
            )
            messages = list(parked.request["messages"])
            return _agent_loop(client, parked.request["model"], messages, CODING_TOOLS, steps * 2)

        console.print(
            f"[bold]Task:[/] {TASK}\n[dim]sim on {sim.base_url}, store in a temporary directory[/]\n"
        )
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": TASK},
        ]
        answer = ""
        try:
            with guard.session("demo-task", budget_key="demo", resumer="demo-agent"):
                answer = _agent_loop(client, model, messages, CODING_TOOLS, steps * 2)
        except SessionParked as first:
            parked: SessionParked | None = first
            while parked is not None:
                console.print(f"\n[bold yellow]parked:[/] {parked}")
                if parked.resume_at is None:
                    return 1
                wait = max(0.0, (parked.resume_at - datetime.now(UTC)).total_seconds())
                console.print(
                    f"[dim]the budget window resets in {wait:.1f}s; waiting, then resuming…[/]"
                )
                time.sleep(wait + 0.1)
                try:
                    answer = guard.parked.resume("demo-task")
                    parked = None
                except SessionParked as again:
                    parked = again
                except LimitExceeded as stopped:
                    console.print(f"\n[bold red]stopped by a limit:[/] {stopped}")
                    return 0
        except LimitExceeded as stopped:
            console.print(f"\n[bold red]stopped by a limit:[/] {stopped}")
            return 0

        record = guard.parked.store.find("demo-task")
    for row in rows:
        table.add_row(*row)
    console.print()
    console.print(table)
    status = guard.budget_status("demo")
    console.print(f"\n[bold]Answer:[/] {answer[:300]}")
    console.print(
        f"Budget 'demo' this window: spent ${status.spent_usd}, reserved ${status.reserved_usd}, limit ${status.limit_usd}."
    )
    if record is not None:
        console.print(
            f"Parked record: state={record.state}, attempts={record.attempts}, history: "
            + " -> ".join(t.state for t in record.history)
        )
    return 0
