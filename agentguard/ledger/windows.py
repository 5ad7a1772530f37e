"""Budget lines, windows and money: what a budget is, independent of where it is kept.

Money is counted in integer nano-dollars (rounded up: the ledger errs toward counting more).
Windows are ``fixed`` (they start at multiples of their length since the Unix epoch, UTC, and
reset at the next multiple) or ``rolling`` (spend counts for one window length after it
happened).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

__all__ = [
    "BudgetLine",
    "BudgetStatus",
    "describe_window",
    "from_nusd",
    "ms_to_datetime",
    "to_nusd",
    "wall_clock_ms",
    "window_start",
]

_NANO = Decimal("1e9")


def to_nusd(amount: Decimal) -> int:
    """Dollars to integer nano-dollars, rounded up (the ledger errs toward counting more)."""
    return math.ceil(amount * _NANO)


def from_nusd(amount: int) -> Decimal:
    """Integer nano-dollars to dollars."""
    return (Decimal(amount) / _NANO).normalize() if amount else Decimal(0)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


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
        return window_start(self.window_ms, self.mode, now_ms)


def window_start(window_ms: int | None, mode: str, now_ms: int) -> int:
    if window_ms is None or mode == "rolling":
        return 0
    return now_ms - now_ms % window_ms


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """The state of one budget's current window, as seen from this process.

    Money in the window is split into what is spent (settled, or charged at its worst case
    when the outcome stayed unknown), what is held (by calls in flight and by lease slices) and
    what is free.
    """

    key: str
    limit_usd: Decimal | None
    spent_usd: Decimal
    reserved_usd: Decimal
    """Everything held on the key: calls in flight and lease slices of every process."""
    calls: int
    window: timedelta | None
    mode: str
    window_start: datetime | None
    resets_at: datetime | None
    in_flight_usd: Decimal = Decimal(0)
    """Held by calls in flight (of any process: store holds, and this process's leased calls)."""
    idle_lease_usd: Decimal = Decimal(0)
    """This process's own lease slice not promised to any call: free for this process."""
    other_leases_usd: Decimal = Decimal(0)
    """Held by other processes' lease slices (idle there, or drawn on by their calls)."""

    @property
    def free_usd(self) -> Decimal | None:
        """What no process holds: the limit less spend and every hold."""
        if self.limit_usd is None:
            return None
        return max(Decimal(0), self.limit_usd - self.spent_usd - self.reserved_usd)

    @property
    def remaining_usd(self) -> Decimal | None:
        """Free to spend now by this process: what nobody holds plus its own idle slice."""
        free = self.free_usd
        if free is None:
            return None
        return free + self.idle_lease_usd

    @property
    def remaining_fraction(self) -> float | None:
        if self.limit_usd is None or self.limit_usd == 0:
            return None
        remaining = self.remaining_usd or Decimal(0)
        return min(1.0, float(remaining / self.limit_usd))


def describe_window(line: BudgetLine) -> str:
    if line.window is None:
        return "session"
    seconds = int(line.window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit} window" + (
                " (rolling)" if line.mode == "rolling" else ""
            )
    return f"{seconds}s window" + (" (rolling)" if line.mode == "rolling" else "")
