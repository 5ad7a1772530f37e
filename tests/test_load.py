"""Load and contention over real HTTP, real stores and real processes: many agents on one
dollar budget never overspend, a killed process's call is charged at its worst case, and several daemons
resume every parked session (one of them killed mid-resume)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai

from agentguard.config import GuardConfig
from agentguard.guard import Guard
from agentguard.ledger import BudgetLine, Ledger
from agentguard.sim import SimServer
from agentguard.store import Store

LIMIT = Decimal("0.003")


def guard_for(store_url: str, **extra: Any) -> Guard:
    data: dict[str, Any] = {
        "store": {"url": store_url, "reservation_ttl_s": extra.pop("ttl", 600)},
        "budgets": [{"key": "shared", "limit_usd": str(LIMIT), "window": "1d"}],
        "limits": {"max_iterations": None, "backoff_initial_s": 0.01},
    }
    data.update(extra)
    return Guard(GuardConfig.from_mapping(data, env={}))


def agent(store_url: str, base_url: str, calls: int, worker: int) -> dict[str, Any]:
    from agentguard import BudgetExceeded

    guard = guard_for(store_url)
    client = guard.wrap(openai.OpenAI(base_url=base_url, api_key="sk-load", max_retries=0))
    done = refused = 0
    with guard.session(f"w{worker}", budget_key="shared") as session:
        for n in range(calls):
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"worker {worker} call {n}: say ok"}],
                    max_tokens=20,
                )
                done += 1
            except BudgetExceeded:
                refused += 1
        spent = str(session.spent_usd)
    guard.close()  # pool workers end with os._exit: give the budget lease back explicitly
    return {"done": done, "refused": refused, "spent": spent}


def test_processes_on_one_budget_never_overspend(store_url: str) -> None:
    Ledger(Store(store_url)).status(BudgetLine("shared", LIMIT, timedelta(days=1)))
    with SimServer(record_requests=True) as sim:
        # Four interpreters: each spawned one loads the SDK, prices and vocabulary anew, which a
        # busy two-core machine pays for many times over.
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            results = pool.starmap(agent, [(store_url, sim.base_url, 80, w) for w in range(4)])
        sent = sum(1 for r in sim.requests if r.path.endswith("/chat/completions"))
        assert sim.wait_idle(30)
        billed = sim.billed_usd()
    status = Ledger(Store(store_url)).status(BudgetLine("shared", LIMIT, timedelta(days=1)))
    done = sum(r["done"] for r in results)
    assert sum(r["refused"] for r in results) > 0, "the budget should have run out"
    assert status.spent_usd <= LIMIT
    assert billed <= status.spent_usd  # the provider's bill, settled at its real cost
    assert status.reserved_usd == 0
    assert status.spent_usd == sum(Decimal(r["spent"]) for r in results)
    assert sent == done == status.calls  # nothing was sent that was not reserved and settled


HANGING_AGENT = textwrap.dedent(
    """
    import sys, openai
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard
    store, base_url = sys.argv[1], sys.argv[2]
    guard = Guard(GuardConfig.from_mapping({"store": {"url": store, "reservation_ttl_s": 1},
        "budgets": [{"key": "shared", "limit_usd": "0.003", "window": "1d"}]}, env={}))
    client = guard.wrap(openai.OpenAI(base_url=base_url, api_key="sk-load", max_retries=0, timeout=60))
    with guard.session("doomed", budget_key="shared"):
        print("calling", flush=True)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=50)
    """
)


def test_a_process_killed_mid_call_is_charged_its_worst_case(store_url: str) -> None:
    line = BudgetLine("shared", LIMIT, timedelta(days=1))
    with SimServer(latency_s=30) as sim:
        process = subprocess.Popen(
            [sys.executable, "-c", HANGING_AGENT, store_url, sim.base_url], stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        process.stdout.readline()
        ledger = Ledger(Store(store_url), reservation_ttl_s=1)
        deadline = time.monotonic() + 20
        while not sim.requests and time.monotonic() < deadline:
            time.sleep(0.05)  # the request has reached the provider
        held = ledger.status(line).reserved_usd
        assert held > 0  # reserved, request in flight
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(1.1)
        assert ledger.sweep_expired() == 1
        # The provider may have billed the call: its hold is charged, never released.
        status = ledger.status(line)
        assert (status.reserved_usd, status.spent_usd) == (0, held)
    assert sim.wait_idle(30)
    assert 0 < sim.billed_usd() <= status.spent_usd  # the answer was generated after all


APP = textwrap.dedent(
    """
    import os, time
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard

    guard = Guard(GuardConfig.from_mapping({{
        "store": {{"url": {store!r}}},
        "parking": {{"lease_s": 1.5, "dir": {parked!r}}},
    }}, env={{}}))

    @guard.resumer("slow")
    def slow(parked):
        time.sleep(0.05)
        with open({log!r}, "a") as handle:
            handle.write(f"{{parked.session_id}} {{os.getpid()}}\\n")
        return "ok"
    """
)


def test_three_daemons_resume_every_session_one_killed_mid_resume(
    store_url: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from agentguard.parking.record import ParkedSession, ParkReason

    log = tmp_path / "resumed.log"
    (tmp_path / "load_app.py").write_text(
        APP.format(store=store_url, parked=str(tmp_path / "parked"), log=str(log))
    )
    guard = guard_for(store_url)
    sessions = 100
    for n in range(sessions):
        record = ParkedSession(
            session_id=f"park-{n}",
            resumer="slow",
            request={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            reason=ParkReason(kind="rate_limit", status=429),
            resume_at=datetime.now(UTC),
        )
        guard.parked.import_record(record)
    environment = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    daemons = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentguard.cli",
                "daemon",
                "--app",
                "load_app:guard",
                "--poll",
                "0.2",
                "--log-level",
                "warning",
            ],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            not log.exists() or len(log.read_text().splitlines()) < 10
        ):
            time.sleep(0.05)
        daemons[0].send_signal(signal.SIGKILL)  # mid-resume, holding claims
        daemons[0].wait()
        while time.monotonic() < deadline:
            states = Counter(r.state for r in guard.parked.list())
            if states.get("resumed", 0) == sessions:
                break
            time.sleep(0.2)
        states = Counter(r.state for r in guard.parked.list())
        assert states == {"resumed": sessions}, states
    finally:
        for daemon in daemons[1:]:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons[1:]:
            assert daemon.wait(timeout=20) == 0  # graceful shutdown
    lines = [line.split() for line in log.read_text().splitlines()]
    per_session = Counter(session for session, _ in lines)
    assert set(per_session) == {f"park-{n}" for n in range(sessions)}
    killed = str(daemons[0].pid)
    repeated = [s for s, count in per_session.items() if count > 1]
    # A resumer that ran in the killed daemon may run again after its lease expires (its record
    # was never marked resumed); nothing else runs twice.
    for session in repeated:
        assert any(pid == killed for s, pid in lines if s == session), session
    assert len(repeated) <= 4  # at most one per worker of the killed daemon
    json.dumps(per_session)
