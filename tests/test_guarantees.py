"""The money guarantee under faults: what the provider bills under one budget window never
exceeds the limit, and neither does the ledger's settled spend — with processes SIGKILLed at
random instants, stalled past the time to live, clocks that disagree, the window changed after
the limit was spent, timed-out retries and cut streams. The judge is the simulated provider's
own bill (:meth:`SimServer.billed_usd`), on SQLite and PostgreSQL.

Clock skew is tested with two ledgers over one store, each given its own wall clock (the
``clock`` argument): the store's clock must decide, whatever the processes' clocks say.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from agentguard import BudgetExceeded
from agentguard.config import GuardConfig
from agentguard.guard import Guard
from agentguard.ledger import BudgetLine, Ledger
from agentguard.sim import SimServer
from agentguard.store import Store

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

AGENTS = textwrap.dedent(
    """
    import os, sys, tempfile, openai
    from agentguard import BudgetExceeded
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard
    store, base_url, limit, ttl = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    api = sys.argv[5]

    def client_for(guard, api_key):
        if api == "anthropic":
            import anthropic
            return guard.wrap(anthropic.Anthropic(
                base_url=base_url.removesuffix("/v1"), api_key=api_key, max_retries=0))
        return guard.wrap(openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0))

    def call(client, n):
        text = f"call {n}: say ok"
        if api == "anthropic":
            client.messages.create(model="claude-haiku-4-5", max_tokens=20,
                                   messages=[{"role": "user", "content": text}])
        elif api == "responses":
            client.responses.create(model="gpt-4o-mini", max_output_tokens=20, input=text)
        else:
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": text}])

    def run(store, api_key, calls=100_000):
        guard = Guard(GuardConfig.from_mapping({
            "store": {"url": store, "reservation_ttl_s": ttl},
            "budgets": [{"key": "shared", "limit_usd": limit, "window": "1d",
                         "on_exhausted": "raise"}],
            "limits": {"max_iterations": None},
        }, env={}))
        client = client_for(guard, api_key)
        with guard.session(budget_key="shared"):
            for n in range(calls):
                try:
                    call(client, n)
                except BudgetExceeded:
                    break
        return guard

    # The tokenizer, prices and the SDK's lazy modules load once, before forking.
    run(f"sqlite:///{tempfile.mkdtemp()}/warm.db", "sk-warm", calls=1).close()
    for line in sys.stdin:
        api_key = line.strip()
        child = os.fork()
        if child == 0:
            run(store, api_key).close()
            os._exit(0)
        print(child, flush=True)
    """
)


class Agents:
    """A warmed process that forks agents on one budget, each with its own API key."""

    def __init__(
        self,
        store_url: str,
        sim: SimServer,
        limit: Decimal,
        ttl_s: float,
        home: Path,
        api: str = "chat",
    ):
        self.process = subprocess.Popen(
            [sys.executable, "-c", AGENTS, store_url, sim.base_url, str(limit), str(ttl_s), api],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "AGENTGUARD_HOME": str(home)},
        )

    def start(self, api_key: str) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(api_key + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.kill()  # its agents have ended; its own exit would only tidy up
        self.process.wait(timeout=60)


def ended(pid: int) -> bool:
    """Whether a process (a child of the forker, not of the test) has exited."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_ended(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ended(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended(pid), f"agent {pid} did not finish"


def stop_outside_a_write(pid: int, store_url: str) -> None:
    """SIGSTOP ``pid`` at a moment it holds no SQLite write lock.

    A process stopped inside a write transaction (they last milliseconds) holds SQLite's file
    lock and blocks every writer until it resumes or dies: the others' calls fail closed with a
    ``StoreError`` after ``busy_timeout_s``. On PostgreSQL the server ends such a transaction
    after ten seconds idle, so any instant will do there.
    """
    import sqlite3

    os.kill(pid, signal.SIGSTOP)
    if not store_url.startswith("sqlite"):
        return
    path = store_url.removeprefix("sqlite:///")
    for _attempt in range(200):
        probe = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)  # it was inside a write: let it finish, stop it again
            time.sleep(random.uniform(0.001, 0.02))
            os.kill(pid, signal.SIGSTOP)
        finally:
            probe.close()
    raise AssertionError(f"agent {pid} held the store's write lock at every try")


def settle_everything(store_url: str, ttl_s: float) -> Ledger:
    """Wait out the time to live and sweep: every hold of a dead process is charged."""
    ledger = Ledger(Store(store_url), reservation_ttl_s=ttl_s)
    time.sleep(ttl_s + 0.2)
    ledger.sweep_expired()
    return ledger


SHARED = BudgetLine("shared", Decimal("0.001"), timedelta(days=1))


def judge(sim: SimServer, ledger: Ledger, line: BudgetLine = SHARED) -> tuple[Decimal, Decimal]:
    assert sim.wait_idle(30)
    billed = sim.billed_usd() - sim.billed_usd("sk-warm")  # the forker's warm-up, on no budget
    status = ledger.status(line)
    assert line.limit_usd is not None
    assert status.reserved_usd == 0  # every hold settled or charged
    assert billed <= line.limit_usd, f"the provider billed {billed} over {line.limit_usd}"
    assert status.spent_usd <= line.limit_usd
    # what was billed is settled at its real cost or charged at its worst case: never less
    assert billed <= status.spent_usd
    return billed, status.spent_usd


def test_a_kill_storm_never_overspends(store_url: str, tmp_path: Path) -> None:
    kill_storm(store_url, tmp_path, "chat", SHARED)


@pytest.mark.parametrize(
    ("api", "limit"),
    [("responses", "0.001"), ("anthropic", "0.01")],
    ids=["responses", "anthropic"],
)
def test_a_kill_storm_never_overspends_on_the_other_apis(
    tmp_path: Path, api: str, limit: str
) -> None:
    """The same storm through the Responses API and Anthropic's Messages API (Claude Haiku
    costs more a call: a larger budget, for as many calls): one engine, one guarantee."""
    line = BudgetLine("shared", Decimal(limit), timedelta(days=1))
    kill_storm(f"sqlite:///{tmp_path / 'store.db'}", tmp_path, api, line)


def kill_storm(store_url: str, tmp_path: Path, api: str, line: BudgetLine) -> None:
    """Agents killed (SIGKILL) mid-call or just after, then survivors that spend the rest: the
    sim's bill never exceeds the limit, and the ledger charged at least what was billed."""
    ttl = 1.0
    rng = random.Random(11)
    Ledger(Store(store_url)).status(line)  # the schema, before processes race to make it
    with SimServer(latency_s=0.01) as sim:
        limit = line.limit_usd or Decimal(0)
        agents = Agents(store_url, sim, limit, ttl, tmp_path / "home", api)
        try:
            for round_number in range(8):
                key = f"sk-killed-{round_number}"
                pid = agents.start(key)
                deadline = time.monotonic() + 30
                while sim.billed_calls(key) == 0 and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.15))  # mid-call, or just after one
                os.kill(pid, signal.SIGKILL)
                wait_ended(pid)
            # Survivors spend what is left until the budget refuses them.
            survivors = [agents.start(f"sk-survivor-{n}") for n in range(2)]
            for pid in survivors:
                wait_ended(pid)
        finally:
            agents.close()
        billed, _ = judge(sim, settle_everything(store_url, ttl), line)
    assert sim.billed_calls() > 8
    assert billed > limit / 3  # the storm did spend the budget


def test_a_process_stalled_past_its_ttl_cannot_spend_its_swept_lease(
    store_url: str, tmp_path: Path
) -> None:
    ttl = 1.0
    Ledger(Store(store_url)).status(SHARED)
    with SimServer(latency_s=0.01) as sim:
        agents = Agents(store_url, sim, SHARED.limit_usd or Decimal(0), ttl, tmp_path / "home")
        try:
            stalled = agents.start("sk-stalled")
            deadline = time.monotonic() + 30
            while sim.billed_calls("sk-stalled") < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            stop_outside_a_write(stalled, store_url)
            time.sleep(ttl * 2.5)  # its lease expires; the other agent's sweep charges it
            other = agents.start("sk-other")
            wait_ended(other)  # spent the rest of the budget
            os.kill(stalled, signal.SIGCONT)
            wait_ended(stalled)
        finally:
            agents.close()
        ledger = settle_everything(store_url, ttl)
        judge(sim, ledger)
    assert sim.billed_calls("sk-other") > 0
    with ledger.store.cursor() as connection:
        held = connection.all("SELECT reserved_nusd FROM agentguard_budget_keys", {})
    assert all(row[0] == 0 for row in held)  # nothing released twice: no negative holds


def test_a_clock_ahead_cannot_release_a_live_hold(store_url: str) -> None:
    store = Store(store_url)
    honest = Ledger(store, reservation_ttl_s=600)
    ahead = Ledger(
        store, reservation_ttl_s=600, clock=lambda: time.time_ns() // 1_000_000 + 601_000
    )
    line = BudgetLine("skewed", Decimal("1"), timedelta(days=1))
    in_flight = honest.reserve([line], Decimal("0.9"))
    ahead.sweep_expired()  # on SQLite its clock moves the store's on: the hold is charged
    with pytest.raises(BudgetExceeded):
        ahead.reserve([line], Decimal("0.5"))
    honest.settle(in_flight, Decimal("0.9"))  # the provider billed it
    status = honest.status(line)
    assert (status.spent_usd, status.reserved_usd) == (Decimal("0.9"), 0)
    with pytest.raises(BudgetExceeded):
        ahead.reserve([line], Decimal("0.2"))


def test_a_clock_behind_cannot_date_spend_out_of_a_rolling_window(store_url: str) -> None:
    store = Store(store_url)
    honest = Ledger(store)
    behind = Ledger(store, clock=lambda: time.time_ns() // 1_000_000 - 61 * 60_000)
    line = BudgetLine("rolling", Decimal("1"), timedelta(hours=1), "rolling")
    honest.settle(honest.reserve([line], Decimal("1")), Decimal("1"))
    with pytest.raises(BudgetExceeded):
        behind.reserve([line], Decimal("1"))
    assert behind.status(line).spent_usd == Decimal("1")


@pytest.mark.parametrize(
    ("new_window", "new_mode"),
    [(timedelta(hours=5), "fixed"), (timedelta(hours=1), "rolling"), (timedelta(days=2), "fixed")],
)
def test_a_changed_window_never_hands_out_a_fresh_limit_the_same_day(
    store_url: str, new_window: timedelta, new_mode: Any
) -> None:
    ledger = Ledger(Store(store_url))
    day = BudgetLine("team", Decimal("1"), timedelta(days=1))
    changed = BudgetLine("team", Decimal("1"), new_window, new_mode)
    start = 100 * DAY_MS  # a day boundary, and a 5-hour one
    spent_at = start + HOUR_MS
    ledger.settle(
        ledger.reserve([day], Decimal("1"), now_ms=spent_at), Decimal("1"), now_ms=spent_at
    )
    later_that_day = start + 7 * HOUR_MS  # a fresh 5-hour window, 6 hours after the spend
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve([changed], Decimal("0.1"), now_ms=later_that_day)
    assert refused.value.resets_at is not None
    assert refused.value.resets_at.timestamp() * 1000 >= start + DAY_MS
    next_day = start + DAY_MS + new_window / timedelta(milliseconds=1)
    ledger.reserve([changed], Decimal("0.1"), now_ms=int(next_day) + 1)
    status = ledger.status(changed, now_ms=int(next_day) + 1)
    assert status.spent_usd <= Decimal("1")


def guard_for(store_url: str, limit: str, **limits: Any) -> Guard:
    return Guard(
        GuardConfig.from_mapping(
            {
                "store": {"url": store_url},
                "budgets": [
                    {"key": "shared", "limit_usd": limit, "window": "1d", "on_exhausted": "raise"}
                ],
                "limits": {"backoff_initial_s": 0.01, "backoff_max_s": 0.02, **limits},
            },
            env={},
        )
    )


def test_timed_out_attempts_are_charged_and_each_retry_reserves_its_own(store_url: str) -> None:
    # Two worst cases of this call fit the limit, three do not.
    guard = guard_for(store_url, "0.0001", max_retries=5)
    with SimServer() as sim:
        sim.timeout_next(5, seconds=1.0)
        client = guard.wrap(
            openai.OpenAI(base_url=sim.base_url, api_key="sk-t", max_retries=0, timeout=0.3)
        )
        with guard.session(budget_key="shared"), pytest.raises(BudgetExceeded):
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        guard.close()  # gives this process's idle lease back
        judge(sim, guard.ledger, guard.budget_line("shared"))
    assert sim.billed_calls() == 2  # the third attempt never left: no room for its worst case
    assert guard.budget_status("shared").calls == 2


def test_timed_out_attempts_then_an_answer_are_all_recorded(store_url: str) -> None:
    guard = guard_for(store_url, "1", max_retries=3)
    with SimServer() as sim:
        sim.timeout_next(2, seconds=1.0)
        client = guard.wrap(
            openai.OpenAI(base_url=sim.base_url, api_key="sk-t", max_retries=0, timeout=0.3)
        )
        with guard.session(budget_key="shared") as session:
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        guard.close()  # gives this process's idle lease back
        _, spent = judge(sim, guard.ledger, guard.budget_line("shared"))
    assert sim.billed_calls() == 3 == guard.budget_status("shared").calls
    assert session.spent_usd == spent


def test_a_cut_stream_is_charged_at_its_worst_case(store_url: str) -> None:
    guard = guard_for(store_url, "1")
    with SimServer(default_output_tokens=200) as sim:
        sim.cut_stream_next(after_chunks=3)
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-s", max_retries=0))
        cut = False
        with guard.session(budget_key="shared"):
            stream = client.chat.completions.create(
                model="gpt-4o-mini",
                max_tokens=300,
                stream=True,
                messages=[{"role": "user", "content": "tell me a story"}],
            )
            try:
                for _ in stream:
                    pass
            except Exception:  # the SDK hands on the transport's error as it comes
                cut = True
        assert cut
        guard.close()  # gives this process's idle lease back
        billed, spent = judge(sim, guard.ledger, guard.budget_line("shared"))
    assert billed > 0 and spent >= billed


def test_a_call_that_cannot_fit_any_window_raises_at_any_step_and_says_why(
    make_guard: Any, sim: SimServer
) -> None:
    guard = make_guard(
        budgets=[{"key": "tiny", "limit_usd": "0.001", "window": "1h", "on_exhausted": "park"}],
        limits={"default_max_output_tokens": 4096},
    )
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-f", max_retries=0))
    messages = [{"role": "user", "content": "hi"}]
    with guard.session("fit", budget_key="tiny") as session:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=20, messages=messages)
        with pytest.raises(BudgetExceeded) as huge_cap:  # a later step, with a lease in hand
            client.chat.completions.create(model="gpt-4o", max_tokens=100_000, messages=messages)
        with pytest.raises(BudgetExceeded) as default_cap:
            client.chat.completions.create(model="gpt-4o", messages=messages)
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=20, messages=messages)
    assert session.parked_record is None and guard.parked.list() == []  # never parked
    for caught in (huge_cap.value, default_cap.value):
        assert not caught.fits_empty_window and caught.resets_at is None
        assert "input tokens" in str(caught) and "budget 'tiny' exceeded" in str(caught)
    assert "max_tokens=100000 set by the caller" in str(huge_cap.value)
    assert "limits.default_max_output_tokens = 4096" in str(default_cap.value)
    assert str(default_cap.value.needed_usd) in str(default_cap.value)


def test_remaining_money_counts_this_processs_idle_slice_as_free(
    make_guard: Any, sim: SimServer
) -> None:
    guard = make_guard(budgets=[{"key": "team", "limit_usd": "0.01", "window": "1d"}])
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-r", max_retries=0))
    left = []
    with guard.session(budget_key="team") as session:
        for n in range(3):
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": f"{n}"}]
            )
            left.append(session.remaining_usd)
    status = guard.budget_status("team")
    assert left[0] > left[1] > left[2]  # every paid step shows
    assert left[2] == status.limit_usd - status.spent_usd == status.remaining_usd
    assert status.idle_lease_usd > 0 and status.in_flight_usd == 0
    assert status.other_leases_usd == 0
    assert status.reserved_usd == status.idle_lease_usd  # the slice, held but free to us
    assert status.free_usd == status.limit_usd - status.spent_usd - status.reserved_usd


@pytest.mark.parametrize("api", ["responses", "anthropic"])
def test_timed_out_attempts_on_the_other_apis_are_charged(tmp_path: Path, api: str) -> None:
    """Attempts whose client gave up are billed by the provider all the same: through the
    Responses API and Anthropic's Messages API too, the ledger charges at least the bill."""
    guard = guard_for(f"sqlite:///{tmp_path / 'store.db'}", "1", max_retries=3)
    with SimServer() as sim:
        sim.timeout_next(2, seconds=1.0)
        with guard.session(budget_key="shared") as session:
            if api == "anthropic":
                import anthropic

                claude = guard.wrap(
                    anthropic.Anthropic(
                        base_url=sim.url, api_key="sk-t", max_retries=0, timeout=0.3
                    )
                )
                claude.messages.create(
                    model="claude-haiku-4-5",
                    max_tokens=50,
                    messages=[{"role": "user", "content": "hi"}],
                )
            else:
                client = guard.wrap(
                    openai.OpenAI(base_url=sim.base_url, api_key="sk-t", max_retries=0, timeout=0.3)
                )
                client.responses.create(model="gpt-4o-mini", max_output_tokens=50, input="hi")
        guard.close()  # gives this process's idle lease back
        _, spent = judge(sim, guard.ledger, guard.budget_line("shared"))
    assert sim.billed_calls() == 3 == guard.budget_status("shared").calls
    assert session.spent_usd == spent
