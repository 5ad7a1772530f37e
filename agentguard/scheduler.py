"""The resume daemon: APScheduler fires each parked session's resume at its ``resume_at``.

The store is the truth, not the scheduler's memory: the daemon re-reads the store every
``poll_interval_s`` (so records parked by other processes appear without a restart, and a
restart loses nothing) and schedules one job per waiting session. Each job claims its session
on a lease before resuming it, so several daemons on one store resume each session once.
"""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from agentguard.log import logger
from agentguard.parking.inbox import Inbox
from agentguard.parking.resume import default_owner

if TYPE_CHECKING:
    from agentguard.guard import Guard

__all__ = ["ResumeDaemon"]


class ResumeDaemon:
    """Resumes parked sessions when they are due.

    Args:
        guard: the application's guard (its resumers and clients do the resuming).
        poll_interval_s: how often the store is re-read for new or changed records.
        workers: resumes that may run at once.
        watch_inbox: ingest JSON records dropped in ``parking.dir/inbox``.
        owner: the name on this daemon's leases.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        poll_interval_s: float = 2.0,
        workers: int = 4,
        watch_inbox: bool = True,
        owner: str | None = None,
    ) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.guard = guard
        self.poll_interval_s = poll_interval_s
        self.owner = owner or default_owner()
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.inbox: Inbox | None = None
        if watch_inbox:
            self.inbox = Inbox(
                guard.config.parking.resolved_dir(),
                ingest=guard.parked.import_record,
                known_resumers=lambda: set(guard.resumers),
                max_bytes=guard.config.parking.inbox_max_bytes,
            )
        self._scheduled: dict[str, datetime] = {}
        self._stopped = threading.Event()
        self._sync_lock = threading.Lock()
        self.resumes_run = 0

    def start(self) -> None:
        """Start watching the store (and the inbox) in background threads."""
        self.scheduler.start()
        self.scheduler.add_job(
            self.sync,
            "interval",
            seconds=self.poll_interval_s,
            id="agentguard:sync",
            next_run_time=datetime.now(UTC),
        )
        if self.inbox is not None:
            self.inbox.start()
        logger.info("daemon_start", owner=self.owner, store=self.guard.store.safe_url)

    def sync(self) -> None:
        """Schedule a job for every waiting session (the store is the truth)."""
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        try:
            waiting = self.guard.parked.store.waiting()
        except Exception as exc:  # a store outage must not kill the daemon
            logger.warning("daemon_store_error", error=str(exc))
            return
        now = datetime.now(UTC)
        seen = set()
        for session_id, resume_at in waiting:
            seen.add(session_id)
            when = resume_at or now
            if self._scheduled.get(session_id) == when:
                continue
            self._scheduled[session_id] = when
            self.scheduler.add_job(
                self._resume,
                "date",
                run_date=max(when, now),
                args=[session_id],
                id=f"resume:{session_id}",
                replace_existing=True,
            )
        for session_id in set(self._scheduled) - seen:
            self._scheduled.pop(session_id, None)
        # Leases that ran out (a resuming process died) are due again now.
        for session_id in self.guard.parked.store.due(now=now):
            if session_id not in self._scheduled or self._scheduled[session_id] > now:
                self._scheduled[session_id] = now
                self.scheduler.add_job(
                    self._resume,
                    "date",
                    run_date=now,
                    args=[session_id],
                    id=f"resume:{session_id}",
                    replace_existing=True,
                )

    def _resume(self, session_id: str) -> None:
        with self._sync_lock:
            self._scheduled.pop(session_id, None)
        try:
            self.guard.parked.run(session_id, owner=self.owner)
            self.resumes_run += 1
        except Exception as exc:  # recorded on the session by run(); the daemon goes on
            logger.warning("daemon_resume_error", session_id=session_id, error=str(exc))
        # Whatever happened (re-parked, failed), the next sync schedules what is left.
        self.scheduler.add_job(
            self.sync,
            "date",
            run_date=datetime.now(UTC) + timedelta(milliseconds=50),
            id="agentguard:sync-after",
            replace_existing=True,
        )

    def stop(self, wait: bool = True) -> None:
        """Stop scheduling; with ``wait``, let running resumes finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.inbox is not None:
            self.inbox.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
        logger.info("daemon_stop", owner=self.owner)

    def run_forever(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then stop gracefully."""
        previous: dict[int, Any] = {}

        def request_stop(signum: int, _frame: Any) -> None:
            logger.info("daemon_signal", signal=signal.Signals(signum).name)
            self._stopped.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request_stop)
        self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        finally:
            self._stopped.clear()
            self.stop(wait=True)
            for number, handler in previous.items():
                signal.signal(number, handler)
