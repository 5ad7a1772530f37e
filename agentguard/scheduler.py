"""The resume daemon: APScheduler fires each parked session's resume at its ``resume_at``.

The store is the truth, not the scheduler's memory: the daemon re-reads the store every
``poll_interval_s`` (so records parked by other processes appear without a restart, and a
restart loses nothing) and schedules one job per waiting session. Each job claims its session
on a lease before resuming it, so several daemons on one store resume each session once.

The look at the store runs in the daemon's own thread, never as a scheduler job: a resume that
finishes only wakes it (an event), so no job ever calls back into the scheduler, and stopping
the scheduler while resumes run cannot deadlock. A session already being resumed by this
daemon is not scheduled again, so the scheduler never has to skip a second instance.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
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
        # The scheduler's own messages go through agentguard's logger (JSON lines with
        # configure_logging), warnings and above only: its per-job chatter is not events.
        scheduler_log = logging.getLogger("agentguard.apscheduler")
        if scheduler_log.level == logging.NOTSET:
            scheduler_log.setLevel(logging.WARNING)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            logger=scheduler_log,
        )
        self.inbox: Inbox | None = None
        if watch_inbox:
            self.inbox = Inbox(
                guard.config.parking.resolved_dir(),
                ingest=guard.parked.import_record,
                ingest_many=guard.parked.import_records,
                known_resumers=lambda: set(guard.resumers),
                max_bytes=guard.config.parking.inbox_max_bytes,
                check=guard.parked.problem_with,
                settle_s=guard.config.parking.inbox_settle_s,
                rescan_s=guard.config.parking.inbox_rescan_s,
            )
        self._scheduled: dict[str, datetime] = {}
        self._running: set[str] = set()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._sync_lock = threading.Lock()
        self._syncer: threading.Thread | None = None
        self.resumes_run = 0

    def start(self) -> None:
        """Start watching the store (and the inbox) in background threads."""
        self.scheduler.start()
        self._syncer = threading.Thread(
            target=self._sync_loop, name="agentguard-daemon-sync", daemon=True
        )
        self._syncer.start()
        if self.inbox is not None:
            self.inbox.start()
        logger.info("daemon_start", owner=self.owner, store=self.guard.store.safe_url)

    def _sync_loop(self) -> None:
        while not self._stopped.is_set():
            self.sync()
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def sync(self) -> None:
        """Schedule a job for every waiting session (the store is the truth)."""
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        if self._stopped.is_set():
            return
        try:
            waiting = self.guard.parked.store.waiting()
            now = datetime.now(UTC)
            # Leases that ran out (a resuming process died) are due again now.
            due_now = set(self.guard.parked.store.due(now=now))
        except Exception as exc:  # a store outage must not kill the daemon
            logger.warning("daemon_store_error", error=str(exc))
            return
        seen = set()
        for session_id, resume_at in waiting:
            seen.add(session_id)
            when = now if session_id in due_now else (resume_at or now)
            if session_id in self._running or self._scheduled.get(session_id) == when:
                continue
            if session_id in self._scheduled and session_id in due_now:
                continue  # already scheduled at or before now
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

    def _resume(self, session_id: str) -> None:
        with self._sync_lock:
            self._scheduled.pop(session_id, None)
            self._running.add(session_id)
        try:
            self.guard.parked.run(session_id, owner=self.owner)
            self.resumes_run += 1
        except Exception as exc:  # recorded on the session by run(); the daemon goes on
            logger.warning("daemon_resume_error", session_id=session_id, error=str(exc))
        finally:
            with self._sync_lock:
                self._running.discard(session_id)
        # Whatever happened (re-parked, failed), the next look schedules what is left.
        self._wake.set()

    def stop(self, wait: bool = True) -> None:
        """Stop scheduling; with ``wait``, let running resumes finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._wake.set()
        if self.inbox is not None:
            self.inbox.stop()
        if self._syncer is not None:
            self._syncer.join(timeout=30)
        if self.scheduler.running:
            # Emptied first, under the scheduler's own lock: a job it is handing out while
            # shutdown marks it stopped would otherwise not be found for removal, and the
            # scheduler's thread would die on that error.
            self.scheduler.remove_all_jobs()
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
