"""Each provider's documented limit errors (Anthropic, OpenAI's Responses API, OpenRouter, Azure
OpenAI) are told apart by the built-in rules, with the reset time read from where each provider
puts it."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agentguard.parking import classify_limit_error
from agentguard.retrying import is_transient_status

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "provider-limit-errors.json"
DOCUMENT = json.loads(FIXTURES.read_text())
NOW = datetime.fromisoformat(DOCUMENT["_now"])


@pytest.mark.parametrize("case", DOCUMENT["cases"], ids=lambda case: case["name"][:70])
def test_documented_limit_error_is_classified_with_its_reset(case: dict[str, Any]) -> None:
    verdict = classify_limit_error(case["status"], case["headers"], case["body"], now=NOW)
    if case["kind"] in ("transient", "final"):
        assert verdict is None
        assert is_transient_status(case["status"]) == (case["kind"] == "transient")
        return
    assert verdict is not None
    assert verdict.kind == case["kind"]
    expected = case.get("expect")
    if expected is None:
        assert verdict.wait_s is None
    else:
        assert verdict.wait_s == pytest.approx(expected["wait_s"])
        assert verdict.reset_source == expected["reset_source"]


def test_raw_bodies_classify_like_parsed_ones() -> None:
    for case in DOCUMENT["cases"]:
        raw = json.dumps(case["body"]).encode()
        parsed = classify_limit_error(case["status"], case["headers"], case["body"], now=NOW)
        from_bytes = classify_limit_error(case["status"], case["headers"], raw, now=NOW)
        assert parsed == from_bytes, case["name"]
