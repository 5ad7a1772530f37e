"""Routing inside the pipeline, over the sim on loopback: per-step tiers, the caller's model as
the ceiling, budget pressure, escalation of a failed cheap step, and downgrade on a short
budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from helpers import broken_json_from

from agentguard.guard import Guard
from agentguard.sim import SimServer

TIERS = {"small": "gpt-4o-mini", "large": "gpt-4o"}
# The pipeline's mechanics (tiers, ceiling, pressure, escalation) are tested with the
# hand-weighted classifier, whose labels for these steps are fixed; the learned default is
# tested through the pipeline in test_routing_learned.py.
ROUTING = {"tiers": TIERS, "classifier": "heuristic"}
EASY = [
    {
        "role": "user",
        "content": "Classify the sentiment of this review as positive or negative: 'Great phone, love it.'",
    }
]
HARD = [
    {
        "role": "user",
        "content": (
            "Our distributed job scheduler deadlocks under load. Here is the traceback:\n"
            'Traceback (most recent call last):\n  File "scheduler/lease.py", line 88, in acquire\n'
            "    with self._lock:\nRuntimeError: deadlock detected\n"
            "Debug why the lease renewal and the worker heartbeat can deadlock, design a fix across "
            "scheduler/lease.py, scheduler/worker.py and scheduler/store.py, and prove it cannot "
            "starve a worker."
        ),
    }
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]


def models_sent(sim: SimServer) -> list[str]:
    return [r.body["model"] for r in sim.requests if r.body]


def test_easy_steps_go_to_the_small_tier_hard_ones_stay(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(routing=ROUTING)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    with guard.session() as session:
        easy = client.chat.completions.create(model="gpt-4o", messages=EASY)
        hard = client.chat.completions.create(model="gpt-4o", messages=HARD)
    assert models_sent(sim) == ["gpt-4o-mini", "gpt-4o"]
    assert easy.model == "gpt-4o-mini" and hard.model == "gpt-4o"
    assert session.iterations == 2


def test_the_callers_model_is_the_ceiling(sim: SimServer, make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(routing=ROUTING)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    with guard.session():
        client.chat.completions.create(model="gpt-4o-mini", messages=HARD)
    assert models_sent(sim) == ["gpt-4o-mini"]


def test_force_model_pins_a_session(sim: SimServer, make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(routing=ROUTING)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    with guard.session(force_model="gpt-4.1-mini"):
        client.chat.completions.create(model="gpt-4o", messages=HARD)
    assert models_sent(sim) == ["gpt-4.1-mini"]


def test_budget_pressure_caps_the_tier(sim: SimServer, make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(
        routing={**ROUTING, "pressure": [[0.5, "small"]]},
        budgets=[{"key": "team", "limit_usd": 0.05, "window": "1h"}],
    )
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    with guard.session(budget_key="team"):
        client.chat.completions.create(model="gpt-4o", messages=HARD, max_tokens=50)
        assert models_sent(sim)[-1] == "gpt-4o"
        # spend over half the budget outside routing, then the same hard step is capped
        reservation = guard.ledger.reserve(
            [guard.budget_line("team")], guard.budget_status("team").limit_usd * 6 / 10
        )
        guard.ledger.settle(reservation, reservation.amount_usd)
        client.chat.completions.create(model="gpt-4o", messages=HARD, max_tokens=50)
    assert models_sent(sim)[-1] == "gpt-4o-mini"


@pytest.mark.parametrize("max_tokens", [None, 200], ids=["output-cap-set", "callers-own-cap"])
def test_a_failed_cheap_step_is_escalated_and_counted_as_a_retry(
    make_guard: Callable[..., Guard], max_tokens: int | None
) -> None:
    # With the caller's own cap, escalating to the caller's model makes the body equal to what
    # the caller sent: that attempt must carry the caller's model, not the rewrite before it.
    with SimServer(script=broken_json_from("gpt-4o-mini")) as sim:
        guard = make_guard(routing=ROUTING)
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
        cap = {} if max_tokens is None else {"max_tokens": max_tokens}
        with guard.session() as session:
            response = client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "Read a.py and summarise it briefly."}],
                tools=TOOLS,
                **cap,
            )
    assert models_sent(sim) == ["gpt-4o-mini", "gpt-4o"]
    assert response.model == "gpt-4o"
    assert response.choices[0].message.tool_calls is not None
    assert session.state.retries == 1 and session.iterations == 1
    assert session.state.tool_calls == 1  # the broken call is paid for, not counted as a step


def test_downgrade_when_the_frontier_model_does_not_fit(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(
        routing=ROUTING,
        budgets=[{"key": "tight", "limit_usd": 0.002, "window": "1h", "on_exhausted": "downgrade"}],
    )
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    with guard.session(budget_key="tight"):
        # gpt-4o's worst case (1000 output tokens at $10/M) is $0.01: over the limit; mini fits
        client.chat.completions.create(model="gpt-4o", messages=HARD, max_tokens=1000)
    assert models_sent(sim) == ["gpt-4o-mini"]


def test_guard_route_is_pure_and_explains_itself(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(routing=ROUTING)
    decision = guard.route(model="gpt-4o", messages=EASY)
    assert decision.model == "gpt-4o-mini" and decision.tier == "small"
    assert decision.reasons
    off = make_guard().route(model="gpt-4o", messages=EASY)
    assert off.model == "gpt-4o"


def test_summarize_strategy_replaces_dropped_turns_with_a_small_model_summary(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(
        routing=ROUTING,
        trimming={"max_context_tokens": 1500, "keep_last_turns": 1, "strategy": "summarize"},
    )
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}, *EASY]
    for turn in range(6):
        messages.append({"role": "assistant", "content": f"Noted part {turn}. " + "detail " * 150})
        messages.append({"role": "user", "content": f"Part {turn + 1}: " + "more text " * 100})
    with guard.session() as session:
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=50)
    bodies = [r.body for r in sim.requests if r.body]
    summary_calls = [
        b for b in bodies if "Summarise this part" in str(b["messages"][0].get("content"))
    ]
    assert len(summary_calls) == 1 and summary_calls[0]["model"] == "gpt-4o-mini"
    main = bodies[-1]
    assert len(main["messages"]) < len(messages)
    assert any("Simulated answer" in str(m.get("content")) for m in main["messages"])  # the summary
    assert session.iterations == 2  # the summary call is counted and paid for
