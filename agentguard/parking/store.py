"""Parked sessions in the SQL store: one row per session, claims on leases.

The move to ``resuming`` is one conditional ``UPDATE`` (a claim with a lease): of several
daemons on one store, exactly one gets each due session, and a claim whose process died is
taken again once its lease runs out. Each claim carries a token of its own (in
``lease_owner``): renewing the lease and writing the outcome are conditional on it, so a
resumer whose lease was taken over changes nothing.

Every transaction here is short and holds no lock across a resumer run or any other I/O.
"""

from __future__ import annotations

import builtins
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from agentguard.errors import StoreError
from agentguard.parking.record import ParkedSession, ParkState
from agentguard.store import Cursor, Store

__all__ = ["ParkedStore", "UnknownSession", "active_claim", "claim_token"]

active_claim: ContextVar[tuple[str, str] | None] = ContextVar(
    "agentguard_active_claim", default=None
)
"""The session id and claim token of the resume running in this context: a limit hit inside
it re-parks the record only while the claim is still this run's."""

_SELECT = (
    "SELECT record, state, lease_owner, lease_until_ms FROM agentguard_parked_sessions"
    " WHERE session_id = :id"
)
_INSERT = (
    "INSERT INTO agentguard_parked_sessions"
    " (session_id, state, resume_at_ms, attempts, lease_owner, lease_until_ms, updated_at_ms, record)"
    " VALUES (:id, :state, :resume, :attempts, :owner, :until, :now, :record)"
)
_UPDATE = (
    "UPDATE agentguard_parked_sessions SET state = :state, resume_at_ms = :resume,"
    " attempts = :attempts, lease_owner = :owner, lease_until_ms = :until,"
    " updated_at_ms = :now, record = :record WHERE session_id = :id"
)
_CLAIM = (
    "UPDATE agentguard_parked_sessions SET state = 'resuming', lease_owner = :owner,"
    " lease_until_ms = :until, updated_at_ms = :now"
    " WHERE session_id = :id AND ("
    " (state = 'parked' AND (resume_at_ms IS NULL OR resume_at_ms <= :now))"
    " OR (state = 'resuming' AND lease_until_ms < :now))"
)
_RENEW = (
    "UPDATE agentguard_parked_sessions SET lease_until_ms = :until"
    " WHERE session_id = :id AND state = 'resuming' AND lease_owner = :token"
)
_FENCED_UPDATE = _UPDATE + " AND state = 'resuming' AND lease_owner = :token"
_DUE = (
    "SELECT session_id FROM agentguard_parked_sessions WHERE"
    " (state = 'parked' AND resume_at_ms IS NOT NULL AND resume_at_ms <= :now)"
    " OR (state = 'resuming' AND lease_until_ms < :now) ORDER BY resume_at_ms"
)
_WAITING = (
    "SELECT session_id, CASE WHEN state = 'resuming' THEN lease_until_ms ELSE resume_at_ms END"
    " AS next_look FROM agentguard_parked_sessions"
    " WHERE state = 'parked' OR state = 'resuming' ORDER BY next_look"
)


class UnknownSession(StoreError, KeyError):
    """No parked record has this session id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown session"


def claim_token(owner: str) -> str:
    """A lease owner unique to one claim: the owner's name and a random suffix."""
    return f"{owner[:100]}#{secrets.token_hex(8)}"


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _now() -> datetime:
    return datetime.now(UTC)


class ParkedStore:
    """The parked-session records of a :class:`~agentguard.store.Store`.

    Args:
        store: the SQL store.
        on_corrupt: called with the session id and the problem when a stored record no
            longer validates (it is then skipped, never deleted).
    """

    def __init__(
        self, store: Store, *, on_corrupt: Callable[[str, str], None] | None = None
    ) -> None:
        self.store = store
        self.on_corrupt = on_corrupt

    # -- reading ---------------------------------------------------------------------------------

    def get(self, session_id: str) -> ParkedSession:
        """The record of ``session_id``.

        Raises:
            UnknownSession: there is none.
        """
        with self.store.cursor(write=False) as cursor:
            record = self._load(cursor, session_id)
        if record is None:
            raise UnknownSession(f"no parked session with id {session_id!r}")
        return record

    def find(self, session_id: str) -> ParkedSession | None:
        """The record of ``session_id``, or ``None``."""
        with self.store.cursor(write=False) as cursor:
            return self._load(cursor, session_id)

    def list(self, state: ParkState | None = None) -> builtins.list[ParkedSession]:
        """Every record (of one state), soonest resume first."""
        sql = "SELECT session_id, record FROM agentguard_parked_sessions"
        params: dict[str, str] = {}
        if state is not None:
            sql += " WHERE state = :state"
            params["state"] = state
        sql += " ORDER BY resume_at_ms, session_id"
        with self.store.cursor(write=False) as cursor:
            rows = cursor.all(sql, params)
        records = []
        for session_id, text in rows:
            record = self._parse(session_id, text)
            if record is not None:
                records.append(record)
        return records

    def due(self, *, now: datetime | None = None) -> builtins.list[str]:
        """Ids of sessions due to resume (or whose resume's lease ran out)."""
        with self.store.cursor(write=False) as cursor:
            return [row[0] for row in cursor.all(_DUE, {"now": _ms(now or _now())})]

    def waiting(self) -> builtins.list[tuple[str, datetime | None]]:
        """Ids of every parked or resuming session, and when it is next worth a look: its
        resume time, or for one being resumed, when its lease runs out."""
        with self.store.cursor(write=False) as cursor:
            rows = cursor.all(_WAITING, {})
        return [
            (row[0], None if row[1] is None else datetime.fromtimestamp(row[1] / 1000, UTC))
            for row in rows
        ]

    # -- writing ---------------------------------------------------------------------------------

    def put(self, record: ParkedSession) -> ParkedSession:
        """Insert or replace a record, in one transaction."""
        with self.store.cursor() as cursor:
            self._write(cursor, record, exists=self._exists(cursor, record.session_id))
        return record

    def update(
        self, session_id: str, change: Callable[[ParkedSession | None], ParkedSession | None]
    ) -> ParkedSession | None:
        """Read, change and write one record in one transaction (the write lock is held
        throughout, so concurrent changes never interleave). ``change`` gets ``None`` when
        there is no record yet, and may return ``None`` to write nothing."""
        with self.store.cursor() as cursor:
            return self._update_in(cursor, session_id, change)

    def update_many(
        self,
        changes: builtins.list[tuple[str, Callable[[ParkedSession | None], ParkedSession | None]]],
    ) -> builtins.list[ParkedSession | None]:
        """:meth:`update` for several records in one transaction (all or none)."""
        with self.store.cursor() as cursor:
            return [self._update_in(cursor, session_id, change) for session_id, change in changes]

    def _update_in(
        self,
        cursor: Cursor,
        session_id: str,
        change: Callable[[ParkedSession | None], ParkedSession | None],
    ) -> ParkedSession | None:
        if not self.store.is_sqlite:
            cursor.execute(
                "SELECT session_id FROM agentguard_parked_sessions WHERE session_id = :id FOR UPDATE",
                {"id": session_id},
            )
        current = self._load(cursor, session_id)
        exists = current is not None or self._exists(cursor, session_id)
        changed = change(current)
        if changed is not None:
            self._write(cursor, changed, exists=exists)
        return changed

    def claim(
        self, session_id: str, owner: str, *, lease_s: float, now: datetime | None = None
    ) -> ParkedSession | None:
        """Atomically move a due record to ``resuming`` with a lease for ``owner``.

        The record's ``lease_owner`` becomes a token unique to this claim (see
        :meth:`renew` and :meth:`update_claimed`); ``resume_id`` is new for a new attempt and
        kept when an expired lease is taken over (the same attempt, run again).

        Returns the claimed record, or ``None`` if it is not due or someone else holds it.
        """
        current_time = now or _now()
        until = current_time + timedelta(seconds=lease_s)
        token = claim_token(owner)
        with self.store.cursor() as cursor:
            params = {
                "id": session_id,
                "owner": token,
                "until": _ms(until),
                "now": _ms(current_time),
            }
            before = self._load(cursor, session_id)
            if before is None or cursor.rowcount(_CLAIM, params) != 1:
                return None
            record = before
            taken_over = record.state == "resuming"
            if not taken_over or record.resume_id is None:
                record.resume_id = f"{session_id}:{secrets.token_hex(8)}"
            record.lease_owner = token
            record.lease_until = until
            record.transition(
                "resuming",
                f"claimed by {owner}" + (" (previous lease expired)" if taken_over else ""),
                at=current_time,
            )
            self._write(cursor, record, exists=True)
            return record

    def renew(self, session_id: str, token: str, *, lease_s: float) -> bool:
        """Extend a claim's lease; ``False`` if the claim is no longer this token's."""
        until = _now() + timedelta(seconds=lease_s)
        with self.store.cursor() as cursor:
            return (
                cursor.rowcount(_RENEW, {"id": session_id, "token": token, "until": _ms(until)})
                == 1
            )

    def update_claimed(
        self, session_id: str, token: str, change: Callable[[ParkedSession], ParkedSession]
    ) -> ParkedSession | None:
        """Change a record still claimed by ``token`` (in ``resuming`` under that claim), in one
        transaction. Returns ``None`` and writes nothing if the claim was lost."""
        with self.store.cursor() as cursor:
            if not self.store.is_sqlite:
                cursor.execute(
                    "SELECT session_id FROM agentguard_parked_sessions WHERE session_id = :id FOR UPDATE",
                    {"id": session_id},
                )
            current = self._load(cursor, session_id)
            if current is None or current.state != "resuming" or current.lease_owner != token:
                return None
            changed = change(current)
            params = {**self._params(changed), "token": token}
            if cursor.rowcount(_FENCED_UPDATE, params) != 1:
                return None
            return changed

    # -- internals -------------------------------------------------------------------------------

    def _exists(self, cursor: Cursor, session_id: str) -> bool:
        row = cursor.one(
            "SELECT 1 FROM agentguard_parked_sessions WHERE session_id = :id", {"id": session_id}
        )
        return row is not None

    def _load(self, cursor: Cursor, session_id: str) -> ParkedSession | None:
        row = cursor.one(_SELECT, {"id": session_id})
        if row is None:
            return None
        record = self._parse(session_id, row[0])
        if record is not None:
            # The columns are the truth for the claim: a renewal moves only the column.
            record.state = row[1]
            record.lease_owner = row[2]
            record.lease_until = (
                None if row[3] is None else datetime.fromtimestamp(row[3] / 1000, UTC)
            )
        return record

    def _parse(self, session_id: str, text: str) -> ParkedSession | None:
        try:
            return ParkedSession.model_validate_json(text)
        except (ValidationError, ValueError) as exc:
            if self.on_corrupt is not None:
                self.on_corrupt(session_id, str(exc).splitlines()[0])
            return None

    def _write(self, cursor: Cursor, record: ParkedSession, *, exists: bool) -> None:
        cursor.execute(_UPDATE if exists else _INSERT, self._params(record))

    @staticmethod
    def _params(record: ParkedSession) -> dict[str, object]:
        return {
            "id": record.session_id,
            "state": record.state,
            "resume": _ms(record.resume_at),
            "attempts": record.attempts,
            "owner": record.lease_owner,
            "until": _ms(record.lease_until),
            "now": int(time.time() * 1000),
            "record": record.model_dump_json(),
        }
