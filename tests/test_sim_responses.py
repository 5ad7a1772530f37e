"""The sim's OpenAI Responses API (/v1/responses), driven by the real ``openai`` SDK on loopback:
shapes, usage, the stream's event sequence, function calls, previous_response_id (billed
again), output caps, faults and the budget gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from agentguard.parking import classify_limit_error
from agentguard.sim import GatewayKey, Reply, SimGateway, SimServer, ToolCall
from agentguard.sim.scripts import CODING_TOOLS, coding_agent_script, run_tools

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "search",
        "description": "Search the project.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    }
]
SCRIPT = [Reply(tool_calls=[ToolCall("search", {"query": "budget"})]), "Found it: 42."]
QUESTION = "Find the budget line in the report."


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(script=SCRIPT) as server:
        yield server


@pytest.fixture(scope="module")
def client(sim: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)


def chat_prompt_tokens(client: openai.OpenAI, messages: list[dict[str, Any]]) -> int:
    """What the same sim bills for the same conversation on the chat endpoint."""
    answer = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert answer.usage is not None
    return answer.usage.prompt_tokens


def test_plain_answer_has_the_response_shape_and_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4o", input="Hello there.")
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    # The scripted step 0 calls a tool; the tool is in the output though no tools were sent.
    assert [item.type for item in response.output] == ["function_call"]
    assert response.usage is not None
    assert response.usage.input_tokens == chat_prompt_tokens(
        client, [{"role": "user", "content": "Hello there."}]
    )
    assert response.usage.total_tokens == (
        response.usage.input_tokens + response.usage.output_tokens
    )
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_instructions_are_billed_as_a_leading_message(client: openai.OpenAI) -> None:
    plain = client.responses.create(model="gpt-4o", input=QUESTION)
    instructed = client.responses.create(model="gpt-4o", input=QUESTION, instructions="Be brief.")
    assert plain.usage is not None and instructed.usage is not None
    assert instructed.usage.input_tokens == chat_prompt_tokens(
        client,
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
    )
    assert instructed.usage.input_tokens > plain.usage.input_tokens
    assert instructed.instructions == "Be brief."


def test_function_call_then_previous_response_id_bills_the_earlier_conversation(
    client: openai.OpenAI,
) -> None:
    first = client.responses.create(model="gpt-4o", input=QUESTION, tools=TOOLS)
    call = first.output[0]
    assert call.type == "function_call"
    assert call.name == "search"
    assert json.loads(call.arguments) == {"query": "budget"}
    assert call.call_id.startswith("call_")

    output = {"type": "function_call_output", "call_id": call.call_id, "output": "line 42"}
    chained = client.responses.create(
        model="gpt-4o",
        previous_response_id=first.id,
        input=[output],
        tools=TOOLS,
    )
    assert chained.output_text == "Found it: 42."
    assert chained.previous_response_id == first.id

    # The same conversation sent whole costs exactly what the chained request was billed.
    whole = client.responses.create(
        model="gpt-4o",
        input=[
            {"role": "user", "content": QUESTION},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            output,
        ],
        tools=TOOLS,
    )
    assert whole.output_text == "Found it: 42."
    assert chained.usage is not None and whole.usage is not None and first.usage is not None
    assert chained.usage.input_tokens == whole.usage.input_tokens
    assert chained.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_unknown_or_unstored_previous_response_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="gpt-4o", input="hi", previous_response_id="resp_nope")
    assert raised.value.code == "previous_response_not_found"
    assert raised.value.param == "previous_response_id"
    unstored = client.responses.create(model="gpt-4o", input="hi", store=False)
    assert unstored.store is False
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="gpt-4o", input="hi", previous_response_id=unstored.id)


def test_stream_sends_the_event_sequence_and_the_same_answer(client: openai.OpenAI) -> None:
    conversation = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Searching."},
        {"role": "user", "content": "Go on."},
    ]
    plain = client.responses.create(model="gpt-4o", input=conversation)
    events = list(client.responses.create(model="gpt-4o", input=conversation, stream=True))
    kinds = [event.type for event in events]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-5:] == [
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    created = events[0]
    assert created.type == "response.created"
    assert created.response.status == "in_progress"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert "".join(deltas) == plain.output_text == "Found it: 42."
    assert completed.response.usage == plain.usage


def test_stream_helper_accumulates_function_calls(client: openai.OpenAI) -> None:
    with client.responses.stream(model="gpt-4o", input=QUESTION, tools=TOOLS) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    call = final.output[0]
    assert call.type == "function_call"
    assert json.loads(call.arguments) == {"query": "budget"}


def test_max_output_tokens_cuts_the_answer_as_incomplete() -> None:
    long_answer = " ".join(["budget"] * 200)
    with SimServer(script=[Reply(content=long_answer, reasoning_tokens=5)]) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        response = client.responses.create(model="o4-mini", input="Talk.", max_output_tokens=40)
        assert response.status == "incomplete"
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert response.usage is not None
        assert response.usage.output_tokens == 40
        assert response.usage.output_tokens_details.reasoning_tokens == 5
        assert [item.type for item in response.output] == ["reasoning", "message"]
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model="o4-mini", input="Talk.", max_output_tokens=8)
        assert raised.value.code == "integer_below_min_value"


def test_repeated_long_input_reads_the_prompt_cache() -> None:
    with SimServer() as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        long_input = "Quarterly figures follow. " * 400
        first = client.responses.create(model="gpt-4o", input=long_input)
        second = client.responses.create(model="gpt-4o", input=long_input)
        assert first.usage is not None and second.usage is not None
        assert first.usage.input_tokens_details.cached_tokens == 0
        cached = second.usage.input_tokens_details.cached_tokens
        assert 1024 <= cached <= second.usage.input_tokens
        assert cached % 128 == 0


def test_faults_answer_in_openai_shape() -> None:
    with SimServer() as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        sim.rate_limit_next(retry_after=20, reset_requests=20)
        with pytest.raises(openai.RateLimitError) as limited:
            client.responses.create(model="gpt-4o", input="hi")
        response = limited.value.response
        assert response.headers["retry-after"] == "20"
        assert response.headers["x-ratelimit-reset-requests"] == "20s"
        verdict = classify_limit_error(429, response.headers, response.content)
        assert verdict is not None and verdict.kind == "rate_limit" and verdict.wait_s == 20.0

        sim.fail_next(status=500)
        with pytest.raises(openai.InternalServerError) as failed:
            client.responses.create(model="gpt-4o", input="hi")
        assert failed.value.body is not None
        assert failed.value.response.json()["error"]["type"] == "server_error"

        sim.timeout_next(seconds=5)
        quick = client.with_options(timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            quick.responses.create(model="gpt-4o", input="hi")
        assert client.responses.create(model="gpt-4o", input="hi").status == "completed"


def test_cut_stream_drops_the_connection() -> None:
    with SimServer() as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        sim.cut_stream_next(after_chunks=3)
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            list(client.responses.create(model="gpt-4o", input="hi", stream=True))


def test_gateway_charges_and_refuses_responses_requests() -> None:
    gateway = SimGateway({"sk-sim-a": GatewayKey(limit_usd=Decimal("0.0001"), window_s=60)})
    with SimServer(gateway=gateway, default_output_tokens=64) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-sim-a", max_retries=0)
        response = client.responses.create(model="gpt-4o", input="Summarise the report.")
        assert response.usage is not None
        assert gateway.spent("sk-sim-a") == gateway.cost(
            "gpt-4o", response.usage.input_tokens, 0, response.usage.output_tokens
        )
        while gateway.remaining("sk-sim-a"):
            client.responses.create(model="gpt-4o", input="Summarise the report.")
        with pytest.raises(openai.RateLimitError) as refused:
            client.responses.create(model="gpt-4o", input="Summarise the report.")
        assert refused.value.code == "budget_exceeded"
        headers = refused.value.response.headers
        verdict = classify_limit_error(429, headers, refused.value.response.content)
        assert verdict is not None and verdict.kind == "budget_window"
        assert verdict.wait_s is not None and 0 < verdict.wait_s <= 60

        stranger = openai.OpenAI(base_url=sim.base_url, api_key="sk-unknown-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            stranger.responses.create(model="gpt-4o", input="hi")


def test_bad_requests_get_openai_errors(sim: SimServer) -> None:
    answer = httpx.post(f"{sim.base_url}/responses", json={"model": "gpt-4o"}, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "input"
    answer = httpx.post(
        f"{sim.base_url}/responses", json={"model": "gpt-4o", "input": 7}, timeout=10
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_scripted_coding_agent_runs_with_chained_responses() -> None:
    tools = [{"type": "function", **tool["function"]} for tool in CODING_TOOLS]
    with SimServer(script=coding_agent_script(steps=4)) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        response = client.responses.create(model="gpt-4o", input="Fix the tax bug.", tools=tools)
        calls_made = 0
        inputs = [response.usage.input_tokens if response.usage else 0]
        while any(item.type == "function_call" for item in response.output):
            outputs = [
                {"type": "function_call_output", "call_id": item.call_id, "output": run_tools(item)}
                for item in response.output
                if item.type == "function_call"
            ]
            calls_made += len(outputs)
            response = client.responses.create(
                model="gpt-4o",
                previous_response_id=response.id,
                input=outputs,
                tools=tools,
            )
            inputs.append(response.usage.input_tokens if response.usage else 0)
        assert response.output_text.startswith("I fixed the rounding bug")
        assert calls_made >= 3
        # Each chained step is billed for the whole conversation so far.
        assert inputs == sorted(inputs) and len(set(inputs)) == len(inputs)


def sse_data(text: str) -> list[dict[str, Any]]:
    """The JSON data of each server-sent event in a body."""
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


def test_raw_answers_validate_against_the_sdk_types() -> None:
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    reply = Reply(
        content="Here it is.", tool_calls=[ToolCall("search", {"q": "x"})], reasoning_tokens=3
    )
    with SimServer(script=[reply]) as sim:
        body = {"model": "o4-mini", "input": "hi", "tools": TOOLS}
        plain = httpx.post(f"{sim.base_url}/responses", json=body, timeout=10).json()
        TypeAdapter(Response).validate_python(plain)
        kinds = [item["type"] for item in plain["output"]]
        assert kinds == ["reasoning", "message", "function_call"]
        streamed = httpx.post(
            f"{sim.base_url}/responses", json={**body, "stream": True}, timeout=10
        )
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert "[DONE]" not in streamed.text
        events = sse_data(streamed.text)
        adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
        for event in events:
            adapter.validate_python(event)
        final = events[-1]["response"]
        assert [item["type"] for item in final["output"]] == kinds
        assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 3
