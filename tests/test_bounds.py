"""The reservation is a real upper bound: for each request shape, what the provider bills never
exceeds what the guard reserved, and the call settles at what was billed. Judged by the sim's
own bill, over real HTTP on loopback."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import openai
import pytest

from agentguard import Guard, UnmeteredRequest
from agentguard.engine import CallContext
from agentguard.pricing.images import image_size, image_tokens, rule_for
from agentguard.sim import Reply, SimServer

BUDGET = [{"key": "research", "limit_usd": 50, "window": "1h"}]


def png(width: int, height: int) -> str:
    """A data: URL whose PNG header says ``width`` x ``height`` (the pixels are not needed)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + header
        + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    )
    return "data:image/png;base64," + base64.b64encode(data).decode()


def jpeg(width: int, height: int) -> str:
    """A data: URL of a JPEG header with an APP0 segment before the frame header."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8" + app0 + sof).decode()


def gif(width: int, height: int) -> str:
    return (
        "data:image/gif;base64,"
        + base64.b64encode(b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00").decode()
    )


def webp_vp8x(width: int, height: int) -> str:
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    body += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    data = b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body
    return "data:image/webp;base64," + base64.b64encode(data).decode()


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "Describe this."}, *parts]}]


def image(url: str, detail: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": url}
    if detail is not None:
        spec["detail"] = detail
    return {"type": "image_url", "image_url": spec}


PLAIN = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
BIG_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{index}",
            "description": "Looks something up in a large internal catalogue. " * 8,
            "parameters": {
                "type": "object",
                "properties": {f"field_{f}": {"type": "string"} for f in range(12)},
            },
        },
    }
    for index in range(6)
]

SHAPES: dict[str, dict[str, Any]] = {
    "n=8": {"model": "gpt-4o-mini", "messages": PLAIN, "n": 8, "max_tokens": 60},
    "n=3 streamed": {
        "model": "gpt-4o",
        "messages": PLAIN,
        "n": 3,
        "max_tokens": 40,
        "stream": True,
    },
    "high-detail image, 4o-mini": {
        "model": "gpt-4o-mini",
        "messages": user(image(png(4096, 1024), "high")),
        "max_tokens": 20,
    },
    "image of unknown size, auto detail": {
        "model": "gpt-4o-mini",
        "messages": user(image("https://example.com/chart.png")),
        "max_tokens": 20,
    },
    "two images, gpt-4o": {
        "model": "gpt-4o",
        "messages": user(image(jpeg(2048, 768)), image(gif(300, 200), "low")),
        "max_tokens": 20,
    },
    "patch model, big webp": {
        "model": "gpt-4.1-mini",
        "messages": user(image(webp_vp8x(3000, 2000), "low")),
        "max_tokens": 20,
    },
    "gpt-5 image": {
        "model": "gpt-5",
        "messages": user(image(png(1024, 1024))),
        "max_completion_tokens": 20,
    },
    "priority tier": {
        "model": "gpt-5",
        "messages": PLAIN,
        "max_completion_tokens": 80,
        "service_tier": "priority",
    },
    "priority tier, streamed": {
        "model": "gpt-4o",
        "messages": PLAIN,
        "max_tokens": 80,
        "service_tier": "priority",
        "stream": True,
    },
    "flex tier": {
        "model": "o3",
        "messages": PLAIN,
        "max_completion_tokens": 80,
        "service_tier": "flex",
    },
    "tool schemas": {"model": "gpt-4o", "messages": PLAIN, "tools": BIG_TOOLS, "max_tokens": 30},
    "json schema response format": {
        "model": "gpt-4o",
        "messages": PLAIN,
        "max_tokens": 30,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "story",
                "schema": {
                    "type": "object",
                    "properties": {f"chapter_{i}": {"type": "string"} for i in range(40)},
                },
            },
        },
    },
    "no cap set (the guard sets it)": {"model": "gpt-4o-mini", "messages": PLAIN},
}


@pytest.fixture
def guarded(make_guard: Callable[..., Guard]) -> tuple[Guard, list[CallContext]]:
    guard = make_guard(budgets=BUDGET, limits={"default_max_output_tokens": 300})
    calls: list[CallContext] = []
    guard.observers.append(calls.append)
    return guard, calls


def long_answers(body: dict[str, Any]) -> Reply:
    # Reasoning tokens and a long answer: the output cap is what stops it.
    return Reply(content="word " * 2000, reasoning_tokens=40 if body["model"] in ("o3",) else 0)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_billed_never_exceeds_the_reservation(
    shape: str, guarded: tuple[Guard, list[CallContext]]
) -> None:
    guard, calls = guarded
    request = SHAPES[shape]
    with SimServer(script=long_answers) as sim:
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-bounds"))
        with guard.session(budget_key="research") as session:
            response = client.chat.completions.create(**request)
            if request.get("stream"):
                for _ in response:  # type: ignore[attr-defined]
                    pass
        billed = sim.billed_usd()
        assert sim.billed_calls() == 1

    (call,) = calls
    assert billed > 0
    assert billed <= call.worst_case_usd, f"{shape}: billed {billed} > reserved"
    # Settled at what the provider billed, at the tier it reported.
    assert abs(session.spent_usd - billed) < Decimal("1e-9"), (session.spent_usd, billed)
    assert guard.budget_status("research").spent_usd == session.spent_usd


def test_tier_is_settled_at_the_reported_price(guarded: tuple[Guard, list[CallContext]]) -> None:
    guard, _calls = guarded
    with SimServer(script=long_answers) as sim:
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-bounds"))
        with guard.session(budget_key="research") as standard:
            client.chat.completions.create(model="gpt-5", messages=PLAIN, max_completion_tokens=50)
        with guard.session(budget_key="research") as priority:
            reply = client.chat.completions.create(
                model="gpt-5", messages=PLAIN, max_completion_tokens=50, service_tier="priority"
            )
    assert reply.service_tier == "priority"
    # gpt-5's priority tier costs twice the standard price.
    assert priority.spent_usd == 2 * standard.spent_usd


UNBOUNDED: dict[str, tuple[dict[str, Any], str]] = {
    "audio input": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                    ],
                }
            ]
        },
        "audio input",
    ),
    "audio output": (
        {"messages": PLAIN, "modalities": ["text", "audio"], "audio": {"voice": "alloy"}},
        "audio output",
    ),
    "file part": (
        {"messages": user({"type": "file", "file": {"file_id": "file-1"}})},
        "holds a file",
    ),
    "unknown part type": (
        {"messages": user({"type": "hologram", "hologram": {}})},
        "'hologram'",
    ),
}


@pytest.mark.parametrize("shape", list(UNBOUNDED))
def test_what_cannot_be_bounded_is_refused_under_a_budget(
    shape: str, make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    extra, says = UNBOUNDED[shape]
    guard = make_guard(budgets=BUDGET)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-bounds"))
    with (
        guard.session(budget_key="research") as session,
        pytest.raises(UnmeteredRequest) as caught,
    ):
        client.chat.completions.create(model="gpt-4o", max_tokens=10, **extra)
    assert says in str(caught.value) and "budget" in str(caught.value)
    assert sim.requests == [] and session.iterations == 0
    assert guard.budget_status("research").spent_usd == 0

    # Without a budget the same request is sent (priced as well as it can be).
    free = make_guard()
    client = free.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-bounds"))
    client.chat.completions.create(model="gpt-4o", max_tokens=10, **extra)
    assert len(sim.requests) == 1


def test_no_output_cap_with_enforcement_off_is_refused_under_a_budget(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(budgets=BUDGET, limits={"enforce_output_cap": False})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-bounds"))
    with guard.session(budget_key="research"), pytest.raises(UnmeteredRequest) as caught:
        client.chat.completions.create(model="gpt-4o", messages=PLAIN)
    assert "max_completion_tokens" in str(caught.value)
    assert "limits.enforce_output_cap" in str(caught.value)
    assert sim.requests == []
    with guard.session(budget_key="research"):
        client.chat.completions.create(model="gpt-4o", messages=PLAIN, max_tokens=5)
    assert len(sim.requests) == 1


# -- the image formula ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "size"),
    [
        (png(800, 600), (800, 600)),
        (jpeg(4032, 3024), (4032, 3024)),
        (gif(16, 9), (16, 9)),
        (webp_vp8x(3000, 2000), (3000, 2000)),
        ("https://example.com/a.png", None),
        ("data:image/png;base64,not-base64!!", None),
        ("data:text/plain,hello", None),
    ],
)
def test_image_size_from_data_url_headers(url: str, size: tuple[int, int] | None) -> None:
    assert image_size(url) == size


def test_openai_documented_examples() -> None:
    # OpenAI's published examples for the tile models.
    assert image_tokens("gpt-4o", {"url": png(1024, 1024), "detail": "high"}) == 765
    assert image_tokens("gpt-4o", {"url": png(2048, 4096), "detail": "high"}) == 1105
    assert image_tokens("gpt-4o", {"url": png(4096, 8192), "detail": "low"}) == 85
    # Patch models: 1024 x 1024 is 1024 patches; gpt-4.1-mini bills 1.62 tokens a patch.
    assert image_tokens("gpt-4.1-mini", {"url": png(1024, 1024)}) == 1659
    # Unknown size: the family's maximum (8 tiles).
    assert image_tokens("gpt-4o-mini", {"url": "https://x/y.png"}) == 2833 + 8 * 5667
    assert rule_for("openai/gpt-4o-mini-2024-07-18").name == "4o-mini"
    assert image_tokens("some-local-llava", {"url": png(10, 10)}) >= 1536
