"""The Messages dialect on its own: the chat view, the input estimate, the worst case with
cache writes of either lifetime, images, usage, and the stream tap (no I/O)."""

from __future__ import annotations

import base64
import json
import struct
from decimal import Decimal
from typing import Any

import genai_prices
import pytest

from agentguard import UnmeteredRequest
from agentguard.dialects import dialect_for, dialect_named, free_endpoint
from agentguard.dialects.anthropic_messages import (
    ANTHROPIC_MESSAGES,
    cache_writes,
    claude_image_tokens,
)
from agentguard.pricing import Pricer, Usage
from agentguard.tokens import TokenCounter

MODEL = "claude-haiku-4-5"
DIALECT = ANTHROPIC_MESSAGES


def png_source(width: int, height: int) -> dict[str, str]:
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", width, height)
    data = base64.b64encode(header + b"\x08\x06\x00\x00\x00" + b"\x00" * 8).decode()
    return {"type": "base64", "media_type": "image/png", "data": data}


def bound_usd(body: dict[str, Any], budgeted: bool = True) -> Decimal:
    counter = TokenCounter()
    counted = DIALECT.count_input(body, MODEL, counter)
    return DIALECT.bound(
        body,
        MODEL,
        counted_input=counted,
        max_output_tokens=body["max_tokens"],
        output_capped=True,
        pricer=Pricer(),
        counter=counter,
        budgeted=budgeted,
    ).usd


@pytest.mark.parametrize(
    ("method", "path", "speaks"),
    [
        ("POST", "/v1/messages", True),
        ("POST", "/anthropic/v1/messages/", True),
        ("POST", "/v1/messages/count_tokens", False),
        ("POST", "/v1/messages/batches", False),
        ("GET", "/v1/messages", False),
        ("POST", "/v1/threads/t_1/messages", False),
    ],
)
def test_which_requests_are_messages_calls(method: str, path: str, speaks: bool) -> None:
    assert (dialect_for(method, path) is DIALECT) is speaks


def test_count_tokens_is_free_and_dialects_are_found_by_name() -> None:
    assert free_endpoint("/v1/messages/count_tokens") and not free_endpoint("/v1/messages")
    assert dialect_named("anthropic_messages") is DIALECT and dialect_named("nope") is None


def test_the_chat_view_puts_system_first_and_maps_tool_blocks() -> None:
    body = {
        "system": [{"type": "text", "text": "Be terse."}],
        "messages": [
            {"role": "user", "content": "Read a.py"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"p": "a"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x = 1"},
                    {"type": "text", "text": "And now?"},
                ],
            },
        ],
    }
    view = DIALECT.messages(body)
    assert [m["role"] for m in view] == ["system", "user", "assistant", "tool", "user"]
    assert view[0]["content"] == "Be terse."
    assert view[2]["tool_calls"][0]["function"] == {"name": "read", "arguments": '{"p":"a"}'}
    assert view[3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "x = 1"}


def test_cache_write_lifetime_decides_the_input_rate_of_the_worst_case() -> None:
    plain = {
        "model": MODEL,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "hi " * 900}],
    }
    five = {
        **plain,
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
    }
    hour = {**plain, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    assert (cache_writes(plain), cache_writes(five), cache_writes(hour)) == ("none", "5m", "1h")
    price = Pricer().price(MODEL)
    output = price.output  # one output token each
    # Haiku 4.5: input $1, 5-minute writes $1.25, 1-hour writes $2 per million tokens.
    ratio_5m = (bound_usd(five) - output) / (bound_usd(plain) - output)
    ratio_1h = (bound_usd(hour) - output) / (bound_usd(plain) - output)
    assert ratio_5m > Decimal("1.24") and ratio_1h > Decimal("1.99")


def test_the_worst_case_covers_every_token_written_for_an_hour() -> None:
    body = {
        "model": MODEL,
        "max_tokens": 50,
        "system": [{"type": "text", "text": "rules " * 2000, "cache_control": {"ttl": "1h"}}],
        "messages": [{"role": "user", "content": "go"}],
    }
    counter = TokenCounter()
    counted = DIALECT.count_input(body, MODEL, counter)
    bound = DIALECT.bound(
        body,
        MODEL,
        counted_input=counted,
        max_output_tokens=50,
        output_capped=True,
        pricer=Pricer(),
        counter=counter,
        budgeted=True,
    )
    written = bound.input_tokens
    usage = {
        "input_tokens": 0,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": written},
        "output_tokens": 50,
    }
    billed = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=written,
            cache_write_tokens=written,
            cache_write_1h_tokens=written,
            output_tokens=50,
        ),
        MODEL,
        provider_id="anthropic",
    ).total_price
    assert Pricer().price(MODEL).cost(Usage.from_anthropic(usage)) == billed  # type: ignore[arg-type]
    assert bound.usd >= billed


def test_usage_adds_back_cache_reads_and_writes_as_genai_prices_bills_them() -> None:
    raw = {
        "input_tokens": 40,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 9000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "output_tokens": 300,
    }
    usage = Usage.from_anthropic(raw)
    assert usage is not None
    assert usage.input_tokens == 12040 and usage.cached_input_tokens == 9000
    assert usage.cache_write_tokens == 3000 and usage.cache_write_1h_tokens == 2000
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=12040,
            cache_read_tokens=9000,
            cache_write_tokens=3000,
            cache_write_1h_tokens=2000,
            output_tokens=300,
        ),
        "claude-sonnet-4-6",
        provider_id="anthropic",
    ).total_price
    assert Pricer().cost("claude-sonnet-4-6", usage) == expected
    assert Usage.from_anthropic(None) is None and Usage.from_anthropic({}) is None


def test_images_count_by_size_and_an_unknown_size_as_the_largest() -> None:
    small = claude_image_tokens(png_source(200, 200))
    full = claude_image_tokens(png_source(1092, 1092))
    huge = claude_image_tokens(png_source(8000, 8000))
    unknown = claude_image_tokens({"type": "url", "url": "https://example.com/a.png"})
    assert 54 <= small <= 64 and 1590 <= full <= 1600
    assert huge == unknown and unknown >= 8848
    body = {
        "model": MODEL,
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": png_source(1092, 1092)}]}
        ],
    }
    assert DIALECT.count_input(body, MODEL, TokenCounter()) >= full


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "url", "url": "https://example.com/a.pdf"},
                            }
                        ],
                    }
                ]
            },
            "messages.content.document",
        ),
        ({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "tools[0]"),
        (
            {"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]},
            "mcp_servers",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "hologram", "data": "?"}]}]},
            "messages.content",
        ),
    ],
)
def test_what_cannot_be_bounded_is_refused_under_a_budget(
    change: dict[str, Any], field: str
) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    body.update(change)
    with pytest.raises(UnmeteredRequest) as caught:
        bound_usd(body)
    assert caught.value.field == field and "/v1/messages" in str(caught.value.endpoint)
    assert bound_usd(body, budgeted=False) > 0  # without a budget it is only estimated


def events(*payloads: dict[str, Any]) -> bytes:
    return b"".join(f"event: {p['type']}\ndata: {json.dumps(p)}\n\n".encode() for p in payloads)


START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "output_tokens": 1},
    },
}
TOOL = [
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": '{"b": 1, '},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": '"a": 2}'},
    },
    {"type": "content_block_stop", "index": 0},
]


def test_the_tap_reads_text_tool_calls_and_final_usage_and_hands_everything_on() -> None:
    tap = DIALECT.tap(strip_usage=False)
    text = [
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
    ]
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use"},
        "usage": {"output_tokens": 42},
    }
    raw = events(START, *TOOL, *text, delta, {"type": "message_stop"})
    # Fed in awkward pieces: events are handed on whole and unchanged.
    out = b"".join(tap.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + tap.flush()
    assert out == raw and tap.done
    answer = tap.answer()
    assert answer.text == "Hi" and answer.response_id == "msg_1"
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [("read", '{"a":2,"b":1}')]
    assert answer.usage == Usage(input_tokens=110, cached_input_tokens=100, output_tokens=42)


def test_a_stream_without_its_final_usage_reports_none_so_it_is_charged_its_worst_case() -> None:
    cut = DIALECT.tap(strip_usage=False)
    cut.feed(events(START, *TOOL))
    assert cut.answer().usage is None and not cut.done
    failed = DIALECT.tap(strip_usage=False)
    failed.feed(
        events(
            START, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    )
    assert failed.answer().usage is None and not failed.done
    assert failed.error == {"type": "overloaded_error", "message": "Overloaded"}  # type: ignore[attr-defined]


def test_error_bodies_and_caps() -> None:
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
    assert DIALECT.error_message(body) == "Slow down" and DIALECT.error_message([]) is None
    request: dict[str, Any] = {"max_tokens": 0}
    assert DIALECT.output_cap(request) is None
    DIALECT.set_output_cap(request, 512, MODEL)
    assert DIALECT.output_cap(request) == 512
    assert DIALECT.ask_stream_usage({"stream": True}) is False
    thinking = {"type": "enabled", "budget_tokens": 2000}
    assert DIALECT.output_cap({"max_tokens": 4000, "thinking": thinking}) == 4000
    assert DIALECT.output_cap({"max_tokens": 1000, "thinking": thinking}) == 2000
