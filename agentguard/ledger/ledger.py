"""The budget ledger: reserve the worst case before a call, settle to the real cost after.

A budget is a key with a dollar limit per window. A call draws on one or more budget lines at
once (its budget key, and its root session's own budget); the reservation of all of them is one
transaction that locks the keys' rows first, so any number of threads, processes or machines on
one store never push spend plus holds over a limit.

The guarantee, and what it costs:

- A hold whose outcome is unknown is **charged**, never released: a reservation or lease slice
  not renewed within ``reservation_ttl_s`` (its process died or stalled) is turned into spend at
  its full amount by the next sweep. When the real cost becomes known later (the stalled process
  wakes and settles), the difference is given back, once; never in the direction of more spend.
- Holds are fenced: every update of a hold checks its row count. A settlement, renewal or
  give-back of a hold that a sweep charged changes nothing but that reconciliation; a process
  whose lease was swept takes a new one, within the limit.
- Time is the store's: ``now()`` on PostgreSQL; on SQLite the largest time any process has
  written (``agentguard_clock``), so time never runs backwards across processes.
- Holds count against a key whatever window they were taken in; spend is also kept as dated
  events, so a window whose length or mode changed is re-read from history, and the previous
  window still applies until it ends.

Windows are ``fixed`` (they start at multiples of their length since the Unix epoch, UTC, and
reset at the next multiple) or ``rolling`` (spend counts for one window length after it
happened).
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from agentguard.errors import BudgetExceeded
from agentguard.ledger import windows
from agentguard.ledger.windows import (
    BudgetLine,
    BudgetStatus,
    describe_window,
    from_nusd,
    ms_to_datetime,
    to_nusd,
    wall_clock_ms,
    window_start,
)
from agentguard.store import Cursor, Store

__all__ = ["Ledger", "Reservation"]

_LEASE_PREFIX = "lease-"


@dataclass(slots=True, eq=False)
class _Lease:
    """A slice of one budget that this process holds in the store (one reservation row), from
    which its calls reserve in memory.

    ``held`` is what the store row holds; ``available`` the part not promised to calls in flight
    nor spent by settlements still to be written; ``in_flight`` the reservations drawn from it
    and not yet settled or released.
    """

    id: str
    line: BudgetLine
    held: int = 0
    available: int = 0
    in_flight: int = 0
    renewed_at: float = 0.0
    """``time.monotonic()`` of the last store write that found the row alive."""
    last_used: float = 0.0
    swept: bool = False
    """A sweep charged the row: nothing more is drawn from it; what stays unused once its calls
    end is given back from the charge."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money set aside for one call until it is settled."""

    id: str
    lines: tuple[BudgetLine, ...]
    amount_nusd: int
    created: float
    """``time.monotonic()`` when it was taken (a hold older than the renewal age is checked in
    the store before its call is sent)."""
    held: bool = True
    """Whether the amount was set aside in the store. Lines without a limit need no hold:
    their spend is only recorded, at settlement."""
    leases: tuple[_Lease, ...] = ()
    """For a reservation taken from this process's leases: the leases it drew on."""

    @property
    def amount_usd(self) -> Decimal:
        return from_nusd(self.amount_nusd)


# -- SQL ------------------------------------------------------------------------------------

_ENSURE_KEY = (
    "INSERT INTO agentguard_budget_keys (key, window_ms, mode, reserved_nusd)"
    " SELECT CAST(:key AS VARCHAR(255)), NULL, 'unset', COALESCE(SUM(reserved_nusd), 0)"
    " FROM agentguard_budget_windows WHERE key = :key ON CONFLICT DO NOTHING"
)
"""A key's row; a store written by schema version 1 kept its holds per window: carried over."""
_SELECT_KEY = (
    "SELECT window_ms, mode, reserved_nusd, prev_window_ms, prev_mode, prev_until_ms"
    " FROM agentguard_budget_keys WHERE key = :key"
)
_ADD_RESERVED = (
    "UPDATE agentguard_budget_keys SET reserved_nusd = reserved_nusd + :amount WHERE key = :key"
)
_DEFINE_KEY = (
    "UPDATE agentguard_budget_keys SET window_ms = :window_ms, mode = :mode,"
    " prev_window_ms = :prev_window_ms, prev_mode = :prev_mode, prev_until_ms = :prev_until"
    " WHERE key = :key"
)
_ENSURE_ROW = (
    "INSERT INTO agentguard_budget_windows (key, window_start_ms, spent_nusd, reserved_nusd, calls)"
    " VALUES (:key, :ws, 0, 0, 0) ON CONFLICT DO NOTHING"
)
_SELECT_ROW = (
    "SELECT spent_nusd, calls FROM agentguard_budget_windows"
    " WHERE key = :key AND window_start_ms = :ws"
)
_ADD_SPENT = (
    "UPDATE agentguard_budget_windows SET spent_nusd = spent_nusd + :amount,"
    " calls = calls + :calls WHERE key = :key AND window_start_ms = :ws"
)
_SEED_SPENT = (
    "UPDATE agentguard_budget_windows SET spent_nusd = CASE WHEN spent_nusd < :seed"
    " THEN :seed ELSE spent_nusd END WHERE key = :key AND window_start_ms = :ws"
)
_EVENTS_SINCE = (
    "SELECT COALESCE(SUM(amount_nusd), 0) FROM agentguard_spend_events"
    " WHERE key = :key AND at_ms > :since AND at_ms <= :now"
)
_EVENTS_FROM = (
    "SELECT COALESCE(SUM(amount_nusd), 0) FROM agentguard_spend_events"
    " WHERE key = :key AND at_ms >= :start AND at_ms <= :now"
)
_ROLLING_EVENTS = (
    "SELECT at_ms, amount_nusd FROM agentguard_spend_events"
    " WHERE key = :key AND at_ms > :since ORDER BY at_ms"
)
_INSERT_EVENT = (
    "INSERT INTO agentguard_spend_events (key, at_ms, amount_nusd) VALUES (:key, :at, :amount)"
)
_INSERT_RESERVATION = (
    "INSERT INTO agentguard_reservations"
    " (id, key, window_start_ms, amount_nusd, expires_at_ms, session_id)"
    " VALUES (:id, :key, :ws, :amount, :expires, :session_id)"
)
_CHANGE_HOLD = (
    "UPDATE agentguard_reservations SET amount_nusd = amount_nusd + :amount,"
    " expires_at_ms = :expires WHERE id = :id AND key = :key AND amount_nusd + :amount >= 0"
)
_DELETE_RESERVATION = "DELETE FROM agentguard_reservations WHERE id = :id AND key = :key"
_HOLDS_BY_KIND = (
    "SELECT COALESCE(SUM(CASE WHEN substr(id, 1, 6) = 'lease-' THEN amount_nusd ELSE 0 END), 0),"
    " COALESCE(SUM(CASE WHEN substr(id, 1, 6) = 'lease-' THEN 0 ELSE amount_nusd END), 0)"
    " FROM agentguard_reservations WHERE key = :key"
)
_EXPIRED = (
    "SELECT id, key, amount_nusd FROM agentguard_reservations WHERE expires_at_ms < :now"
    " ORDER BY key"
)
_DELETE_EXPIRED = (
    "DELETE FROM agentguard_reservations WHERE id = :id AND key = :key AND expires_at_ms < :now"
)
_INSERT_CHARGED = (
    "INSERT INTO agentguard_charged_holds (id, key, window_start_ms, at_ms, amount_nusd)"
    " VALUES (:id, :key, :ws, :at, :amount)"
)
_SELECT_CHARGED = (
    "SELECT amount_nusd, window_start_ms, at_ms FROM agentguard_charged_holds"
    " WHERE id = :id AND key = :key"
)
_REFUND_CHARGED = (
    "UPDATE agentguard_charged_holds SET amount_nusd = amount_nusd - :amount"
    " WHERE id = :id AND key = :key AND amount_nusd >= :amount"
)
_DELETE_CHARGED = "DELETE FROM agentguard_charged_holds WHERE id = :id AND key = :key"
_PG_NOW = "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM now()) * 1000) AS BIGINT)"
_SQLITE_CLOCK = "SELECT now_ms FROM agentguard_clock WHERE id = 1"
_SQLITE_CLOCK_SET = (
    "INSERT INTO agentguard_clock (id, now_ms) VALUES (1, :now)"
    " ON CONFLICT (id) DO UPDATE SET now_ms = excluded.now_ms"
    " WHERE excluded.now_ms > agentguard_clock.now_ms"
)


@dataclass(slots=True)
class _Key:
    """A key's row, locked for the transaction."""

    window_ms: int | None
    mode: str
    reserved: int
    prev_window_ms: int | None
    prev_mode: str | None
    prev_until_ms: int | None


@dataclass(slots=True)
class _Tx:
    """One store transaction of the ledger: its cursor, the store's time, the locked keys."""

    cursor: Cursor
    now: int
    is_sqlite: bool
    keys: dict[str, _Key] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)

    def key(self, key: str) -> _Key:
        row = self.keys.get(key)
        if row is None:
            # Keys are locked in sorted order up front; this is a key the caller did not name.
            self.lock([key])
            row = self.keys[key]
        return row

    def lock(self, keys: Iterable[str]) -> None:
        """Lock the rows of ``keys`` in sorted order (PostgreSQL: ``FOR UPDATE``; SQLite holds
        the database's write lock already), creating them as needed."""
        suffix = "" if self.is_sqlite else " FOR UPDATE"
        for key in sorted(set(keys) - self.keys.keys()):
            row = self.cursor.one(_SELECT_KEY + suffix, {"key": key})
            if row is None:
                self.cursor.execute(_ENSURE_KEY, {"key": key})
                row = self.cursor.one(_SELECT_KEY + suffix, {"key": key})
            assert row is not None
            self.keys[key] = _Key(*row)

    def add_reserved(self, key: str, amount: int) -> None:
        if amount:
            self.cursor.execute(_ADD_RESERVED, {"key": key, "amount": amount})
            self.key(key).reserved += amount

    def add_spent(self, key: str, amount: int, calls: int, window_start: int | None = None) -> None:
        """Spend in the window of the key's current definition (or the given window)."""
        if window_start is None:
            row = self.key(key)
            window_start = windows.window_start(row.window_ms, row.mode, self.now)
        params = {"key": key, "ws": window_start, "amount": amount, "calls": calls}
        if self.cursor.rowcount(_ADD_SPENT, params) == 0:
            self.cursor.execute(_ENSURE_ROW, {"key": key, "ws": window_start})
            self.cursor.execute(_ADD_SPENT, params)
        if amount:
            self.events[key] = self.events.get(key, 0) + amount

    def write_events(self) -> None:
        for key, amount in self.events.items():
            if amount:
                self.cursor.execute(_INSERT_EVENT, {"key": key, "at": self.now, "amount": amount})
        self.events.clear()


_Settlement = tuple[Reservation, int, bool]
"""A reservation, its real cost, and whether it counts as a call."""


class Ledger:
    """Reservations and settlements against windowed dollar budgets in a :class:`Store`.

    Args:
        store: where the ledger lives.
        reservation_ttl_s: a hold not renewed within this time is charged at its full amount
            (its process died or stalled with the call's outcome unknown).
        flush_interval_s: the longest a deferred settlement waits to be written.
        lease_fraction: with ``reserve(..., lease=True)``, the share of a budget's limit this
            process takes from the store at once and reserves its calls from in memory (one
            write transaction per slice instead of per call); 0 turns leasing off.
        lease_idle_s: a lease unused this long is given back to the store.
        clock: this process's wall clock in milliseconds (for tests of clock skew); the store's
            clock decides windows and expiries.
    """

    def __init__(
        self,
        store: Store,
        *,
        reservation_ttl_s: float = 600.0,
        flush_interval_s: float = 0.2,
        lease_fraction: float = 0.0,
        lease_idle_s: float = 1.0,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.reservation_ttl_ms = int(reservation_ttl_s * 1000)
        # A hold is renewed (or checked) in the store once it is a quarter of its time to live
        # old: a process must never use a hold a sweep may already have charged.
        self.renew_after_s = reservation_ttl_s / 4
        self._clock = clock or wall_clock_ms
        self._last_sweep = 0.0
        self._sweep_every_s = max(1.0, min(30.0, reservation_ttl_s / 10))
        self._lock = threading.Lock()
        self.flush_interval_s = flush_interval_s
        self.lease_fraction = lease_fraction
        self.lease_idle_s = lease_idle_s
        self._leases: dict[str, _Lease] = {}
        self._retired: list[_Lease] = []
        self._lease_lock = threading.RLock()
        self._held_lock = threading.Lock()
        self._pending: list[_Settlement] = []
        # Held while taken settlements are written: a flush (or a status read, or close) that
        # finds the queue empty because the flusher thread took it waits for that write.
        self._flush_lock = threading.RLock()
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        # Whether the flusher waits with no timeout (nothing leased when it last looked): a
        # new lease must wake it so idle leases are given back.
        self._flusher_unbounded_wait = True
        # Reservation ids: random per process (reset in a forked child), then a counter.
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count()
        os.register_at_fork(after_in_child=self._after_fork)
        atexit.register(self._flush_at_exit)

    # -- time ----------------------------------------------------------------------------------

    def _begin(self, connection: Cursor, now_ms: int | None) -> _Tx:
        """A ledger transaction at the store's time (``now_ms`` pins it, for tests)."""
        if now_ms is not None:
            return _Tx(connection, now_ms, self.store.is_sqlite)
        local = self._clock()
        if self.store.is_sqlite:
            row = connection.one(_SQLITE_CLOCK, {})
            now = max(local, int(row[0])) if row else local
            if row is None or now > row[0]:
                connection.execute(_SQLITE_CLOCK_SET, {"now": now})
        else:
            row = connection.one(_PG_NOW, {})
            assert row is not None
            now = int(row[0])
        return _Tx(connection, now, self.store.is_sqlite)

    # -- reserving -----------------------------------------------------------------------------

    def reserve(
        self,
        lines: tuple[BudgetLine, ...] | list[BudgetLine],
        amount_usd: Decimal,
        *,
        session_id: str | None = None,
        now_ms: int | None = None,
        lease: bool = False,
    ) -> Reservation:
        """Set ``amount_usd`` aside on every line, or on none.

        Settlements deferred by this process are written in the same transaction first, so
        a loop of calls costs one transaction per call. With ``lease`` (and a
        ``lease_fraction``), the amount comes from this process's leases of the budgets, and the
        store is written only when a lease must grow or be renewed.

        Raises:
            BudgetExceeded: some line has no room for the amount in its current window.
            StoreError: the store failed.
        """
        amount = to_nusd(amount_usd)
        reservation_id = f"{self._id_prefix}{next(self._ids):x}"
        limited: list[BudgetLine] = []
        for line in lines:  # a loop, not a comprehension: this runs on every call
            if line.limit_usd is not None:
                limited.append(line)
        if lease and self.lease_fraction > 0 and limited:
            return self._reserve_leased(tuple(lines), limited, amount, reservation_id, session_id)
        if not limited:
            # Nothing to protect: no transaction before the call, the spend is recorded when
            # the settlement is written.
            return Reservation(reservation_id, tuple(lines), amount, time.monotonic(), held=False)
        self._maybe_sweep()
        refused: BudgetExceeded | None = None
        with self._flushing() as pending, self.store.cursor() as connection:
            tx = self._begin(connection, now_ms)
            tx.lock([line.key for line in lines] + self._keys_of(pending))
            self._apply_settlements(tx, pending)
            for line in limited:
                self._define(tx, line)
                if amount > self._room(tx, line):
                    refused = self._exceeded(tx, line, amount, session_id)
                    break
            else:
                for line in limited:
                    tx.add_reserved(line.key, amount)
                    connection.execute(
                        _INSERT_RESERVATION,
                        {
                            "id": reservation_id,
                            "key": line.key,
                            "ws": 0,
                            "amount": amount,
                            "expires": tx.now + self.reservation_ttl_ms,
                            "session_id": session_id,
                        },
                    )
            tx.write_events()
        if refused is not None:
            raise refused
        return Reservation(reservation_id, tuple(lines), amount, time.monotonic())

    def settle(
        self,
        reservation: Reservation,
        actual_usd: Decimal,
        *,
        now_ms: int | None = None,
        defer: bool = False,
    ) -> None:
        """Replace the reservation by the real cost.

        Charging a call whose outcome is unknown is settling it at its worst case
        (``reservation.amount_usd``). With ``defer``, the settlement is queued and written with
        this process's next reservation, or by a background flush within
        ``flush_interval_s``, whichever comes first (the hold covers the worst case until then;
        if the process dies first, a sweep charges it).
        """
        self._queue_or_write((reservation, to_nusd(actual_usd), True), now_ms, defer)

    def release(self, reservation: Reservation, *, now_ms: int | None = None) -> None:
        """Give the reservation back without spending anything: its call was never sent, or
        the provider answered that it failed."""
        self._queue_or_write((reservation, 0, False), now_ms, defer=False)

    def _queue_or_write(self, settlement: _Settlement, now_ms: int | None, defer: bool) -> None:
        reservation, actual, counts = settlement
        if reservation.leases:
            with self._lease_lock:
                for held in reservation.leases:
                    # The unused part of the worst case goes back to the lease at once; the
                    # spend stays held until the settlement is written.
                    held.available += reservation.amount_nusd - actual
                    held.in_flight -= 1
            if actual == 0 and not counts:
                return  # a release from leases is done in memory
        elif not reservation.held and actual == 0 and not counts:
            return  # nothing held, nothing spent
        if defer:
            with self._lock:
                self._pending.append(settlement)
            self._wake_flusher()
            return
        with self._flushing() as pending, self.store.cursor() as connection:
            settlements = [*pending, settlement]
            tx = self._begin(connection, now_ms)
            tx.lock(self._keys_of(settlements))
            self._apply_settlements(tx, settlements)
            tx.write_events()

    def flush(self) -> None:
        """Write every deferred settlement now."""
        with self._flushing() as pending:
            if pending:
                with self.store.cursor() as connection:
                    tx = self._begin(connection, None)
                    tx.lock(self._keys_of(pending))
                    self._apply_settlements(tx, pending)
                    tx.write_events()

    def needs_confirm(self, reservation: Reservation) -> bool:
        """Whether the hold is old enough that a sweep may have charged it (its process
        stalled): then :meth:`confirm` it in the store before its call is sent. In memory."""
        if reservation.leases:
            oldest = time.monotonic() - self.renew_after_s
            for lease in reservation.leases:  # noqa: SIM110 (any() over a generator costs a call)
                if lease.swept or lease.renewed_at < oldest:
                    return True
            return False
        return reservation.held and time.monotonic() - reservation.created > self.renew_after_s

    def confirm(self, reservation: Reservation) -> bool:
        """Renew the reservation's holds in the store; ``False`` when a sweep charged one of
        them, in which case the reservation is released (its call was not sent) and the caller
        must reserve again."""
        if reservation.leases:
            with self._lease_lock:
                self._renew_leases(list(reservation.leases))
                alive = not any(lease.swept for lease in reservation.leases)
        else:
            alive = True
            with self.store.cursor() as connection:
                tx = self._begin(connection, None)
                tx.lock(line.key for line in reservation.lines)
                for line in reservation.lines:
                    if line.limit_usd is None:
                        continue
                    params = {
                        "id": reservation.id,
                        "key": line.key,
                        "amount": 0,
                        "expires": tx.now + self.reservation_ttl_ms,
                    }
                    alive = alive and connection.rowcount(_CHANGE_HOLD, params) == 1
        if not alive:
            self.release(reservation)
        return alive

    # -- leases --------------------------------------------------------------------------------

    def _reserve_leased(
        self,
        lines: tuple[BudgetLine, ...],
        limited: list[BudgetLine],
        amount: int,
        reservation_id: str,
        session_id: str | None,
    ) -> Reservation:
        now = time.monotonic()
        oldest = now - self.renew_after_s
        with self._lease_lock:
            short: list[BudgetLine] = []
            for line in limited:
                lease = self._leases.get(line.key)
                if (
                    lease is None
                    or (lease.line is not line and lease.line != line)
                    or lease.available < amount
                    or lease.renewed_at < oldest
                ):
                    short.append(line)
            if short:
                self._grow_leases(short, amount, session_id)
            taken = []
            for line in limited:
                lease = self._leases[line.key]
                lease.available -= amount
                lease.in_flight += 1
                lease.last_used = now
                taken.append(lease)
        if self._flusher_unbounded_wait:
            self._wake_flusher()  # it gives idle leases back
        return Reservation(reservation_id, lines, amount, now, leases=tuple(taken))

    def _grow_leases(self, short: list[BudgetLine], amount: int, session_id: str | None) -> None:
        """Renew (or take) the leases of ``short`` lines so each has ``amount`` available, in
        one transaction; all or none."""
        self._maybe_sweep()
        grown: list[tuple[BudgetLine, _Lease, int]] = []
        new: set[str] = set()
        refused: BudgetExceeded | None = None
        with self._flushing() as pending, self.store.cursor() as connection:
            tx = self._begin(connection, None)
            tx.lock([line.key for line in short] + self._keys_of(pending))
            self._apply_settlements(tx, pending)
            expires = tx.now + self.reservation_ttl_ms
            for line in short:
                self._define(tx, line)
                lease = self._leases.get(line.key)
                if lease is not None and lease.line != line:
                    self._give_back(tx, lease)  # the config changed: start a lease of the new line
                    lease = None
                if lease is not None and not self._renew(tx, lease, 0, expires):
                    lease = None
                if lease is None:
                    lease = _Lease(_LEASE_PREFIX + secrets.token_hex(10), line)
                    new.add(lease.id)
                need = max(0, amount - lease.available)
                if need == 0:
                    grown.append((line, lease, 0))
                    continue
                room = self._room(tx, line)
                limit = to_nusd(line.limit_usd or Decimal(0))
                size = max(need, int(limit * self.lease_fraction))
                if size > room:
                    size = need
                if size > room:
                    refused = self._exceeded(tx, line, amount, session_id)
                    break
                grown.append((line, lease, size))
            if refused is None:
                for line, lease, size in grown:
                    if lease.id in new:
                        connection.execute(
                            _INSERT_RESERVATION,
                            {
                                "id": lease.id,
                                "key": line.key,
                                "ws": 0,
                                "amount": size,
                                "expires": expires,
                                "session_id": session_id,
                            },
                        )
                    elif size:
                        renewed = self._renew(tx, lease, size, expires)
                        assert renewed  # renewed above, in this transaction
                    tx.add_reserved(line.key, size)
            tx.write_events()
        if refused is not None:
            raise refused
        now = time.monotonic()
        for line, lease, size in grown:
            with self._held_lock:
                lease.held += size
            lease.available += size
            lease.renewed_at = now
            self._leases[line.key] = lease

    def _renew(self, tx: _Tx, lease: _Lease, change: int, expires: int) -> bool:
        """Change a lease row by ``change`` and push its expiry out; ``False`` (and the lease
        retired) when a sweep charged it."""
        params = {"id": lease.id, "key": lease.line.key, "amount": change, "expires": expires}
        if tx.cursor.rowcount(_CHANGE_HOLD, params) == 1:
            return True
        self._retire(lease)
        return False

    def _retire(self, lease: _Lease) -> None:
        """A sweep charged this lease: never draw on it again; give back what stays unused once
        its calls have ended."""
        lease.swept = True
        if self._leases.get(lease.line.key) is lease:
            del self._leases[lease.line.key]
        if lease not in self._retired:
            self._retired.append(lease)

    def _renew_leases(self, leases: list[_Lease]) -> None:
        with self.store.cursor() as connection:
            tx = self._begin(connection, None)
            tx.lock(lease.line.key for lease in leases)
            expires = tx.now + self.reservation_ttl_ms
            now = time.monotonic()
            for lease in leases:
                if not lease.swept and self._renew(tx, lease, 0, expires):
                    lease.renewed_at = now

    def _give_back(self, tx: _Tx, lease: _Lease) -> None:
        """Give a lease's unused part back (its row goes when nothing else is held)."""
        give_back = max(0, lease.available)
        if lease.swept:
            return
        if not self._renew(tx, lease, -give_back, tx.now + self.reservation_ttl_ms):
            return
        tx.add_reserved(lease.line.key, -give_back)
        with self._held_lock:
            lease.held -= give_back
            empty = lease.held <= 0
        lease.available -= give_back
        lease.renewed_at = time.monotonic()
        if empty and lease.in_flight <= 0:
            tx.cursor.execute(_DELETE_RESERVATION, {"id": lease.id, "key": lease.line.key})
            if self._leases.get(lease.line.key) is lease:
                del self._leases[lease.line.key]

    def _tend_leases(self, *, everything: bool = False) -> None:
        """Give back what idle leases hold unused, keep the rest from expiring, and reconcile
        leases a sweep charged once their calls have ended."""
        with self._lease_lock:
            if not self._leases and not self._retired:
                return
            now = time.monotonic()
            with self.store.cursor() as connection:
                tx = self._begin(connection, None)
                tx.lock([*self._leases, *(lease.line.key for lease in self._retired)])
                expires = tx.now + self.reservation_ttl_ms
                for lease in list(self._leases.values()):
                    if everything or now - lease.last_used >= self.lease_idle_s:
                        self._give_back(tx, lease)
                    elif self._renew(tx, lease, 0, expires):
                        lease.renewed_at = now
                for lease in list(self._retired):
                    if lease.in_flight <= 0:
                        self._refund(tx, lease.id, lease.line.key, max(0, lease.available))
                        self._retired.remove(lease)
                tx.write_events()

    def close(self) -> None:
        """Write deferred settlements and give every lease back (at exit, or when done)."""
        self.flush()
        self._tend_leases(everything=True)

    # -- settlements ---------------------------------------------------------------------------

    def _flushing(self) -> _Flushing:
        """Take the queued settlements; put them back if the transaction fails."""
        return _Flushing(self)

    @staticmethod
    def _keys_of(settlements: list[_Settlement]) -> list[str]:
        return [line.key for reservation, _, _ in settlements for line in reservation.lines]

    def _apply_settlements(self, tx: _Tx, settlements: list[_Settlement]) -> None:
        connection = tx.cursor
        for reservation, actual, counts in settlements:
            calls = 1 if counts else 0
            leased = {held.line.key: held for held in reservation.leases}
            for line in reservation.lines:
                held_lease = leased.get(line.key)
                if held_lease is not None:
                    # Spend leaves the lease row; if a sweep charged the row, the charge covers
                    # it already (what stays unused is given back when the lease retires).
                    params = {
                        "id": held_lease.id,
                        "key": line.key,
                        "amount": -actual,
                        "expires": tx.now + self.reservation_ttl_ms,
                    }
                    if actual and connection.rowcount(_CHANGE_HOLD, params) == 1:
                        tx.add_reserved(line.key, -actual)
                        with self._held_lock:
                            held_lease.held -= actual
                        tx.add_spent(line.key, actual, calls)
                    else:
                        tx.add_spent(line.key, 0, calls)
                    continue
                if line.limit_usd is None or not reservation.held:
                    self._define_if_unset(tx, line)
                    tx.add_spent(line.key, actual, calls)
                    continue
                params = {"id": reservation.id, "key": line.key}
                if connection.rowcount(_DELETE_RESERVATION, params) == 1:
                    tx.add_reserved(line.key, -reservation.amount_nusd)
                    tx.add_spent(line.key, actual, calls)
                    continue
                # A sweep charged the hold: the real cost replaces the charge, once.
                charged = connection.one(_SELECT_CHARGED, params)
                if charged is None or connection.rowcount(_DELETE_CHARGED, params) != 1:
                    continue  # settled or released already: nothing happens twice
                amount, window_start, at = charged
                if actual > amount:
                    tx.add_spent(line.key, actual - amount, calls)
                else:
                    self._give_back_charge(tx, line.key, amount - actual, window_start, at)
                    tx.add_spent(line.key, 0, calls)

    def _refund(self, tx: _Tx, hold_id: str, key: str, amount: int) -> None:
        """Give back ``amount`` of a charged hold (never more than was charged)."""
        if amount <= 0:
            return
        params = {"id": hold_id, "key": key}
        charged = tx.cursor.one(_SELECT_CHARGED, params)
        if charged is None:
            return
        amount = min(amount, int(charged[0]))
        if tx.cursor.rowcount(_REFUND_CHARGED, {**params, "amount": amount}) == 1:
            self._give_back_charge(tx, key, amount, int(charged[1]), int(charged[2]))

    def _give_back_charge(self, tx: _Tx, key: str, amount: int, window_start: int, at: int) -> None:
        if amount <= 0:
            return
        tx.key(key)
        tx.cursor.execute(_ENSURE_ROW, {"key": key, "ws": window_start})
        tx.cursor.execute(
            _ADD_SPENT, {"key": key, "ws": window_start, "amount": -amount, "calls": 0}
        )
        # Dated like the charge, so it leaves rolling windows together with it.
        tx.cursor.execute(_INSERT_EVENT, {"key": key, "at": at, "amount": -amount})

    def _wake_flusher(self) -> None:
        if self._wake.is_set():
            return  # a flush is already on its way
        if self._flusher is None or not self._flusher.is_alive():
            with self._lock:
                if self._flusher is None or not self._flusher.is_alive():
                    self._flusher = threading.Thread(
                        target=self._flush_loop, name="agentguard-ledger-flush", daemon=True
                    )
                    self._flusher.start()
        self._wake.set()

    def _flush_loop(self) -> None:
        while True:
            # Said before looking: a reservation that finds it False made its lease before
            # the look below, which then sees it.
            self._flusher_unbounded_wait = True
            busy = self._leases or self._retired
            wait = min(self.lease_idle_s, self.renew_after_s) if busy else None
            if busy:
                self._flusher_unbounded_wait = False
            woken = self._wake.wait(timeout=wait)
            if woken:
                # Coalesce: a busy agent's next reservation usually writes the settlement first.
                time.sleep(self.flush_interval_s)
                self._wake.clear()
            try:
                self.flush()
                if self._leases or self._retired:
                    self._tend_leases()
            except Exception as exc:  # retried at the next wake; never kills the thread
                from agentguard.log import logger

                logger.warning("ledger_flush_failed", error=str(exc))

    def _after_fork(self) -> None:
        # The parent's queue, leases and flusher stay with the parent.
        self._pending = []
        self._leases = {}
        self._retired = []
        self._lease_lock = threading.RLock()
        self._held_lock = threading.Lock()
        self._flush_lock = threading.RLock()
        self._flusher = None
        self._flusher_unbounded_wait = True
        self._wake = threading.Event()
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def _flush_at_exit(self) -> None:
        with suppress(Exception):
            self.close()

    # -- reading -------------------------------------------------------------------------------

    def status(self, line: BudgetLine, *, now_ms: int | None = None) -> BudgetStatus:
        """Spend, holds and reset time of ``line``'s current window."""
        self.flush()
        with self.store.cursor() as connection:
            tx = self._begin(connection, now_ms)
            now = tx.now
            found = connection.one(_SELECT_KEY, {"key": line.key})
            key = _Key(*found) if found else _Key(None, "unset", 0, None, None, None)
            tx.keys[line.key] = key
            window_start = line.window_start_ms(now)
            row = connection.one(_SELECT_ROW, {"key": line.key, "ws": window_start})
            calls = int(row[1]) if row else 0
            spent = self._spent(tx, line)
            leased, calls_held = connection.one(_HOLDS_BY_KIND, {"key": line.key}) or (0, 0)
            resets_at: datetime | None = None
            start: datetime | None = None
            if line.window is not None and line.mode == "rolling":
                resets_at = self._rolling_relief(tx, line, 1)
                start = ms_to_datetime(now - (line.window_ms or 0))
            elif line.window is not None:
                start = ms_to_datetime(window_start)
                resets_at = ms_to_datetime(window_start + (line.window_ms or 0))
        own = self._leases.get(line.key)
        own_held = own.held if own is not None else 0
        own_idle = max(0, own.available) if own is not None else 0
        reserved = max(0, key.reserved)
        return BudgetStatus(
            key=line.key,
            limit_usd=line.limit_usd,
            spent_usd=from_nusd(spent),
            reserved_usd=from_nusd(reserved),
            calls=calls,
            window=line.window,
            mode=line.mode,
            window_start=start,
            resets_at=resets_at,
            in_flight_usd=from_nusd(max(0, int(calls_held) + own_held - own_idle)),
            idle_lease_usd=from_nusd(own_idle),
            other_leases_usd=from_nusd(max(0, int(leased) - own_held)),
        )

    def keys(self) -> list[str]:
        """Every budget key the ledger has seen."""
        self.flush()
        with self.store.cursor() as connection:
            rows = connection.all(
                "SELECT key FROM agentguard_budget_windows UNION"
                " SELECT key FROM agentguard_budget_keys ORDER BY 1",
                {},
            )
            return [row[0] for row in rows]

    # -- sweeping ------------------------------------------------------------------------------

    def sweep_expired(self, *, now_ms: int | None = None) -> int:
        """Charge holds past their time to live at their full amount (their process died or
        stalled, so what their calls cost is unknown); return how many were charged."""
        with self.store.cursor() as connection:
            tx = self._begin(connection, now_ms)
            expired = connection.all(_EXPIRED, {"now": tx.now})
            tx.lock(row[1] for row in expired)
            charged = 0
            for hold_id, key, amount in expired:
                params = {"id": hold_id, "key": key, "now": tx.now}
                if connection.rowcount(_DELETE_EXPIRED, params) != 1:
                    continue  # settled or renewed meanwhile
                row = tx.key(key)
                window_start = windows.window_start(row.window_ms, row.mode, tx.now)
                tx.add_reserved(key, -amount)
                tx.add_spent(key, amount, 0)
                connection.execute(
                    _INSERT_CHARGED,
                    {"id": hold_id, "key": key, "ws": window_start, "at": tx.now, "amount": amount},
                )
                charged += 1
            tx.write_events()
            return charged

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < self._sweep_every_s:
            return
        self._last_sweep = now
        self.sweep_expired()

    # -- windows and room ----------------------------------------------------------------------

    def _define(self, tx: _Tx, line: BudgetLine) -> None:
        """Record the line's window as the key's; when it changed, keep the previous window in
        force until it ends and count the new window's spend from the dated history."""
        row = tx.key(line.key)
        window_ms, mode = line.window_ms, line.mode
        if row.mode == "unset":
            row.window_ms, row.mode = window_ms, mode
            self._write_definition(tx, line.key, row)
            return
        if (row.window_ms, row.mode) == (window_ms, mode):
            return
        until = tx.now
        if row.window_ms is not None:
            start = window_start(row.window_ms, row.mode, tx.now)
            until = (start if row.mode == "fixed" else tx.now) + row.window_ms
        row.prev_window_ms, row.prev_mode, row.prev_until_ms = row.window_ms, row.mode, until
        row.window_ms, row.mode = window_ms, mode
        self._write_definition(tx, line.key, row)
        if mode != "rolling":
            start = line.window_start_ms(tx.now)
            seed = self._events_from(tx, line.key, start)
            tx.cursor.execute(_ENSURE_ROW, {"key": line.key, "ws": start})
            tx.cursor.execute(_SEED_SPENT, {"key": line.key, "ws": start, "seed": seed})

    def _define_if_unset(self, tx: _Tx, line: BudgetLine) -> None:
        if tx.key(line.key).mode == "unset":
            self._define(tx, line)

    @staticmethod
    def _write_definition(tx: _Tx, key: str, row: _Key) -> None:
        tx.cursor.execute(
            _DEFINE_KEY,
            {
                "key": key,
                "window_ms": row.window_ms,
                "mode": row.mode,
                "prev_window_ms": row.prev_window_ms,
                "prev_mode": row.prev_mode,
                "prev_until": row.prev_until_ms,
            },
        )

    def _room(self, tx: _Tx, line: BudgetLine) -> int:
        """What the line can still hold: its limit less spend in its window and every hold on
        the key, and the same under the key's previous window while that one lasts."""
        limit = to_nusd(line.limit_usd or Decimal(0))
        row = tx.key(line.key)
        room = limit - self._spent(tx, line) - row.reserved
        if row.prev_until_ms is not None and row.prev_until_ms > tx.now:
            previous = BudgetLine(
                line.key,
                line.limit_usd,
                None if row.prev_window_ms is None else timedelta(milliseconds=row.prev_window_ms),
                "rolling" if row.prev_mode == "rolling" else "fixed",
            )
            room = min(room, limit - self._spent_from_events(tx, previous) - row.reserved)
        return room

    def _spent(self, tx: _Tx, line: BudgetLine) -> int:
        if line.window is not None and line.mode == "rolling":
            return self._spent_from_events(tx, line)
        window_start = line.window_start_ms(tx.now)
        row = tx.cursor.one(_SELECT_ROW, {"key": line.key, "ws": window_start})
        return int(row[0]) if row else 0

    def _spent_from_events(self, tx: _Tx, line: BudgetLine) -> int:
        if line.window is not None and line.mode == "rolling":
            since = tx.now - (line.window_ms or 0)
            row = tx.cursor.one(_EVENTS_SINCE, {"key": line.key, "since": since, "now": tx.now})
            return int(row[0]) if row else 0
        return self._events_from(tx, line.key, line.window_start_ms(tx.now))

    @staticmethod
    def _events_from(tx: _Tx, key: str, start: int) -> int:
        row = tx.cursor.one(_EVENTS_FROM, {"key": key, "start": start, "now": tx.now})
        return int(row[0]) if row else 0

    def _rolling_relief(self, tx: _Tx, line: BudgetLine, needed: int) -> datetime | None:
        """When enough rolling spend expires to free ``needed`` nano-dollars."""
        length = line.window_ms or 0
        freed = 0
        rows = tx.cursor.all(_ROLLING_EVENTS, {"key": line.key, "since": tx.now - length})
        for at_ms, amount in rows:
            freed += amount
            if freed >= needed:
                return ms_to_datetime(at_ms + length)
        return None

    def _exceeded(
        self, tx: _Tx, line: BudgetLine, amount: int, session_id: str | None
    ) -> BudgetExceeded:
        limit = to_nusd(line.limit_usd or Decimal(0))
        spent = self._spent(tx, line)
        reserved = max(0, tx.key(line.key).reserved)
        leased, calls_held = tx.cursor.one(_HOLDS_BY_KIND, {"key": line.key}) or (0, 0)
        own = self._leases.get(line.key)
        own_idle = max(0, own.available) if own is not None and not own.swept else 0
        resets_at: datetime | None = None
        if line.window is not None and line.mode == "rolling":
            resets_at = self._rolling_relief(tx, line, spent + reserved + amount - limit)
        elif line.window is not None:
            window_start = line.window_start_ms(tx.now)
            resets_at = ms_to_datetime(window_start + (line.window_ms or 0))
        row = tx.key(line.key)
        if row.prev_until_ms is not None and row.prev_until_ms > tx.now:
            # The previous window still applies until it ends.
            until = ms_to_datetime(row.prev_until_ms)
            resets_at = until if resets_at is None else max(resets_at, until)
        fits_empty = amount <= limit
        if not fits_empty:
            resets_at = None
        when = (
            f"resets at {resets_at.isoformat(timespec='seconds')}"
            if resets_at
            else ("never resets" if line.window is None else "cannot fit even an empty window")
        )
        held = ""
        if reserved:
            held = (
                f", held ${from_nusd(reserved)} (calls in flight ${from_nusd(int(calls_held))},"
                f" lease slices ${from_nusd(int(leased))}"
                + (f" of which this process's idle ${from_nusd(own_idle)}" if own_idle else "")
                + ")"
            )
        return BudgetExceeded(
            f"budget {line.key!r} exceeded for session {session_id!r}: limit ${from_nusd(limit)}"
            f" per {describe_window(line)}, spent ${from_nusd(spent)}{held}, this call needs up"
            f" to ${from_nusd(amount)}; {when}",
            key=line.key,
            spent_usd=from_nusd(spent + reserved),
            limit_usd=from_nusd(limit),
            needed_usd=from_nusd(amount),
            resets_at=resets_at,
            session_id=session_id,
            fits_empty_window=fits_empty,
        )


class _Flushing:
    """The queued settlements of a ledger, taken for one transaction (a plain class: this is
    on every call's path)."""

    __slots__ = ("ledger", "pending")

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __enter__(self) -> list[_Settlement]:
        ledger = self.ledger
        ledger._flush_lock.acquire()
        if ledger._pending:
            with ledger._lock:
                self.pending, ledger._pending = ledger._pending, []
        else:
            self.pending = []
        return self.pending

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        ledger = self.ledger
        try:
            if exc_type is not None and self.pending and not isinstance(exc, BudgetExceeded):
                with ledger._lock:
                    ledger._pending[:0] = self.pending
        finally:
            ledger._flush_lock.release()
