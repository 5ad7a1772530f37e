"""The simulated provider, driven over loopback HTTP by the real ``openai`` SDK."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import httpx
import openai
import pytest
import quicktok
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.sim import (
    GatewayKey,
    ModelError,
    Reply,
    Script,
    SimGateway,
    SimServer,
    ToolCall,
    format_reset_duration,
    serve,
)
from agentguard.sim.engine import ChatEngine
from agentguard.sim.scripts import CODING_TOOLS, coding_agent_script, run_tools

ENC = quicktok.get_encoding("o200k_base")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def tokens(text: str) -> int:
    return len(ENC.encode_ordinary(text))


def expected_prompt_tokens(messages: list[dict[str, Any]], tools: Any = None) -> int:
    """OpenAI's chat accounting, written out independently of the sim."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if isinstance(value, str):
                total += tokens(value)
            elif value is not None:
                total += tokens(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
            if key == "name":
                total += 1
    if tools:
        total += tokens(json.dumps(tools, separators=(",", ":"), ensure_ascii=False))
    return total


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimServer]:
    """One server for the tests that only read: starting a server per test costs time."""
    with SimServer() as sim:
        yield sim


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as server:
        yield server


def client_for(sim: SimServer, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sim.base_url, api_key=options.pop("api_key", "sk-test"), max_retries=0, **options
    )


# -- plain answers ---------------------------------------------------------------------------


def test_plain_answer_has_openai_shape(shared_sim: SimServer) -> None:
    completion = client_for(shared_sim).chat.completions.create(
        model="gpt-4o-mini", messages=QUESTION
    )

    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert abs(completion.created - time.time()) < 5
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content is not None
    assert choice.message.content.startswith("Simulated answer to: What is the capital of France?")
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == expected_prompt_tokens(QUESTION)
    assert usage.completion_tokens == 32 == tokens(choice.message.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_raw_json_matches_openai_fields(shared_sim: SimServer) -> None:
    response = httpx.post(
        f"{shared_sim.base_url}/chat/completions", json={"model": "gpt-4o", "messages": QUESTION}
    )
    body = response.json()

    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"].startswith("req_")
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    assert set(body["usage"]) >= {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }
    assert body["choices"][0]["message"]["content"]
    assert "tool_calls" not in body["choices"][0]["message"]


def test_prompt_tokens_follow_openai_chat_accounting(shared_sim: SimServer) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "ada", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C, cloudy"},
    ]
    completion = client_for(shared_sim).chat.completions.create(
        model="gpt-4o", messages=messages, tools=WEATHER_TOOLS
    )  # type: ignore[arg-type]

    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected_prompt_tokens(messages, WEATHER_TOOLS)


def test_text_parts_count_like_plain_text(shared_sim: SimServer) -> None:
    client = client_for(shared_sim)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    plain = [{"role": "user", "content": "Hello there"}]

    with_parts = client.chat.completions.create(model="gpt-4o", messages=parts)  # type: ignore[arg-type]
    as_text = client.chat.completions.create(model="gpt-4o", messages=plain)  # type: ignore[arg-type]

    assert with_parts.usage is not None and as_text.usage is not None
    assert with_parts.usage.prompt_tokens == as_text.usage.prompt_tokens


def test_default_answer_length_is_configurable() -> None:
    with SimServer(default_output_tokens=200) as sim:
        completion = client_for(sim).chat.completions.create(model="gpt-4o", messages=QUESTION)

    assert completion.usage is not None
    assert completion.usage.completion_tokens == 200
    assert tokens(completion.choices[0].message.content or "") == 200


def test_max_tokens_truncates_with_finish_reason_length(shared_sim: SimServer) -> None:
    client = client_for(shared_sim)
    full = client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    cut = client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=5)
    cut_new = client.chat.completions.create(
        model="gpt-4o", messages=QUESTION, max_completion_tokens=7
    )

    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 5
    assert (full.choices[0].message.content or "").startswith(cut.choices[0].message.content or "?")
    assert tokens(cut.choices[0].message.content or "") == 5
    assert cut_new.usage is not None and cut_new.usage.completion_tokens == 7
    assert cut_new.choices[0].finish_reason == "length"


def test_reasoning_tokens_count_as_completion_tokens() -> None:
    with SimServer(script=[Reply(content="Paris.", reasoning_tokens=120)]) as sim:
        client = client_for(sim)
        completion = client.chat.completions.create(model="o3", messages=QUESTION)
        capped = client.chat.completions.create(
            model="o3", messages=QUESTION, max_completion_tokens=50
        )

    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 120
    assert usage.completion_tokens == 120 + tokens("Paris.")
    assert completion.choices[0].message.content == "Paris."
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 50
    assert capped.choices[0].message.content == ""


# -- streaming -------------------------------------------------------------------------------


def test_stream_without_usage(shared_sim: SimServer) -> None:
    client = client_for(shared_sim)
    plain = client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True))

    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices[0].delta.content]
    assert len(content_chunks) >= 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_with_usage_ends_with_usage_chunk(shared_sim: SimServer) -> None:
    chunks = list(
        client_for(shared_sim).chat.completions.create(
            model="gpt-4o", messages=QUESTION, stream=True, stream_options={"include_usage": True}
        )
    )

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == expected_prompt_tokens(QUESTION)
    assert last.usage.completion_tokens == 32
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_stream_raw_sse_framing(shared_sim: SimServer) -> None:
    with httpx.stream(
        "POST",
        f"{shared_sim.base_url}/chat/completions",
        json={"model": "gpt-4o", "messages": QUESTION, "stream": True},
    ) as response:
        raw = response.read().decode()

    assert response.headers["content-type"].startswith("text/event-stream")
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events[:-1])
    assert json.loads(events[0].removeprefix("data: "))["object"] == "chat.completion.chunk"


# -- tool calls ------------------------------------------------------------------------------

TOOL_SCRIPT = [
    Reply(
        tool_calls=[
            ToolCall("get_weather", {"city": "Paris"}),
            ToolCall("get_weather", {"city": "Rome, Italy"}),
        ]
    ),
    Reply(content="Paris is 18°C and Rome is 24°C."),
]


def test_tool_calls_parse_in_the_sdk() -> None:
    with SimServer(script=TOOL_SCRIPT) as sim:
        completion = client_for(sim).chat.completions.create(
            model="gpt-4o", messages=QUESTION, tools=WEATHER_TOOLS
        )  # type: ignore[arg-type]

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]  # type: ignore[union-attr]
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "Paris"},
        {"city": "Rome, Italy"},
    ]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in calls)
    assert calls[0].id != calls[1].id
    assert completion.usage is not None
    assert completion.usage.completion_tokens == sum(
        tokens(c.function.name) + tokens(c.function.arguments) for c in calls
    )  # type: ignore[union-attr]


def test_tool_calls_stream_as_openai_sends_them() -> None:
    with SimServer(script=TOOL_SCRIPT) as sim:
        client = client_for(sim)
        plain = client.chat.completions.create(model="gpt-4o", messages=QUESTION)
        chunks = list(
            client.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True)
        )
        with client.chat.completions.stream(
            model="gpt-4o",
            messages=QUESTION,  # type: ignore[arg-type]
            tools=WEATHER_TOOLS,
        ) as stream:
            final = stream.get_final_completion()

    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    headers = [d[0] for d in deltas if d[0].id is not None]
    assert [
        (h.index, h.type, h.function.name, h.function.arguments)  # type: ignore[union-attr]
        for h in headers
    ] == [(0, "function", "get_weather", ""), (1, "function", "get_weather", "")]
    fragments = [d[0] for d in deltas if d[0].id is None]
    assert all(f.function is not None and f.function.name is None for f in fragments)
    arguments = {0: "", 1: ""}
    for fragment in fragments:
        arguments[fragment.index] += fragment.function.arguments or ""  # type: ignore[union-attr]
    expected = plain.choices[0].message.tool_calls or []
    assert arguments == {i: c.function.arguments for i, c in enumerate(expected)}  # type: ignore[union-attr]
    assert len(fragments) > 2
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    final_calls = final.choices[0].message.tool_calls or []
    assert [c.id for c in final_calls] == [c.id for c in expected]
    assert json.loads(final_calls[1].function.arguments) == {"city": "Rome, Italy"}


def test_tool_call_arguments_truncated_by_max_tokens() -> None:
    script = [
        Reply(tool_calls=[ToolCall("write_file", {"path": "a.py", "content": "x = 1\n" * 50})])
    ]
    with SimServer(script=script) as sim:
        completion = client_for(sim).chat.completions.create(
            model="gpt-4o", messages=QUESTION, max_tokens=10
        )

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 10
    call = (completion.choices[0].message.tool_calls or [])[0]
    with pytest.raises(ValueError):
        json.loads(call.function.arguments)  # type: ignore[union-attr]


async def test_async_client_plain_stream_and_tools() -> None:
    with SimServer(script=TOOL_SCRIPT) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        first = await client.chat.completions.create(model="gpt-4o", messages=QUESTION)
        step_two = [*QUESTION, first.choices[0].message.model_dump(exclude_none=True)]
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=step_two,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        await client.close()

    assert first.choices[0].finish_reason == "tool_calls"
    assert len(first.choices[0].message.tool_calls or []) == 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris is 18°C and Rome is 24°C."
    assert chunks[-1].usage is not None


# -- scripts ---------------------------------------------------------------------------------


def test_reply_is_chosen_by_step_and_is_deterministic() -> None:
    script = Script(
        [
            Reply(tool_calls=[ToolCall("search", {"query": "x"})]),
            Reply(tool_calls=[ToolCall("read_file", {"path": "a.py"}, id="call_fixed")]),
            "All done.",
        ],
        final="Nothing more to do.",
    )
    with SimServer(script=script) as sim:
        client = client_for(sim)

        def ask(messages: list[dict[str, Any]]) -> openai.types.chat.ChatCompletionMessage:
            return (
                client.chat.completions.create(model="gpt-4o", messages=messages).choices[0].message
            )  # type: ignore[arg-type]

        conversation: list[dict[str, Any]] = list(QUESTION)
        answers = []
        for _ in range(4):
            message = ask(conversation)
            answers.append(message)
            conversation.append(message.model_dump(exclude_none=True))
            for call in message.tool_calls or []:
                conversation.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
        # Re-sending the conversation as it stood at step 1 (a resume after a crash) gets the
        # same reply, with the same tool call ids.
        resent = ask(conversation[:3])

    assert answers[0].tool_calls and answers[0].tool_calls[0].function.name == "search"  # type: ignore[union-attr]
    assert answers[1].tool_calls and answers[1].tool_calls[0].id == "call_fixed"
    assert answers[2].content == "All done."
    assert answers[3].content == "Nothing more to do."
    assert resent.model_dump() == answers[1].model_dump()
    assert ask_again_ids(script) == ask_again_ids(script)


def ask_again_ids(script: Script) -> list[str]:
    with SimServer(script=script) as sim:
        message = (
            client_for(sim)
            .chat.completions.create(model="gpt-4o", messages=QUESTION)
            .choices[0]
            .message
        )  # type: ignore[arg-type]
    return [call.id for call in message.tool_calls or []]


def test_reply_fn_has_full_control() -> None:
    def reply(body: dict[str, Any]) -> Reply:
        return Reply(content=f"{body['model']} saw {len(body['messages'])} messages")

    with SimServer(script=reply) as sim:
        completion = client_for(sim).chat.completions.create(model="gpt-4.1", messages=QUESTION)

    assert completion.choices[0].message.content == "gpt-4.1 saw 1 messages"


def test_model_error_answers_for_its_step_only() -> None:
    error = ModelError(
        status=400,
        message="This model's maximum context length is 128000 tokens.",
        code="context_length_exceeded",
        param="messages",
    )
    with SimServer(script=[Reply(model_error=error), "fine"]) as sim:
        client = client_for(sim)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=QUESTION)
        later = client.chat.completions.create(
            model="gpt-4o", messages=[*QUESTION, {"role": "assistant", "content": "hm"}]
        )  # type: ignore[list-item]

    assert caught.value.code == "context_length_exceeded"
    assert later.choices[0].message.content == "fine"


def test_coding_agent_script_runs_end_to_end() -> None:
    with SimServer(script=coding_agent_script(steps=6)) as sim:
        client = client_for(sim)
        messages: list[Any] = [{"role": "user", "content": "Fix the rounding bug in invoices."}]
        names: list[str] = []
        cached: list[int] = []
        for _ in range(10):
            completion = client.chat.completions.create(
                model="gpt-4o", messages=messages, tools=CODING_TOOLS
            )  # type: ignore[arg-type]
            assert completion.usage is not None and completion.usage.prompt_tokens_details
            cached.append(completion.usage.prompt_tokens_details.cached_tokens or 0)
            message = completion.choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            if not message.tool_calls:
                break
            for call in message.tool_calls:
                names.append(call.function.name)  # type: ignore[union-attr]
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": run_tools(call)}
                )

    assert len([m for m in messages if m["role"] == "assistant"]) == 6
    assert set(names) == {"read_file", "search", "write_file"}
    assert names[-1] == "write_file"
    assert messages[-1]["content"].startswith("I fixed the rounding bug")
    assert cached[-1] >= 1024  # the growing conversation hits the prefix cache


def test_run_tools_is_deterministic_and_realistic() -> None:
    call = {"function": {"name": "read_file", "arguments": '{"path": "src/billing/tax.py"}'}}
    body = run_tools(call)

    assert body == run_tools(ToolCall("read_file", {"path": "src/billing/tax.py"}))
    assert 500 < tokens(body) < 5000
    assert run_tools(ToolCall("read_file", {"path": "other.py"})) != body
    assert "matches" in run_tools(ToolCall("search", {"query": "def total"}))
    assert (
        run_tools(ToolCall("write_file", {"path": "a.py", "content": "abc"}))
        == "Wrote 3 bytes to a.py."
    )
    assert run_tools(ToolCall("read_file", "{not json")).startswith("error:")
    assert run_tools(ToolCall("launch_rockets", {})).startswith("error:")


# -- prompt caching --------------------------------------------------------------------------


def test_prefix_cache_counts_previously_seen_prefixes(sim: SimServer) -> None:
    long_system = {"role": "system", "content": "Rules: " + "be precise and cite sources. " * 300}
    first = [long_system, {"role": "user", "content": "one"}]
    second = [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "two"}]
    client = client_for(sim)

    cold = client.chat.completions.create(model="gpt-4o", messages=first)  # type: ignore[arg-type]
    warm = client.chat.completions.create(model="gpt-4o", messages=second)  # type: ignore[arg-type]
    other_key = client_for(sim, api_key="sk-other").chat.completions.create(
        model="gpt-4o", messages=second
    )  # type: ignore[arg-type]
    short = client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    short_again = client.chat.completions.create(model="gpt-4o", messages=QUESTION)

    def cached(completion: openai.types.chat.ChatCompletion) -> int:
        assert completion.usage is not None and completion.usage.prompt_tokens_details
        return completion.usage.prompt_tokens_details.cached_tokens or 0

    assert cached(cold) == 0
    prefix = expected_prompt_tokens(first) - 3  # the reply priming is not part of the prefix
    assert cached(warm) == prefix // 128 * 128 >= 1024
    assert cached(other_key) == 0
    assert cached(short) == cached(short_again) == 0  # under 1024 tokens nothing is cached


# -- failure injection -----------------------------------------------------------------------


def test_fail_next_raises_server_errors_then_recovers(sim: SimServer) -> None:
    client = client_for(sim)
    sim.fail_next(2)
    sim.fail_next(
        status=400,
        body={
            "error": {
                "message": "nope",
                "type": "invalid_request_error",
                "param": None,
                "code": "bad",
            }
        },
        headers={"x-custom": "1"},
    )

    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as server_error:
            client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as bad_request:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    ok = client.chat.completions.create(model="gpt-4o", messages=QUESTION)

    assert server_error.value.status_code == 500
    assert bad_request.value.code == "bad"
    assert bad_request.value.response.headers["x-custom"] == "1"
    assert ok.choices[0].finish_reason == "stop"
    assert sim.pending_faults == 0


def test_faults_are_not_consumed_by_model_listing(sim: SimServer) -> None:
    client = client_for(sim)
    sim.fail_next()

    assert [m.id for m in client.models.list().data][:2] == ["gpt-4o", "gpt-4o-mini"]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)


def test_sdk_retries_through_injected_failures(sim: SimServer) -> None:
    sim.fail_next(2, status=503, headers={"retry-after-ms": "10"})
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=2)

    completion = client.chat.completions.create(model="gpt-4o", messages=QUESTION)

    assert completion.choices[0].finish_reason == "stop"
    assert [r.headers["x-stainless-retry-count"] for r in sim.requests] == ["0", "1", "2"]


def test_timeout_next_makes_the_client_time_out(sim: SimServer) -> None:
    client = client_for(sim, timeout=0.2)
    sim.timeout_next(seconds=20.0)

    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert time.perf_counter() - started < 15  # the client gave up; the sim was still stalling
    assert client.chat.completions.create(model="gpt-4o", messages=QUESTION).choices


def test_garbage_next_answers_a_body_that_is_not_json(sim: SimServer) -> None:
    client = client_for(sim)
    sim.garbage_next()

    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    raw = httpx.post(
        f"{sim.base_url}/chat/completions", json={"model": "gpt-4o", "messages": QUESTION}
    )
    assert raw.status_code == 200
    sim.garbage_next(body=b"not json")
    assert httpx.post(f"{sim.base_url}/chat/completions", json={}).content == b"not json"


def test_cut_stream_drops_the_connection_mid_stream(sim: SimServer) -> None:
    client = client_for(sim)
    sim.cut_stream_next(after_chunks=3)
    received = []

    # openai 2.x lets httpx's error through; 3.x wraps it in APIConnectionError.
    with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
        for chunk in client.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True):
            received.append(chunk)
    sim.cut_stream_next()
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)

    assert len(received) == 3
    assert all(c.choices[0].finish_reason is None for c in received)
    assert client.chat.completions.create(model="gpt-4o", messages=QUESTION).choices


def test_rate_limit_next_sends_openai_headers(sim: SimServer) -> None:
    client = client_for(sim)
    sim.rate_limit_next(retry_after=20, reset_requests=360, reset_tokens=0.12)
    sim.rate_limit_next(retry_after="7", reset_requests="1m30s")

    with pytest.raises(openai.RateLimitError) as first:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    with pytest.raises(openai.RateLimitError) as second:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)

    headers = first.value.response.headers
    assert headers["retry-after"] == "20"
    assert headers["x-ratelimit-reset-requests"] == "6m0s"
    assert headers["x-ratelimit-reset-tokens"] == "120ms"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert first.value.code == "rate_limit_exceeded"
    assert "gpt-4o" in first.value.message
    assert second.value.response.headers["retry-after"] == "7"
    assert second.value.response.headers["x-ratelimit-reset-requests"] == "1m30s"


def test_latency_delays_every_answer() -> None:
    with SimServer(latency_s=0.05) as sim:
        client = client_for(sim)
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
        assert time.perf_counter() - started >= 0.05


# -- budget gateway --------------------------------------------------------------------------


def test_gateway_refuses_a_spent_key_until_its_window_resets() -> None:
    gateway = SimGateway({"sk-sim-a": GatewayKey(limit_usd=Decimal("0.00001"), window_s=1.0)})
    with SimServer(gateway=gateway) as sim:
        client = client_for(sim, api_key="sk-sim-a")
        first = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        assert first.usage is not None
        price = genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=first.usage.prompt_tokens, output_tokens=first.usage.completion_tokens
            ),
            "gpt-4o-mini",
            provider_id="openai",
        ).total_price
        assert gateway.spent("sk-sim-a") == pytest.approx(Decimal(price), rel=Decimal("1e-9"))

        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        reset_at = gateway.reset_at("sk-sim-a")
        assert reset_at is not None

        time.sleep(max(0.0, reset_at - time.time()) + 0.02)
        again = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)

    headers = refused.value.response.headers
    assert headers["retry-after"] == "1"
    assert headers["x-ratelimit-reset-requests"] == "1s"
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["type"] == body["code"] == "budget_exceeded"
    assert body["message"].startswith("Budget exceeded for key ")
    assert body["message"].endswith("resets in 1s")
    assert "sk-sim-a" not in body["message"]
    assert again.choices[0].finish_reason == "stop"


def test_gateway_windows_follow_its_clock() -> None:
    now = [1000.0]
    gateway = SimGateway(clock=lambda: now[0], default_price_per_mtok=(1_000_000, 1_000_000))
    gateway.add_key("sk-sim-b", limit_usd=5, window_s=60)
    with SimServer(gateway=gateway, script=["ok"] * 3) as sim:
        client = client_for(sim, api_key="sk-sim-b")
        client.chat.completions.create(model="my-local-model", messages=QUESTION)
        now[0] += 45
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="my-local-model", messages=QUESTION)
        now[0] += 15
        assert gateway.spent("sk-sim-b") == 0
        assert gateway.reset_at("sk-sim-b") is None
        client.chat.completions.create(model="my-local-model", messages=QUESTION)

    assert refused.value.response.headers["retry-after"] == "15"
    assert refused.value.response.headers["x-ratelimit-reset-requests"] == "15s"
    assert gateway.reset_at("sk-sim-b") == 1060.0 + 60
    tokens_billed = expected_prompt_tokens(QUESTION) + tokens("ok")
    assert gateway.spent("sk-sim-b") == tokens_billed  # $1 a token


def test_gateway_rejects_unknown_and_missing_keys() -> None:
    with SimServer(gateway=SimGateway({"sk-sim-a": GatewayKey(limit_usd=1)})) as sim:
        with pytest.raises(openai.AuthenticationError) as unknown:
            client_for(sim, api_key="sk-wrong-key-123456").chat.completions.create(
                model="gpt-4o", messages=QUESTION
            )
        missing = httpx.post(
            f"{sim.base_url}/chat/completions", json={"model": "gpt-4o", "messages": QUESTION}
        )

    assert unknown.value.code == "invalid_api_key"
    assert "sk-wrong-key-123456" not in unknown.value.message
    assert missing.status_code == 401


def test_gateway_litellm_style_answers_422_without_retry_after() -> None:
    gateway = SimGateway({"sk-sim-a": GatewayKey(limit_usd=0)}, style="litellm")
    with (
        SimServer(gateway=gateway) as sim,
        pytest.raises(openai.UnprocessableEntityError) as refused,
    ):
        client_for(sim, api_key="sk-sim-a").chat.completions.create(
            model="gpt-4o", messages=QUESTION
        )

    assert "retry-after" not in refused.value.response.headers
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["message"].startswith("Budget has been exceeded! Key=")
    assert "Current cost: 0.0, Max budget: 0.0" in body["message"]
    assert (body["type"], body["param"], body["code"]) == ("budget_exceeded", None, "422")


def test_gateway_litellm_style_reports_spend_headers() -> None:
    gateway = SimGateway({"sk-sim-a": GatewayKey(limit_usd=1)}, style="litellm", budget_status=429)
    with SimServer(gateway=gateway) as sim:
        response = client_for(sim, api_key="sk-sim-a").chat.completions.with_raw_response.create(
            model="gpt-4o", messages=QUESTION
        )

    assert float(response.headers["x-litellm-response-cost"]) > 0
    assert float(response.headers["x-litellm-key-spend"]) == float(gateway.spent("sk-sim-a"))
    assert gateway.budget_status == 429


def test_gateway_charges_cached_input_at_the_cached_price() -> None:
    gateway = SimGateway({"sk-sim-a": GatewayKey()})
    long_prompt = [{"role": "user", "content": "Summarise: " + "the ledger balances. " * 400}]
    with SimServer(gateway=gateway, script=["ok"] * 2) as sim:
        client = client_for(sim, api_key="sk-sim-a")
        client.chat.completions.create(model="gpt-4o", messages=long_prompt)  # type: ignore[arg-type]
        before = gateway.spent("sk-sim-a")
        warm = client.chat.completions.create(model="gpt-4o", messages=long_prompt)  # type: ignore[arg-type]
        warm_cost = gateway.spent("sk-sim-a") - before

    assert warm.usage is not None and warm.usage.prompt_tokens_details is not None
    cached = warm.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= 1024
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=warm.usage.prompt_tokens,
            cache_read_tokens=cached,
            output_tokens=warm.usage.completion_tokens,
        ),
        "gpt-4o",
        provider_id="openai",
    ).total_price
    assert warm_cost == pytest.approx(Decimal(expected), rel=Decimal("1e-9"))


# -- recording, routing, lifecycle -----------------------------------------------------------


def test_authorization_is_never_recorded_or_logged(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "sk-very-secret-key-0123456789"
    with SimServer(verbose=True) as sim:
        client_for(sim, api_key=secret).chat.completions.create(model="gpt-4o", messages=QUESTION)
        recorded = sim.requests

    assert len(recorded) == 1
    request = recorded[0]
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.body is not None and request.body["messages"] == QUESTION
    assert "authorization" not in request.headers
    assert all(name == name.lower() for name in request.headers)
    assert request.headers["content-type"] == "application/json"
    assert secret not in repr(recorded)
    log = capsys.readouterr().err
    assert "POST /v1/chat/completions" in log and " 200 " in log
    assert secret not in log


def test_requests_are_recorded_from_many_threads(sim: SimServer) -> None:
    client = client_for(sim)

    def work() -> None:
        for _ in range(10):
            client.chat.completions.create(model="gpt-4o", messages=QUESTION)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(sim.requests) == 80
    sim.clear()
    assert sim.requests == []


def test_unknown_routes_and_bad_requests_get_openai_errors(shared_sim: SimServer) -> None:
    client = client_for(shared_sim)

    with pytest.raises(openai.NotFoundError) as not_found:
        client.images.generate(model="gpt-image-1", prompt="x")
    with pytest.raises(openai.BadRequestError) as no_messages:
        client.chat.completions.create(model="gpt-4o", messages=[])
    with pytest.raises(openai.BadRequestError) as bad_max_tokens:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=0)
    broken = httpx.post(
        f"{shared_sim.base_url}/chat/completions",
        content=b"{oops",
        headers={"content-type": "application/json"},
    )

    assert not_found.value.body == {
        "message": "Invalid URL (POST /v1/images/generations)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert no_messages.value.code == "empty_array"
    assert bad_max_tokens.value.param == "max_tokens"
    assert broken.status_code == 400
    assert set(broken.json()["error"]) == {"message", "type", "param", "code"}
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


def test_restart_keeps_the_port_and_stop_wakes_delayed_answers() -> None:
    sim = SimServer()
    sim.start()
    base_url = sim.base_url
    sim.timeout_next(seconds=30)
    caller = threading.Thread(
        target=lambda: httpx.post(
            f"{base_url}/chat/completions",
            json={"model": "gpt-4o", "messages": QUESTION},
            timeout=10,
        )
    )
    caller.start()
    deadline = time.monotonic() + 60
    while sim.pending_faults and time.monotonic() < deadline:  # the call is being held
        time.sleep(0.01)
    assert not sim.pending_faults
    started = time.perf_counter()
    sim.stop()
    caller.join(timeout=30)
    assert time.perf_counter() - started < 20  # the stalled call (30 s) was not waited for
    assert not sim.running

    sim.start()
    try:
        assert sim.base_url == base_url
        assert client_for(sim).chat.completions.create(model="gpt-4o", messages=QUESTION).choices
    finally:
        sim.stop()


def test_serve_runs_until_stopped() -> None:
    seen: list[str] = []

    def on_ready(sim: SimServer) -> None:
        def use_then_stop() -> None:
            completion = client_for(sim).chat.completions.create(model="gpt-4o", messages=QUESTION)
            seen.append(completion.choices[0].message.content or "")
            sim.stop()

        threading.Thread(target=use_then_stop).start()

    runner = threading.Thread(
        target=serve, kwargs={"port": 0, "script": ["hello"], "on_ready": on_ready}
    )
    runner.start()
    runner.join(timeout=60)

    assert not runner.is_alive()
    assert seen == ["hello"]


# -- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.12, "120ms"),
        (0.017, "17ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.25, "59.25s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3725, "1h2m5s"),
        (7200, "2h0m0s"),
    ],
)
def test_format_reset_duration(seconds: float, text: str) -> None:
    assert format_reset_duration(seconds) == text


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


@given(st.integers(min_value=0, max_value=10 * 86_400_000))
def test_format_reset_duration_round_trips(milliseconds: int) -> None:
    text = format_reset_duration(milliseconds / 1000)
    scale = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
    parsed = sum(round(float(value) * scale[unit]) for value, unit in _DURATION_PART.findall(text))
    assert "".join(m.group(0) for m in _DURATION_PART.finditer(text)) == text
    assert parsed == milliseconds


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=0, max_size=300), max_tokens=st.integers(min_value=1, max_value=80))
def test_truncation_never_exceeds_max_tokens(text: str, max_tokens: int) -> None:
    engine = ChatEngine()
    body = {"model": "gpt-4o", "messages": QUESTION, "max_tokens": max_tokens}
    completion = engine.complete(body, Reply(content=text), Script())

    full = tokens(text)
    assert completion.completion_tokens == min(full, max_tokens)
    assert tokens(completion.content or "") <= max_tokens
    assert completion.finish_reason == ("length" if full > max_tokens else "stop")
    assert text.startswith(completion.content or "")


def test_a_failing_reply_fn_answers_500(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(body: dict[str, Any]) -> Reply:
        raise RuntimeError("script bug")

    with SimServer(script=broken) as sim, pytest.raises(openai.InternalServerError) as caught:
        client_for(sim).chat.completions.create(model="gpt-4o", messages=QUESTION)

    assert "RuntimeError: script bug" in caught.value.message
    assert "script bug" in capsys.readouterr().err


# -- n, service tiers, images and the bill -----------------------------------------------------


def test_n_choices_are_all_generated_and_billed(sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-bill")
    one = client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=20)
    three = client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=20, n=3)
    assert [choice.index for choice in three.choices] == [0, 1, 2]
    assert one.usage is not None and three.usage is not None
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=QUESTION,
            max_tokens=20,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {chunk.choices[0].index for chunk in chunks if chunk.choices} == {0, 1}
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 2 * one.usage.completion_tokens
    assert sim.billed_calls() == 3 and sim.billed_calls("sk-other") == 0


def test_the_bill_is_at_list_price_and_the_served_tier(sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-bill")
    standard = client.chat.completions.create(model="gpt-5", messages=QUESTION, max_tokens=20)
    standard_bill = sim.billed_usd("sk-bill")
    priority = client.chat.completions.create(
        model="gpt-5", messages=QUESTION, max_tokens=20, service_tier="priority"
    )
    assert standard.service_tier == "default" and priority.service_tier == "priority"
    assert standard.usage is not None
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=standard.usage.prompt_tokens,
            output_tokens=standard.usage.completion_tokens,
        ),
        "gpt-5",
        provider_id="openai",
    ).total_price
    assert standard_bill == Decimal(expected)
    # Priority costs gpt-5 twice the standard price.
    assert sim.billed_usd("sk-bill") == 3 * standard_bill


def test_an_answer_the_client_gave_up_on_is_billed() -> None:
    with SimServer() as sim:
        sim.timeout_next(1, seconds=1.0)
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-bill", max_retries=0)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(
                model="gpt-4o", messages=QUESTION, max_tokens=5, timeout=0.2
            )
        deadline = time.monotonic() + 30
        while sim.billed_calls() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim.billed_calls() == 1 and sim.billed_usd() > 0


def test_images_are_billed_by_size_and_detail(sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-bill")
    pixel = "data:image/gif;base64,R0lGODlhAAQABAAAAA=="  # a GIF89a header: 1024 x 1024

    def prompt(detail: str, model: str = "gpt-4o") -> int:
        content = [{"type": "image_url", "image_url": {"url": pixel, "detail": detail}}]
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=5
        )
        assert reply.usage is not None
        return reply.usage.prompt_tokens

    # 1024 x 1024 at high detail is 4 tiles: 85 + 4 * 170 = 765; at low detail 85.
    assert prompt("high") - prompt("low") == 765 - 85
    assert prompt("high", "gpt-4o-mini") - prompt("low", "gpt-4o-mini") == 4 * 5667
