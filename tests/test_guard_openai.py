"""The guard around the real openai SDK, over real HTTP to the sim provider on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from agentguard import (
    AgentGuardError,
    BudgetExceeded,
    IterationLimitExceeded,
    LoopDetected,
    PricingError,
    RetryLimitExceeded,
)
from agentguard.guard import Guard
from agentguard.pricing import Usage, default_pricer
from agentguard.sim import Reply, SimServer, ToolCall

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
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


def chat_attempts(sim: SimServer) -> int:
    return sum(1 for r in sim.requests if r.path.endswith("/chat/completions"))


def client_for(guard: Guard, sim: SimServer, **kwargs: object) -> openai.OpenAI:
    return guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test-secret-key", **kwargs))


def test_wrap_returns_the_sdk_types_and_counts(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    raw = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
    client = guard.wrap(raw)
    assert type(client) is openai.OpenAI
    assert raw._client is not client._client  # the original is untouched
    with guard.session("t1") as session:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert type(response) is openai.types.chat.ChatCompletion
        assert response.usage is not None
        expected = default_pricer().cost("gpt-4o-mini", Usage.from_openai(response.usage))  # type: ignore[arg-type]
        assert session.iterations == 1
        assert session.spent_usd == expected > 0
    status = guard.budget_status("default")
    assert status.spent_usd == expected
    assert status.reserved_usd == 0


def test_the_sdk_reads_the_answer_the_guard_decoded_and_later_reads_are_fresh(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    raw_client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
    with guard.session():
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=20
        )
        first = raw.http_response.json()
        first["choices"] = "changed by the caller"
        again = raw.http_response.json()
        parsed = raw.parse()
    # The bytes on the wire, decoded by the caller: what every read must equal.
    assert again == json.loads(raw.http_response.content)
    assert again["choices"][0]["message"]["content"] == parsed.choices[0].message.content
    assert parsed.usage is not None and parsed.usage.prompt_tokens > 0
    # Unwrapped, the same request reads the same shape of answer.
    plain = raw_client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=20
    )
    assert type(plain) is type(parsed)
    assert plain.choices[0].message.content == parsed.choices[0].message.content


def test_the_output_cap_is_added_and_a_callers_is_kept(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(limits={"default_max_output_tokens": 77})
    client = client_for(guard, sim)
    with guard.session():
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
        client.chat.completions.create(model="o4-mini", messages=MESSAGES)
    bodies = [r.body for r in sim.requests]
    assert bodies[0]["max_tokens"] == 77
    assert bodies[1]["max_tokens"] == 5
    assert bodies[2]["max_completion_tokens"] == 77 and "max_tokens" not in bodies[2]


def test_stream_is_unchanged_and_usage_is_charged(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    raw = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
    client = guard.wrap(raw)
    plain = list(raw.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    with guard.session() as session:
        guarded = list(
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        )
    # the caller asked for no usage chunk, so it gets none, exactly like the raw SDK
    assert [c.choices == [] for c in guarded] == [c.choices == [] for c in plain]
    assert all(c.usage is None for c in guarded)
    assert "".join(c.choices[0].delta.content or "" for c in guarded) == "".join(
        c.choices[0].delta.content or "" for c in plain
    )
    assert sim.requests[-1].body["stream_options"] == {"include_usage": True}
    assert session.spent_usd > 0
    assert session.state.output_tokens > 0


def test_stream_keeps_a_usage_chunk_the_caller_asked_for(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    with guard.session() as session:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert session.state.output_tokens == chunks[-1].usage.completion_tokens


def test_stream_closed_early_still_settles(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    with guard.session() as session:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        next(iter(stream))
        stream.close()
    assert session.spent_usd > 0
    assert guard.budget_status("default").reserved_usd == 0


async def test_async_client_plain_and_stream(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = guard.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test"))
    assert type(client) is openai.AsyncOpenAI
    async with guard.session("async-1") as session:
        response = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert response.choices[0].message.content
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert chunks and all(c.choices for c in chunks)
    assert session.iterations == 2
    assert guard.budget_status("default").spent_usd == session.spent_usd > 0


def test_other_endpoints_pass_through_and_with_options_stays_guarded(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    models = client.models.list()
    assert any(model.id == "gpt-4o" for model in models)
    other = client.with_options(timeout=5)
    with guard.session() as session:
        other.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert session.iterations == 1


def test_http_client_for_code_that_builds_its_own_client(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = openai.OpenAI(
        base_url=sim.base_url, api_key="sk-test", http_client=guard.http_client()
    )
    with guard.session() as session:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert session.iterations == 1 and session.spent_usd > 0


def test_max_iterations(sim: SimServer, make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(limits={"max_iterations": 2})
    client = client_for(guard, sim)
    with guard.session("loop-1"):
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(IterationLimitExceeded) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.limit == "max_iterations" and caught.value.value == 2
    assert "loop-1" in str(caught.value) and "max_iterations=2" in str(caught.value)
    assert chat_attempts(sim) == 2  # the third call never left the process


def test_errors_are_openai_errors_so_the_sdk_does_not_retry_them() -> None:
    assert issubclass(AgentGuardError, openai.OpenAIError)


def test_loop_detection_on_repeated_tool_calls(make_guard: Callable[..., Guard]) -> None:
    same = Reply(tool_calls=[ToolCall("read_file", {"path": "a.py"})])
    with SimServer(script=[same] * 10) as sim:
        guard = make_guard(limits={"loop_threshold": 3})
        client = client_for(guard, sim)
        messages: list[dict] = list(MESSAGES)
        with guard.session("looper"), pytest.raises(LoopDetected) as caught:
            for _ in range(5):
                response = client.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, tools=TOOLS
                )
                message = response.choices[0].message
                messages.append(message.model_dump(exclude_none=True))
                for call in message.tool_calls or []:
                    messages.append(
                        {"role": "tool", "tool_call_id": call.id, "content": "same file"}
                    )
    assert caught.value.tool_name == "read_file"
    assert caught.value.observed == 3
    assert chat_attempts(sim) == 3


def test_max_tool_calls(make_guard: Callable[..., Guard]) -> None:
    replies = [Reply(tool_calls=[ToolCall("read_file", {"path": f"{i}.py"})]) for i in range(10)]
    with SimServer(script=replies) as sim:
        guard = make_guard(limits={"max_tool_calls": 2})
        client = client_for(guard, sim)
        messages: list[dict] = list(MESSAGES)
        with guard.session(), pytest.raises(IterationLimitExceeded) as caught:
            for _ in range(5):
                response = client.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, tools=TOOLS
                )
                message = response.choices[0].message
                messages.append(message.model_dump(exclude_none=True))
                for call in message.tool_calls or []:
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": "x"})
    assert caught.value.limit == "max_tool_calls"


def test_transient_failures_are_retried_with_every_attempt_seen(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(limits={"max_retries": 3})
    client = client_for(guard, sim)  # the SDK's own max_retries=2 stays as the caller set it
    sim.fail_next(2, status=503)
    with guard.session() as session:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert response.choices[0].message.content
    assert chat_attempts(sim) == 3
    assert session.state.retries == 2 and session.iterations == 1
    assert guard.budget_status("default").reserved_usd == 0


def test_retries_exhausted_raise_retry_limit_and_the_sdk_adds_none(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(limits={"max_retries": 2, "max_consecutive_failures": 10})
    client = client_for(guard, sim, max_retries=5)
    sim.fail_next(10, status=500)
    with guard.session("flaky"), pytest.raises(RetryLimitExceeded) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert chat_attempts(sim) == 3  # 1 + max_retries, not multiplied by the SDK's 5
    assert caught.value.limit == "max_retries" and "HTTP 500" in str(caught.value)
    assert guard.budget_status("default").reserved_usd == 0


def test_timeouts_are_retried(sim: SimServer, make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(limits={"max_retries": 1})
    client = client_for(guard, sim, timeout=0.3)
    sim.timeout_next(1, seconds=1.0)
    with guard.session() as session:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert session.state.retries == 1


def test_non_transient_errors_come_back_as_the_sdk_error_once(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    sim.fail_next(1, status=400)
    with guard.session() as session, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert chat_attempts(sim) == 1
    assert session.state.consecutive_failures == 1


def test_consecutive_failures_stop_the_session(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(limits={"max_consecutive_failures": 2})
    client = client_for(guard, sim)
    sim.fail_next(5, status=400)
    with guard.session("bad"):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(RetryLimitExceeded) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.limit == "max_consecutive_failures"
        with pytest.raises(RetryLimitExceeded):  # and it stays stopped
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert chat_attempts(sim) == 2


def test_short_rate_limit_is_waited_out_in_process(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    sim.rate_limit_next(1, retry_after="0.05")
    with guard.session() as session:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert chat_attempts(sim) == 2 and session.state.retries == 1


def test_long_rate_limit_is_handed_back_after_one_attempt(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(parking={"enabled": False})
    client = client_for(guard, sim)
    sim.rate_limit_next(5, retry_after=3600)
    with guard.session(), pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "3600"
    assert chat_attempts(sim) == 1


def test_budget_exceeded_before_sending(sim: SimServer, make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(budgets=[{"key": "tiny", "limit_usd": 0.0003, "window": "1h"}])
    client = client_for(guard, sim)
    with guard.session("spender", budget_key="tiny") as session:
        with pytest.raises(BudgetExceeded) as caught:
            for _ in range(50):
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=20)
        assert caught.value.key == "tiny" and caught.value.resets_at is not None
        assert session.spent_usd <= Decimal("0.0003")
    status = guard.budget_status("tiny")
    assert status.spent_usd + status.reserved_usd <= Decimal("0.0003")
    guard.close()  # the process gives back what it leased of the budget
    status = guard.budget_status("tiny")
    assert status.spent_usd <= Decimal("0.0003") and status.reserved_usd == 0
    assert chat_attempts(sim) == session.iterations


def test_child_sessions_draw_on_the_parent(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(limits={"max_session_usd": 0.0004})
    client = client_for(guard, sim)
    with guard.session("parent", budget_key="team") as parent:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
        with guard.session("child", parent=parent) as child:
            assert child.budget_key == "team"
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
            with pytest.raises(BudgetExceeded) as caught:
                for _ in range(100):
                    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
        assert caught.value.key == "session:parent"
    assert parent.spent_usd >= child.spent_usd > 0
    assert guard.ledger.status(parent.budget_lines()[1]).spent_usd == parent.spent_usd


def test_unknown_model_is_a_pricing_error_unless_configured(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    with guard.session(), pytest.raises(PricingError, match=r"pricing\.overrides"):
        client.chat.completions.create(model="my-local-model", messages=MESSAGES)
    assert chat_attempts(sim) == 0
    guard = make_guard(
        pricing={"overrides": {"my-local-model": {"input_per_mtok": 1, "output_per_mtok": 2}}}
    )
    client = client_for(guard, sim)
    with guard.session() as session:
        response = client.chat.completions.create(model="my-local-model", messages=MESSAGES)
    assert response.usage is not None
    expected = (
        Decimal(response.usage.prompt_tokens) * 1 + Decimal(response.usage.completion_tokens) * 2
    ) / 10**6
    assert session.spent_usd == expected


def test_cached_and_reasoning_tokens_are_priced(make_guard: Callable[..., Guard]) -> None:
    long_system = {"role": "system", "content": "You are careful. " * 600}
    with SimServer(script=[Reply(content="thought hard", reasoning_tokens=500)] * 3) as sim:
        guard = make_guard()
        client = client_for(guard, sim)
        with guard.session() as session:
            first = client.chat.completions.create(
                model="o4-mini", messages=[long_system, *MESSAGES]
            )
            second = client.chat.completions.create(
                model="o4-mini", messages=[long_system, *MESSAGES]
            )
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens >= 1024
    assert second.usage.completion_tokens_details is not None
    assert second.usage.completion_tokens_details.reasoning_tokens == 500
    pricer = default_pricer()
    costs = [pricer.cost("o4-mini", Usage.from_openai(u)) for u in (first.usage, second.usage)]  # type: ignore[arg-type]
    assert session.spent_usd == sum(costs)
    assert costs[1] < costs[0]  # cached input is cheaper


def test_no_api_key_reaches_the_store(
    tmp_path: Path, sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    with guard.session():
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"sk-test-secret-key" not in path.read_bytes(), path


def test_garbage_from_the_provider_is_retried_then_reported(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(limits={"max_retries": 1})
    client = client_for(guard, sim)
    sim.garbage_next(1)
    with guard.session():
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert response.choices[0].message.content
    assert chat_attempts(sim) == 2


def test_request_body_reaches_the_provider_intact(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = client_for(guard, sim)
    with guard.session():
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            tools=TOOLS,
            temperature=0.3,
            user="u-1",
            max_tokens=9,
        )
    body = sim.requests[-1].body
    assert body["messages"] == MESSAGES and body["tools"] == TOOLS
    assert body["temperature"] == 0.3 and body["user"] == "u-1"
    assert json.dumps(body)


def test_transport_passes_non_json_posts_through(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    with guard.http_client() as http:
        response = http.post(f"{sim.base_url}/chat/completions", content=b"not json")
    # httpx with openai 2.x, httpx2 with openai 3.x: the flavour the installed SDK speaks
    assert type(response).__module__.split(".")[0] in ("httpx", "httpx2")
    assert response.status_code == 400


def test_loop_detection_also_stops_streams(make_guard: Callable[..., Guard]) -> None:
    same = Reply(tool_calls=[ToolCall("read_file", {"path": "a.py"})])
    with SimServer(script=[same] * 10) as sim:
        guard = make_guard(limits={"loop_threshold": 2})
        client = client_for(guard, sim)
        messages: list[dict] = list(MESSAGES)
        with guard.session("stream-loop"), pytest.raises(LoopDetected):
            for _ in range(4):
                chunks = list(
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=messages, tools=TOOLS, stream=True
                    )
                )
                call_id = next(
                    c.choices[0].delta.tool_calls[0].id
                    for c in chunks
                    if c.choices and c.choices[0].delta.tool_calls
                )
                messages.append(
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": call_id,
                                "type": "function",
                                "function": {"name": "read_file", "arguments": '{"path": "a.py"}'},
                            }
                        ],
                    }
                )
                messages.append({"role": "tool", "tool_call_id": call_id, "content": "same"})
    assert chat_attempts(sim) == 2


def test_async_http_client_works_across_event_loops(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    import asyncio

    guard = make_guard()
    client = openai.AsyncOpenAI(
        base_url=sim.base_url, api_key="sk-test", http_client=guard.async_http_client()
    )

    async def one() -> str:
        async with guard.session():
            response = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            return response.choices[0].message.content or ""

    assert asyncio.run(one()) and asyncio.run(one())
    assert chat_attempts(sim) == 2


def test_a_session_of_one_guard_is_not_charged_by_another(
    sim: SimServer, make_guard: Callable[..., Guard], tmp_path: Path
) -> None:
    from agentguard.config import GuardConfig

    first = make_guard()
    second = Guard(
        GuardConfig.from_mapping({"store": {"url": f"sqlite:///{tmp_path / 'other.db'}"}})
    )
    client_one, client_two = client_for(first, sim), client_for(second, sim)
    with first.session("one") as one, second.session("two") as two:
        client_one.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client_two.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client_two.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert (one.iterations, two.iterations) == (1, 2)


def test_concurrent_tasks_may_enter_one_session(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    """Frameworks gather several coroutines under one session object: each enters and leaves
    it in its own task, and the binding outside is what it was."""
    import asyncio

    from agentguard import current_session

    guard = make_guard()
    client = guard.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test"))
    shared = guard.session("shared")

    async def step(number: int) -> str | None:
        async with shared:
            await asyncio.sleep(0.01 * (3 - number))  # leave in another order than entered
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            bound = current_session()
            return bound.id if bound is not None else None

    async def run() -> list[str | None]:
        async with guard.session("outer"):
            seen = await asyncio.gather(*(step(number) for number in range(3)))
            outer = current_session()
            assert outer is not None and outer.id == "outer"
        return list(seen)

    assert asyncio.run(run()) == ["shared"] * 3
    assert current_session() is None
    assert shared.iterations == 3
