"""One store test suite, run against every backend: SQLite files, and PostgreSQL when
``AGENTGUARD_TEST_POSTGRES_URL`` names a server (CI starts one; there the PostgreSQL runs are
required, never skipped)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agentguard import BudgetExceeded, StoreError
from agentguard.ledger import BudgetLine, Ledger
from agentguard.parking.record import ParkedSession, ParkReason
from agentguard.parking.store import ParkedStore
from agentguard.store import SCHEMA_VERSION, Store


def test_reserve_settle_release_and_windows(store_url: str) -> None:
    ledger = Ledger(Store(store_url))
    line = BudgetLine("team", Decimal("1"), timedelta(hours=1))
    now = 7 * 3_600_000
    first = ledger.reserve([line], Decimal("0.6"), session_id="s", now_ms=now)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([line], Decimal("0.5"), now_ms=now)
    ledger.settle(first, Decimal("0.2"), now_ms=now)
    second = ledger.reserve([line], Decimal("0.5"), now_ms=now)
    ledger.release(second)
    status = ledger.status(line, now_ms=now)
    assert (status.spent_usd, status.reserved_usd, status.calls) == (Decimal("0.2"), 0, 1)
    assert ledger.status(line, now_ms=now + 3_600_000).spent_usd == 0  # next window


def test_rolling_windows(store_url: str) -> None:
    ledger = Ledger(Store(store_url))
    line = BudgetLine("roll", Decimal("1"), timedelta(minutes=10), "rolling")
    ledger.settle(ledger.reserve([line], Decimal("0.9"), now_ms=0), Decimal("0.9"), now_ms=0)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([line], Decimal("0.2"), now_ms=60_000)
    ledger.reserve([line], Decimal("0.2"), now_ms=600_001)


def test_deferred_settlements_are_written(store_url: str) -> None:
    ledger = Ledger(Store(store_url), flush_interval_s=0.05)
    line = BudgetLine("deferred", Decimal("1"), timedelta(days=1))
    reservation = ledger.reserve([line], Decimal("0.5"))
    ledger.settle(reservation, Decimal("0.1"), defer=True)
    status = ledger.status(line)  # status flushes first
    assert status.spent_usd == Decimal("0.1") and status.reserved_usd == 0


def _hammer(url: str, rounds: int) -> int:
    ledger = Ledger(Store(url))
    line = BudgetLine("shared", Decimal("3"), timedelta(days=1))
    done = 0
    for _ in range(rounds):
        try:
            reservation = ledger.reserve([line], Decimal("0.07"))
        except BudgetExceeded:
            continue
        ledger.settle(reservation, Decimal("0.07"), defer=done % 2 == 0)
        done += 1
    ledger.flush()
    return done


def test_threads_and_processes_never_overspend(store_url: str) -> None:
    Ledger(Store(store_url)).status(BudgetLine("shared", Decimal("3"), timedelta(days=1)))
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda: counts.append(_hammer(store_url, 8))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        counts += pool.starmap(_hammer, [(store_url, 10)] * 4)
    status = Ledger(Store(store_url)).status(BudgetLine("shared", Decimal("3"), timedelta(days=1)))
    assert status.spent_usd <= Decimal("3")
    assert sum(counts) == 42 and status.spent_usd == Decimal("0.07") * 42
    assert status.reserved_usd == 0


def record(session_id: str, resume_at: datetime) -> ParkedSession:
    parked = ParkedSession(
        session_id=session_id,
        request={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        reason=ParkReason(kind="rate_limit", status=429),
        resume_at=resume_at,
    )
    parked.transition("parked")
    return parked


def test_claims_are_exactly_once_under_contention(store_url: str) -> None:
    parked = ParkedStore(Store(store_url))
    past = datetime.now(UTC) - timedelta(seconds=1)
    for n in range(10):
        parked.put(record(f"race-{n}", past))
    winners: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claim_all(owner: str) -> None:
        for n in range(10):
            if parked.claim(f"race-{n}", owner, lease_s=60) is not None:
                with lock:
                    winners.append((f"race-{n}", owner))

    threads = [threading.Thread(target=claim_all, args=(f"owner-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(w[0] for w in winners) == sorted(f"race-{n}" for n in range(10))
    assert all(parked.get(f"race-{n}").state == "resuming" for n in range(10))


def test_expired_leases_are_taken_over_and_future_records_wait(store_url: str) -> None:
    parked = ParkedStore(Store(store_url))
    parked.put(record("later", datetime.now(UTC) + timedelta(hours=1)))
    assert parked.claim("later", "a", lease_s=60) is None
    parked.put(record("now", datetime.now(UTC) - timedelta(seconds=1)))
    first = parked.claim("now", "a", lease_s=0.01)
    assert first is not None and first.resume_id
    second = parked.claim("now", "b", lease_s=60, now=datetime.now(UTC) + timedelta(seconds=1))
    assert second is not None
    assert parked.get("now").lease_owner == second.lease_owner
    assert second.lease_owner and second.lease_owner.startswith("b#")
    assert second.resume_id == first.resume_id  # the same attempt, run again
    assert "now" not in parked.due()
    # The first claim lost its lease: it can neither renew it nor write its outcome.
    assert first.lease_owner is not None and second.lease_owner is not None
    assert not parked.renew("now", first.lease_owner, lease_s=60)
    assert parked.update_claimed("now", first.lease_owner, lambda r: r) is None
    assert parked.renew("now", second.lease_owner, lease_s=60)
    assert parked.update_claimed("now", second.lease_owner, lambda r: r) is not None


def test_update_is_one_transaction_and_dedups_by_session(store_url: str) -> None:
    parked = ParkedStore(Store(store_url))
    parked.put(record("dup", datetime.now(UTC)))
    parked.put(record("dup", datetime.now(UTC) + timedelta(hours=2)))
    assert [r.session_id for r in parked.list()] == ["dup"]

    def bump(current: ParkedSession | None) -> ParkedSession:
        assert current is not None
        current.attempts += 1
        return current

    threads = [threading.Thread(target=lambda: parked.update("dup", bump)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert parked.get("dup").attempts == 8  # no lost update


def test_a_newer_schema_is_refused(store_url: str) -> None:
    store = Store(store_url)
    store.ensure_schema()
    with store.engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE agentguard_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than"):
        Store(store_url).ensure_schema()


def test_a_store_path_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    with pytest.raises(StoreError, match="cannot create the store directory"):
        Store(f"sqlite:///{blocker / 'store.db'}")


def test_a_read_only_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Ledger(Store(f"sqlite:///{path}")).status(BudgetLine("k", None))  # create it
    read_only = Ledger(Store(f"sqlite:///file:{path}?mode=ro&uri=true"))
    with pytest.raises(StoreError, match="read-only"):
        read_only.reserve([BudgetLine("k", Decimal("1"), timedelta(days=1))], Decimal("0.01"))


def test_unreachable_database_is_a_clear_error() -> None:
    store = Store("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1"):
        Ledger(store).status(BudgetLine("k", None))


def test_leases_reserve_calls_in_memory_and_never_overspend(store_url: str) -> None:
    line = BudgetLine("leased", Decimal("1"), timedelta(days=1))
    first = Ledger(Store(store_url), lease_fraction=0.25, lease_idle_s=60)
    second = Ledger(Store(store_url), lease_fraction=0.25, lease_idle_s=60)
    reservation = first.reserve([line], Decimal("0.01"), lease=True)
    assert first.status(line).reserved_usd == Decimal("0.25")  # one slice held in the store
    for _ in range(10):  # from memory: the store is not written
        first.settle(
            first.reserve([line], Decimal("0.01"), lease=True), Decimal("0.005"), defer=True
        )
    first.settle(reservation, Decimal("0.005"))
    status = first.status(line)
    assert status.spent_usd == Decimal("0.055") and status.calls == 11
    assert status.spent_usd + status.reserved_usd == Decimal("0.25")
    # the other process gets what is left, never more
    taken = [second.reserve([line], Decimal("0.2"), lease=True) for _ in range(3)]
    with pytest.raises(BudgetExceeded):
        second.reserve([line], Decimal("0.2"), lease=True)
    status = first.status(line)
    assert status.spent_usd + status.reserved_usd <= Decimal("1")
    for held in taken:
        second.release(held)
    first.close()
    second.close()
    status = first.status(line)
    assert status.reserved_usd == 0 and status.spent_usd == Decimal("0.055")


def test_an_idle_lease_is_given_back(store_url: str) -> None:
    line = BudgetLine("idle", Decimal("1"), timedelta(days=1))
    ledger = Ledger(Store(store_url), lease_fraction=0.5, lease_idle_s=0.2, flush_interval_s=0.05)
    ledger.settle(ledger.reserve([line], Decimal("0.01"), lease=True), Decimal("0.01"), defer=True)
    deadline = time.monotonic() + 5
    while ledger.status(line).reserved_usd and time.monotonic() < deadline:
        time.sleep(0.05)
    status = ledger.status(line)
    assert (status.reserved_usd, status.spent_usd) == (0, Decimal("0.01"))


def _hammer_leased(url: str, rounds: int) -> int:
    ledger = Ledger(Store(url), lease_fraction=0.1)
    line = BudgetLine("shared-leased", Decimal("3"), timedelta(days=1))
    done = 0
    for _ in range(rounds):
        try:
            reservation = ledger.reserve([line], Decimal("0.07"), lease=True)
        except BudgetExceeded:
            continue
        ledger.settle(reservation, Decimal("0.07"), defer=True)
        done += 1
    ledger.close()
    return done


def test_leased_processes_never_overspend(store_url: str) -> None:
    line = BudgetLine("shared-leased", Decimal("3"), timedelta(days=1))
    Ledger(Store(store_url)).status(line)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        counts = pool.starmap(_hammer_leased, [(store_url, 20)] * 4)
    status = Ledger(Store(store_url)).status(line)
    assert status.spent_usd <= Decimal("3") and status.reserved_usd == 0
    assert status.spent_usd == Decimal("0.07") * sum(counts)
    assert sum(counts) >= 36  # leases may strand a little near the limit, never overspend


def test_a_full_disk_is_a_clear_store_error(tmp_path: Path) -> None:
    import subprocess

    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the full-disk test (mount failed: {mounted.stderr.strip()})")
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        store = Store(f"sqlite:///{mount_point / 'store.db'}")
        ledger = Ledger(store)
        ledger.status(BudgetLine("k", None))  # the schema fits
        try:
            with (mount_point / "filler").open("wb") as filler:
                while True:
                    filler.write(b"\0" * 16384)
                    filler.flush()
        except OSError:
            pass  # the disk is full now (the last write or the close said so)
        parked = ParkedStore(store)
        with pytest.raises(StoreError, match="disk is full"):
            for n in range(200):
                parked.put(record(f"full-{n}", datetime.now(UTC)))
                ledger.reserve(
                    [BudgetLine(f"key-{n}", Decimal("1"), timedelta(days=1))], Decimal("0.01")
                )
    finally:
        from agentguard.store import _stores

        for key in [k for k in _stores if "small-disk" in k]:
            _stores.pop(key).dispose()
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _open_at(url: str, start: float) -> str:
    while time.time() < start:  # line the processes up on one instant
        pass
    try:
        ParkedStore(Store(url)).list()
    except StoreError as exc:
        return str(exc)
    return "ok"


@pytest.mark.parametrize("options", ["", "?timeout=5"])
def test_processes_opening_a_fresh_store_at_once_all_succeed(store_url: str, options: str) -> None:
    if options and not store_url.startswith("sqlite"):
        pytest.skip("URL options are a SQLite case")
    url = store_url + options
    with multiprocessing.get_context("fork").Pool(4) as pool:
        for _ in range(3):
            start = time.time() + 0.3
            results = pool.starmap(_open_at, [(url, start)] * 4)
            assert results == ["ok"] * 4
            if url.startswith("sqlite"):
                path = Path(url.split("///", 1)[1].split("?", 1)[0])
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)  # fresh again


def test_looking_at_parked_records_never_holds_up_a_writer(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'store.db'}"
    parked = ParkedStore(Store(url, busy_timeout_s=0.2))
    parked.put(record("seen", datetime.now(UTC)))
    writer = sqlite3.connect(tmp_path / "store.db", isolation_level=None, timeout=0.2)
    writer.execute("BEGIN IMMEDIATE")  # another process is writing
    try:
        assert [r.session_id for r in parked.list()] == ["seen"]
        assert parked.find("seen") is not None and parked.waiting()
    finally:
        writer.execute("ROLLBACK")
    # ... and no transaction (nor its read snapshot) is left open after a look.
    connection = parked.store._local.connection
    assert not connection.in_transaction
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE agentguard_parked_sessions SET state = 'dropped'")
    writer.execute("COMMIT")
    assert parked.get("seen").state == "dropped"


def test_an_in_memory_url_is_one_database_for_every_thread() -> None:
    """``sqlite://`` (in memory) is one database per connection in SQLite; the ledger uses
    several connections and a flusher thread, so the store keeps it in a private file."""
    import threading
    from decimal import Decimal

    from agentguard.ledger import BudgetLine, Ledger

    store = Store("sqlite://")
    ledger = Ledger(store)
    line = BudgetLine("mem", Decimal(1))
    seen: list[Decimal] = []

    def spend() -> None:
        held = ledger.reserve([line], Decimal("0.25"))
        ledger.settle(held, Decimal("0.25"))

    workers = [threading.Thread(target=spend) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    ledger.flush()
    seen.append(ledger.status(line).spent_usd)
    assert seen == [Decimal("0.75")]
    assert store.safe_url == "sqlite://"
    store.dispose()
