"""Resuming parked sessions: the claim, the registered resumer, and what its outcome records.

A resumer is a function registered by name (``@guard.resumer("name")``); a record can only name
one, never an import path. It runs inside a session restored from the record (same id, budget
key, counters), so the calls it makes through the guard's clients count against the same
budget, and a limit hit inside it re-parks the record with ``attempts + 1``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from agentguard.errors import ConfigError, SessionParked
from agentguard.log import logger
from agentguard.parking.record import ParkedSession, ParkState
from agentguard.parking.store import ParkedStore, UnknownSession, active_claim

if TYPE_CHECKING:
    from agentguard.config import GuardConfig
    from agentguard.session import Session

__all__ = ["FINISHED_STATES", "ParkedSessions", "ResumeHost", "Resumer", "default_owner"]

Resumer = Callable[[ParkedSession], Any]


class ResumeHost(Protocol):
    """What resuming asks of the guard (:class:`~agentguard.Guard` is one): its config, its
    registered resumers, and how it restores a session from a record."""

    config: GuardConfig
    resumers: dict[str, Resumer]

    def resume_problem(self, record: ParkedSession) -> str | None: ...

    def restore_session(self, record: ParkedSession) -> Session: ...

    def check_budget_key(self, key: str) -> None: ...


FINISHED_STATES: frozenset[ParkState] = frozenset({"resumed", "failed", "dropped"})
"""States a record does not leave on its own: it will not resume unless asked to."""


def default_owner() -> str:
    """This process's name on leases: host, pid and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


def _summarise(result: Any) -> dict[str, Any]:
    """A short, JSON-friendly trace of what a resume produced."""
    if result is None:
        return {}
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        try:
            data = dump(mode="json")
        except Exception:
            data = None
        if isinstance(data, dict):
            choices = data.get("choices") or []
            message = (choices[0] or {}).get("message") if choices else None
            summary: dict[str, Any] = {"id": data.get("id"), "model": data.get("model")}
            if isinstance(message, dict):
                summary["content"] = (message.get("content") or "")[:2000]
                summary["tool_calls"] = len(message.get("tool_calls") or [])
            elif data.get("type") == "message" and isinstance(data.get("content"), list):
                # An Anthropic message: content blocks.
                blocks = [b for b in data["content"] if isinstance(b, dict)]
                text = "".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text")
                summary["content"] = text[:2000]
                summary["tool_calls"] = sum(1 for b in blocks if b.get("type") == "tool_use")
                return summary
            if not choices:
                summary["value"] = str(data)[:2000]
            return summary
    if isinstance(result, (str, int, float, bool)):
        return {"value": str(result)[:2000]}
    if isinstance(result, dict):
        return {"value": {str(k): str(v)[:500] for k, v in list(result.items())[:20]}}
    return {"value": repr(result)[:2000]}


class ParkedSessions:
    """``guard.parked``: look at, resume and drop parked sessions.

    Args:
        guard: the guard whose resumers and clients resume the sessions.
        store: the records.
    """

    def __init__(self, guard: ResumeHost, store: ParkedStore) -> None:
        self.guard = guard
        self.store = store
        self._unresumable: set[str] = set()

    # -- looking -----------------------------------------------------------------------------------

    def list(self, state: ParkState | None = None) -> list[ParkedSession]:
        """Every parked-session record (of one state), soonest resume first."""
        return self.store.list(state)

    def get(self, session_id: str) -> ParkedSession:
        """One record.

        Raises:
            UnknownSession: no record has this id.
        """
        return self.store.get(session_id)

    # -- acting ------------------------------------------------------------------------------------

    def drop(self, session_id: str, *, note: str = "dropped by request") -> ParkedSession:
        """Mark a ``parked`` (or ``resuming``) record ``dropped``: it will not resume (the
        record is kept).

        Raises:
            UnknownSession: no record has this id.
            ValueError: the record is finished (``resumed``, ``failed`` or ``dropped``): there
                is nothing left to stop, and its outcome stays as it was.
        """

        def change(current: ParkedSession | None) -> ParkedSession:
            if current is None:
                raise UnknownSession(f"no parked session with id {session_id!r}")
            if current.state in FINISHED_STATES:
                raise ValueError(
                    f"session {session_id!r} is {current.state}: a finished record cannot be "
                    "dropped (it will not resume anyway)"
                )
            current.resume_at = None
            current.lease_owner = None
            current.lease_until = None
            current.transition("dropped", note)
            return current

        record = self.store.update(session_id, change)
        assert record is not None
        logger.info("drop", session_id=session_id)
        return record

    def schedule_now(self, session_id: str) -> ParkedSession:
        """Make a record due now (a running daemon resumes it at its next look). A ``failed``
        or ``dropped`` record is parked again with its attempts reset.

        Raises:
            UnknownSession: no record has this id.
            ValueError: the session is being resumed right now.
        """

        def change(current: ParkedSession | None) -> ParkedSession:
            if current is None:
                raise UnknownSession(f"no parked session with id {session_id!r}")
            if current.state == "resuming" and current.lease_until and current.lease_until > _now():
                raise ValueError(
                    f"session {session_id!r} is being resumed by {current.lease_owner}"
                )
            if current.state in ("failed", "dropped", "resumed"):
                current.attempts = 0
            current.resume_at = _now()
            current.lease_owner = None
            current.lease_until = None
            current.transition("parked", "scheduled to resume now by request")
            return current

        record = self.store.update(session_id, change)
        assert record is not None
        return record

    def resume(self, session_id: str, *, owner: str | None = None, force: bool = True) -> Any:
        """Resume a session in this process now, with its registered resumer.

        Args:
            session_id: the session.
            owner: the name on the lease (default: this host, process and thread).
            force: resume even if it is not due yet (a daemon waits for ``resume_at``).

        Returns:
            What the resumer returned; ``None`` if the session could not be claimed.

        Raises:
            UnknownSession: no record has this id.
            ValueError: this process cannot resume it (its resumer is not registered, or
                ``replay`` has no client); nothing was claimed.
            SessionParked: the resume hit a limit again and was parked again.
        """
        problem = self.guard.resume_problem(self.get(session_id))
        if problem is not None:
            # Checked before the claim: a resume that cannot start must not spend an attempt.
            raise ValueError(problem)
        if force:
            self.schedule_now(session_id)
        return self.run(session_id, owner=owner or default_owner(), raise_parked=True)

    def problem_with(self, record: ParkedSession) -> str | None:
        """Why a record from elsewhere (the inbox) must not be stored, or ``None``: it names a
        budget key this application has not configured, or counters it could not restore."""
        try:
            self.guard.check_budget_key(record.budget_key)  # the sessions' rule, not a copy
        except ConfigError as exc:
            return f"names a budget key this application does not accept: {exc}"
        if record.session_state:
            from agentguard.session import SessionState

            try:
                state = SessionState.model_validate(record.session_state)
            except ValueError as exc:
                return f"has a session_state that does not validate: {str(exc).splitlines()[0]}"
            for name, value in state.model_dump().items():
                if isinstance(value, (int, Decimal)) and not isinstance(value, bool) and value < 0:
                    return f"has a negative counter: session_state.{name} = {value}"
        return None

    def import_record(self, record: ParkedSession, *, replace: bool = True) -> ParkedSession:
        """Store a record that came from elsewhere (a file, another process). A record of the
        same session that is being resumed is left alone (dedup by session id).

        Args:
            record: the record.
            replace: overwrite a stored record of the same id (the inbox does); ``False``
                refuses to.

        Raises:
            ValueError: ``replace`` is false and a record with this id exists.
        """
        stored = self.store.update(record.session_id, _importer(record, replace=replace))
        return stored or self.store.get(record.session_id)

    def import_records(self, records: Sequence[ParkedSession]) -> None:
        """:meth:`import_record` for several records, in one transaction (all or none)."""
        self.store.update_many([(record.session_id, _importer(record)) for record in records])

    # -- the resume itself -------------------------------------------------------------------------

    def run(self, session_id: str, *, owner: str, raise_parked: bool = False) -> Any:
        """Claim a due session and resume it. Returns the resumer's result, or ``None`` if the
        session was not claimed (not due, or another process has it).

        The claim's lease is renewed while the resumer runs; the outcome is written only if
        the claim is still this run's. Whatever goes wrong after the claim (the session cannot
        be restored, the resumer raises), the record ends ``parked`` or ``failed`` with a
        reason, never left ``resuming``.
        """
        lease_s = self.guard.config.parking.lease_s
        waiting = self.store.find(session_id)
        problem = self.guard.resume_problem(waiting) if waiting is not None else None
        if problem is not None:
            # Claiming would spend one of the session's attempts on a resume that cannot run
            # here (a daemon started without the application): leave it to one that can.
            if session_id not in self._unresumable:
                self._unresumable.add(session_id)
                logger.warning("resume_skipped", session_id=session_id, reason=problem)
            return None
        self._unresumable.discard(session_id)
        record = self.store.claim(session_id, owner, lease_s=lease_s)
        if record is None:
            return None
        token = record.lease_owner
        assert token is not None
        logger.info(
            "claim",
            session_id=session_id,
            owner=owner,
            attempts=record.attempts,
            resumer=record.resumer,
            resume_id=record.resume_id,
        )
        keeper = _LeaseKeeper(self.store, session_id, token, lease_s)
        keeper.start()
        claim_marker = active_claim.set((session_id, token))
        try:
            return self._resume_claimed(record, raise_parked=raise_parked)
        finally:
            active_claim.reset(claim_marker)
            keeper.stop()

    def _resume_claimed(self, record: ParkedSession, *, raise_parked: bool) -> Any:
        session_id = record.session_id
        resumer = self.guard.resumers.get(record.resumer)
        if resumer is None:
            self._finish(
                record,
                "failed",
                f"no resumer named {record.resumer!r} is registered in this application "
                f"(registered: {sorted(self.guard.resumers)})",
            )
            return None
        try:
            session = self.guard.restore_session(record)
        except Exception as exc:
            self._finish(
                record,
                "failed",
                f"cannot restore the session from the record: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}",
                result={"error": f"{type(exc).__name__}: {str(exc)[:500]}"},
            )
            return None
        try:
            with session:
                if inspect.iscoroutinefunction(resumer):
                    result = asyncio.run(resumer(record))
                else:
                    result = resumer(record)
                    if inspect.isawaitable(result):
                        result = asyncio.run(_await(result))
        except SessionParked as parked:
            # The pipeline already wrote the new state (re-parked with attempts + 1, or failed).
            logger.info("resume_parked", session_id=session_id, resume_at=parked.resume_at)
            if self._still_claimed(record):
                # The pipeline could not write it (its record was changed meanwhile).
                self._after_error(record, parked, session)
            if raise_parked:
                raise
            return None
        except BaseException as exc:
            self._after_error(record, exc, session)
            if raise_parked or not isinstance(exc, Exception):
                raise
            return None
        self._finish(
            record, "resumed", "resumed and completed", result=_summarise(result), session=session
        )
        logger.info(
            "resume",
            session_id=session_id,
            attempts=record.attempts,
            resume_id=record.resume_id,
            spent_usd=session.state.spent_usd,
            iterations=session.state.iterations,
        )
        return result

    def _still_claimed(self, record: ParkedSession) -> bool:
        current = self.store.find(record.session_id)
        return (
            current is not None
            and current.state == "resuming"
            and current.lease_owner == record.lease_owner
        )

    def _finish(
        self,
        record: ParkedSession,
        state: ParkState,
        note: str,
        *,
        result: dict[str, Any] | None = None,
        resume_at: datetime | None = None,
        attempts: int | None = None,
        session: Session | None = None,
    ) -> None:
        def change(current: ParkedSession) -> ParkedSession:
            current.lease_owner = None
            current.lease_until = None
            current.resume_at = resume_at
            if attempts is not None:
                current.attempts = attempts
            if result is not None:
                current.result = result
            if session is not None:
                current.iterations = max(0, session.state.iterations)
                current.spent_usd = max(Decimal(0), session.state.spent_usd)
                current.session_state = session.state.model_dump(mode="json")
            current.transition(state, note)
            return current

        assert record.lease_owner is not None
        written = self.store.update_claimed(record.session_id, record.lease_owner, change)
        if written is None:
            # Dropped, or taken over after this run lost its lease: the outcome is not ours
            # to write.
            logger.warning(
                "resume_fenced",
                session_id=record.session_id,
                resume_id=record.resume_id,
                outcome=state,
            )
            return
        if state == "failed":
            logger.info("fail", session_id=record.session_id, reason=note)

    def _after_error(
        self, record: ParkedSession, error: BaseException, session: Session | None
    ) -> None:
        attempts = record.attempts + 1
        max_attempts = self.guard.config.parking.max_attempts
        note = f"resume failed: {type(error).__name__}: {str(error)[:300]}"
        if attempts >= max_attempts:
            self._finish(
                record,
                "failed",
                f"{note}; gave up after {attempts} attempts",
                attempts=attempts,
                result={"error": f"{type(error).__name__}: {str(error)[:500]}"},
                session=session,
            )
            return
        # An unexpected error is retried later, backing off, within the attempt cap.
        delay = min(self.guard.config.parking.window_hours * 3600, 30.0 * (2**attempts))
        self._finish(
            record,
            "parked",
            f"{note}; retrying in {delay:.0f}s",
            resume_at=_now() + timedelta(seconds=delay),
            attempts=attempts,
            session=session,
        )
        logger.info("re-park", session_id=record.session_id, attempts=attempts, reason=note)


class _LeaseKeeper:
    """Renews a claim's lease every third of its length while a resumer runs."""

    __slots__ = ("_done", "_thread", "lease_s", "lost", "session_id", "store", "token")

    def __init__(self, store: ParkedStore, session_id: str, token: str, lease_s: float) -> None:
        self.store = store
        self.session_id = session_id
        self.token = token
        self.lease_s = lease_s
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"agentguard-lease-{session_id[:40]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=self.lease_s)

    def _run(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            try:
                held = self.store.renew(self.session_id, self.token, lease_s=self.lease_s)
            except Exception as exc:  # a store hiccup: try again at the next beat
                logger.warning("lease_renew_failed", session_id=self.session_id, error=str(exc))
                continue
            if not held:
                self.lost = True
                logger.warning("lease_lost", session_id=self.session_id)
                return


def _importer(
    record: ParkedSession, *, replace: bool = True
) -> Callable[[ParkedSession | None], ParkedSession | None]:
    def change(current: ParkedSession | None) -> ParkedSession | None:
        if current is not None and not replace:
            raise ValueError(
                f"session {record.session_id!r} already has a record ({current.state}); "
                "replace it explicitly to overwrite it"
            )
        if current is not None and current.state == "resuming":
            logger.info("ingest_skipped", session_id=record.session_id, reason="resuming")
            return None
        if current is not None and current.state == "parked" and record.state == "parked":
            # The same session parked again from elsewhere: keep the history, count attempts.
            record.history = [*current.history, *record.history][-50:]
            record.attempts = max(record.attempts, current.attempts)
        if not record.history:
            record.transition(record.state, "imported")
        return record

    return change


async def _await(value: Any) -> Any:
    return await value


def _now() -> datetime:
    return datetime.now(UTC)
