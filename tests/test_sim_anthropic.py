"""The sim's Anthropic Messages API (/v1/messages, /v1/messages/count_tokens), driven by the real
``anthropic`` SDK on loopback: shapes, usage with prompt caching (5-minute and 1-hour writes),
the stream's event sequence, tool use, max_tokens, faults and the budget gateway in Anthropic's
own shapes and headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from agentguard.parking import classify_limit_error
from agentguard.retrying import is_transient_status
from agentguard.sim import GatewayKey, ModelError, Reply, SimGateway, SimServer, ToolCall
from agentguard.sim.scripts import CODING_TOOLS, coding_agent_script, run_tools

MODEL = "claude-haiku-4-5"
TOOLS: list[dict[str, Any]] = [
    {
        "name": "search",
        "description": "Search the project.",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    }
]
SCRIPT = [Reply(tool_calls=[ToolCall("search", {"query": "budget"})]), "Found it: 42."]
QUESTION = "Find the budget line in the report."
# Long enough to pass the provider's minimum cacheable prefix (1024 tokens).
LONG_SYSTEM = "You review quarterly reports for a finance team and answer precisely. " * 120


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(script=SCRIPT) as server:
        yield server


@pytest.fixture(scope="module")
def client(sim: SimServer) -> Any:
    return anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)


def ask(client: Any, **options: Any) -> Any:
    options.setdefault("model", MODEL)
    options.setdefault("max_tokens", 256)
    return client.messages.create(**options)


def test_tool_use_then_tool_result(client: Any) -> None:
    first = ask(client, messages=[{"role": "user", "content": QUESTION}], tools=TOOLS)
    assert first.type == "message" and first.role == "assistant" and first.model == MODEL
    assert first.id.startswith("msg_")
    assert first.stop_reason == "tool_use"
    [call] = first.content
    assert call.type == "tool_use"
    assert call.id.startswith("toolu_")
    assert call.name == "search" and call.input == {"query": "budget"}

    second = ask(
        client,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "line 42"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert [block.type for block in second.content] == ["text"]
    assert second.content[0].text == "Found it: 42."
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.cache_read_input_tokens == 0
    assert second.usage.cache_creation_input_tokens == 0


def test_count_tokens_matches_the_billed_input(client: Any) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    counted = client.messages.count_tokens(
        model=MODEL, system="Be brief.", messages=messages, tools=TOOLS
    )
    answer = ask(client, system="Be brief.", messages=messages, tools=TOOLS)
    assert counted.input_tokens == answer.usage.input_tokens > 0
    bare = client.messages.count_tokens(model=MODEL, messages=messages)
    assert bare.input_tokens < counted.input_tokens


def test_cache_control_writes_then_reads_with_the_ttl_split() -> None:
    with SimServer(script=["Noted."]) as sim:
        client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)
        messages = [{"role": "user", "content": QUESTION}]
        system_5m = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
        total = client.messages.count_tokens(model=MODEL, system=system_5m, messages=messages)

        first = ask(client, system=system_5m, messages=messages)
        written = first.usage.cache_creation_input_tokens
        assert written >= 1024
        assert first.usage.cache_creation.ephemeral_5m_input_tokens == written
        assert first.usage.cache_creation.ephemeral_1h_input_tokens == 0
        assert first.usage.cache_read_input_tokens == 0
        assert first.usage.input_tokens == total.input_tokens - written

        second = ask(client, system=system_5m, messages=messages)
        assert second.usage.cache_read_input_tokens == written
        assert second.usage.cache_creation_input_tokens == 0
        assert second.usage.input_tokens == total.input_tokens - written

        system_1h = [
            {
                "type": "text",
                "text": LONG_SYSTEM,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ]
        longer = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": LONG_SYSTEM + "Anything else?",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            }
        ]
        third = ask(client, system=system_1h, messages=longer)
        split = third.usage.cache_creation
        # The cached system prefix is read whatever its ttl; only the new message is written,
        # at its own breakpoint's ttl (5 minutes).
        assert third.usage.cache_read_input_tokens == written
        assert split.ephemeral_5m_input_tokens == third.usage.cache_creation_input_tokens > 0
        assert split.ephemeral_1h_input_tokens == 0

        fresh = [
            {
                "type": "text",
                "text": "Other rules. " + LONG_SYSTEM,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ]
        fourth = ask(client, system=fresh, messages=messages)
        assert fourth.usage.cache_creation.ephemeral_1h_input_tokens >= 1024
        assert fourth.usage.cache_creation.ephemeral_5m_input_tokens == 0


def test_raw_stream_sends_the_event_sequence(sim: SimServer, client: Any) -> None:
    conversation = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Searching."},
        {"role": "user", "content": "Go on."},
    ]
    plain = ask(client, messages=conversation)
    events = list(ask(client, messages=conversation, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert kinds[-4:] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0].message
    assert start.content == [] and start.stop_reason is None
    assert start.usage.input_tokens == plain.usage.input_tokens
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == plain.content[0].text == "Found it: 42."
    wire = httpx.post(
        f"{sim.url}/v1/messages",
        headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 64, "messages": conversation, "stream": True},
        timeout=10,
    )
    assert wire.headers["content-type"].startswith("text/event-stream")
    names = [line[7:] for line in wire.text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == plain.usage.output_tokens


def test_stream_helper_accumulates_tool_use(client: Any) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=[{"role": "user", "content": QUESTION}], tools=TOOLS
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"query": "budget"}
    plain = ask(client, messages=[{"role": "user", "content": QUESTION}], tools=TOOLS)
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_max_tokens_is_required_and_caps_the_answer(sim: SimServer) -> None:
    answer = httpx.post(
        f"{sim.url}/v1/messages",
        headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert answer.status_code == 400
    body = answer.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]

    with SimServer(script=[" ".join(["budget"] * 100)]) as capped_sim:
        client = anthropic.Anthropic(base_url=capped_sim.url, api_key="k", max_retries=0)
        capped = ask(client, max_tokens=10, messages=[{"role": "user", "content": "Talk."}])
        assert capped.stop_reason == "max_tokens"
        assert capped.usage.output_tokens == 10


def test_rate_limit_overload_and_too_large_in_anthropic_shape() -> None:
    with SimServer() as sim:
        client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        sim.rate_limit_next(retry_after=30, reset_requests=30, reset_tokens=12)
        with pytest.raises(anthropic.RateLimitError) as limited:
            ask(client, messages=messages)
        response = limited.value.response
        assert limited.value.body["error"]["type"] == "rate_limit_error"
        assert response.headers["retry-after"] == "30"
        assert "x-ratelimit-reset-requests" not in response.headers
        reset = datetime.fromisoformat(response.headers["anthropic-ratelimit-requests-reset"])
        assert 20 <= (reset - datetime.now(UTC)).total_seconds() <= 31
        assert "anthropic-ratelimit-tokens-reset" in response.headers
        verdict = classify_limit_error(429, response.headers, response.content)
        assert verdict is not None and verdict.kind == "rate_limit" and verdict.wait_s == 30.0

        sim.fail_next(status=529)
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            ask(client, messages=messages)
        assert overloaded.value.status_code == 529
        assert overloaded.value.body["error"]["type"] == "overloaded_error"
        assert (
            classify_limit_error(529, overloaded.value.response.headers, overloaded.value.body)
            is None
        )
        assert is_transient_status(529)

        sim.fail_next(status=413)
        with pytest.raises(anthropic.APIStatusError) as too_large:
            ask(client, messages=messages)
        assert too_large.value.status_code == 413
        assert too_large.value.body["error"]["type"] == "request_too_large"

        sim.timeout_next(seconds=5)
        with pytest.raises(anthropic.APITimeoutError):
            client.with_options(timeout=0.5).messages.create(
                model=MODEL, max_tokens=16, messages=messages
            )
        assert ask(client, messages=messages).stop_reason == "end_turn"


def test_gateway_uses_x_api_key_charges_and_refuses_in_anthropic_shape() -> None:
    gateway = SimGateway({"sk-ant-a": GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    with SimServer(gateway=gateway, default_output_tokens=64) as sim:
        client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-a", max_retries=0)
        messages = [{"role": "user", "content": "Summarise the report."}]
        answer = ask(client, messages=messages)
        assert gateway.spent("sk-ant-a") == gateway.cost(
            MODEL, answer.usage.input_tokens, 0, answer.usage.output_tokens
        )
        while gateway.remaining("sk-ant-a"):
            ask(client, messages=messages)
        with pytest.raises(anthropic.RateLimitError) as refused:
            ask(client, messages=messages)
        body = refused.value.body
        assert body["type"] == "error" and body["error"]["type"] == "budget_exceeded"
        headers = refused.value.response.headers
        assert "anthropic-ratelimit-requests-reset" in headers
        verdict = classify_limit_error(429, headers, refused.value.response.content)
        assert verdict is not None and verdict.kind == "budget_window"
        assert verdict.wait_s is not None and 0 < verdict.wait_s <= 60

        stranger = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-nobody", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as unknown:
            ask(stranger, messages=messages)
        assert unknown.value.body["error"]["type"] == "authentication_error"


async def test_async_client_create_and_stream(sim: SimServer) -> None:
    client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    answer = await client.messages.create(
        model=MODEL, max_tokens=64, messages=messages, tools=TOOLS
    )
    async with client.messages.stream(
        model=MODEL, max_tokens=64, messages=messages, tools=TOOLS
    ) as stream:
        final = await stream.get_final_message()
    assert answer.content[0].input == final.content[0].input == {"query": "budget"}
    await client.close()


def test_scripted_coding_agent_runs_over_messages() -> None:
    tools = [
        {
            "name": tool["function"]["name"],
            "description": tool["function"]["description"],
            "input_schema": tool["function"]["parameters"],
        }
        for tool in CODING_TOOLS
    ]
    with SimServer(script=coding_agent_script(steps=4)) as sim:
        client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the tax bug."}]
        answer = ask(client, messages=messages, tools=tools, max_tokens=2048)
        steps = 1
        while answer.stop_reason == "tool_use":
            results = [
                {
                    "type": "tool_result",
                    "tool_use_id": block.id,
                    "content": run_tools(ToolCall(block.name, block.input)),
                }
                for block in answer.content
                if block.type == "tool_use"
            ]
            messages += [
                {"role": "assistant", "content": answer.content},
                {"role": "user", "content": results},
            ]
            answer = ask(client, messages=messages, tools=tools, max_tokens=2048)
            steps += 1
        assert steps == 4
        assert answer.content[0].text.startswith("I fixed the rounding bug")


def test_raw_answers_validate_against_the_sdk_types() -> None:
    from anthropic.types import Message, RawMessageStreamEvent
    from pydantic import TypeAdapter

    reply = Reply(content="Here it is.", tool_calls=[ToolCall("search", {"q": "x"})])
    with SimServer(script=[reply]) as sim:
        headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
        body = {
            "model": MODEL,
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": TOOLS,
        }
        plain = httpx.post(f"{sim.url}/v1/messages", headers=headers, json=body, timeout=10)
        message = TypeAdapter(Message).validate_python(plain.json())
        assert [block.type for block in message.content] == ["text", "tool_use"]
        streamed = httpx.post(
            f"{sim.url}/v1/messages", headers=headers, json={**body, "stream": True}, timeout=10
        )
        adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
        events = [
            json.loads(line.removeprefix("data: "))
            for line in streamed.text.splitlines()
            if line.startswith("data: ")
        ]
        for event in events:
            if event["type"] != "ping":
                adapter.validate_python(event)
        starts = [
            event["content_block"]["type"]
            for event in events
            if event["type"] == "content_block_start"
        ]
        assert starts == ["text", "tool_use"]


def test_scripted_errors_garbage_and_cut_streams() -> None:
    script = [ModelError(status=400, message="prompt is too long: 210000 tokens > 200000 maximum")]
    with SimServer(script=[Reply(model_error=script[0]), "Fine."]) as sim:
        client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        with pytest.raises(anthropic.BadRequestError) as refused:
            ask(client, messages=messages)
        assert refused.value.body["type"] == "error"
        assert refused.value.body["error"] == {
            "type": "invalid_request_error",
            "message": "prompt is too long: 210000 tokens > 200000 maximum",
        }

        sim.garbage_next()  # the SDK fails to decode it, as it would a real broken proxy
        with pytest.raises(json.JSONDecodeError):
            ask(client, messages=messages)

        sim.cut_stream_next(after_chunks=3)
        with (
            pytest.raises((anthropic.APIError, httpx.HTTPError)),
            client.messages.stream(model=MODEL, max_tokens=64, messages=messages) as stream,
        ):
            stream.get_final_message()
        assert sim.pending_faults == 0


def test_claude_is_billed_at_anthropics_prices_with_both_cache_write_lifetimes() -> None:
    import genai_prices

    gateway = SimGateway({"sk-ant-b": GatewayKey(limit_usd=Decimal(10), window_s=60)})
    with SimServer(script=["Noted."] * 3, gateway=gateway) as sim:
        client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-b", max_retries=0)
        system = [
            {
                "type": "text",
                "text": LONG_SYSTEM,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ]
        turn = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": LONG_SYSTEM + QUESTION,
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            }
        ]
        expected = Decimal(0)
        for _ in range(2):
            usage = ask(client, system=system, messages=turn).usage
            split = usage.cache_creation
            expected += genai_prices.calc_price(
                genai_prices.Usage(
                    input_tokens=usage.input_tokens
                    + usage.cache_creation_input_tokens
                    + usage.cache_read_input_tokens,
                    cache_read_tokens=usage.cache_read_input_tokens,
                    cache_write_tokens=usage.cache_creation_input_tokens,
                    cache_write_1h_tokens=split.ephemeral_1h_input_tokens,
                    output_tokens=usage.output_tokens,
                ),
                MODEL,
                provider_id="anthropic",
            ).total_price
        assert sim.billed_usd() == expected == gateway.spent("sk-ant-b")
        first_price = gateway.price(MODEL)
        assert first_price.input == Decimal("0.000001") and first_price.cache_write_1h == Decimal(
            "0.000002"
        )


def test_scripted_limit_errors_carry_anthropics_headers() -> None:
    limited = ModelError(
        429, "Slow down.", "rate_limit_error", headers={"x-ratelimit-reset-tokens": "20s"}
    )
    with SimServer(script=[Reply(model_error=limited)]) as sim:
        client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)
        with pytest.raises(anthropic.RateLimitError) as caught:
            ask(client, messages=[{"role": "user", "content": "hi"}])
    headers = caught.value.response.headers
    assert "anthropic-ratelimit-tokens-reset" in headers
    assert not any(name.startswith("x-ratelimit") for name in headers)
    assert caught.value.body["error"]["type"] == "rate_limit_error"
