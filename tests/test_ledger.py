"""The budget ledger over a real SQLite file: windows, reservations, and no overspend under
concurrency (threads and processes)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agentguard import BudgetExceeded
from agentguard.ledger import BudgetLine, Ledger, from_nusd, to_nusd
from agentguard.store import Store

HOUR_MS = 3_600_000


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(Store(f"sqlite:///{tmp_path / 'ledger.db'}"), reservation_ttl_s=60)


def test_money_is_exact() -> None:
    assert to_nusd(Decimal("0.000000001")) == 1
    assert to_nusd(Decimal("0.0000000011")) == 2  # rounds up, never down
    assert from_nusd(to_nusd(Decimal("1.25"))) == Decimal("1.25")


def test_reserve_settle_and_status(ledger: Ledger) -> None:
    line = BudgetLine("research", Decimal("1"), timedelta(hours=5))
    now = 10 * HOUR_MS + 123
    reservation = ledger.reserve([line], Decimal("0.4"), session_id="s1", now_ms=now)
    status = ledger.status(line, now_ms=now)
    assert status.reserved_usd == Decimal("0.4")
    assert status.spent_usd == 0
    ledger.settle(reservation, Decimal("0.1"), now_ms=now)
    status = ledger.status(line, now_ms=now)
    assert (status.spent_usd, status.reserved_usd, status.calls) == (Decimal("0.1"), 0, 1)
    assert status.remaining_usd == Decimal("0.9")
    assert status.window_start is not None and status.resets_at is not None
    assert int(status.window_start.timestamp() * 1000) == 10 * HOUR_MS
    assert int(status.resets_at.timestamp() * 1000) == 15 * HOUR_MS


def test_exceeding_raises_with_reset_time_and_nothing_is_half_reserved(ledger: Ledger) -> None:
    budget = BudgetLine("research", Decimal("1"), timedelta(hours=5))
    session = BudgetLine("session:s1", Decimal("0.5"))
    now = 10 * HOUR_MS
    ledger.settle(ledger.reserve([budget], Decimal("0.8"), now_ms=now), Decimal("0.8"), now_ms=now)
    with pytest.raises(BudgetExceeded) as caught:
        ledger.reserve([session, budget], Decimal("0.3"), session_id="s1", now_ms=now)
    error = caught.value
    assert error.key == "research"
    assert error.limit_usd == Decimal("1")
    assert error.needed_usd == Decimal("0.3")
    assert error.resets_at is not None and int(error.resets_at.timestamp() * 1000) == 15 * HOUR_MS
    assert error.fits_empty_window
    assert "research" in str(error) and "s1" in str(error) and "0.3" in str(error)
    # the session line reserved first was rolled back with the failed one
    assert ledger.status(session, now_ms=now).reserved_usd == 0


def test_fixed_window_resets(ledger: Ledger) -> None:
    line = BudgetLine("k", Decimal("1"), timedelta(hours=1))
    ledger.settle(ledger.reserve([line], Decimal("1"), now_ms=0), Decimal("1"), now_ms=0)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([line], Decimal("0.01"), now_ms=HOUR_MS - 1)
    ledger.reserve([line], Decimal("0.01"), now_ms=HOUR_MS)


def test_rolling_window_frees_spend_as_it_ages(ledger: Ledger) -> None:
    line = BudgetLine("k", Decimal("1"), timedelta(hours=1), "rolling")
    ledger.settle(ledger.reserve([line], Decimal("0.6"), now_ms=0), Decimal("0.6"), now_ms=0)
    at = 30 * 60_000
    ledger.settle(ledger.reserve([line], Decimal("0.3"), now_ms=at), Decimal("0.3"), now_ms=at)
    with pytest.raises(BudgetExceeded) as caught:
        ledger.reserve([line], Decimal("0.5"), now_ms=at + 1)
    # 0.6 spent at t=0 must age out before 0.5 more fits
    assert caught.value.resets_at is not None
    assert int(caught.value.resets_at.timestamp() * 1000) == HOUR_MS
    ledger.reserve([line], Decimal("0.5"), now_ms=HOUR_MS + 1)


def test_larger_than_the_whole_limit_never_fits(ledger: Ledger) -> None:
    line = BudgetLine("k", Decimal("1"), timedelta(hours=1))
    with pytest.raises(BudgetExceeded) as caught:
        ledger.reserve([line], Decimal("2"))
    assert not caught.value.fits_empty_window
    assert caught.value.resets_at is None
    assert "cannot fit even an empty window" in str(caught.value)


def test_release_gives_the_hold_back(ledger: Ledger) -> None:
    line = BudgetLine("capped", Decimal("10"), timedelta(days=1))
    reservation = ledger.reserve([line], Decimal("5"))
    assert ledger.status(line).reserved_usd == 5
    ledger.release(reservation)
    status = ledger.status(line)
    assert (status.reserved_usd, status.spent_usd, status.remaining_usd) == (0, 0, 10)


def test_an_expired_hold_is_charged_and_a_late_settlement_reconciles_it_once(
    tmp_path: Path,
) -> None:
    ledger = Ledger(Store(f"sqlite:///{tmp_path / 'l.db'}"), reservation_ttl_s=1)
    line = BudgetLine("k", Decimal("1"), timedelta(days=1))
    now = 5 * HOUR_MS
    stale = ledger.reserve([line], Decimal("0.9"), now_ms=now)  # its process stalls mid-call
    assert ledger.sweep_expired(now_ms=now + 2000) == 1
    status = ledger.status(line, now_ms=now + 2000)
    # the outcome is unknown: charged at the worst case, never released
    assert (status.spent_usd, status.reserved_usd) == (Decimal("0.9"), 0)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([line], Decimal("0.5"), now_ms=now + 2001)
    # the process wakes and settles: the real cost replaces the charge, exactly once
    ledger.settle(stale, Decimal("0.2"), now_ms=now + 3000)
    ledger.settle(stale, Decimal("0.2"), now_ms=now + 3000)
    ledger.release(stale, now_ms=now + 3000)
    assert ledger.sweep_expired(now_ms=now + 9000) == 0
    status = ledger.status(line, now_ms=now + 3000)
    assert (status.spent_usd, status.reserved_usd) == (Decimal("0.2"), 0)
    ledger.reserve([line], Decimal("0.8"), now_ms=now + 3001)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([line], Decimal("0.01"), now_ms=now + 3002)


LIMIT = Decimal("3")
COST = Decimal("0.07")


def _hammer(url: str, rounds: int, results: list[int] | None = None) -> int:
    ledger = Ledger(Store(url), reservation_ttl_s=600)
    line = BudgetLine("shared", LIMIT, timedelta(days=1))
    successes = 0
    for _ in range(rounds):
        try:
            reservation = ledger.reserve([line], COST)
        except BudgetExceeded:
            continue
        ledger.settle(reservation, COST)
        successes += 1
    if results is not None:
        results.append(successes)
    return successes


def test_sixteen_threads_never_overspend(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'threads.db'}"
    results: list[int] = []
    threads = [threading.Thread(target=_hammer, args=(url, 10, results)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = Ledger(Store(url)).status(BudgetLine("shared", LIMIT, timedelta(days=1)))
    assert status.spent_usd <= LIMIT
    assert status.reserved_usd == 0
    assert sum(results) == int(LIMIT / COST)  # exactly as many calls as fit
    assert status.spent_usd == COST * sum(results)


def test_four_processes_never_overspend(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'procs.db'}"
    Ledger(Store(url)).status(BudgetLine("shared", LIMIT, timedelta(days=1)))  # schema first
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        counts = pool.starmap(_hammer, [(url, 20)] * 4)
    status = Ledger(Store(url)).status(BudgetLine("shared", LIMIT, timedelta(days=1)))
    assert status.spent_usd <= LIMIT
    assert sum(counts) == int(LIMIT / COST)
    assert status.reserved_usd == 0


def test_a_refused_reservation_does_not_poison_the_next(ledger: Ledger) -> None:
    line = BudgetLine("fresh", Decimal("0.002"), timedelta(hours=1))
    with pytest.raises(BudgetExceeded):
        ledger.reserve([line], Decimal("0.01"))  # creates the window row, then rolls it back
    ledger.reserve([line], Decimal("0.001"))  # the row must be created again, not assumed
    assert ledger.status(line).reserved_usd == Decimal("0.001")


def test_unlimited_lines_record_spend_without_holding(ledger: Ledger) -> None:
    line = BudgetLine("free", None, timedelta(days=1))
    reservation = ledger.reserve([line], Decimal("3"))
    assert not reservation.held
    assert ledger.status(line).reserved_usd == 0
    ledger.settle(reservation, Decimal("0.25"), defer=True)
    ledger.release(reservation)  # nothing was held: nothing to give back
    status = ledger.status(line)
    assert (status.spent_usd, status.calls, status.reserved_usd) == (Decimal("0.25"), 1, 0)


def test_a_flush_waits_for_what_the_flusher_thread_is_writing(tmp_path: Path) -> None:
    """``flush``, ``status`` and ``close`` mean "everything settled so far is written", also when
    the background flusher took the queue a moment earlier and is still writing it: another
    writer holds the database, so the flusher waits inside its transaction, and a flush
    meanwhile must wait for that write rather than return with the settlements unwritten."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(Store(f"sqlite:///{path}"), flush_interval_s=0.05, lease_fraction=0.05)
    line = BudgetLine("racy", Decimal("100"), timedelta(days=1))
    # The first call takes this process's lease ($5) and is written: the next five reserve in
    # memory and are settled through the queue.
    ledger.settle(ledger.reserve([line], Decimal("0.01"), lease=True), Decimal("0.004"))
    # Another writer holds the database before they are settled, so however slow the machine,
    # the flusher cannot write them before taking the queue.
    other_writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other_writer.execute("BEGIN IMMEDIATE")
    for _ in range(5):
        reservation = ledger.reserve([line], Decimal("0.01"), lease=True)
        ledger.settle(reservation, Decimal("0.004"), defer=True)
    deadline = time.monotonic() + 30
    while ledger._pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ledger._pending, "the flusher thread never took the queue"
    threading.Timer(1.0, other_writer.rollback).start()
    ledger.flush()
    # Judged by what the file holds, read without a lock (WAL): the flush returned, so the six
    # settlements are in it.
    reader = sqlite3.connect(path)
    (spent,) = reader.execute(
        "SELECT COALESCE(SUM(spent_nusd), 0) FROM agentguard_budget_windows WHERE key = 'racy'"
    ).fetchone()
    reader.close()
    assert spent == 24_000_000  # 6 x $0.004 in nano-dollars
    status = ledger.status(line)
    assert status.spent_usd == Decimal("0.024"), status
    assert status.in_flight_usd == 0, status
    ledger.close()
    status = ledger.status(line)
    assert status.reserved_usd == 0 and status.spent_usd == Decimal("0.024"), status
    other_writer.close()
