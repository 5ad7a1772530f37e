"""The engine driven by a fake driver: what it asks for, action by action.

No HTTP, no store: the driver below answers each action from the test's script, so these tests
see exactly when the engine reserves, sends, settles, releases and parks, and with what.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agentguard import BudgetExceeded, Guard, SessionParked, UnmeteredRequest
from agentguard.config import GuardConfig
from agentguard.dialects.openai_responses import OPENAI_RESPONSES
from agentguard.engine import (
    Action,
    Confirm,
    KeepContext,
    Outcome,
    Park,
    Pipeline,
    Prepare,
    ReadBudget,
    RecallContext,
    Release,
    Reply,
    Reserve,
    Send,
    Settle,
    Sleep,
    TransportFailure,
)
from agentguard.ledger import Reservation
from agentguard.parking.record import ParkedSession, ParkReason
from agentguard.pricing import Usage
from agentguard.session import Session

MESSAGES = [{"role": "user", "content": "Summarise the quarterly report in one line."}]
USAGE = {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}


def completion(usage: dict[str, Any] | None = USAGE, **extra: Any) -> Reply:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Up 4%."},
                "finish_reason": "stop",
            }
        ],
        **({"usage": usage} if usage is not None else {}),
        **extra,
    }
    return Reply(200, {"content-type": "application/json"}, json.dumps(body).encode())


def error(status: int, headers: dict[str, str] | None = None, kind: str = "server_error") -> Reply:
    body = {"error": {"message": f"HTTP {status}", "type": kind, "code": None}}
    return Reply(status, headers or {}, json.dumps(body).encode())


class FakeLedger:
    """The only ledger question the engine asks in memory: is this hold too old to trust?"""

    def __init__(self) -> None:
        self.stale: set[str] = set()

    def needs_confirm(self, reservation: Reservation) -> bool:
        return reservation.id in self.stale


def reservation(amount: Decimal, lines: tuple[Any, ...] = ()) -> Reservation:
    return Reservation(
        id=f"r{time.monotonic_ns()}",
        lines=lines,
        amount_nusd=int(amount * 1_000_000_000),
        created=time.monotonic(),
    )


Answer = Callable[[Action], Any]


class FakeDriver:
    """Drives an engine, answering each action with ``answer(action)`` (a value, or an
    exception to throw in), and keeps every action it was asked for."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.actions: list[Action] = []

    def run(self, engine: Generator[Action, Any, Any]) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                action = engine.throw(error) if error is not None else engine.send(value)
            except StopIteration as stop:
                return stop.value
            self.actions.append(action)
            value, error = None, None
            result = self.answer(action)
            if isinstance(result, BaseException):
                error = result
            else:
                value = result

    def kinds(self) -> list[str]:
        return [type(action).__name__ for action in self.actions]


def default_answer(replies: Iterator[Reply | BaseException]) -> Answer:
    """Reserve → a reservation of the asked amount; Send → the next reply; the rest → None."""

    def answer(action: Action) -> Any:
        if isinstance(action, Reserve):
            return reservation(action.amount_usd, action.lines)
        if isinstance(action, Send):
            return next(replies)
        if isinstance(action, Confirm):
            return True
        if isinstance(action, Park):
            return parked_record(action)
        return None

    return answer


def parked_record(action: Park) -> ParkedSession:
    if action.budget is not None:
        reason = ParkReason(kind="local_budget", message=str(action.budget))
        resume_at = action.budget.resets_at
    else:
        assert action.limit is not None
        reason = ParkReason(kind=action.limit.kind, message=action.limit.message)
        resume_at = datetime.now(UTC) + timedelta(seconds=action.limit.wait_s or 60)
    return ParkedSession(
        session_id=action.call.session.id,
        request=dict(action.call.original_body),
        reason=reason,
        resume_at=resume_at,
    )


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[Guard]:
    config = GuardConfig.from_mapping(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "budgets": [{"key": "work", "limit_usd": 1, "window": "1h", "on_exhausted": "park"}],
            "limits": {"backoff_initial_s": 0.5, "backoff_max_s": 1, "max_retries": 2},
            "parking": {"wait_inline_max_s": 0},
        }
    )
    built = Guard(config)
    yield built
    built.close()


@pytest.fixture
def engine(guard: Guard) -> Pipeline:
    """The guard's own pipeline, on a ledger that answers nothing: the driver answers."""
    live = guard.pipeline
    return Pipeline(
        limits=live.limits,
        retry=live.retry,
        counter=live.counter,
        pricer=live.pricer,
        ledger=FakeLedger(),  # type: ignore[arg-type]
        stages=live.stages,
        limit_handler=live.limit_handler,
        default_max_output_tokens=256,
        wait_inline_max_s=0,
        budget_policy=live.budget_policy,
    )


def session(guard: Guard, name: str = "s") -> Session:
    return guard.session(name, budget_key="work")


def test_a_plain_call_reserves_sends_and_settles_what_it_cost(
    guard: Guard, engine: Pipeline
) -> None:
    driver = FakeDriver(default_answer(iter([completion()])))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    outcome = driver.run(engine.run(session(guard), body))

    assert isinstance(outcome, Outcome) and outcome.reply.status == 200
    assert driver.kinds() == ["Reserve", "Send", "Settle"]
    reserve, send, settle = driver.actions
    assert isinstance(reserve, Reserve) and isinstance(send, Send) and isinstance(settle, Settle)
    assert [line.key for line in reserve.lines] == ["work"]
    # The output cap the guard set is on the request it sent, and in the worst case.
    assert send.body["max_tokens"] == 256 and send.modified
    price = guard.pricer.price("gpt-4o-mini")
    assert reserve.amount_usd >= price.worst_case(20, 256)
    assert settle.cost_usd == price.cost(Usage(input_tokens=20, output_tokens=7))
    assert settle.reservation.amount_usd == reserve.amount_usd


def test_a_long_rate_limit_releases_the_hold_and_parks_after_one_attempt(
    guard: Guard, engine: Pipeline
) -> None:
    limited = error(429, {"retry-after": "3600"}, kind="rate_limit_exceeded")
    driver = FakeDriver(default_answer(iter([limited])))
    with pytest.raises(SessionParked) as caught:
        driver.run(engine.run(session(guard), {"model": "gpt-4o-mini", "messages": MESSAGES}))
    assert driver.kinds() == ["Reserve", "Send", "Release", "Park"]
    park = driver.actions[-1]
    assert isinstance(park, Park) and park.limit is not None and park.budget is None
    assert park.limit.wait_s == 3600 and not park.failed
    assert caught.value.resume_at is not None


def test_an_exhausted_budget_parks_without_sending(guard: Guard, engine: Pipeline) -> None:
    resets = datetime.now(UTC) + timedelta(minutes=20)
    exhausted = BudgetExceeded(
        "budget 'work' exceeded",
        key="work",
        spent_usd=Decimal(1),
        limit_usd=Decimal(1),
        needed_usd=Decimal("0.01"),
        resets_at=resets,
        session_id="s",
    )

    def answer(action: Action) -> Any:
        if isinstance(action, Reserve):
            return exhausted
        if isinstance(action, Park):
            return parked_record(action)
        raise AssertionError(f"unexpected {action!r}")

    driver = FakeDriver(answer)
    run = session(guard)
    with pytest.raises(SessionParked) as caught:
        driver.run(engine.run(run, {"model": "gpt-4o-mini", "messages": MESSAGES}))
    assert driver.kinds() == ["Reserve", "Park"]
    park = driver.actions[-1]
    assert isinstance(park, Park) and park.budget is exhausted
    assert caught.value.resume_at == resets
    assert run.iterations == 0  # the call was never made


def test_a_timeout_after_sending_is_charged_its_worst_case_then_retried(
    guard: Guard, engine: Pipeline
) -> None:
    timed_out = TransportFailure("timeout", TimeoutError("read timed out"), sent=True)
    driver = FakeDriver(default_answer(iter([timed_out, completion()])))
    driver.run(engine.run(session(guard), {"model": "gpt-4o-mini", "messages": MESSAGES}))
    assert driver.kinds() == ["Reserve", "Send", "Settle", "Sleep", "Reserve", "Send", "Settle"]
    first_reserve, _, charged = driver.actions[:3]
    assert isinstance(first_reserve, Reserve) and isinstance(charged, Settle)
    # Never released: the provider may have billed it.
    assert charged.cost_usd == first_reserve.amount_usd
    assert not any(isinstance(action, Release) for action in driver.actions)


def test_a_connection_never_made_keeps_its_hold_for_the_retry(
    guard: Guard, engine: Pipeline
) -> None:
    refused = TransportFailure("connection", ConnectionRefusedError("refused"), sent=False)
    driver = FakeDriver(default_answer(iter([refused, completion()])))
    driver.run(engine.run(session(guard), {"model": "gpt-4o-mini", "messages": MESSAGES}))
    assert driver.kinds() == ["Reserve", "Send", "Sleep", "Send", "Settle"]
    sleep = driver.actions[2]
    assert isinstance(sleep, Sleep) and 0 <= sleep.seconds <= 1


def test_a_stale_hold_is_confirmed_before_the_next_attempt(guard: Guard, engine: Pipeline) -> None:
    ledger = engine.ledger
    assert isinstance(ledger, FakeLedger)
    replies = iter([error(500), completion()])
    holds: list[Reservation] = []

    def answer(action: Action) -> Any:
        if isinstance(action, Reserve):
            holds.append(reservation(action.amount_usd, action.lines))
            return holds[-1]
        if isinstance(action, Sleep):
            # The process stalls in its back-off: a sweep may have charged its hold.
            ledger.stale.add(holds[-1].id)
            return None
        if isinstance(action, Confirm):
            return False  # it was swept: reserve again
        if isinstance(action, Send):
            return next(replies)
        return None

    driver = FakeDriver(answer)
    driver.run(engine.run(session(guard), {"model": "gpt-4o-mini", "messages": MESSAGES}))
    assert driver.kinds() == ["Reserve", "Send", "Sleep", "Confirm", "Reserve", "Send", "Settle"]


def test_a_stream_settles_from_its_usage_when_it_ends(guard: Guard, engine: Pipeline) -> None:
    driver = FakeDriver(default_answer(iter([Reply(200, {}, None)])))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    outcome = driver.run(engine.run(session(guard), body))
    assert driver.kinds() == ["Reserve", "Send"]
    send = driver.actions[1]
    assert isinstance(send, Send)
    assert send.body["stream_options"] == {"include_usage": True}
    assert outcome.tap is not None and outcome.finish is not None
    events = [
        {"choices": [{"index": 0, "delta": {"content": "Up 4%."}}]},
        {"choices": [], "usage": USAGE},
    ]
    wire = b"".join(f"data: {json.dumps(event)}\n\n".encode() for event in events)
    handed_on = outcome.tap.feed(wire + b"data: [DONE]\n\n")
    # The usage chunk the guard asked for is not the caller's: it is dropped.
    assert b'"usage"' not in handed_on and b"[DONE]" in handed_on
    driver.run(outcome.finish(outcome.tap))
    assert driver.kinds() == ["Reserve", "Send", "Settle"]
    settle = driver.actions[-1]
    assert isinstance(settle, Settle)
    price = guard.pricer.price("gpt-4o-mini")
    assert settle.cost_usd == price.cost(Usage(input_tokens=20, output_tokens=7))


def test_a_response_chain_recalls_and_keeps_the_conversation_size(
    guard: Guard, engine: Pipeline
) -> None:
    response = {
        "id": "resp_2",
        "object": "response",
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "ok"}],
            }
        ],
        "usage": {"input_tokens": 540, "output_tokens": 9},
    }
    replies = iter([Reply(200, {}, json.dumps(response).encode())])

    def answer(action: Action) -> Any:
        if isinstance(action, RecallContext):
            return 500 if action.response_id == "resp_1" else None
        return default_answer(replies)(action)

    driver = FakeDriver(answer)
    body = {"model": "gpt-4o-mini", "input": "go on", "previous_response_id": "resp_1"}
    driver.run(engine.run(session(guard), body, OPENAI_RESPONSES))
    assert driver.kinds() == ["RecallContext", "Reserve", "Send", "Settle", "KeepContext"]
    reserve = driver.actions[1]
    assert isinstance(reserve, Reserve)
    price = guard.pricer.price("gpt-4o-mini")
    # The earlier conversation is billed again: it is in the worst case.
    assert reserve.amount_usd >= price.worst_case(500, 256)
    send = driver.actions[2]
    assert isinstance(send, Send) and send.body["max_output_tokens"] == 256
    keep = driver.actions[-1]
    assert keep == KeepContext("resp_2", 549)

    unknown = FakeDriver(answer)
    body = {"model": "gpt-4o-mini", "input": "go on", "previous_response_id": "resp_other"}
    with pytest.raises(UnmeteredRequest, match="previous_response_id"):
        unknown.run(engine.run(session(guard, "t"), body, OPENAI_RESPONSES))
    assert unknown.kinds() == ["RecallContext"]


def test_a_quota_error_is_recorded_failed_and_handed_back(guard: Guard, engine: Pipeline) -> None:
    quota = Reply(
        429,
        {},
        json.dumps(
            {
                "error": {
                    "message": "You exceeded your current quota",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            }
        ).encode(),
    )
    driver = FakeDriver(default_answer(iter([quota])))
    outcome = driver.run(engine.run(session(guard), {"model": "gpt-4o-mini", "messages": MESSAGES}))
    assert driver.kinds() == ["Reserve", "Send", "Release", "Park"]
    park = driver.actions[-1]
    assert isinstance(park, Park) and park.failed
    assert outcome.reply.status == 429 and outcome.extra_headers == {"x-should-retry": "false"}


def test_budget_pressure_is_read_and_nested_calls_are_handed_to_the_driver(
    tmp_path: Path,
) -> None:
    config = GuardConfig.from_mapping(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "budgets": [{"key": "work", "limit_usd": 1, "window": "1h"}],
            "routing": {
                "tiers": {"small": "gpt-4o-mini", "large": "gpt-4o"},
                "classifier": "llm",
                "pressure": [[0.5, "small"]],
            },
        }
    )
    guard = Guard(config)
    try:
        live = guard.pipeline
        engine = Pipeline(
            limits=live.limits,
            retry=live.retry,
            counter=live.counter,
            pricer=live.pricer,
            ledger=FakeLedger(),  # type: ignore[arg-type]
            stages=live.stages,
            limit_handler=live.limit_handler,
        )
        prepared: list[tuple[str, object]] = []

        def answer(action: Action) -> Any:
            if isinstance(action, ReadBudget):
                return 0.2  # what the driver read from the ledger: little left
            if isinstance(action, Prepare):
                # What an async driver runs off its loop. Not run here (it would ask the
                # small tier): what matters is that the stage is handed the budget share the
                # engine read, where the route stage reads it.
                prepared.append(
                    (type(action.stage).__name__, action.call.notes.get("remaining_fraction"))
                )
                return None
            return default_answer(iter([completion()]))(action)

        driver = FakeDriver(answer)
        driver.run(engine.run(session(guard), {"model": "gpt-4o", "messages": MESSAGES}))
        assert driver.kinds() == ["ReadBudget", "Prepare", "Reserve", "Send", "Settle"]
        read = driver.actions[0]
        assert isinstance(read, ReadBudget) and [line.key for line in read.lines] == ["work"]
        assert prepared == [("RouteStage", 0.2)]
    finally:
        guard.close()
