"""The resume daemon over real APScheduler, real SQLite files and the sim on loopback:
resumes at the window reset, survives restarts, never resumes a session twice."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers import run_until_parked, wait_for

from agentguard import SessionParked
from agentguard.config import GuardConfig
from agentguard.guard import Guard
from agentguard.parking.record import ParkedSession, ParkReason
from agentguard.scheduler import ResumeDaemon
from agentguard.sim import GatewayKey, SimGateway, SimServer

KEY = "sk-daemon-test-key-0001"
MESSAGES = [{"role": "user", "content": "Draft a two-line status update for the team."}]


def park_one(guard: Guard, client: openai.OpenAI, session_id: str) -> SessionParked:
    return run_until_parked(guard, client, session_id)


@pytest.fixture
def gateway() -> Any:
    gateway = SimGateway({KEY: GatewayKey(limit_usd=Decimal("0.002"), window_s=1.0)})
    with SimServer(gateway=gateway) as sim:
        yield sim


def new_guard(tmp_path: Path) -> Guard:
    return Guard(
        GuardConfig.from_mapping(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
                "parking": {"wait_inline_max_s": 0, "dir": str(tmp_path / "parked")},
                "limits": {"backoff_initial_s": 0.01},
                "budgets": [{"key": "team"}],
            },
            env={},
        )
    )


def test_daemon_resumes_when_the_window_resets(gateway: SimServer, tmp_path: Path) -> None:
    guard = new_guard(tmp_path)
    client = guard.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    results: list[Any] = []
    guard.on_resumed(lambda parked, response: results.append(response))
    daemon = ResumeDaemon(guard, poll_interval_s=0.2)
    daemon.start()
    try:
        park_one(guard, client, "d-1")
        wait_for(lambda: guard.parked.get("d-1").state == "resumed")
    finally:
        daemon.stop()
    assert len(results) == 1 and results[0].choices[0].message.content


def test_a_daemon_restart_between_park_and_resume_loses_nothing(
    gateway: SimServer, tmp_path: Path
) -> None:
    guard = new_guard(tmp_path)
    client = guard.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    first = ResumeDaemon(guard, poll_interval_s=0.2)
    first.start()
    first.stop()  # stopped before anything is parked
    park_one(guard, client, "d-2")
    assert guard.parked.get("d-2").state == "parked"
    # a new guard and daemon, as after a process restart: the store is the truth
    restarted = new_guard(tmp_path)
    restarted.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    second = ResumeDaemon(restarted, poll_interval_s=0.2)
    second.start()
    try:
        wait_for(lambda: restarted.parked.get("d-2").state == "resumed")
    finally:
        second.stop()


def test_records_parked_by_another_process_appear_without_restart(
    gateway: SimServer, tmp_path: Path
) -> None:
    guard = new_guard(tmp_path)
    guard.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    daemon = ResumeDaemon(guard, poll_interval_s=0.2)
    daemon.start()
    try:
        other = new_guard(tmp_path)  # another process's guard on the same store
        client = other.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
        park_one(other, client, "d-3")
        wait_for(lambda: guard.parked.get("d-3").state == "resumed")
    finally:
        daemon.stop()


def test_two_daemons_resume_each_session_once(gateway: SimServer, tmp_path: Path) -> None:
    guards = [new_guard(tmp_path) for _ in range(2)]
    calls: list[str] = []
    for index, guard in enumerate(guards):
        guard.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))

        @guard.resumer("counted")
        def counted(parked: Any, index: int = index) -> str:
            calls.append(f"{parked.session_id}@{index}")
            return "done"

    parker = new_guard(tmp_path)
    client = parker.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    for number in range(6):
        with parker.session(f"twin-{number}", budget_key="team", resumer="counted"):
            gateway.rate_limit_next(1, retry_after=0.5)
            with pytest.raises(SessionParked):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    daemons = [
        ResumeDaemon(guard, poll_interval_s=0.1, owner=f"daemon-{i}")
        for i, guard in enumerate(guards)
    ]
    for daemon in daemons:
        daemon.start()
    try:
        wait_for(lambda: all(r.state == "resumed" for r in parker.parked.list()))
    finally:
        for daemon in daemons:
            daemon.stop()
    assert sorted(call.split("@")[0] for call in calls) == [f"twin-{n}" for n in range(6)]


def test_a_crashed_resume_is_taken_over_when_its_lease_expires(
    gateway: SimServer, tmp_path: Path
) -> None:
    guard = new_guard(tmp_path)
    client = guard.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    park_one(guard, client, "d-4")
    time.sleep(1.1)
    # a process claims it and dies without finishing
    assert guard.parked.store.claim("d-4", "dead-process", lease_s=0.3) is not None
    assert guard.parked.get("d-4").state == "resuming"
    daemon = ResumeDaemon(guard, poll_interval_s=0.1)
    daemon.start()
    try:
        wait_for(lambda: guard.parked.get("d-4").state == "resumed")
    finally:
        daemon.stop()
    notes = [t.note for t in guard.parked.get("d-4").history]
    assert any("previous lease expired" in note for note in notes)


# One process imports agentguard once, then forks a parker per round on demand: a fork costs
# milliseconds where a fresh interpreter costs seconds, so the kill rounds stay cheap on a slow
# machine. The forking process runs no other thread, so the fork is safe.
PARKER_SCRIPT = textwrap.dedent(
    """
    import os, sys, openai
    from agentguard import SessionParked
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard
    store, base_url = sys.argv[1], sys.argv[2]
    MESSAGES = [{"role": "user", "content": "x" * 20000}]
    import tempfile

    def park(store, session_ids, report=True):
        guard = Guard(GuardConfig.from_mapping({"store": {"url": store}, "parking": {"wait_inline_max_s": 0}}, env={}))
        client = guard.wrap(openai.OpenAI(base_url=base_url, api_key="sk-test"))
        for n, session_id in enumerate(session_ids):
            with guard.session(session_id):
                try:
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                except SessionParked:
                    if report:
                        print(n, flush=True)
        return guard

    # Load the tokenizer's vocabulary, prices and the SDK's lazy modules once, before forking.
    park(f"sqlite:///{tempfile.mkdtemp()}/warm.db", ["warm"], report=False).close()
    for line in sys.stdin:
        round_number = int(line)
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(read_end)
            os.dup2(write_end, 1)
            sys.stdout = os.fdopen(1, "w")
            park(store, [f"kill-{round_number}-{n}" for n in range(400)])
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as child_output:
            child_output.readline()  # it is parking now
            print(child, flush=True)
            os.waitpid(child, 0)
    """
)


def test_sigkill_while_parking_leaves_whole_records_or_none(tmp_path: Path) -> None:
    with SimServer() as sim:
        sim.rate_limit_next(100_000, retry_after=3600)
        store = f"sqlite:///{tmp_path / 'store.db'}"
        rng = random.Random(7)
        forker = subprocess.Popen(
            [sys.executable, "-c", PARKER_SCRIPT, store, sim.base_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "AGENTGUARD_HOME": str(tmp_path / "home")},
        )
        assert forker.stdin is not None and forker.stdout is not None
        try:
            for round_number in range(50):
                forker.stdin.write(f"{round_number}\n")
                forker.stdin.flush()
                parker = int(forker.stdout.readline())  # it is parking now
                assert parker > 0
                time.sleep(rng.uniform(0.0, 0.15))  # a random point of the parking loop
                os.kill(parker, signal.SIGKILL)
                guard = new_guard(tmp_path)  # the store opens cleanly
                first = guard.parked.get(f"kill-{round_number}-0")  # parked before the kill
                assert first.state == "parked"
                assert first.request["messages"][0]["content"] == "x" * 20000
                guard.close()
        finally:
            forker.stdin.close()
            forker.wait(timeout=60)
        records = new_guard(tmp_path).parked.list()
        assert {record.session_id.split("-")[1] for record in records} == {
            str(n) for n in range(50)
        }
        for record in records:
            assert record.state == "parked"
            assert record.request["messages"][0]["content"] == "x" * 20000


def guard_with(tmp_path: Path, **parking: Any) -> Guard:
    return Guard(
        GuardConfig.from_mapping(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
                "parking": {"wait_inline_max_s": 0, "dir": str(tmp_path / "parked"), **parking},
                "limits": {"backoff_initial_s": 0.01},
                "budgets": [{"key": "team"}],
            },
            env={},
        )
    )


def test_a_resume_longer_than_its_lease_runs_once_with_one_resume_id(
    gateway: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # Renewed every lease_s / 3: a loaded machine has a second in hand before a renewal is late.
    guards = [guard_with(tmp_path, lease_s=1.5) for _ in range(2)]
    runs: list[tuple[int, str | None]] = []
    for index, guard in enumerate(guards):

        @guard.resumer("slow")
        def slow(parked: Any, index: int = index) -> str:
            runs.append((index, parked.resume_id))
            time.sleep(4.0)  # over two lease lengths: the lease must be renewed meanwhile
            return "done"

    parker = guards[0]
    client = parker.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    with parker.session("long-1", budget_key="team", resumer="slow"):
        gateway.rate_limit_next(1, retry_after=0.2)
        with pytest.raises(SessionParked):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    daemons = [
        ResumeDaemon(guard, poll_interval_s=0.1, owner=f"daemon-{i}", watch_inbox=False)
        for i, guard in enumerate(guards)
    ]
    for daemon in daemons:
        daemon.start()
    try:
        wait_for(lambda: parker.parked.get("long-1").state == "resumed", timeout=30)
    finally:
        for daemon in daemons:
            daemon.stop()
    assert len(runs) == 1 and runs[0][1] is not None
    assert parker.parked.get("long-1").resume_id == runs[0][1]
    # Polling while a resume runs never asks the scheduler for a second instance of it.
    assert not [r for r in caplog.records if "maximum number of running instances" in r.message]
    assert not [
        r for r in caplog.records if "apscheduler" in r.name and r.levelno >= logging.WARNING
    ]


def test_a_record_whose_state_cannot_be_restored_fails_with_a_reason(tmp_path: Path) -> None:
    guard = guard_with(tmp_path)
    called: list[str] = []

    @guard.resumer("never")
    def never(parked: Any) -> None:
        called.append(parked.session_id)

    record = ParkedSession(
        session_id="broken-state",
        resumer="never",
        session_state={"iterations": "many", "spent_usd": "lots"},
        reason=ParkReason(kind="rate_limit", status=429),
        resume_at=datetime.now(UTC),
    )
    guard.parked.store.put(record)
    assert guard.parked.run("broken-state", owner="test") is None
    stored = guard.parked.get("broken-state")
    assert stored.state == "failed" and not called
    assert "cannot restore the session" in stored.history[-1].note


def test_stopping_while_a_resume_runs_waits_for_it_and_returns(
    gateway: SimServer, tmp_path: Path
) -> None:
    guard = guard_with(tmp_path)
    started, finished = threading.Event(), threading.Event()

    @guard.resumer("busy")
    def busy(parked: Any) -> str:
        started.set()
        time.sleep(1.0)
        finished.set()
        return "done"

    client = guard.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    gateway.rate_limit_next(1, retry_after=0.1)
    with guard.session("stop-1", budget_key="team", resumer="busy"), pytest.raises(SessionParked):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    daemon = ResumeDaemon(guard, poll_interval_s=0.05, watch_inbox=False)
    daemon.start()
    assert started.wait(30)
    stopper = threading.Thread(target=daemon.stop)  # as on SIGTERM, mid-resume
    stopper.start()
    stopper.join(timeout=30)
    assert not stopper.is_alive() and finished.is_set()
    assert guard.parked.get("stop-1").state == "resumed"


def test_a_daemon_that_cannot_replay_leaves_the_session_for_one_that_can(
    gateway: SimServer, tmp_path: Path
) -> None:
    parker = new_guard(tmp_path)
    client = parker.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    park_one(parker, client, "d-no-app")
    bare = new_guard(tmp_path)  # a daemon started without the application: no client to replay
    daemon = ResumeDaemon(bare, poll_interval_s=0.05, watch_inbox=False)
    daemon.start()
    try:
        time.sleep(2.5)  # the window (1 s) has reset: the session is due, and not taken
        record = bare.parked.get("d-no-app")
        assert (record.state, record.attempts) == ("parked", 0)
    finally:
        daemon.stop()
    able = new_guard(tmp_path)
    able.wrap(openai.OpenAI(base_url=gateway.base_url, api_key=KEY))
    daemon = ResumeDaemon(able, poll_interval_s=0.05, watch_inbox=False)
    daemon.start()
    try:
        wait_for(lambda: able.parked.get("d-no-app").state == "resumed", timeout=60)
    finally:
        daemon.stop()
    assert able.parked.get("d-no-app").attempts == 0
