"""Parking on limits and resuming: classification on recorded bodies, records in the store,
re-parking, attempt caps, and resumes over the sim's budget gateway on loopback."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers import PROMPT, run_until_parked

from agentguard import ParkedSession, SessionParked
from agentguard.guard import Guard
from agentguard.parking import classify_limit_error, json_schema
from agentguard.parking.classify import LimitVerdict, decide_limit, reset_after
from agentguard.parking.store import UnknownSession
from agentguard.sim import GatewayKey, SimGateway, SimServer

# Limit errors as real gateways and providers send them (recorded or documented).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "limit-errors.json"

MESSAGES = [{"role": "user", "content": "Summarise the quarterly report in three bullet points."}]
KEY = "sk-gateway-secret-key-0001"


def recorded_cases() -> list[dict[str, Any]]:
    return json.loads(FIXTURES.read_text())["cases"]


@pytest.mark.parametrize("case", recorded_cases(), ids=lambda case: case["name"][:60])
def test_builtin_rules_tell_recorded_limit_errors_apart(case: dict[str, Any]) -> None:
    verdict = classify_limit_error(case["status"], case["headers"], case["body"])
    assert verdict is not None
    assert verdict.kind == case["kind"]
    if "retry-after" in case["headers"]:
        assert verdict.wait_s == float(case["headers"]["retry-after"])
        assert verdict.reset_source == "retry-after"
    assert "authorization" not in verdict.headers


def test_not_every_error_is_a_limit() -> None:
    assert (
        classify_limit_error(
            400, {}, {"error": {"message": "bad messages", "type": "invalid_request_error"}}
        )
        is None
    )
    assert classify_limit_error(401, {}, b"nope") is None


def test_reset_sources_in_order() -> None:
    now = datetime(2026, 11, 25, 7, 30, tzinfo=UTC)
    assert reset_after({"retry-after": "20", "x-ratelimit-reset-requests": "6m0s"}) == (
        20.0,
        "retry-after",
    )
    assert reset_after(
        {"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "1s"}
    ) == (
        360.0,
        "x-ratelimit-reset-requests",
    )
    assert reset_after({"retry-after-ms": "1500"}) == (1.5, "retry-after-ms")
    assert reset_after({"reset_at": "2026-11-25 07:32:16 UTC"}, now=now) == (136.0, "reset_at")
    assert reset_after({}, "Please try again in 120ms.") == (0.12, "message")
    assert reset_after({}, "no idea") is None


def test_configured_rules_come_first(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard(
        parking={
            "rules": [{"kind": "budget_window", "status": [403], "message_pattern": "spend cap"}]
        }
    )
    from agentguard.engine import Reply

    verdict = guard.parker.classify(
        Reply(403, {}, b'{"error": {"message": "Team spend cap reached"}}')
    )
    assert verdict is not None and verdict.kind == "budget_window"


def test_schema_is_published() -> None:
    schema = json_schema()
    assert schema["title"] == "ParkedSession"
    assert "session_id" in schema["required"]


def gateway_guard(make_guard: Callable[..., Guard], **parking: Any) -> Guard:
    return make_guard(parking={"wait_inline_max_s": 0.0, **parking})


def exhaust(client: openai.OpenAI, guard: Guard, session_id: str) -> SessionParked:
    return run_until_parked(guard, client, session_id, metadata={"note": "kept with the record"})


@pytest.fixture
def gateway_sim() -> Any:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=0.002, window_s=1.5)})
    with SimServer(gateway=gateway) as sim:
        yield sim


def test_gateway_429_parks_and_resume_finishes_after_the_window(
    gateway_sim: SimServer, make_guard: Callable[..., Guard], tmp_path: Path
) -> None:
    guard = gateway_guard(make_guard)
    client = guard.wrap(openai.OpenAI(base_url=gateway_sim.base_url, api_key=KEY))
    results: list[Any] = []
    guard.on_resumed(lambda parked, response: results.append(response))
    parked = exhaust(client, guard, "agent-1")
    assert parked.session_id == "agent-1"
    assert parked.resume_at is not None and parked.resume_at <= datetime.now(UTC) + timedelta(
        seconds=3
    )
    attempts_before = len(gateway_sim.requests)

    record = guard.parked.get("agent-1")
    assert record.state == "parked" and record.attempts == 0
    assert record.reason.kind == "budget_window" and record.reason.status == 429
    assert record.reason.reset_source == "retry-after"
    assert record.request["model"] == "gpt-4o"
    assert record.request["messages"][-1]["content"].startswith("step ")
    assert record.metadata["note"] == "kept with the record"
    assert record.iterations >= 1 and record.spent_usd > 0
    assert len(gateway_sim.requests) == attempts_before  # one attempt, then parked

    # not due yet: a daemon-style run does nothing
    assert guard.parked.run("agent-1", owner="test") is None
    time.sleep(max(0.0, (record.resume_at - datetime.now(UTC)).total_seconds()) + 0.05)
    response = guard.parked.run("agent-1", owner="test")
    assert response is not None and response.choices[0].message.content
    assert results == [response]
    done = guard.parked.get("agent-1")
    assert done.state == "resumed"
    assert [t.state for t in done.history] == ["parked", "resuming", "resumed"]
    assert done.iterations == record.iterations + 1
    assert done.result is not None and done.result["content"]

    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_store_files_are_private(make_guard: Callable[..., Guard], tmp_path: Path) -> None:
    guard = make_guard()
    guard.parked.list()
    database = tmp_path / "store.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_resume_that_hits_the_limit_again_reparks_then_succeeds(
    make_guard: Callable[..., Guard],
) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=0.002, window_s=60)})
    with SimServer(gateway=gateway) as sim:
        guard = gateway_guard(make_guard, max_attempts=3)
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=KEY))
        exhaust(client, guard, "agent-2")
        with pytest.raises(SessionParked):
            guard.parked.resume("agent-2")  # window still spent: 429 again
        record = guard.parked.get("agent-2")
        assert record.state == "parked" and record.attempts == 1
        assert [t.state for t in record.history][-3:] == ["parked", "resuming", "parked"]
        gateway.reset()
        response = guard.parked.resume("agent-2")
        assert response.choices[0].message.content
        assert guard.parked.get("agent-2").state == "resumed"


def test_past_max_attempts_the_record_fails(make_guard: Callable[..., Guard]) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=0.002, window_s=600)})
    with SimServer(gateway=gateway) as sim:
        guard = gateway_guard(make_guard, max_attempts=2)
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=KEY))
        exhaust(client, guard, "agent-3")
        for _ in range(2):
            with pytest.raises(SessionParked):
                guard.parked.resume("agent-3")
        record = guard.parked.get("agent-3")
        assert record.state == "failed" and record.attempts == 2
        assert record.resume_at is None
        assert "max_attempts=2" in record.history[-1].note


def test_local_budget_parks_until_the_ledger_window_resets(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(
        budgets=[{"key": "team", "limit_usd": 0.002, "window": "2s", "on_exhausted": "park"}]
    )
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    parked = exhaust(client, guard, "agent-4")
    window_end = guard.budget_status("team").resets_at
    assert parked.resume_at == window_end
    record = guard.parked.get("agent-4")
    assert record.reason.kind == "local_budget" and record.reason.reset_source == "ledger"
    calls_before = len(sim.requests)
    time.sleep(max(0.0, (window_end - datetime.now(UTC)).total_seconds()) + 0.05)
    response = guard.parked.run("agent-4", owner="test")
    assert response is not None
    assert len(sim.requests) == calls_before + 1
    assert guard.parked.get("agent-4").state == "resumed"


def test_quota_exhausted_fails_at_once_and_hands_back_the_error(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard()
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    body = {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    sim.fail_next(3, status=429, body=body)
    with guard.session("agent-5"), pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(sim.requests) == 1
    record = guard.parked.get("agent-5")
    assert record.state == "failed" and record.reason.kind == "quota_exhausted"


def test_litellm_style_422_budget_error_parks(make_guard: Callable[..., Guard]) -> None:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=0.002, window_s=600)}, style="litellm")
    with SimServer(gateway=gateway) as sim:
        guard = gateway_guard(make_guard)
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=KEY))
        exhaust(client, guard, "agent-6")
        record = guard.parked.get("agent-6")
        assert record.reason.status == 422 and record.reason.kind == "budget_window"
        assert record.reason.reset_source == "parking.window_hours"


def test_drop_schedule_and_unknown_ids(make_guard: Callable[..., Guard], sim: SimServer) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 0})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    sim.rate_limit_next(1, retry_after=3600)
    with guard.session("agent-7"), pytest.raises(SessionParked) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.resume_at is not None
    assert caught.value.resume_at > datetime.now(UTC) + timedelta(minutes=59)
    dropped = guard.parked.drop("agent-7")
    assert dropped.state == "dropped"
    assert guard.parked.run("agent-7", owner="x") is None
    with pytest.raises(UnknownSession, match="no parked session"):
        guard.parked.get("nope")
    with pytest.raises(UnknownSession):
        guard.parked.drop("nope")


def test_child_session_parks_with_its_parent_budget(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 0}, limits={"max_session_usd": 1})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    sim.rate_limit_next(1, retry_after=600)
    with (
        guard.session("lead", budget_key="team") as lead,
        guard.session("helper", parent=lead),
        pytest.raises(SessionParked),
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    record = guard.parked.get("helper")
    assert record.parent_id == "lead" and record.budget_key == "team"
    restored = guard.restore_session(record)
    assert restored.root_id == "lead"
    assert [line.key for line in restored.budget_lines()] == ["team", "session:lead"]


def test_resumers_are_registered_names_only(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard()
    with pytest.raises(ValueError):
        guard.resumer("os.system")
    with pytest.raises(ValueError, match="never import paths"):
        ParkedSession.model_validate(
            {"session_id": "x", "resumer": "os:system", "reason": {"kind": "rate_limit"}}
        )


def test_no_key_or_auth_header_in_logs_or_files(
    gateway_sim: SimServer, make_guard: Callable[..., Guard], tmp_path: Path
) -> None:
    import io
    import logging

    from agentguard.log import configure_logging

    stream = io.StringIO()
    configure_logging("debug", json_lines=True, stream=stream)
    try:
        guard = gateway_guard(make_guard, dir=str(tmp_path / "parked"))
        client = guard.wrap(openai.OpenAI(base_url=gateway_sim.base_url, api_key=KEY))
        exhaust(client, guard, "agent-logged")
    finally:
        logger = logging.getLogger("agentguard")
        for handler in list(logger.handlers):
            if getattr(handler, "_agentguard", False):
                logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    text = stream.getvalue()
    assert '"event": "park"' in text and '"event": "reserve"' in text
    assert KEY not in text and "authorization" not in text.lower()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert KEY.encode() not in content, path
            assert b"Bearer" not in content, path


def test_a_parked_session_refuses_further_calls_without_sending(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 0})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    sim.rate_limit_next(1, retry_after=600)
    with guard.session("stubborn"):
        for _ in range(3):  # a framework's retry loop
            with pytest.raises(SessionParked):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(sim.requests) == 1


def test_a_gateway_budget_without_a_reset_resumes_after_its_configured_window(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    guard = make_guard(
        parking={
            "wait_inline_max_s": 0,
            "gateways": [{"base_url": sim.base_url, "window": "30s", "window_mode": "first_spend"}],
        }
    )
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    # LiteLLM's model budget refusal: a 429 that says nothing about when it resets.
    sim.fail_next(
        status=429,
        body={
            "error": {
                "message": "Budget has been exceeded: crossed budget for model gpt-4o-mini",
                "type": "budget_exceeded",
                "code": "429",
            }
        },
    )
    before = datetime.now(UTC)
    with guard.session("gw-1"), pytest.raises(SessionParked):
        client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    record = guard.parked.get("gw-1")
    assert record.resume_at is not None
    waited = (record.resume_at - before).total_seconds()
    assert 29 <= waited <= 31 + (datetime.now(UTC) - before).total_seconds()
    assert "parking.gateways" in (record.reason.reset_source or "")
    # Another URL is not that gateway: the window_hours fallback applies.
    other = make_guard(
        parking={
            "wait_inline_max_s": 0,
            "gateways": [{"base_url": "http://litellm.invalid:4000", "window": "30s"}],
        }
    )
    client = other.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    sim.fail_next(
        status=429, body={"error": {"message": "crossed budget", "type": "budget_exceeded"}}
    )
    with other.session("gw-2"), pytest.raises(SessionParked):
        client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    assert other.parked.get("gw-2").reason.reset_source == "parking.window_hours"


@pytest.mark.parametrize(
    ("kind", "wait_s", "retries_done", "parking", "records", "expected"),
    [
        ("rate_limit", 5.0, 0, True, True, ("wait", 5.0)),
        ("rate_limit", 5.0, 2, True, True, ("park", 0.0)),  # no retry left: park
        ("rate_limit", 600.0, 0, True, True, ("park", 0.0)),  # longer than the inline wait
        ("rate_limit", None, 0, True, True, ("park", 0.0)),  # no reset said: park
        ("rate_limit", 600.0, 0, False, True, ("hand_back", 0.0)),  # parking off
        ("rate_limit", 600.0, 0, True, False, ("hand_back", 0.0)),  # nowhere to record
        ("rate_limit", 5.0, 0, False, False, ("wait", 5.0)),  # a short wait needs no store
        ("quota_exhausted", 5.0, 0, True, True, ("fail", 0.0)),  # waiting never fixes quota
        ("quota_exhausted", 5.0, 0, False, False, ("wait", 5.0)),
    ],
)
def test_one_rule_decides_every_limit_error(
    kind: str,
    wait_s: float | None,
    retries_done: int,
    parking: bool,
    records: bool,
    expected: tuple[str, float],
) -> None:
    verdict = LimitVerdict(
        kind=kind,  # type: ignore[arg-type]
        status=429,
        error_type=None,
        error_code=None,
        message="limit",
        wait_s=wait_s,
        reset_source=None,
        headers={},
    )
    decision = decide_limit(
        verdict,
        retries_done=retries_done,
        max_retries=2,
        wait_inline_max_s=30.0,
        parking=parking,
        records=records,
    )
    assert (decision.action, decision.wait_s) == expected
