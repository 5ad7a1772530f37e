"""Hostile and broken input: fuzzed configs, a stream cut mid-way, absurd retry-after values,
and a provider answering nonsense. Nothing crashes; everything is reported with a reason."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard import ConfigError, SessionParked
from agentguard.config import GuardConfig
from agentguard.guard import Guard
from agentguard.pricing import Usage
from agentguard.sim import SimServer

MESSAGES = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper."}]

toml_values = st.recursive(
    st.one_of(
        st.integers(min_value=-(10**6), max_value=10**6),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.booleans(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=12), children, max_size=3)
    ),
    max_leaves=8,
)
sections = st.dictionaries(
    st.sampled_from(
        ["store", "limits", "budgets", "routing", "trimming", "parking", "pricing", "extra"]
    ),
    toml_values,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(data=sections)
def test_fuzzed_configs_load_or_fail_with_a_config_error(data: dict[str, Any]) -> None:
    try:
        GuardConfig.from_mapping(data, source="fuzz.toml", env={})
    except ConfigError as error:
        assert "fuzz.toml" in str(error)
        assert error.field


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_fuzzed_toml_text_never_escapes_as_another_error(
    text: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "agentguard.toml"
    path.write_text(text, encoding="utf-8")
    try:
        GuardConfig.load(path, env={})
    except ConfigError as error:
        assert str(path) in str(error)
    except tomllib.TOMLDecodeError:  # pragma: no cover - must never happen
        pytest.fail("a TOML error escaped as itself")


def test_a_stream_cut_midway_is_reported_and_settled(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    sim.cut_stream_next(1, after_chunks=2)
    with guard.session() as session:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            for _ in stream:
                pass
    # what arrived is charged (counted, since no usage came), and nothing stays reserved
    assert session.spent_usd > 0
    assert guard.budget_status("default").reserved_usd == 0


def test_an_absurd_retry_after_is_capped_and_logged(
    sim: SimServer, make_guard: Callable[..., Guard], caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 1}, limits={"max_retry_after_s": 3600})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    sim.rate_limit_next(1, retry_after=10**9)
    caplog.set_level("WARNING", logger="agentguard")
    with guard.session("absurd"), pytest.raises(SessionParked) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.resume_at is not None
    assert caught.value.resume_at <= datetime.now(UTC) + timedelta(seconds=3601)
    record = guard.parked.get("absurd")
    assert "capped at 3600s" in (record.reason.reset_source or "")
    assert any("retry_after_capped" in r.getMessage() for r in caplog.records)


def test_a_negative_or_unreadable_retry_after_is_ignored(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 0, "window_hours": 2})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    sim.rate_limit_next(
        1, retry_after="soon-ish", body={"error": {"message": "slow down", "type": "requests"}}
    )
    with guard.session("odd"), pytest.raises(SessionParked):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    record = guard.parked.get("odd")
    assert record.reason.reset_source == "parking.window_hours"


def test_garbage_on_every_attempt_ends_in_a_retry_limit(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    from agentguard import RetryLimitExceeded

    guard = make_guard(limits={"max_retries": 2})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    sim.garbage_next(5)
    with guard.session(), pytest.raises(RetryLimitExceeded, match="garbage"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert guard.budget_status("default").reserved_usd == 0


def test_an_answer_whose_message_is_not_an_object_is_settled_from_its_usage(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    import json

    guard = make_guard()
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0))
    odd = {
        "id": "chatcmpl-odd",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": "not an object", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050},
    }
    sim.garbage_next(1, body=json.dumps(odd).encode())
    with guard.session("odd-message") as session:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=64)
    expected = guard.pricer.price("gpt-4o-mini").cost(Usage(1000, 0, 50, 0))
    assert session.spent_usd == expected
    assert session.tool_calls == 0
    status = guard.budget_status("default")
    assert status.reserved_usd == 0
