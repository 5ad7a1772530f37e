"""What the guard knows of each model's health: failures and cooldowns, and latency.

A model whose calls keep failing (5xx, 529 overloaded, 404 model not found, timeouts) is put
in **cooldown**: calls that have another model to go to skip it for a while, so a fleet stops
hammering a sick model. Cooldowns are kept in memory and, when the guard has a store, in the
store's ``agentguard_model_health`` table, so every process on the store skips the model
within ``refresh_s`` of the failure that started it. When the cooldown ends the model is
*half-open*: one call in the whole fleet (the one whose process claims the probe in the store)
tries it; an answer ends the cooldown, a failure starts another.

**Latency** is kept in memory only, per process: each model's latest call times (time to the
first byte of the answer, and to its end), from which :meth:`ModelHealth.latency` reads the
median and 95th percentile. Cheap: an append per call, a sort of at most ``samples`` numbers
when asked.

Times are this host's wall clock (cooldowns only decide which model is tried first: a clock
that disagrees by seconds shortens or lengthens a cooldown by as much, and spends nothing).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentguard.log import logger

if TYPE_CHECKING:
    from agentguard.store import Store

__all__ = ["Latency", "ModelHealth"]


@dataclass(frozen=True, slots=True)
class Latency:
    """A model's recent latency in this process, in seconds.

    Attributes:
        samples: how many calls the percentiles are over.
        first_byte_p50: median time to the first byte of the answer.
        first_byte_p95: 95th percentile of it.
        total_p50: median time to the end of the answer.
        total_p95: 95th percentile of it.
    """

    samples: int
    first_byte_p50: float
    first_byte_p95: float
    total_p50: float
    total_p95: float


@dataclass(slots=True)
class _Row:
    """One model's failures and cooldown (times in milliseconds; 0 for none)."""

    failures: int = 0
    window_start_ms: int = 0
    cooling_until_ms: int = 0
    probe_until_ms: int = 0


def _percentile(ordered: list[float], share: float) -> float:
    """The nearest-rank percentile of sorted numbers."""
    rank = math.ceil(share * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


class _Samples:
    __slots__ = ("first_byte", "lock", "summary", "total")

    def __init__(self, size: int) -> None:
        self.first_byte: deque[float] = deque(maxlen=size)
        self.total: deque[float] = deque(maxlen=size)
        self.lock = threading.Lock()
        self.summary: Latency | None = None
        """The percentiles, until the next sample (read far more often than written)."""


class ModelHealth:
    """Failures, cooldowns and latency per model.

    Args:
        store: where cooldowns are shared with other processes (``None``: this process only).
        failures: failures within ``window_s`` that start a cooldown.
        window_s: the window failures are counted in.
        cooldown_s: how long a cooldown lasts; a half-open probe may take as long.
        samples: latency samples kept per model.
        refresh_s: how often the store's cooldowns are read again.
        clock: seconds since the epoch (tests may pass their own).
    """

    def __init__(
        self,
        store: Store | None,
        *,
        failures: int = 3,
        window_s: float = 60.0,
        cooldown_s: float = 30.0,
        samples: int = 100,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._failures = failures
        self._window_ms = int(window_s * 1000)
        self._cooldown_ms = int(cooldown_s * 1000)
        self._samples_size = samples
        self._refresh_ms = int(refresh_s * 1000)
        self._clock = clock
        self._rows: dict[str, _Row] = {}
        self._latency: dict[str, _Samples] = {}
        self._lock = threading.Lock()
        self._read_at_ms = -self._refresh_ms

    # -- cooldowns ---------------------------------------------------------------------------

    def available(self, model: str) -> bool:
        """Whether a call may go to ``model`` now: it is not cooling down, or its cooldown has
        ended and this call claimed the half-open probe."""
        now = self._now_ms()
        self._refresh(now)
        row = self._rows.get(model)
        if row is None or row.cooling_until_ms == 0:
            return True
        if now < row.cooling_until_ms or now < row.probe_until_ms:
            return False
        return self._claim_probe(model, now)

    @property
    def reads_network_store(self) -> bool:
        """Whether checking a model may wait on a database server (not a local file)."""
        return self._store is not None and not self._store.is_sqlite

    def on_probation(self, model: str) -> bool:
        """Whether ``model`` is cooling down or being probed, as this process last saw it."""
        row = self._rows.get(model)
        return row is not None and row.cooling_until_ms != 0

    def cooling(self) -> dict[str, float]:
        """The models in cooldown (or being probed), with the time their cooldown ends
        (seconds since the epoch)."""
        now = self._now_ms()
        self._refresh(now)
        with self._lock:
            return {
                model: row.cooling_until_ms / 1000
                for model, row in self._rows.items()
                if row.cooling_until_ms
            }

    def failed(self, model: str) -> bool:
        """Record a failed call of ``model``; ``True`` when it starts a cooldown."""
        now = self._now_ms()
        if self._store is None:
            with self._lock:
                row = self._rows.setdefault(model, _Row())
                started = self._count_failure(row, now)
        else:
            row, started = self._store_failure(model, now)
            with self._lock:
                self._rows[model] = row
        if started:
            logger.warning(
                "cooldown",
                model=model,
                failures=self._failures,
                window_s=self._window_ms / 1000,
                cooldown_s=self._cooldown_ms / 1000,
            )
        return started

    def succeeded(self, model: str) -> None:
        """Record an answer from ``model``: a successful probe ends its cooldown."""
        row = self._rows.get(model)
        if row is None or row.cooling_until_ms == 0:
            return  # the common case: nothing to write
        with self._lock:
            self._rows[model] = _Row()
        if self._store is not None:
            with self._store.cursor() as cursor:
                cursor.execute(
                    "UPDATE agentguard_model_health SET failures = 0, cooling_until_ms = 0,"
                    " probe_until_ms = 0 WHERE model = :model",
                    {"model": model},
                )
        logger.info("cooldown_over", model=model)

    def _count_failure(self, row: _Row, now: int) -> bool:
        """Apply one failure to ``row``; whether a cooldown starts."""
        if row.cooling_until_ms and now >= row.cooling_until_ms:
            # Half-open: the probe (or a call let through) failed; cool down again.
            self._start_cooldown(row, now)
            return True
        if row.cooling_until_ms:
            return False  # already cooling: a call that was in flight when it started
        if now - row.window_start_ms >= self._window_ms:
            row.failures, row.window_start_ms = 0, now
        row.failures += 1
        if row.failures >= self._failures:
            self._start_cooldown(row, now)
            return True
        return False

    def _start_cooldown(self, row: _Row, now: int) -> None:
        row.failures, row.window_start_ms = 0, now
        row.cooling_until_ms = now + self._cooldown_ms
        row.probe_until_ms = 0

    def _store_failure(self, model: str, now: int) -> tuple[_Row, bool]:
        assert self._store is not None
        lock = "" if self._store.is_sqlite else " FOR UPDATE"
        with self._store.cursor() as cursor:
            cursor.execute(
                "INSERT INTO agentguard_model_health (model, failures, window_start_ms,"
                " cooling_until_ms, probe_until_ms) VALUES (:model, 0, :now, 0, 0)"
                " ON CONFLICT (model) DO NOTHING",
                {"model": model, "now": now},
            )
            found = cursor.one(
                "SELECT failures, window_start_ms, cooling_until_ms, probe_until_ms"
                " FROM agentguard_model_health WHERE model = :model" + lock,
                {"model": model},
            )
            row = _Row(*(int(value) for value in found)) if found else _Row()
            started = self._count_failure(row, now)
            cursor.execute(
                "UPDATE agentguard_model_health SET failures = :failures,"
                " window_start_ms = :window_start, cooling_until_ms = :cooling_until,"
                " probe_until_ms = :probe_until WHERE model = :model",
                {
                    "model": model,
                    "failures": row.failures,
                    "window_start": row.window_start_ms,
                    "cooling_until": row.cooling_until_ms,
                    "probe_until": row.probe_until_ms,
                },
            )
        return row, started

    def _claim_probe(self, model: str, now: int) -> bool:
        """Claim the one half-open probe of a model whose cooldown ended."""
        until = now + self._cooldown_ms
        if self._store is None:
            with self._lock:
                row = self._rows[model]
                if now < row.probe_until_ms:
                    return False
                row.probe_until_ms = until
            return True
        with self._store.cursor() as cursor:
            claimed = cursor.rowcount(
                "UPDATE agentguard_model_health SET probe_until_ms = :until"
                " WHERE model = :model AND cooling_until_ms > 0 AND cooling_until_ms <= :now"
                " AND probe_until_ms <= :now",
                {"model": model, "until": until, "now": now},
            )
            if not claimed:
                found = cursor.one(
                    "SELECT failures, window_start_ms, cooling_until_ms, probe_until_ms"
                    " FROM agentguard_model_health WHERE model = :model",
                    {"model": model},
                )
        if claimed:
            with self._lock:
                self._rows[model].probe_until_ms = until
            logger.info("cooldown_probe", model=model)
            return True
        row = _Row(*(int(value) for value in found)) if found else _Row()
        with self._lock:
            self._rows[model] = row
        return row.cooling_until_ms == 0  # another process's probe ended it meanwhile

    def _refresh(self, now: int) -> None:
        """Read the store's cooldowns again, at most every ``refresh_s``."""
        if self._store is None or now - self._read_at_ms < self._refresh_ms:
            return
        self._read_at_ms = now
        with self._store.cursor(write=False) as cursor:
            rows = cursor.all(
                "SELECT model, failures, window_start_ms, cooling_until_ms, probe_until_ms"
                " FROM agentguard_model_health WHERE cooling_until_ms > 0",
                {},
            )
        fresh = {str(model): _Row(*(int(v) for v in values)) for model, *values in rows}
        with self._lock:
            self._rows = fresh

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- latency -----------------------------------------------------------------------------

    def observe(self, model: str, *, first_byte_s: float, total_s: float) -> None:
        """Record one answered call's times."""
        samples = self._latency.get(model)
        if samples is None:
            samples = self._latency.setdefault(model, _Samples(self._samples_size))
        with samples.lock:
            samples.first_byte.append(first_byte_s)
            samples.total.append(total_s)
            samples.summary = None

    def latency(self, model: str) -> Latency | None:
        """``model``'s recent latency in this process, or ``None`` before its first answer."""
        samples = self._latency.get(model)
        if samples is None:
            return None
        with samples.lock:
            if samples.summary is not None or not samples.total:
                return samples.summary
            first = sorted(samples.first_byte)
            total = sorted(samples.total)
            samples.summary = Latency(
                samples=len(total),
                first_byte_p50=_percentile(first, 0.5),
                first_byte_p95=_percentile(first, 0.95),
                total_p50=_percentile(total, 0.5),
                total_p95=_percentile(total, 0.95),
            )
            return samples.summary
