"""The guard around the real anthropic SDK, over real HTTP to the sim provider on loopback.

Money is judged by the sim's own bill (:meth:`SimServer.billed_usd`), which prices Claude models
from genai-prices' Anthropic data, cache reads and 5-minute / 1-hour cache writes included.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from agentguard import (
    BudgetExceeded,
    LoopDetected,
    PricingError,
    RetryLimitExceeded,
    SessionParked,
    UnmeteredRequest,
)
from agentguard.engine import CallContext
from agentguard.guard import Guard
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard.tokens import CLAUDE_ESTIMATE_FACTOR

KEY = "sk-ant-test-secret-key-0001"
HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-6"
TOOLS = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]
# Long enough for the sim to cache (its shortest cached prefix is 1024 tokens).
LONG_RULES = " ".join(f"Rule {n}: answer briefly, cite the file you read." for n in range(160))


def system(ttl: str | None) -> list[dict[str, Any]]:
    block: dict[str, Any] = {"type": "text", "text": LONG_RULES}
    if ttl is not None:
        block["cache_control"] = {"type": "ephemeral", "ttl": ttl}
    return [block]


def attempts(sim: SimServer) -> int:
    return sum(1 for r in sim.requests if r.path.rstrip("/").endswith("/v1/messages"))


def client_for(guard: Guard, sim: SimServer, **kwargs: Any) -> anthropic.Anthropic:
    return guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=KEY, **kwargs))


def agent_step(
    client: anthropic.Anthropic, messages: list[dict[str, Any]], ttl: str | None, how: str
) -> anthropic.types.Message:
    """One step of a tool loop, sent with ``messages.create`` or ``messages.stream``."""
    if ttl is not None:
        # A 5-minute breakpoint on the newest turn too: the conversation after the system
        # prompt is written to the cache at the default lifetime.
        last = messages[-1]
        content = last["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        marked = [*blocks[:-1], {**blocks[-1], "cache_control": {"type": "ephemeral"}}]
        messages = [*messages[:-1], {**last, "content": marked}]
    request: dict[str, Any] = {
        "model": HAIKU,
        "max_tokens": 200,
        "system": system(ttl),
        "tools": TOOLS,
        "messages": messages,
    }
    if how == "create":
        return client.messages.create(**request)
    with client.messages.stream(**request) as stream:
        for _ in stream.text_stream:
            pass
        return stream.get_final_message()


def follow_up(messages: list[dict[str, Any]], message: anthropic.types.Message) -> None:
    """Append the assistant turn and a result for each tool call it made."""
    messages.append({"role": "assistant", "content": [b.model_dump() for b in message.content]})
    results = [
        {"type": "tool_result", "tool_use_id": block.id, "content": "def main(): return 42"}
        for block in message.content
        if block.type == "tool_use"
    ]
    messages.append({"role": "user", "content": results or "go on"})


def test_wrap_returns_the_sdk_types_and_errors_pass_the_sdk_unretried(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    sync = client_for(guard, sim)
    asynchronous = guard.wrap(anthropic.AsyncAnthropic(base_url=sim.url, api_key=KEY))
    assert type(sync) is anthropic.Anthropic
    assert type(asynchronous) is anthropic.AsyncAnthropic
    with guard.session() as session:
        message = sync.messages.create(
            model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
        )
    assert message.content[0].type == "text" and message.usage.output_tokens > 0
    assert session.spent_usd == sim.billed_usd() > 0
    # An unpriced Claude model fails closed, as itself and as an anthropic error, sent never.
    with guard.session(), pytest.raises(PricingError) as caught:
        sync.messages.create(
            model="claude-imaginary-9", max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )
    assert isinstance(caught.value, anthropic.AnthropicError)
    assert "claude-imaginary-9" in str(caught.value) and "pricing.overrides" in str(caught.value)
    assert attempts(sim) == 1


def test_budgeted_tool_loop_with_cache_writes_spends_what_the_provider_bills(
    make_guard: Callable[..., Guard],
) -> None:
    """Several steps, tool use, 5-minute and 1-hour cache writes, plain and streamed: the
    session's spend matches the sim's bill, which never passes the limit."""
    limit = Decimal("0.02")
    script = [Reply(tool_calls=[ToolCall("read_file", {"path": f"f{n}.py"})]) for n in range(60)]
    with SimServer(script=script) as sim:
        guard = make_guard(budgets=[{"key": "claude", "limit_usd": float(limit), "window": "1h"}])
        client = client_for(guard, sim)
        usages: list[Any] = []
        guard.observers.append(lambda call: usages.append(call.notes["usage"]))
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Find the answer."}]
        ways = ["create", "stream", "create", "stream"]
        ttls = ["1h", "1h", "5m", None]
        with guard.session("claude-loop", budget_key="claude") as session:
            for how, ttl in zip(ways, ttls, strict=True):
                follow_up(messages, agent_step(client, messages, ttl, how))
            billed = sim.billed_usd()
            assert billed > 0
            assert abs(session.spent_usd - billed) <= billed / 100
            # Both cache lifetimes were written (billed above the input price) and read.
            assert any(usage.cache_write_1h_tokens > 0 for usage in usages)
            assert any(usage.cache_write_tokens > usage.cache_write_1h_tokens for usage in usages)
            assert any(usage.cached_input_tokens > 0 for usage in usages)
            with pytest.raises(BudgetExceeded) as caught:
                for step in range(60):
                    follow_up(
                        messages, agent_step(client, messages, ttls[step % 4], ways[step % 4])
                    )
        assert caught.value.key == "claude"
    assert sim.billed_usd() <= limit
    assert abs(session.spent_usd - sim.billed_usd()) <= sim.billed_usd() / 100
    guard.close()
    assert guard.budget_status("claude").spent_usd <= limit


def test_create_with_stream_true_is_settled_from_the_streams_usage(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(budgets=[{"key": "claude", "limit_usd": 1.0, "window": "1h"}])
    client = client_for(guard, sim)
    with guard.session(budget_key="claude") as session:
        with client.messages.create(
            model=HAIKU,
            max_tokens=100,
            system=system("5m"),
            messages=[{"role": "user", "content": "Stream please"}],
            stream=True,
        ) as events:
            kinds = [event.type for event in events]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        assert session.spent_usd == sim.billed_usd() > 0
        assert guard.budget_status("claude").in_flight_usd == 0


def test_async_client_plain_and_streams(sim: SimServer, make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(budgets=[{"key": "claude", "limit_usd": 1.0, "window": "1h"}])
    client = guard.wrap(anthropic.AsyncAnthropic(base_url=sim.url, api_key=KEY))

    async def run() -> None:
        async with guard.session(budget_key="claude") as session:
            message = await client.messages.create(
                model=HAIKU, max_tokens=60, messages=[{"role": "user", "content": "Hi"}]
            )
            assert message.content[0].type == "text"
            async with client.messages.stream(
                model=HAIKU, max_tokens=60, messages=[{"role": "user", "content": "Hi again"}]
            ) as stream:
                async for _ in stream.text_stream:
                    pass
            events = await client.messages.create(
                model=HAIKU,
                max_tokens=60,
                messages=[{"role": "user", "content": "Once more"}],
                stream=True,
            )
            async for _ in events:
                pass
            assert session.iterations == 3
            assert session.spent_usd == sim.billed_usd() > 0

    asyncio.run(run())


def test_the_first_claude_estimate_errs_high_then_recalibrates(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    seen: list[tuple[int, int]] = []

    def observe(call: CallContext) -> None:
        seen.append((call.input_tokens, call.notes["usage"].input_tokens))

    guard.observers.append(observe)
    text = "Summarise the design of a write-ahead log for a key-value store in detail. " * 30
    with guard.session():
        for step in range(6):
            client.messages.create(
                model=HAIKU,
                max_tokens=30,
                system=system(None),
                messages=[{"role": "user", "content": f"{text} (step {step})"}],
            )
    estimated, reported = seen[0]
    assert estimated >= reported
    calibration = guard.counter.calibration(HAIKU)
    assert calibration.samples == 6 and not calibration.exact
    assert calibration.factor < CLAUDE_ESTIMATE_FACTOR
    # Still conservative after calibrating: the estimate stays at or above the reported input.
    assert all(estimate >= usage for estimate, usage in seen)


def test_a_429_parks_after_one_attempt_with_the_reset_from_anthropics_headers(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 1.0})
    client = client_for(guard, sim)
    sim.rate_limit_next(3, reset_tokens=1800)
    before = datetime.now(UTC)
    with guard.session("limited"), pytest.raises(SessionParked) as caught:
        client.messages.create(
            model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )
    assert isinstance(caught.value, anthropic.AnthropicError)
    assert attempts(sim) == 1
    record = guard.parked.get("limited")
    assert record.dialect == "anthropic_messages"
    assert record.reason.kind == "rate_limit" and record.reason.status == 429
    assert record.reason.reset_source == "anthropic-ratelimit-tokens-reset"
    assert record.resume_at is not None
    waited = (record.resume_at - before).total_seconds()
    assert 1790 <= waited <= 1830


def test_a_long_429_without_parking_is_handed_back_once_and_the_sdk_does_not_retry_it(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(parking={"enabled": False})
    client = client_for(guard, sim)  # the SDK would retry a 429 twice on its own
    sim.rate_limit_next(5, retry_after=3600)
    with guard.session(), pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(
            model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.response.headers["retry-after"] == "3600"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert attempts(sim) == 1


def test_529_overloaded_is_retried_and_413_is_not(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(limits={"max_retries": 3})
    client = client_for(guard, sim)
    sim.fail_next(2, status=529)
    with guard.session() as session:
        message = client.messages.create(
            model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )
    assert message.content and attempts(sim) == 3 and session.state.retries == 2
    sim.clear()
    sim.fail_next(1, status=413)
    with guard.session(), pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(
            model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 413
    assert "request_too_large" in str(caught.value.body)
    assert attempts(sim) == 1  # neither the guard nor the SDK sent it again


def test_overload_past_the_retry_limit_is_one_error_and_the_sdk_adds_no_attempt(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(limits={"max_retries": 2})
    client = client_for(guard, sim)  # the SDK's own max_retries (2) stays on
    sim.fail_next(10, status=529)
    with guard.session(), pytest.raises(RetryLimitExceeded) as caught:
        client.messages.create(
            model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )
    assert isinstance(caught.value, anthropic.AnthropicError)
    assert "529" in str(caught.value) and "Overloaded" in str(caught.value)
    assert attempts(sim) == 3


def test_loop_detection_reads_tool_use_blocks(make_guard: Callable[..., Guard]) -> None:
    same = Reply(tool_calls=[ToolCall("read_file", {"path": "a.py"})])
    with SimServer(script=[same] * 10) as sim:
        guard = make_guard(limits={"loop_threshold": 3})
        client = client_for(guard, sim)
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Read a.py"}]
        with guard.session("looper"), pytest.raises(LoopDetected) as caught:
            for step in range(5):
                follow_up(
                    messages, agent_step(client, messages, None, ("create", "stream")[step % 2])
                )
    assert caught.value.tool_name == "read_file" and caught.value.observed == 3
    assert attempts(sim) == 3


def test_import_agentguard_does_not_import_the_anthropic_sdk() -> None:
    code = (
        "import sys, agentguard; from agentguard import Guard; import agentguard.transport;"
        "print('anthropic' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "False"


def test_routing_picks_claude_tiers(sim: SimServer, make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(
        routing={"tiers": {"small": HAIKU, "large": SONNET}, "classifier": "heuristic"}
    )
    client = client_for(guard, sim)
    easy = "Classify the sentiment of this review as positive or negative: 'Great phone.'"
    hard = (
        "Our distributed job scheduler deadlocks under load. Here is the traceback:\n"
        'Traceback (most recent call last):\n  File "scheduler/lease.py", line 88, in acquire\n'
        "    with self._lock:\nRuntimeError: deadlock detected\n"
        "Debug why the lease renewal and the worker heartbeat can deadlock, design a fix across "
        "scheduler/lease.py, scheduler/worker.py and scheduler/store.py, and prove it cannot "
        "starve a worker."
    )
    with guard.session():
        small = client.messages.create(
            model=SONNET, max_tokens=50, messages=[{"role": "user", "content": easy}]
        )
        large = client.messages.create(
            model=SONNET, max_tokens=50, messages=[{"role": "user", "content": hard}]
        )
    sent = [r.body["model"] for r in sim.requests if r.body]
    assert sent == [HAIKU, SONNET]
    assert small.model == HAIKU and large.model == SONNET


def test_parked_anthropic_call_is_replayed_with_messages_create(
    make_guard: Callable[..., Guard], tmp_path: Path
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=0.0005, window_s=1.5)})
    with SimServer(gateway=gateway) as sim:
        guard = make_guard(parking={"wait_inline_max_s": 0.0})
        client = client_for(guard, sim)
        results: list[Any] = []
        guard.on_resumed(lambda parked, response: results.append(response))
        with guard.session("claude-agent", budget_key="team"), pytest.raises(SessionParked):
            for step in range(40):
                client.messages.create(
                    model=SONNET,
                    max_tokens=40,
                    messages=[{"role": "user", "content": f"step {step}"}],
                )
        record = guard.parked.get("claude-agent")
        assert record.dialect == "anthropic_messages"
        assert record.reason.kind == "budget_window" and record.request["model"] == SONNET
        # The gateway refused in Anthropic's shape, with Anthropic's limit headers.
        assert record.reason.error_type == "budget_exceeded"
        assert "anthropic-ratelimit-requests-reset" in record.reason.headers
        assert not any(name.startswith("x-ratelimit") for name in record.reason.headers)
        sent = attempts(sim)
        assert record.resume_at is not None
        time.sleep(max(0.0, (record.resume_at - datetime.now(UTC)).total_seconds()) + 0.05)
        response = guard.parked.run("claude-agent", owner="test")
    assert isinstance(response, anthropic.types.Message)
    assert results == [response] and attempts(sim) == sent + 1
    done = guard.parked.get("claude-agent")
    assert done.state == "resumed" and done.result is not None and done.result["content"]
    guard.close()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_count_tokens_is_free_and_unmeterable_requests_are_refused_under_a_budget(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(budgets=[{"key": "claude", "limit_usd": 1.0, "window": "1h"}])
    client = client_for(guard, sim)
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"},
    }
    with guard.session(budget_key="claude") as session:
        counted = client.messages.count_tokens(
            model=HAIKU, messages=[{"role": "user", "content": "How many?"}]
        )
        assert counted.input_tokens > 0
        with pytest.raises(UnmeteredRequest) as caught:
            client.messages.create(
                model=HAIKU,
                max_tokens=50,
                messages=[{"role": "user", "content": [pdf, {"type": "text", "text": "Sum up"}]}],
            )
        assert "document" in str(caught.value)
        with pytest.raises(UnmeteredRequest):
            client.messages.create(
                model=HAIKU,
                max_tokens=50,
                tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
                messages=[{"role": "user", "content": "Search"}],
            )
        with pytest.raises(UnmeteredRequest):
            client.messages.batches.create(
                requests=[
                    {
                        "custom_id": "a",
                        "params": {
                            "model": HAIKU,
                            "max_tokens": 10,
                            "messages": [{"role": "user", "content": "x"}],
                        },
                    }
                ]
            )
    assert attempts(sim) == 0 and session.spent_usd == 0
    assert sim.billed_usd() == 0


def test_a_stream_cut_before_its_usage_is_charged_at_its_worst_case(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(budgets=[{"key": "claude", "limit_usd": 1.0, "window": "1h"}])
    client = client_for(guard, sim, max_retries=0)
    sim.cut_stream_next(1, after_chunks=3)
    with guard.session(budget_key="claude") as session:
        stream = client.messages.stream(
            model=HAIKU, max_tokens=100, messages=[{"role": "user", "content": "x"}]
        )
        with pytest.raises(httpx2.TransportError), stream as events:
            for _ in events.text_stream:
                pass
        assert sim.billed_usd() > 0
        assert session.spent_usd >= sim.billed_usd()
        assert session.spent_usd < sim.billed_usd() + Decimal("0.01")


def test_a_refusal_from_haiku_is_escalated_to_sonnet(make_guard: Callable[..., Guard]) -> None:
    def reply(body: dict[str, Any]) -> Reply:
        if body["model"] == HAIKU:
            return Reply(content="", finish_reason="refusal")
        return Reply(tool_calls=[ToolCall("read_file", {"path": "a.py"})])

    with SimServer(script=reply) as sim:
        guard = make_guard(
            routing={"tiers": {"small": HAIKU, "large": SONNET}, "classifier": "heuristic"},
            budgets=[{"key": "work", "limit_usd": 1, "window": "1h"}],
        )
        client = client_for(guard, sim)
        tools = [
            {
                "name": "read_file",
                "description": "Read a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }
        ]
        with guard.session("escalate", budget_key="work") as session:
            message = client.messages.create(
                model=SONNET,
                max_tokens=200,
                tools=tools,
                messages=[{"role": "user", "content": "Thanks! Now read a.py for me."}],
            )
        billed = sim.billed_usd()
    assert [r.body["model"] for r in sim.requests if r.body] == [HAIKU, SONNET]
    assert message.model == SONNET and message.stop_reason == "tool_use"
    assert session.state.retries == 1 and session.iterations == 1
    assert sim.billed_calls() == 2
    assert abs(session.spent_usd - billed) <= billed / 100


def test_a_tool_the_request_did_not_offer_is_escalated(make_guard: Callable[..., Guard]) -> None:
    def reply(body: dict[str, Any]) -> Reply:
        if body["model"] == HAIKU:
            return Reply(tool_calls=[ToolCall("delete_everything", {})])
        return Reply(content="Here is a.py summarised.")

    with SimServer(script=reply) as sim:
        guard = make_guard(
            routing={"tiers": {"small": HAIKU, "large": SONNET}, "classifier": "heuristic"}
        )
        client = client_for(guard, sim)
        with guard.session("escalate-tool"):
            message = client.messages.create(
                model=SONNET,
                max_tokens=200,
                tools=[{"name": "read_file", "input_schema": {"type": "object"}}],
                messages=[{"role": "user", "content": "Thanks! Now read a.py for me."}],
            )
    assert [r.body["model"] for r in sim.requests if r.body] == [HAIKU, SONNET]
    assert message.content[0].type == "text"
