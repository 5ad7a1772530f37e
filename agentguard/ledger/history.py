"""Spend per budget window over time, read from the ledger's store.

Fixed windows are read from their ledger rows; rolling budgets keep their spend as dated
events, which are summed into windows of the budget's length (aligned like fixed windows, so a
chart of either reads the same). A key the config does not know is shown as its rows were
written: the window length is unknown, so the rows are the windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from agentguard.ledger import BudgetLine, from_nusd
from agentguard.store import Store

__all__ = ["WindowSpend", "spend_history"]

_FIXED_ROWS = (
    "SELECT window_start_ms, spent_nusd, reserved_nusd, calls FROM agentguard_budget_windows"
    " WHERE key = :key AND window_start_ms >= :first AND window_start_ms <= :last"
)
_ROLLING_EVENTS = (
    "SELECT at_ms, amount_nusd FROM agentguard_spend_events"
    " WHERE key = :key AND at_ms >= :first AND at_ms <= :now"
)
# Holds are kept per key, whatever window they were taken in: they belong to the current one.
_HELD = "SELECT reserved_nusd FROM agentguard_budget_keys WHERE key = :key"
_STORED_ROWS = (
    "SELECT window_start_ms, spent_nusd, reserved_nusd, calls FROM agentguard_budget_windows"
    " WHERE key = :key ORDER BY window_start_ms DESC LIMIT :count"
)


@dataclass(frozen=True, slots=True)
class WindowSpend:
    """What one budget window spent.

    Attributes:
        key: the budget key.
        start: when the window began (``None`` for a budget that never resets: all time).
        end: when it ends (``None`` when the window length is unknown or endless).
        spent_usd: settled spend in the window.
        reserved_usd: held for calls in flight and budget slices (the current window only,
            in practice).
        calls: settled calls.
        limit_usd: the configured limit per window (``None`` when there is none).
    """

    key: str
    start: datetime | None
    end: datetime | None
    spent_usd: Decimal
    reserved_usd: Decimal
    calls: int
    limit_usd: Decimal | None


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def spend_history(
    store: Store, line: BudgetLine, *, windows: int = 12, now: datetime | None = None
) -> list[WindowSpend]:
    """The last ``windows`` windows of ``line``, oldest first, the current one last.

    Windows without spend are included (as zero) for a budget with a window length; a line
    without one (a key the config does not know) gives its stored rows instead.

    Raises:
        ValueError: ``windows`` is less than 1.
        StoreError: the store cannot be read.
    """
    if windows < 1:
        raise ValueError(f"windows must be at least 1, not {windows}")
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    length = line.window_ms
    if length is None:
        return _stored_rows(store, line, windows)
    last = now_ms - now_ms % length
    first = max(0, last - (windows - 1) * length)
    starts = list(range(first, last + 1, length))
    spent = dict.fromkeys(starts, 0)
    reserved = dict.fromkeys(starts, 0)
    calls = dict.fromkeys(starts, 0)

    def bucket(at_ms: int) -> int:
        return first + (at_ms - first) // length * length

    with store.cursor() as cursor:
        if line.mode == "rolling":
            events = cursor.all(_ROLLING_EVENTS, {"key": line.key, "first": first, "now": now_ms})
            for at_ms, amount in events:
                spent[bucket(at_ms)] += amount
                # An event is one settlement batch, and a refund is negative: count the charges.
                calls[bucket(at_ms)] += amount > 0
        else:
            # Rows of an earlier, different window length fall into the window holding them.
            params = {"key": line.key, "first": max(first, 1), "last": last}
            for start, row_spent, _row_reserved, row_calls in cursor.all(_FIXED_ROWS, params):
                spent[bucket(start)] += row_spent
                calls[bucket(start)] += row_calls
        held = cursor.one(_HELD, {"key": line.key})
        reserved[last] = max(0, held[0]) if held else 0
    return [
        WindowSpend(
            key=line.key,
            start=_datetime(start),
            end=_datetime(start + length),
            spent_usd=from_nusd(spent[start]),
            reserved_usd=from_nusd(reserved[start]),
            calls=calls[start],
            limit_usd=line.limit_usd,
        )
        for start in starts
    ]


def _stored_rows(store: Store, line: BudgetLine, windows: int) -> list[WindowSpend]:
    with store.cursor() as cursor:
        rows = cursor.all(_STORED_ROWS, {"key": line.key, "count": windows})
    return [
        WindowSpend(
            key=line.key,
            start=_datetime(start) if start else None,
            end=None,
            spent_usd=from_nusd(row_spent),
            reserved_usd=from_nusd(max(0, row_reserved)),
            calls=row_calls,
            limit_usd=line.limit_usd,
        )
        for start, row_spent, row_reserved, row_calls in reversed(rows)
    ]
