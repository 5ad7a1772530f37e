"""Fallback chains that cross providers, through the public API: a real anthropic or openai
client wrapped by a guard, over loopback HTTP to the sim, which serves both APIs and bills
each by the key it was called with. The caller's model fails; the next model of the chain is
another provider's, reached through ``[routing.providers.*]`` with its own key."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from helpers import captured
from openai.types.chat import ChatCompletion

from agentguard import BudgetExceeded, ConfigError
from agentguard.config import GuardConfig
from agentguard.dialects.translate import translate_reply, translate_request, untranslatable
from agentguard.guard import Guard
from agentguard.sim import SimServer
from agentguard.sim.script import Reply, ToolCall, as_script

CALLER_KEY = "sk-caller-key-000000000001"
UPSTREAM_KEY = "sk-upstream-secret-0000000000000042"
KEY_ENV = "AGENTGUARD_TEST_UPSTREAM_KEY"
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, UPSTREAM_KEY)
    return UPSTREAM_KEY


def guard_for(
    tmp_path: Path,
    sim: SimServer,
    fallbacks: dict[str, list[str]],
    *,
    limit: str = "1",
    providers: dict[str, Any] | None = None,
    **sections: Any,
) -> Guard:
    if providers is None:
        providers = {
            "openai": {"base_url": sim.base_url, "api_key_env": KEY_ENV},
            "anthropic": {"base_url": sim.url, "api_key_env": KEY_ENV},
        }
    return Guard(
        GuardConfig.from_mapping(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
                "budgets": [{"key": "team", "limit_usd": limit, "window": "1d"}],
                "limits": {"max_retries": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.02},
                "routing": {"fallbacks": fallbacks, "providers": providers},
                **sections,
            },
            env={},
        )
    )


def posts(sim: SimServer) -> list[tuple[str, str]]:
    return [(r.path, str((r.body or {}).get("model"))) for r in sim.requests if r.method == "POST"]


def settle(sim: SimServer, guard: Guard) -> tuple[Decimal, Decimal]:
    """The provider's bill and the ledger's spend, once every hold is settled."""
    assert sim.wait_idle(30)
    guard.close()
    status = guard.budget_status("team")
    assert status.reserved_usd == 0
    return sim.billed_usd(), status.spent_usd


def assert_exact(billed: Decimal, spent: Decimal) -> None:
    assert billed > 0
    assert abs(spent - billed) <= billed / 100, (spent, billed)


def test_an_anthropic_call_falls_back_to_an_openai_model_and_gets_a_message(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    guard = guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]})
    sim.fail_model("claude-sonnet-4-6", status=529)
    claude = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=CALLER_KEY, max_retries=0))
    with captured() as events, guard.session(budget_key="team") as session:
        message = claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=40,
            system="Be brief.",
            extra_body={"temperature": 0.2},
            stop_sequences=["END"],
            messages=HELLO,
        )
    assert isinstance(message, anthropic.types.Message)
    assert message.model == "gpt-4.1" and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text.startswith("Simulated")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert posts(sim) == [
        ("/v1/messages", "claude-sonnet-4-6"),
        ("/v1/chat/completions", "gpt-4.1"),
    ]
    sent = sim.requests[-1].body or {}
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 40 and sent["stop"] == ["END"] and sent["temperature"] == 0.2
    switches = [e for e in events if e["event"] == "fallback"]
    assert [(e["from_model"], e["model"], e["reason"]) for e in switches] == [
        ("claude-sonnet-4-6", "gpt-4.1", "overloaded")
    ]
    assert session.fallbacks == 1
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)
    # The upstream was called with the key from the environment variable, not the caller's.
    assert sim.billed_usd(UPSTREAM_KEY) == billed and sim.billed_usd(CALLER_KEY) == 0


def test_a_tool_use_round_trip_crosses_providers_on_two_steps(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    sim.script = as_script(
        [Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]), Reply("Sunny in Paris.")]
    )
    guard = guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]})
    sim.fail_model("claude-sonnet-4-6", status=529)
    claude = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=CALLER_KEY, max_retries=0))
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    with guard.session(budget_key="team") as session:
        first = claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=60,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "auto"},
            messages=ask,
        )
        assert first.stop_reason == "tool_use"
        use = next(block for block in first.content if block.type == "tool_use")
        assert use.name == "get_weather" and use.input == {"city": "Paris"}
        second = claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=60,
            tools=[WEATHER_TOOL],
            messages=[
                *ask,
                {"role": "assistant", "content": [block.model_dump() for block in first.content]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": use.id, "content": "18C, sun"}
                    ],
                },
            ],
        )
    assert isinstance(second, anthropic.types.Message)
    assert second.content[0].text == "Sunny in Paris." and second.stop_reason == "end_turn"
    chat = [r.body or {} for r in sim.requests if r.path == "/v1/chat/completions"]
    assert chat[0]["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]
    assert chat[0]["tool_choice"] == "auto"
    assert chat[1]["messages"][1]["tool_calls"][0]["id"] == use.id
    assert chat[1]["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": "18C, sun"}
    assert session.fallbacks == 2 and session.state.tool_calls == 1
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_an_openai_chat_call_falls_back_to_a_claude_model(
    sim: SimServer, tmp_path: Path, upstream_key: str, flavour: str
) -> None:
    sim.script = as_script([Reply(tool_calls=[ToolCall("lookup", {"q": "x"})])])
    guard = guard_for(tmp_path, sim, {"gpt-4o": ["claude-haiku-4-5"]})
    sim.fail_model("gpt-4o", status=529)
    request: dict[str, Any] = {
        "model": "gpt-4o",
        "max_tokens": 50,
        "messages": [{"role": "system", "content": "Use tools."}, *HELLO],
        "tools": [
            {
                "type": "function",
                "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
            }
        ],
        "tool_choice": "required",
    }
    with guard.session(budget_key="team") as session:
        if flavour == "sync":
            client = guard.wrap(
                openai.OpenAI(base_url=sim.base_url, api_key=CALLER_KEY, max_retries=0)
            )
            answer = client.chat.completions.create(**request)
        else:
            aclient = guard.wrap(
                openai.AsyncOpenAI(base_url=sim.base_url, api_key=CALLER_KEY, max_retries=0)
            )
            answer = await aclient.chat.completions.create(**request)
    assert isinstance(answer, ChatCompletion) and answer.model == "claude-haiku-4-5"
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].function.name == "lookup"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"q": "x"}
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    sent = sim.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers.get("anthropic-version")  # spoken as the Messages API
    assert (sent.body or {})["system"] == "Use tools." and (sent.body or {})["tool_choice"] == {
        "type": "any"
    }
    assert session.fallbacks == 1
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)
    assert sim.billed_usd(UPSTREAM_KEY) == billed


def test_the_upstream_key_is_in_no_log_and_no_file(
    sim: SimServer, tmp_path: Path, upstream_key: str, capfd: pytest.CaptureFixture[str]
) -> None:
    guard = guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]})
    sim.fail_model("claude-sonnet-4-6", status=529)
    sim.fail_model("gpt-4.1", status=400, body={"error": {"message": f"bad key {UPSTREAM_KEY}"}})
    claude = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=CALLER_KEY, max_retries=0))
    with (
        captured() as events,
        guard.session(budget_key="team"),
        pytest.raises(anthropic.BadRequestError) as caught,
    ):
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=HELLO)
    # The other provider's error reaches the caller in the caller's own error shape.
    assert caught.value.status_code == 400
    assert UPSTREAM_KEY not in str(caught.value) and UPSTREAM_KEY not in caught.value.response.text
    guard.close()
    assert UPSTREAM_KEY not in json.dumps(events, default=str)
    out, err = capfd.readouterr()
    assert UPSTREAM_KEY not in out + err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert UPSTREAM_KEY.encode() not in path.read_bytes(), path
    assert all(UPSTREAM_KEY not in json.dumps(r.headers) for r in sim.requests)


def test_a_chain_to_an_unconfigured_provider_is_refused_naming_what_to_set(
    sim: SimServer, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]}, providers={})
    message = str(caught.value)
    assert "routing.fallbacks.claude-sonnet-4-6" in message
    assert "[routing.providers.openai]" in message and "api_key_env" in message


def test_an_unset_key_variable_is_refused_naming_the_field(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError) as caught:
        guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]})
    assert caught.value.field == "routing.providers.openai.api_key_env"
    assert KEY_ENV in str(caught.value)


def test_a_key_in_place_of_a_variable_name_is_refused_without_echoing_it(
    sim: SimServer, tmp_path: Path
) -> None:
    providers = {"openai": {"base_url": sim.base_url, "api_key_env": UPSTREAM_KEY}}
    with pytest.raises(ConfigError) as caught:
        guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]}, providers=providers)
    assert "api_key_env" in str(caught.value) and UPSTREAM_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"extra_body": {"top_k": 5}}, "top_k"),
        (
            {"system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]},
            "cache_control",
        ),
    ],
    ids=["thinking", "top_k", "cache_control"],
)
def test_an_untranslatable_request_skips_the_other_providers_model(
    sim: SimServer, tmp_path: Path, upstream_key: str, options: dict[str, Any], reason: str
) -> None:
    guard = guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1", "claude-haiku-4-5"]})
    sim.fail_model("claude-sonnet-4-6", status=529)
    claude = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=CALLER_KEY, max_retries=0))
    with captured() as events, guard.session(budget_key="team") as session:
        request = {"model": "claude-sonnet-4-6", "max_tokens": 2000, "messages": HELLO, **options}
        message = claude.messages.create(**request)
    # gpt-4.1 was skipped, the next model of the chain (the caller's own provider) answered.
    assert message.model == "claude-haiku-4-5"
    assert posts(sim) == [
        ("/v1/messages", "claude-sonnet-4-6"),
        ("/v1/messages", "claude-haiku-4-5"),
    ]
    skipped = [e for e in events if e["event"] == "fallback_skipped"]
    assert len(skipped) == 1 and skipped[0]["model"] == "gpt-4.1"
    assert reason in skipped[0]["reason"]
    assert session.fallbacks == 1
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool_use"])
def test_an_anthropic_stream_falls_back_to_an_openai_model_as_anthropic_events(
    sim: SimServer, tmp_path: Path, upstream_key: str, tools: bool
) -> None:
    if tools:
        sim.script = as_script([Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"})])])
    guard = guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]})
    sim.fail_model("claude-sonnet-4-6", status=529)
    claude = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=CALLER_KEY, max_retries=0))
    extra: dict[str, Any] = {"tools": [WEATHER_TOOL]} if tools else {}
    with (
        guard.session(budget_key="team") as session,
        claude.messages.stream(
            model="claude-sonnet-4-6", max_tokens=40, messages=HELLO, **extra
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert message.model == "gpt-4.1"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    if tools:
        assert message.stop_reason == "tool_use" and text == ""
        assert [(b.type, b.name, b.input) for b in message.content if b.type == "tool_use"] == [
            ("tool_use", "get_weather", {"city": "Oslo"})
        ]
    else:
        assert message.stop_reason == "end_turn" and text.startswith("Simulated answer")
        assert message.content[0].type == "text" and message.content[0].text == text
    assert (sim.requests[-1].body or {})["stream"] is True
    assert session.fallbacks == 1
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)
    # What the caller was told it used is what the other provider billed for.
    assert sim.billed_calls(UPSTREAM_KEY) == 1


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_an_openai_chat_stream_falls_back_to_a_claude_model_as_chat_chunks(
    sim: SimServer, tmp_path: Path, upstream_key: str, flavour: str
) -> None:
    sim.script = as_script(["Hello from the fallback.", "unused"])
    guard = guard_for(tmp_path, sim, {"gpt-4o": ["claude-haiku-4-5"]})
    sim.fail_model("gpt-4o", status=529)
    request: dict[str, Any] = {"model": "gpt-4o", "max_tokens": 40, "messages": HELLO}
    with guard.session(budget_key="team") as session:
        if flavour == "sync":
            client = guard.wrap(
                openai.OpenAI(base_url=sim.base_url, api_key=CALLER_KEY, max_retries=0)
            )
            chunks = list(
                client.chat.completions.create(
                    **request, stream=True, stream_options={"include_usage": True}
                )
            )
        else:
            aclient = guard.wrap(
                openai.AsyncOpenAI(base_url=sim.base_url, api_key=CALLER_KEY, max_retries=0)
            )
            stream = await aclient.chat.completions.create(**request, stream=True)
            chunks = [chunk async for chunk in stream]
    assert {chunk.model for chunk in chunks} == {"claude-haiku-4-5"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fallback."
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    if flavour == "sync":  # asked for: the last chunk carries the usage
        assert len(usage) == 1 and usage[0].completion_tokens > 0 and not chunks[-1].choices
    else:
        assert usage == []
    assert session.fallbacks == 1
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"n": 2}, "n > 1"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temperature": 1.5}, "temperature"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_chat_features_without_a_messages_equivalent_are_not_translated(
    options: dict[str, Any], reason: str
) -> None:
    body = {"model": "gpt-4o", "max_tokens": 10, "messages": HELLO, **options}
    problem = untranslatable(body, "openai_chat", "anthropic_messages")
    assert problem is not None and reason in problem


def test_a_chat_history_with_tool_results_becomes_alternating_messages() -> None:
    body = {
        "model": "gpt-4o",
        "max_completion_tokens": 99,
        "stop": "END",
        "parallel_tool_calls": False,
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "b", "arguments": '{"x":1}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "r1"},
            {"role": "tool", "tool_call_id": "c2", "content": "r2"},
            {"role": "user", "content": "and?"},
        ],
    }
    out = translate_request(body, "openai_chat", "anthropic_messages", "claude-haiku-4-5")
    assert out["system"] == "sys" and out["max_tokens"] == 99 and out["stop_sequences"] == ["END"]
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": "c2",
        "name": "b",
        "input": {"x": 1},
    }
    assert [block["type"] for block in out["messages"][2]["content"]] == [
        "tool_result",
        "tool_result",
        "text",
    ]


def test_a_chain_crosses_over_and_back_to_the_callers_own_provider(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    guard = guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1", "claude-haiku-4-5"]})
    sim.fail_model("claude-sonnet-4-6", status=529)
    sim.fail_model("gpt-4.1", status=404)
    claude = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=CALLER_KEY, max_retries=0))
    with captured() as events, guard.session(budget_key="team") as session:
        message = claude.messages.create(model="claude-sonnet-4-6", max_tokens=30, messages=HELLO)
    assert isinstance(message, anthropic.types.Message) and message.model == "claude-haiku-4-5"
    assert posts(sim) == [
        ("/v1/messages", "claude-sonnet-4-6"),
        ("/v1/chat/completions", "gpt-4.1"),
        ("/v1/messages", "claude-haiku-4-5"),
    ]
    back = sim.requests[-1].body or {}
    assert back["messages"] == HELLO and back["max_tokens"] == 30  # the caller's own request
    reasons = [(e["model"], e["reason"]) for e in events if e["event"] == "fallback"]
    assert reasons == [("gpt-4.1", "overloaded"), ("claude-haiku-4-5", "model_not_found")]
    assert session.fallbacks == 2
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)
    assert sim.billed_usd(CALLER_KEY) == billed  # answered on the caller's own upstream


def test_a_crossing_fallback_the_budget_cannot_cover_is_never_sent(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    # Room for a gpt-4o-mini call's worst case, not for a claude-sonnet-4-6 one.
    guard = guard_for(tmp_path, sim, {"gpt-4o-mini": ["claude-sonnet-4-6"]}, limit="0.0002")
    sim.fail_model("gpt-4o-mini", status=529)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=CALLER_KEY, max_retries=0))
    with guard.session(budget_key="team"), pytest.raises(BudgetExceeded):
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=30, messages=HELLO)
    assert posts(sim) == [("/v1/chat/completions", "gpt-4o-mini")]
    billed, spent = settle(sim, guard)
    assert billed == spent == 0


def test_a_responses_api_call_does_not_cross_to_a_claude_model(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    guard = guard_for(tmp_path, sim, {"gpt-4o": ["claude-haiku-4-5", "gpt-4.1"]})
    sim.fail_model("gpt-4o", status=529)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=CALLER_KEY, max_retries=0))
    with captured() as events, guard.session(budget_key="team"):
        answer = client.responses.create(model="gpt-4o", max_output_tokens=30, input="Hi.")
    assert answer.model == "gpt-4.1"
    skipped = [e for e in events if e["event"] == "fallback_skipped"]
    assert [e["model"] for e in skipped] == ["claude-haiku-4-5"]
    assert "openai_responses" in skipped[0]["reason"]


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_the_proxy_crosses_providers_too(
    sim: SimServer, tmp_path: Path, upstream_key: str, streamed: bool
) -> None:
    from agentguard.proxy import ProxyServer

    guard = guard_for(
        tmp_path,
        sim,
        {"claude-sonnet-4-6": ["gpt-4.1"]},
        proxy={"openai_base_url": sim.base_url, "anthropic_base_url": sim.url},
    )
    sim.fail_model("claude-sonnet-4-6", status=529)
    server = ProxyServer(guard)
    server.start()
    try:
        claude = anthropic.Anthropic(
            base_url=server.base_url,
            api_key=CALLER_KEY,
            max_retries=0,
            default_headers={"x-agentguard-budget-key": "team"},
        )
        request: dict[str, Any] = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 30,
            "messages": HELLO,
        }
        if streamed:
            with claude.messages.stream(**request) as stream:
                message = stream.get_final_message()
        else:
            message = claude.messages.create(**request)
    finally:
        server.stop()
    assert isinstance(message, anthropic.types.Message) and message.model == "gpt-4.1"
    assert message.content[0].type == "text"
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)
    assert sim.billed_usd(UPSTREAM_KEY) == billed


def test_a_model_in_cooldown_is_stepped_over_to_the_other_provider_before_sending(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    # The default cooldown: 3 failures within a minute.
    guard = guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]})
    sim.fail_model("claude-sonnet-4-6", status=529)
    claude = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=CALLER_KEY, max_retries=0))
    with captured() as events, guard.session(budget_key="team") as session:
        for _ in range(3):
            claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=HELLO)
        sim.clear()
        message = claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=HELLO)
    assert isinstance(message, anthropic.types.Message) and message.model == "gpt-4.1"
    assert posts(sim) == [("/v1/chat/completions", "gpt-4.1")]
    assert [e["reason"] for e in events if e["event"] == "fallback"][-1] == "cooldown"
    assert session.fallbacks == 4
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)


async def test_an_async_anthropic_client_falls_back_across_providers(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    guard = guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]})
    sim.fail_model("claude-sonnet-4-6", status=529)
    claude = guard.wrap(
        anthropic.AsyncAnthropic(base_url=sim.url, api_key=CALLER_KEY, max_retries=0)
    )
    async with guard.session(budget_key="team") as session:
        message = await claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=30, messages=HELLO
        )
    assert isinstance(message, anthropic.types.Message) and message.model == "gpt-4.1"
    assert session.fallbacks == 1
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use")],
)
def test_a_chat_answer_reads_as_a_message(finish: str, stop: str) -> None:
    chat = {
        "id": "c1",
        "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }
    out = json.loads(
        translate_reply(200, json.dumps(chat).encode(), "openai_chat", "anthropic_messages")
    )
    assert out["stop_reason"] == stop and out["content"] == [{"type": "text", "text": "hi"}]
    assert out["usage"]["input_tokens"] == 6 and out["usage"]["cache_read_input_tokens"] == 4
    message = anthropic.types.Message.model_validate(out)
    assert message.usage.output_tokens == 3


def test_a_claude_refusal_reads_as_a_chat_refusal() -> None:
    answer = {
        "id": "m1",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "I can't help with that."}],
        "stop_reason": "refusal",
        "usage": {"input_tokens": 5, "output_tokens": 6},
    }
    out = json.loads(
        translate_reply(200, json.dumps(answer).encode(), "anthropic_messages", "openai_chat")
    )
    completion = ChatCompletion.model_validate(out)
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.refusal == "I can't help with that."
    assert completion.choices[0].message.content is None
    assert completion.usage is not None and completion.usage.prompt_tokens == 5


def test_a_chat_call_without_max_tokens_crosses_with_the_guards_output_cap(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    guard = guard_for(
        tmp_path,
        sim,
        {"gpt-4o": ["claude-haiku-4-5"]},
        limits={"max_retries": 1, "default_max_output_tokens": 300},
    )
    sim.fail_model("gpt-4o", status=529)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=CALLER_KEY, max_retries=0))
    with guard.session(budget_key="team"):
        answer = client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert answer.model == "claude-haiku-4-5"
    assert (sim.requests[-1].body or {})["max_tokens"] == 300  # the Messages API requires one
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)


def test_a_crossed_stream_cut_short_is_charged_at_its_worst_case(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    guard = guard_for(tmp_path, sim, {"claude-sonnet-4-6": ["gpt-4.1"]})
    sim.fail_model("claude-sonnet-4-6", status=529)
    sim.cut_stream_next(1, after_chunks=2)  # the fallback's stream
    claude = guard.wrap(anthropic.Anthropic(base_url=sim.url, api_key=CALLER_KEY, max_retries=0))
    with guard.session(budget_key="team") as session:
        try:
            with claude.messages.stream(
                model="claude-sonnet-4-6", max_tokens=40, messages=HELLO
            ) as stream:
                for _ in stream:
                    pass
        except Exception:  # the SDK may or may not notice the cut; the money must
            pass
    billed, spent = settle(sim, guard)
    assert sim.billed_calls(UPSTREAM_KEY) == 1
    assert 0 < billed < spent == session.spent_usd  # charged, never released


def test_a_chat_stream_with_a_tool_call_crosses_to_a_claude_model(
    sim: SimServer, tmp_path: Path, upstream_key: str
) -> None:
    sim.script = as_script([Reply(tool_calls=[ToolCall("lookup", {"q": "cats"})])])
    guard = guard_for(tmp_path, sim, {"gpt-4o": ["claude-haiku-4-5"]})
    sim.fail_model("gpt-4o", status=529)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=CALLER_KEY, max_retries=0))
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    with (
        guard.session(budget_key="team") as session,
        client.chat.completions.stream(
            model="gpt-4o", max_tokens=40, messages=HELLO, tools=[tool]
        ) as stream,
    ):
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.model == "claude-haiku-4-5"
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "cats"}
    assert call.id.startswith("toolu_")  # the Messages answer's tool_use id, passed on
    assert session.state.tool_calls == 1
    billed, spent = settle(sim, guard)
    assert_exact(billed, spent)
