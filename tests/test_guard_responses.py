"""The Responses API guarded like chat completions, through the real openai SDK over loopback:
budgets judged by the sim's own bill, ``previous_response_id`` chains, streams, tool-call
limits, parking and the replay resumer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import openai
import pytest
from helpers import broken_json_from

from agentguard import BudgetExceeded, Guard, LimitExceeded, SessionParked, UnmeteredRequest
from agentguard.sim import Reply, SimServer, ToolCall
from agentguard.sim.scripts import CODING_TOOLS, coding_agent_script, run_tools

TOOLS = [{"type": "function", **tool["function"]} for tool in CODING_TOOLS]
BUDGET = [{"key": "work", "limit_usd": 0.05, "window": "1h"}]
QUESTION = "Fix the tax bug in the invoice module, then run the tests."


def wrapped(guard: Guard, sim: SimServer) -> openai.OpenAI:
    return guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-resp", max_retries=0))


def attempts(sim: SimServer) -> int:
    return sum(1 for request in sim.requests if request.path == "/v1/responses")


def run_chained_agent(client: openai.OpenAI, *, stream: bool = False) -> int:
    """The coding agent over chained responses; returns the number of model calls."""

    def create(**kwargs: Any) -> Any:
        if not stream:
            return client.responses.create(**kwargs)
        with client.responses.stream(**kwargs) as events:
            return events.get_final_response()

    response = create(model="gpt-4o", input=QUESTION, tools=TOOLS, max_output_tokens=200)
    calls = 1
    while any(item.type == "function_call" for item in response.output):
        outputs = [
            {"type": "function_call_output", "call_id": item.call_id, "output": run_tools(item)}
            for item in response.output
            if item.type == "function_call"
        ]
        response = create(
            model="gpt-4o",
            previous_response_id=response.id,
            input=outputs,
            tools=TOOLS,
            max_output_tokens=200,
        )
        calls += 1
    return calls


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_chained_agent_spends_what_the_provider_bills(
    make_guard: Callable[..., Guard], stream: bool
) -> None:
    with SimServer(script=coding_agent_script(steps=5)) as sim:
        guard = make_guard(budgets=BUDGET)
        client = wrapped(guard, sim)
        with guard.session("coder", budget_key="work") as session:
            calls = run_chained_agent(client, stream=stream)
        sim.wait_idle()
        billed = sim.billed_usd()
        assert calls == attempts(sim) >= 4
        assert session.iterations == calls
        assert billed > 0
        # Settled at what the provider reported: within 1% of its bill.
        assert abs(session.spent_usd - billed) <= billed / 100
        guard.close()
        assert guard.budget_status("work").spent_usd == session.spent_usd


def test_chained_calls_reserve_the_conversation_the_provider_bills_again(
    make_guard: Callable[..., Guard],
) -> None:
    """A budget just above what the first calls cost: the chain must stop before a call whose
    re-billed conversation would overspend, never after the provider billed it."""
    with SimServer(script=coding_agent_script(steps=8)) as sim:
        limit = Decimal("0.03")
        guard = make_guard(budgets=[{"key": "small", "limit_usd": float(limit), "window": "1h"}])
        client = wrapped(guard, sim)
        with guard.session("coder", budget_key="small"), pytest.raises(BudgetExceeded):
            run_chained_agent(client)
        sim.wait_idle()
        assert 0 < sim.billed_usd() <= limit
        assert attempts(sim) >= 2


def test_each_chained_call_reserves_at_least_what_the_provider_bills(
    make_guard: Callable[..., Guard],
) -> None:
    """The judge is the sim's bill of each call: a reservation that left out the conversation
    the provider bills again would fall below it from the second call on."""
    with SimServer(script=coding_agent_script(steps=6)) as sim:
        guard = make_guard(budgets=[{"key": "work", "limit_usd": 1, "window": "1h"}])
        reserved: list[Decimal] = []
        guard.observers.append(lambda call: reserved.append(call.worst_case_usd))
        client = wrapped(guard, sim)
        bills: list[Decimal] = []
        with guard.session("coder", budget_key="work"):
            # A tight output cap: the reservation is mostly input, as it is for long agents.
            response = client.responses.create(
                model="gpt-4o", input=QUESTION, tools=TOOLS, max_output_tokens=100
            )
            bills.append(sim.billed_usd())
            while any(item.type == "function_call" for item in response.output):
                outputs = [
                    {
                        "type": "function_call_output",
                        "call_id": item.call_id,
                        "output": run_tools(item),
                    }
                    for item in response.output
                    if item.type == "function_call"
                ]
                response = client.responses.create(
                    model="gpt-4o",
                    previous_response_id=response.id,
                    input=outputs,
                    tools=TOOLS,
                    max_output_tokens=100,
                )
                bills.append(sim.billed_usd() - sum(bills))
        assert len(bills) == len(reserved) >= 4
        for step, (billed, bound) in enumerate(zip(bills, reserved, strict=True)):
            assert 0 < billed <= bound, f"step {step}: billed {billed} > reserved {bound}"


def test_an_unknown_previous_response_is_refused_under_a_budget(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=BUDGET)
    client = wrapped(guard, sim)
    with guard.session(budget_key="work"), pytest.raises(UnmeteredRequest) as caught:
        client.responses.create(
            model="gpt-4o", input="go on", previous_response_id="resp_elsewhere"
        )
    assert caught.value.field == "previous_response_id"
    assert "did not settle" in str(caught.value)
    assert sim.requests == []
    # Without a budget the guard stays out of the way (the sim answers for itself).
    free = make_guard()
    with pytest.raises(openai.BadRequestError):
        wrapped(free, sim).responses.create(
            model="gpt-4o", input="go on", previous_response_id="resp_elsewhere"
        )


def test_a_response_is_known_to_every_guard_on_the_store(
    make_guard: Callable[..., Guard],
) -> None:
    with SimServer(script=["first", "second"]) as sim:
        first_guard = make_guard(budgets=BUDGET)
        first = wrapped(first_guard, sim).responses.create(
            model="gpt-4o", input="hello", max_output_tokens=20
        )
        # Another process on the same store continues it (a fresh Guard: nothing in memory).
        other = make_guard(budgets=BUDGET)
        with other.session("later", budget_key="work") as session:
            second = wrapped(other, sim).responses.create(
                model="gpt-4o", input="more", previous_response_id=first.id, max_output_tokens=20
            )
        assert second.output_text == "second"
        assert session.spent_usd > 0


def test_the_output_cap_is_set_when_the_caller_sets_none(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=BUDGET, limits={"default_max_output_tokens": 64})
    with guard.session(budget_key="work"):
        wrapped(guard, sim).responses.create(model="gpt-4o", input="hello")
    assert sim.requests[-1].body["max_output_tokens"] == 64


def test_a_budget_too_small_for_one_call_refuses_before_sending(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=[{"key": "tiny", "limit_usd": 0.000001, "window": "1h"}])
    with guard.session(budget_key="tiny"), pytest.raises(BudgetExceeded) as caught:
        wrapped(guard, sim).responses.create(model="gpt-4o", input="hello", max_output_tokens=50)
    assert "max_output_tokens=50 set by the caller" in str(caught.value)
    assert sim.requests == []


def test_tool_call_limits_see_function_calls(make_guard: Callable[..., Guard]) -> None:
    loop = [Reply(tool_calls=[ToolCall("read_file", {"path": "a.py"})])] * 10
    with SimServer(script=loop) as sim:
        guard = make_guard(limits={"loop_threshold": 3})
        client = wrapped(guard, sim)
        with guard.session("looper"), pytest.raises(LimitExceeded) as caught:
            response = client.responses.create(model="gpt-4o", input="read", tools=TOOLS)
            for _ in range(9):
                response = client.responses.create(
                    model="gpt-4o",
                    previous_response_id=response.id,
                    input=[
                        {
                            "type": "function_call_output",
                            "call_id": response.output[0].call_id,  # type: ignore[union-attr]
                            "output": "same",
                        }
                    ],
                    tools=TOOLS,
                )
        assert caught.value.limit == "loop_threshold"
        assert attempts(sim) <= 4


def test_a_rate_limit_parks_after_one_attempt_and_replays_as_a_response(
    make_guard: Callable[..., Guard],
) -> None:
    with SimServer(script=["Resumed answer."]) as sim:
        guard = make_guard(parking={"wait_inline_max_s": 0})
        client = wrapped(guard, sim)
        sim.rate_limit_next(1, retry_after=3600)
        with guard.session("chained", resumer="replay"), pytest.raises(SessionParked) as caught:
            client.responses.create(model="gpt-4o", input="hello", max_output_tokens=30)
        assert attempts(sim) == 1
        record = guard.parked.get("chained")
        assert record.dialect == "openai_responses"
        assert record.request["input"] == "hello"
        assert caught.value.resume_at is not None
        result = guard.parked.resume("chained")
        assert result.output_text == "Resumed answer."
        assert guard.parked.get("chained").state == "resumed"
        assert attempts(sim) == 2


def test_the_async_client_is_guarded(make_guard: Callable[..., Guard], sim: SimServer) -> None:
    guard = make_guard(budgets=BUDGET)
    client = guard.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-resp"))

    async def run() -> Decimal:
        async with guard.session("async", budget_key="work") as session:
            await client.responses.create(model="gpt-4o-mini", input="hello", max_output_tokens=90)
            async with client.responses.stream(
                model="gpt-4o-mini", input="again", max_output_tokens=90
            ) as stream:
                await stream.get_final_response()
            return session.spent_usd

    spent = asyncio.run(run())
    sim.wait_idle()
    assert attempts(sim) == 2
    assert abs(spent - sim.billed_usd()) <= sim.billed_usd() / 100


def test_routing_picks_the_tier_for_a_responses_step(make_guard: Callable[..., Guard]) -> None:
    with SimServer(script=["ok"]) as sim:
        guard = make_guard(
            routing={"tiers": {"small": "gpt-4o-mini", "large": "gpt-4o"}},
        )
        client = wrapped(guard, sim)
        with guard.session("router"):
            client.responses.create(model="gpt-4o", input="Thanks, that is all!")
        assert sim.requests[-1].body["model"] == "gpt-4o-mini"


def test_a_response_stored_false_is_not_remembered(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    """The provider keeps no response stored ``false``, so nothing may continue it: the guard
    writes nothing for it, and refuses a call naming it under a budget."""
    guard = make_guard(budgets=BUDGET)
    client = wrapped(guard, sim)
    with guard.session(budget_key="work"):
        first = client.responses.create(
            model="gpt-4o-mini", input="hello", max_output_tokens=20, store=False
        )
        with pytest.raises(UnmeteredRequest, match="previous_response_id"):
            client.responses.create(
                model="gpt-4o-mini", input="more", previous_response_id=first.id
            )
    with guard.store.cursor(write=False) as cursor:
        assert cursor.all("SELECT response_id FROM agentguard_response_contexts", {}) == []


def test_a_broken_function_call_from_the_small_tier_is_escalated(
    make_guard: Callable[..., Guard],
) -> None:
    with SimServer(script=broken_json_from("gpt-4o-mini")) as sim:
        guard = make_guard(
            routing={"tiers": {"small": "gpt-4o-mini", "large": "gpt-4o"}},
            budgets=BUDGET,
        )
        client = wrapped(guard, sim)
        with guard.session("escalate", budget_key="work") as session:
            response = client.responses.create(
                model="gpt-4o", input="Please read a.py.", tools=TOOLS
            )
        billed = sim.billed_usd()
    assert [r.body["model"] for r in sim.requests if r.body] == ["gpt-4o-mini", "gpt-4o"]
    calls = [item for item in response.output if item.type == "function_call"]
    assert response.model == "gpt-4o" and json.loads(calls[0].arguments) == {"path": "a.py"}
    assert session.state.retries == 1 and session.iterations == 1
    assert session.state.tool_calls == 1  # the broken call is paid for, not counted as a step
    # Both attempts were billed, and both are charged.
    assert sim.billed_calls() == 2
    assert abs(session.spent_usd - billed) <= billed / 100
