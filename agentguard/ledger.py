"""The budget ledger: reserve the worst case before a call, settle to the real cost after.

A budget is a key with a dollar limit per window. A call draws on one or more budget lines at
once (its budget key, and its root session's own budget); the reservation of all of them is one
transaction, and each line's check-and-add is a single conditional ``UPDATE``, so any number of
threads, processes or machines on one store can never push settled spend over a limit.

Windows are ``fixed`` (they start at multiples of their length since the Unix epoch, UTC, and
reset at the next multiple) or ``rolling`` (spend counts for one window length after it
happened). A reservation whose process dies is released after ``reservation_ttl_s``.
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal

from agentguard.errors import BudgetExceeded
from agentguard.store import Cursor, Store

__all__ = ["BudgetLine", "BudgetStatus", "Ledger", "Reservation", "from_nusd", "to_nusd"]

_NANO = Decimal("1e9")


def to_nusd(amount: Decimal) -> int:
    """Dollars to integer nano-dollars, rounded up (the ledger errs toward counting more)."""
    return int((amount * _NANO).to_integral_value(rounding=ROUND_CEILING))


def from_nusd(amount: int) -> Decimal:
    """Integer nano-dollars to dollars."""
    return (Decimal(amount) / _NANO).normalize() if amount else Decimal(0)


def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget a call draws on.

    Attributes:
        key: the ledger key (``research``, or ``session:<id>`` for a session's own budget).
        limit_usd: dollars per window; ``None`` records spend without limiting it.
        window: window length; ``None`` for a budget that never resets.
        mode: ``fixed`` or ``rolling`` windows.
    """

    key: str
    limit_usd: Decimal | None
    window: timedelta | None = None
    mode: Literal["fixed", "rolling"] = "fixed"

    @property
    def window_ms(self) -> int | None:
        return None if self.window is None else int(self.window.total_seconds() * 1000)

    def window_start_ms(self, now_ms: int) -> int:
        """The start of the fixed window holding ``now_ms`` (rolling and endless lines use 0)."""
        length = self.window_ms
        if length is None or self.mode == "rolling":
            return 0
        return now_ms - now_ms % length


@dataclass(slots=True, eq=False)
class _Lease:
    """A slice of one budget window that this process holds in the store (one reservation
    row), from which its calls reserve in memory.

    ``held`` is what the store holds for it; ``available`` is the part not promised to calls in
    flight nor spent by settlements still to be written.
    """

    id: str
    line: BudgetLine
    window_start: int
    held: int = 0
    available: int = 0
    expires_ms: int = 0
    last_used_ms: int = 0


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money set aside for one call until it is settled."""

    id: str
    lines: tuple[tuple[BudgetLine, int], ...]
    """Each line with the window start it was reserved in."""
    amount_nusd: int
    created_ms: int
    held: bool = True
    """Whether the amount was set aside in the store. Lines without a limit need no hold:
    their spend is only recorded, at settlement."""
    leases: tuple[_Lease, ...] = ()
    """For a reservation taken from this process's leases: the leases it drew on."""

    @property
    def amount_usd(self) -> Decimal:
        return from_nusd(self.amount_nusd)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """The state of one budget's current window."""

    key: str
    limit_usd: Decimal | None
    spent_usd: Decimal
    reserved_usd: Decimal
    calls: int
    window: timedelta | None
    mode: str
    window_start: datetime | None
    resets_at: datetime | None

    @property
    def remaining_usd(self) -> Decimal | None:
        if self.limit_usd is None:
            return None
        return max(Decimal(0), self.limit_usd - self.spent_usd - self.reserved_usd)

    @property
    def remaining_fraction(self) -> float | None:
        if self.limit_usd is None or self.limit_usd == 0:
            return None
        remaining = self.remaining_usd or Decimal(0)
        return float(remaining / self.limit_usd)


_ENSURE_ROW = (
    "INSERT INTO agentguard_budget_windows (key, window_start_ms, spent_nusd, reserved_nusd, calls)"
    " VALUES (:key, :ws, 0, 0, 0) ON CONFLICT DO NOTHING"
)
_RESERVE_FIXED = (
    "UPDATE agentguard_budget_windows SET reserved_nusd = reserved_nusd + :amount"
    " WHERE key = :key AND window_start_ms = :ws"
    " AND spent_nusd + reserved_nusd + :amount <= :limit"
)
_RESERVE_UNLIMITED = (
    "UPDATE agentguard_budget_windows SET reserved_nusd = reserved_nusd + :amount"
    " WHERE key = :key AND window_start_ms = :ws"
)
_LOCK_ROW = (
    "SELECT spent_nusd, reserved_nusd FROM agentguard_budget_windows"
    " WHERE key = :key AND window_start_ms = :ws FOR UPDATE"
)
_SELECT_ROW = (
    "SELECT spent_nusd, reserved_nusd, calls FROM agentguard_budget_windows"
    " WHERE key = :key AND window_start_ms = :ws"
)
_ROLLING_SPENT = (
    "SELECT COALESCE(SUM(amount_nusd), 0) FROM agentguard_spend_events"
    " WHERE key = :key AND at_ms > :since"
)
_ROLLING_EVENTS = (
    "SELECT at_ms, amount_nusd FROM agentguard_spend_events"
    " WHERE key = :key AND at_ms > :since ORDER BY at_ms"
)
_INSERT_RESERVATION = (
    "INSERT INTO agentguard_reservations"
    " (id, key, window_start_ms, amount_nusd, expires_at_ms, session_id)"
    " VALUES (:id, :key, :ws, :amount, :expires, :session_id)"
)
_GROW_LEASE = (
    "UPDATE agentguard_reservations SET amount_nusd = amount_nusd + :amount,"
    " expires_at_ms = :expires WHERE id = :id AND key = :key"
)
_DELETE_RESERVATION = "DELETE FROM agentguard_reservations WHERE id = :id AND key = :key"
_SETTLE_HELD = (
    "UPDATE agentguard_budget_windows SET reserved_nusd = reserved_nusd - :reserved,"
    " spent_nusd = spent_nusd + :actual, calls = calls + 1"
    " WHERE key = :key AND window_start_ms = :ws"
)
_SETTLE_EXPIRED = (
    "UPDATE agentguard_budget_windows SET spent_nusd = spent_nusd + :actual, calls = calls + 1"
    " WHERE key = :key AND window_start_ms = :ws"
)
_INSERT_EVENT = (
    "INSERT INTO agentguard_spend_events (key, at_ms, amount_nusd) VALUES (:key, :at, :amount)"
)
_EXPIRED = (
    "SELECT id, key, window_start_ms, amount_nusd FROM agentguard_reservations"
    " WHERE expires_at_ms < :now"
)
_RELEASE = (
    "UPDATE agentguard_budget_windows SET reserved_nusd = reserved_nusd - :amount"
    " WHERE key = :key AND window_start_ms = :ws"
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ledger:
    """Reservations and settlements against windowed dollar budgets in a :class:`Store`.

    Args:
        store: where the ledger lives.
        reservation_ttl_s: a reservation not settled within this time is released (its
            process died mid-call).
        flush_interval_s: the longest a deferred settlement waits to be written.
        lease_fraction: with ``reserve(..., lease=True)``, the share of a budget's limit this
            process takes from the store at once and reserves its calls from in memory (one
            write transaction per slice instead of per call); 0 turns leasing off.
        lease_idle_s: a lease unused this long is given back to the store.
    """

    def __init__(
        self,
        store: Store,
        *,
        reservation_ttl_s: float = 600.0,
        flush_interval_s: float = 0.2,
        lease_fraction: float = 0.0,
        lease_idle_s: float = 1.0,
    ) -> None:
        self.store = store
        self.reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self._known_rows: set[tuple[str, int]] = set()
        self._last_sweep_ms = 0
        self._sweep_every_ms = max(1000, min(30_000, self.reservation_ttl_ms // 10))
        self._lock = threading.Lock()
        self.flush_interval_s = flush_interval_s
        self.lease_fraction = lease_fraction
        self.lease_idle_ms = int(lease_idle_s * 1000)
        self._leases: dict[tuple[str, int], _Lease] = {}
        self._lease_lock = threading.RLock()
        self._held_lock = threading.Lock()
        self._pending: list[tuple[Reservation, int, int]] = []
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._after_fork)
        atexit.register(self._flush_at_exit)

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
        store is written only when a lease must grow.

        Raises:
            BudgetExceeded: some line has no room for the amount in its current window.
            StoreError: the store failed.
        """
        now = _now_ms() if now_ms is None else now_ms
        amount = to_nusd(amount_usd)
        reservation_id = secrets.token_hex(12)
        if lease and self.lease_fraction > 0 and any(line.limit_usd is not None for line in lines):
            return self._reserve_leased(lines, amount, reservation_id, now, session_id)
        if all(line.limit_usd is None for line in lines):
            # Nothing to protect: no transaction before the call, the spend is recorded when
            # the settlement is written.
            placed_lines = tuple((line, line.window_start_ms(now)) for line in lines)
            return Reservation(reservation_id, placed_lines, amount, now, held=False)
        placed: list[tuple[BudgetLine, int]] = []
        created: list[tuple[str, int]] = []
        refused: BudgetExceeded | None = None
        with self._flushing() as pending, self.store.cursor() as connection:
            self._apply_settlements(connection, pending)
            self._maybe_sweep(connection, now)
            for line in lines:
                window_start = line.window_start_ms(now)
                self._ensure_row(connection, line.key, window_start, created)
                if not self._reserve_line(connection, line, window_start, amount, now):
                    refused = self._exceeded(
                        connection, line, window_start, amount, now, session_id
                    )
                    # Undo the lines placed so far; the settlements above still commit.
                    for placed_line, placed_start in placed:
                        connection.execute(
                            _DELETE_RESERVATION, {"id": reservation_id, "key": placed_line.key}
                        )
                        connection.execute(
                            _RELEASE,
                            {"key": placed_line.key, "ws": placed_start, "amount": amount},
                        )
                    break
                connection.execute(
                    _INSERT_RESERVATION,
                    {
                        "id": reservation_id,
                        "key": line.key,
                        "ws": window_start,
                        "amount": amount,
                        "expires": now + self.reservation_ttl_ms,
                        "session_id": session_id,
                    },
                )
                placed.append((line, window_start))
        self._remember_rows(created)
        if refused is not None:
            raise refused
        return Reservation(reservation_id, tuple(placed), amount, now)

    def settle(
        self,
        reservation: Reservation,
        actual_usd: Decimal,
        *,
        now_ms: int | None = None,
        defer: bool = False,
    ) -> None:
        """Replace the reservation by the real cost (``0`` releases it).

        With ``defer``, the settlement is queued and written with this process's next
        reservation, or by a background flush within ``flush_interval_s``, whichever comes
        first (the reservation holds the worst case until then: never less than the truth).
        """
        now = _now_ms() if now_ms is None else now_ms
        settlement = (reservation, to_nusd(actual_usd), now)
        if reservation.leases:
            with self._lease_lock:
                for held in reservation.leases:
                    # The unused part of the worst case goes back to the lease at once; the
                    # spend stays held until the settlement is written.
                    held.available += reservation.amount_nusd - settlement[1]
        if defer:
            with self._lock:
                self._pending.append(settlement)
            self._wake_flusher()
            return
        with self._flushing() as pending, self.store.cursor() as connection:
            self._apply_settlements(connection, [*pending, settlement])

    def flush(self) -> None:
        """Write every deferred settlement now."""
        with self._flushing() as pending:
            if pending:
                with self.store.cursor() as connection:
                    self._apply_settlements(connection, pending)

    def release(self, reservation: Reservation) -> None:
        """Give the reservation back without spending anything (the call failed)."""
        if reservation.leases:
            with self._lease_lock:
                for held in reservation.leases:
                    held.available += reservation.amount_nusd
            return
        if not reservation.held:
            return
        with self._flushing() as pending, self.store.cursor() as connection:
            self._apply_settlements(connection, pending)
            for line, window_start in reservation.lines:
                params = {"id": reservation.id, "key": line.key}
                if connection.rowcount(_DELETE_RESERVATION, params) == 1:
                    connection.execute(
                        _RELEASE,
                        {"key": line.key, "ws": window_start, "amount": reservation.amount_nusd},
                    )

    # -- leases ------------------------------------------------------------------------------

    def _reserve_leased(
        self,
        lines: tuple[BudgetLine, ...] | list[BudgetLine],
        amount: int,
        reservation_id: str,
        now: int,
        session_id: str | None,
    ) -> Reservation:
        placed = tuple((line, line.window_start_ms(now)) for line in lines)
        limited = [(line, start) for line, start in placed if line.limit_usd is not None]
        # Refresh a lease well before its row could expire: a swept lease must never be used.
        fresh_until = now + self.reservation_ttl_ms // 2
        with self._lease_lock:
            short = [
                (line, start)
                for line, start in limited
                if (lease := self._leases.get((line.key, start))) is None
                or lease.available < amount
                or lease.expires_ms < fresh_until
            ]
            if short:
                self._grow_leases(short, amount, now, session_id)
            taken = []
            for line, start in limited:
                lease = self._leases[(line.key, start)]
                lease.available -= amount
                lease.last_used_ms = now
                taken.append(lease)
        self._wake_flusher()  # it gives idle leases back
        return Reservation(reservation_id, placed, amount, now, leases=tuple(taken))

    def _grow_leases(
        self,
        short: list[tuple[BudgetLine, int]],
        amount: int,
        now: int,
        session_id: str | None,
    ) -> None:
        """Grow (or take) the leases of ``short`` lines so each has ``amount`` available, in
        one transaction; all or none."""
        expires = now + self.reservation_ttl_ms
        grown: list[tuple[_Lease, int, bool]] = []
        created: list[tuple[str, int]] = []
        refused: BudgetExceeded | None = None
        with self._flushing() as pending, self.store.cursor() as connection:
            self._apply_settlements(connection, pending)
            self._maybe_sweep(connection, now)
            for line, start in short:
                lease = self._leases.get((line.key, start))
                new = lease is None
                if lease is None:
                    lease = _Lease("lease-" + secrets.token_hex(10), line, start)
                need = max(0, amount - lease.available)
                limit = to_nusd(line.limit_usd or Decimal(0))
                slice_size = max(need, int(limit * self.lease_fraction))
                self._ensure_row(connection, line.key, start, created)
                got = None
                for size in dict.fromkeys((slice_size, need)):
                    if size == 0 or self._reserve_line(connection, line, start, size, now):
                        got = size
                        break
                if got is None:
                    refused = self._exceeded(connection, line, start, need, now, session_id)
                    for done, size, was_new in grown:  # all or none
                        connection.execute(
                            _RELEASE,
                            {"key": done.line.key, "ws": done.window_start, "amount": size},
                        )
                        if was_new:
                            connection.execute(
                                _DELETE_RESERVATION, {"id": done.id, "key": done.line.key}
                            )
                        else:
                            connection.execute(
                                _GROW_LEASE,
                                {
                                    "id": done.id,
                                    "key": done.line.key,
                                    "amount": -size,
                                    "expires": done.expires_ms,
                                },
                            )
                    grown = []
                    break
                if (
                    new
                    or connection.rowcount(
                        _GROW_LEASE,
                        {"id": lease.id, "key": line.key, "amount": got, "expires": expires},
                    )
                    == 0
                ):
                    if not new:
                        # The row was swept (this process stalled past its time to live): what
                        # it held was released, so start the lease again from nothing.
                        lease.held = lease.available = 0
                        new = True
                    connection.execute(
                        _INSERT_RESERVATION,
                        {
                            "id": lease.id,
                            "key": line.key,
                            "ws": start,
                            "amount": got,
                            "expires": expires,
                            "session_id": session_id,
                        },
                    )
                grown.append((lease, got, new))
        self._remember_rows(created)
        if refused is not None:
            raise refused
        for lease, got, _new in grown:
            with self._held_lock:
                lease.held += got
            lease.available += got
            lease.expires_ms = expires
            self._leases[(lease.line.key, lease.window_start)] = lease

    def _tend_leases(self, *, everything: bool = False, now_ms: int | None = None) -> None:
        """Give back what idle leases (and leases of windows that have passed) hold unused,
        and keep the rest of them from expiring."""
        now = _now_ms() if now_ms is None else now_ms
        with self._lease_lock:
            if not self._leases:
                return
            with self.store.cursor() as connection:
                for key, lease in list(self._leases.items()):
                    idle = everything or now - lease.last_used_ms >= self.lease_idle_ms
                    passed = lease.line.window_start_ms(now) != lease.window_start
                    if idle or passed:
                        give_back = max(0, lease.available)
                        if give_back:
                            connection.execute(
                                _RELEASE,
                                {
                                    "key": lease.line.key,
                                    "ws": lease.window_start,
                                    "amount": give_back,
                                },
                            )
                            with self._held_lock:
                                lease.held -= give_back
                            lease.available -= give_back
                        with self._held_lock:
                            empty = lease.held <= 0
                        if empty:
                            connection.execute(
                                _DELETE_RESERVATION, {"id": lease.id, "key": lease.line.key}
                            )
                            del self._leases[key]
                            continue
                        connection.execute(
                            _GROW_LEASE,
                            {
                                "id": lease.id,
                                "key": lease.line.key,
                                "amount": -give_back,
                                "expires": now + self.reservation_ttl_ms,
                            },
                        )
                    else:
                        connection.execute(
                            _GROW_LEASE,
                            {
                                "id": lease.id,
                                "key": lease.line.key,
                                "amount": 0,
                                "expires": now + self.reservation_ttl_ms,
                            },
                        )
                    lease.expires_ms = now + self.reservation_ttl_ms

    def close(self) -> None:
        """Write deferred settlements and give every lease back (at exit, or when done)."""
        self.flush()
        self._tend_leases(everything=True)

    # -- deferred settlements ----------------------------------------------------------------

    def _flushing(self) -> _Flushing:
        """Take the queued settlements; put them back if the transaction fails."""
        return _Flushing(self)

    def _apply_settlements(
        self, connection: Cursor, settlements: list[tuple[Reservation, int, int]]
    ) -> None:
        for reservation, actual, at in settlements:
            leased = {(held.line.key, held.window_start): held for held in reservation.leases}
            for line, window_start in reservation.lines:
                held_lease = leased.get((line.key, window_start))
                if held_lease is not None:
                    connection.execute(
                        _SETTLE_HELD,
                        {"key": line.key, "ws": window_start, "reserved": actual, "actual": actual},
                    )
                    connection.execute(
                        _GROW_LEASE,
                        {
                            "id": held_lease.id,
                            "key": line.key,
                            "amount": -actual,
                            "expires": held_lease.expires_ms,
                        },
                    )
                    # A lock that is never held across store I/O: the flusher writes these in
                    # its own transaction while a caller may hold the lease lock waiting on it.
                    with self._held_lock:
                        held_lease.held -= actual
                    if line.mode == "rolling" and line.window is not None and actual:
                        connection.execute(
                            _INSERT_EVENT, {"key": line.key, "at": at, "amount": actual}
                        )
                    continue
                if not reservation.held:
                    connection.execute(_ENSURE_ROW, {"key": line.key, "ws": window_start})
                    held = False
                else:
                    params = {"id": reservation.id, "key": line.key}
                    held = connection.rowcount(_DELETE_RESERVATION, params) == 1
                values = {
                    "key": line.key,
                    "ws": window_start,
                    "reserved": reservation.amount_nusd,
                    "actual": actual,
                }
                connection.execute(_SETTLE_HELD if held else _SETTLE_EXPIRED, values)
                if line.mode == "rolling" and line.window is not None and actual:
                    connection.execute(_INSERT_EVENT, {"key": line.key, "at": at, "amount": actual})

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
            woken = self._wake.wait(timeout=self.lease_idle_ms / 1000 if self._leases else None)
            if woken:
                # Coalesce: a busy agent's next reservation usually writes the settlement first.
                time.sleep(self.flush_interval_s)
                self._wake.clear()
            try:
                self.flush()
                if self._leases:
                    self._tend_leases()
            except Exception as exc:  # retried at the next wake; never kills the thread
                from agentguard.log import logger

                logger.warning("ledger_flush_failed", error=str(exc))

    def _after_fork(self) -> None:
        # The parent's queue and flusher stay with the parent.
        self._pending = []
        self._leases = {}
        self._lease_lock = threading.RLock()
        self._held_lock = threading.Lock()
        self._flusher = None
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def _flush_at_exit(self) -> None:
        with suppress(Exception):
            self.close()

    def status(self, line: BudgetLine, *, now_ms: int | None = None) -> BudgetStatus:
        """Spend, reservations and reset time of ``line``'s current window."""
        self.flush()
        now = _now_ms() if now_ms is None else now_ms
        window_start = line.window_start_ms(now)
        with self.store.cursor() as connection:
            row = connection.one(_SELECT_ROW, {"key": line.key, "ws": window_start})
            spent, reserved, calls = (row[0], row[1], row[2]) if row else (0, 0, 0)
            resets_at: datetime | None = None
            start: datetime | None = None
            if line.window is not None and line.mode == "rolling":
                spent = self._rolling_spent(connection, line, now)
                resets_at = self._rolling_relief(connection, line, now, 1)
                start = _ms_to_datetime(now - (line.window_ms or 0))
            elif line.window is not None:
                start = _ms_to_datetime(window_start)
                resets_at = _ms_to_datetime(window_start + (line.window_ms or 0))
        return BudgetStatus(
            key=line.key,
            limit_usd=line.limit_usd,
            spent_usd=from_nusd(spent),
            reserved_usd=from_nusd(max(0, reserved)),
            calls=calls,
            window=line.window,
            mode=line.mode,
            window_start=start,
            resets_at=resets_at,
        )

    def keys(self) -> list[str]:
        """Every budget key the ledger has seen."""
        self.flush()
        with self.store.cursor() as connection:
            rows = connection.all(
                "SELECT DISTINCT key FROM agentguard_budget_windows ORDER BY key", {}
            )
            return [row[0] for row in rows]

    def sweep_expired(self, *, now_ms: int | None = None) -> int:
        """Release reservations past their time to live; return how many were released."""
        now = _now_ms() if now_ms is None else now_ms
        with self.store.cursor() as connection:
            return self._sweep(connection, now)

    # -- internals ---------------------------------------------------------------------------

    def _ensure_row(
        self, connection: Cursor, key: str, window_start: int, created: list[tuple[str, int]]
    ) -> None:
        if (key, window_start) in self._known_rows:
            return
        connection.execute(_ENSURE_ROW, {"key": key, "ws": window_start})
        created.append((key, window_start))

    def _remember_rows(self, created: list[tuple[str, int]]) -> None:
        # Only rows of committed transactions: a rolled-back insert must be made again.
        with self._lock:
            if len(self._known_rows) > 10_000:
                self._known_rows.clear()
            self._known_rows.update(created)

    def _reserve_line(
        self, connection: Cursor, line: BudgetLine, window_start: int, amount: int, now: int
    ) -> bool:
        params = {"key": line.key, "ws": window_start, "amount": amount}
        if line.limit_usd is None:
            return connection.rowcount(_RESERVE_UNLIMITED, params) == 1
        limit = to_nusd(line.limit_usd)
        if line.mode == "rolling" and line.window is not None:
            # The sum over spend events cannot go in one conditional UPDATE race-free on
            # PostgreSQL, so lock the budget row first; SQLite already holds the write lock.
            if not self.store.is_sqlite:
                connection.execute(_LOCK_ROW, {"key": line.key, "ws": window_start})
            row = connection.one(_SELECT_ROW, {"key": line.key, "ws": window_start})
            assert row is not None
            spent = self._rolling_spent(connection, line, now)
            if spent + row[1] + amount > limit:
                return False
            return connection.rowcount(_RESERVE_UNLIMITED, params) == 1
        return connection.rowcount(_RESERVE_FIXED, {**params, "limit": limit}) == 1

    def _rolling_spent(self, connection: Cursor, line: BudgetLine, now: int) -> int:
        since = now - (line.window_ms or 0)
        row = connection.one(_ROLLING_SPENT, {"key": line.key, "since": since})
        return int(row[0]) if row else 0

    def _rolling_relief(
        self, connection: Cursor, line: BudgetLine, now: int, needed: int
    ) -> datetime | None:
        """When enough rolling spend expires to free ``needed`` nano-dollars."""
        length = line.window_ms or 0
        freed = 0
        rows = connection.all(_ROLLING_EVENTS, {"key": line.key, "since": now - length})
        for at_ms, amount in rows:
            freed += amount
            if freed >= needed:
                return _ms_to_datetime(at_ms + length)
        return None

    def _exceeded(
        self,
        connection: Cursor,
        line: BudgetLine,
        window_start: int,
        amount: int,
        now: int,
        session_id: str | None,
    ) -> BudgetExceeded:
        row = connection.one(_SELECT_ROW, {"key": line.key, "ws": window_start})
        spent, reserved = (row[0], row[1]) if row else (0, 0)
        limit = to_nusd(line.limit_usd or Decimal(0))
        resets_at: datetime | None = None
        if line.window is not None and line.mode == "rolling":
            spent = self._rolling_spent(connection, line, now)
            resets_at = self._rolling_relief(
                connection, line, now, spent + reserved + amount - limit
            )
        elif line.window is not None:
            resets_at = _ms_to_datetime(window_start + (line.window_ms or 0))
        fits_empty = amount <= limit
        if not fits_empty:
            resets_at = None
        when = (
            f"resets at {resets_at.isoformat(timespec='seconds')}"
            if resets_at
            else ("never resets" if line.window is None else "cannot fit even an empty window")
        )
        error = BudgetExceeded(
            f"budget {line.key!r} exceeded for session {session_id!r}: limit ${from_nusd(limit)}"
            f" per {_describe_window(line)}, spent ${from_nusd(spent)}, reserved"
            f" ${from_nusd(max(0, reserved))}, this call needs up to ${from_nusd(amount)}; {when}",
            key=line.key,
            spent_usd=from_nusd(spent + max(0, reserved)),
            limit_usd=from_nusd(limit),
            needed_usd=from_nusd(amount),
            resets_at=resets_at,
            session_id=session_id,
            fits_empty_window=fits_empty,
        )
        return error

    def _maybe_sweep(self, connection: Cursor, now: int) -> None:
        if now - self._last_sweep_ms < self._sweep_every_ms:
            return
        self._last_sweep_ms = now
        self._sweep(connection, now)

    def _sweep(self, connection: Cursor, now: int) -> int:
        released = 0
        for reservation_id, key, window_start, amount in connection.all(_EXPIRED, {"now": now}):
            params = {"id": reservation_id, "key": key}
            if connection.rowcount(_DELETE_RESERVATION, params) == 1:
                connection.execute(_RELEASE, {"key": key, "ws": window_start, "amount": amount})
                released += 1
        return released


class _Flushing:
    """The queued settlements of a ledger, taken for one transaction (a plain class: this is
    on every call's path)."""

    __slots__ = ("ledger", "pending")

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __enter__(self) -> list[tuple[Reservation, int, int]]:
        ledger = self.ledger
        if ledger._pending:
            with ledger._lock:
                self.pending, ledger._pending = ledger._pending, []
        else:
            self.pending = []
        return self.pending

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is not None and self.pending and not isinstance(exc, BudgetExceeded):
            ledger = self.ledger
            with ledger._lock:
                ledger._pending[:0] = self.pending


def _describe_window(line: BudgetLine) -> str:
    if line.window is None:
        return "session"
    seconds = int(line.window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit} window" + (
                " (rolling)" if line.mode == "rolling" else ""
            )
    return f"{seconds}s window" + (" (rolling)" if line.mode == "rolling" else "")
